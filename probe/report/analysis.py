"""The numbers behind a report, as plain pandas tables: nothing here draws, so each can be checked by hand.

Words used throughout:
- cell: one Optuna study, task config × arch × d_model × seed; its key is `<task key>/<arch>/d<d_model>/seed<seed>`
  (probe.sweep.Sweep.cells). A cell's result is its best COMPLETE trial, or where it has none its best trial
  stopped by the plateau rule, its status then "plateaued" (probe.results.best_per_cell).
- setting: a cell without its seed. A setting's accuracy is the mean ± std over seeds of each seed's best
  trial: the learning rate is tuned per seed, then the seeds are averaged.
- problem: what stays fixed on a heatmap's axes: the task, plus any task field that varies at a fixed seq_len,
  arch, d_model and seed (num_kv_pairs swept at one length, say). Fields that follow seq_len (eval_seq_lens,
  or num_kv_pairs scaled with the length) or the arch do not split a problem.
- arch: the sweep's label for a mixer (`mamba_s64`); the arch it builds (`mamba`, or a pattern
  `baseconv_short,based`) is the trials' `arch_built`. A label's family (arch_family) orders every legend.
- solved: a setting's accuracy is at least the sweep's stop_at (0.99 where the sweep sets none).
- flat panel: a panel whose x axis would hold one value; it is dropped, not drawn (drop_flat_panels).
- MAD level: a cell's task config when its task is one of MAD's suite (MAD_TASKS); the cells of one level share
  the key's task part, and MAD's score averages levels per task, then tasks (mad_scores).
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import optuna
import pandas as pd

from ..mixers import MIXERS
from ..results import CURVE_COLUMNS, TIDY_COLUMNS, best_per_cell

#: Results.trials columns that are not task-config fields
TRIAL_COLUMNS = [
    "sweep", "cell", "study", "trial", "state", "reason", "task", "arch", "arch_built", "seq_len", "d_model",
    "n_layers", "seed", "lr", "weight_decay", "lr_low", "lr_high", "accuracy", "best_accuracy", "per_example_accuracy",
    "exact_match", "state_size", "params", "train_tokens_per_s", "wall_time_s", "steps", "device", "git",
    "versions"]
TRIAL_STATES = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
#: a best learning rate this close to an end of the searched range (in decades) suggests widening the range
EDGE_DECADES = 0.1
#: the order in which a setting's worst cell names the setting's status
STATUS_ORDER = ["failed", "running", "pending", "pruned", "plateaued", "complete"]

CELL_KEY = re.compile(r"^(?P<task_key>(?P<task>[^-/]+)-L(?P<seq_len>\d+)[^/]*)/(?P<arch>[^/]+)"
                      r"/d(?P<d_model>\d+)/seed(?P<seed>\d+)$")


def conform(trials: pd.DataFrame, tidy: pd.DataFrame, curves: pd.DataFrame):
    """The three Results tables with every schema column present: a storage without trials gives frames without
    columns, and every view below may then select from them as usual."""
    def with_columns(df, columns):
        missing = [c for c in columns if c not in df.columns]
        return df.assign(**{c: pd.Series(dtype=object if c in TEXT else float) for c in missing}) if missing else df
    return with_columns(trials, TRIAL_COLUMNS), with_columns(tidy, TIDY_COLUMNS), with_columns(curves, CURVE_COLUMNS)


TEXT = {"sweep", "cell", "study", "state", "reason", "task", "arch", "arch_built", "device", "git", "versions", "slice"}


def parse_cell_key(key: str) -> dict | None:
    """`mqar-L64-num_kv_pairs4/attention/d64/seed0` -> its parts and setting; None for a key of another shape.

    Pending cells have no trial to read their place from, only this key."""
    m = CELL_KEY.match(key)
    if m is None:
        return None
    parts = m.groupdict()
    return {"task_key": parts["task_key"], "task": parts["task"], "seq_len": int(parts["seq_len"]),
            "arch": parts["arch"], "d_model": int(parts["d_model"]), "seed": int(parts["seed"]),
            "setting": key.rsplit("/", 1)[0]}


def trial_status(states: pd.Series) -> str:
    """A cell's status from its trials' states, for a cell the provenance does not describe."""
    s = set(states)
    if "COMPLETE" in s:
        return "complete"
    if s & {"RUNNING", "WAITING"}:
        return "running"
    if s == {"FAIL"}:
        return "failed"
    return "pruned" if "PRUNED" in s else "pending"


def problem_fields(trials: pd.DataFrame) -> list[str]:
    """Task-config columns in which some cells differ that share task, seq_len, arch, d_model and seed."""
    fields = [c for c in trials.columns if c not in TRIAL_COLUMNS]
    if not fields or trials.empty:
        return []
    same_place = ["task", "seq_len", "arch", "d_model", "seed"]
    counts = trials.groupby(same_place, dropna=False)[fields].nunique(dropna=True)
    return [f for f in fields if (counts[f] > 1).any()]


def problem_labels(trials: pd.DataFrame) -> pd.Series:
    """Per trial: `mqar`, or `mqar num_kv_pairs=4` when num_kv_pairs is swept at a fixed length."""
    fields = problem_fields(trials)

    def label(row) -> str:
        extra = [f"{f}={_plain(row[f])}" for f in fields if not _missing(row[f])]
        return " ".join([row["task"], *extra])
    return trials.apply(label, axis=1) if len(trials) else pd.Series([], dtype=object)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


# -- cells and settings -------------------------------------------------------------------------------------------
def cell_table(trials: pd.DataFrame, provenance: dict) -> pd.DataFrame:
    """One row per cell of the sweeps, pending ones included: where it sits, its status, its best trial.

    Columns: cell, sweep, setting, problem, task, arch, seq_len, d_model, seed, status, trials, expected_trials,
    states (counts per trial state), best_trial, accuracy, lr, lr_low, lr_high, params, state_size,
    train_tokens_per_s."""
    info = dict(provenance.get("cells", {}))
    by_cell = {c: g for c, g in trials.groupby("cell", sort=False)} if len(trials) else {}
    labels = problem_labels(trials)
    problem_of_task_key = {}
    for cell, g in by_cell.items():
        parsed = parse_cell_key(cell)
        if parsed:
            problem_of_task_key[parsed["task_key"]] = labels[g.index[0]]
    best = best_per_cell(trials).drop_duplicates("cell").set_index("cell") if len(trials) else pd.DataFrame()
    rows = []
    for cell in dict.fromkeys([*info, *by_cell]):
        rows.append(_cell_row(cell, info.get(cell), by_cell.get(cell), labels, problem_of_task_key,
                              best.loc[cell] if cell in best.index else None))
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


CELL_COLUMNS = ["cell", "sweep", "setting", "problem", "task", "arch", "seq_len", "d_model", "seed", "status",
                "trials", "expected_trials", "states", "best_trial", "accuracy", "lr", "lr_low", "lr_high",
                "params", "state_size", "train_tokens_per_s"]


def _cell_row(cell, info, g, labels, problem_of_task_key, best) -> dict:
    parsed = parse_cell_key(cell) or {}
    row = {"cell": cell, "sweep": (info or {}).get("sweep", ""), "setting": parsed.get("setting", cell),
           "task": parsed.get("task"), "arch": (info or {}).get("arch", parsed.get("arch")),
           "seq_len": parsed.get("seq_len"), "d_model": parsed.get("d_model"), "seed": parsed.get("seed"),
           "states": {}, "best_trial": None, "accuracy": math.nan, "lr": math.nan, "lr_low": math.nan,
           "lr_high": math.nan, "params": math.nan, "state_size": math.nan, "train_tokens_per_s": math.nan}
    row["problem"] = problem_of_task_key.get(parsed.get("task_key"), parsed.get("task") or "?")
    if g is not None:
        first = g.iloc[0]
        row.update(sweep=row["sweep"] or first["sweep"], task=first["task"], arch=first["arch"],
                   seq_len=int(first["seq_len"]), d_model=int(first["d_model"]), seed=int(first["seed"]),
                   problem=labels[g.index[0]], lr_low=first["lr_low"], lr_high=first["lr_high"],
                   states=g["state"].value_counts().to_dict())
        if not parsed:
            row["setting"] = _strip_seed(cell, row["seed"])
    row["status"] = (info or {}).get("status") or (trial_status(g["state"]) if g is not None else "pending")
    row["trials"] = (info or {}).get("trials", sum(row["states"].get(s, 0) for s in ("COMPLETE", "PRUNED")))
    row["expected_trials"] = (info or {}).get("expected_trials")
    if best is not None:
        row.update(best_trial=int(best["trial"]), accuracy=best["accuracy"], lr=best["lr"], params=best["params"],
                   state_size=best["state_size"], train_tokens_per_s=best["train_tokens_per_s"])
        if best.get("plateaued", False):  # no trial ran to its end: the result is where accuracy stopped rising
            row["status"] = "plateaued"
    elif row["status"] == "complete":
        row["status"] = "pruned"  # its budget is spent, but no trial ran to the end
    return row


def _strip_seed(cell: str, seed) -> str:
    suffix = f"/seed{seed}"
    return cell[:-len(suffix)] if cell.endswith(suffix) else cell


def settings_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (a cell without its seed): accuracy mean ± std over the seeds that have a result.

    lr is the geometric mean of the seeds' tuned learning rates, `lrs` lists them; status is the worst cell's."""
    rows = []
    for setting, g in cells.groupby("setting", sort=False):
        done = g[g["accuracy"].notna()]
        first = g.iloc[0]
        statuses = set(g["status"])
        rows.append({
            "setting": setting, "problem": first["problem"], "task": first["task"], "arch": first["arch"],
            "seq_len": first["seq_len"], "d_model": first["d_model"],
            "accuracy": done["accuracy"].mean() if len(done) else math.nan,
            "accuracy_std": done["accuracy"].std(ddof=1) if len(done) > 1 else math.nan,
            "seeds": len(g), "seeds_done": len(done),
            "lr": float(np.exp(np.log(done["lr"]).mean())) if len(done) else math.nan,
            "lrs": sorted(done["lr"].tolist()),
            "params": done["params"].iloc[0] if len(done) else math.nan,
            "state_size": done["state_size"].iloc[0] if len(done) else math.nan,
            "train_tokens_per_s": done["train_tokens_per_s"].mean() if len(done) else math.nan,
            "status": next(s for s in [*STATUS_ORDER, *sorted(statuses)] if s in statuses),
        })
    out = pd.DataFrame(rows, columns=SETTING_COLUMNS)
    return out.sort_values(["problem", "seq_len", "d_model", "accuracy", "arch"],
                           ascending=[True, True, True, False, True], na_position="last").reset_index(drop=True)


SETTING_COLUMNS = ["setting", "problem", "task", "arch", "seq_len", "d_model", "accuracy", "accuracy_std", "seeds",
                   "seeds_done", "lr", "lrs", "params", "state_size", "train_tokens_per_s", "status"]

#: best-config columns and which way is better: more accuracy and speed, less state and fewer parameters
BETTER = {"accuracy": "max", "params": "min", "state_size": "min", "train_tokens_per_s": "max"}


def best_in_group(settings: pd.DataFrame, column: str, *, group=("problem", "seq_len", "d_model")) -> pd.Series:
    """True where a row holds the best value of `column` among the archs at the same problem, length and width
    (ties all count; rows without a value never do)."""
    values = settings[column]
    if values.notna().sum() == 0:
        return pd.Series(False, index=settings.index)
    best = values.groupby([settings[g] for g in group], dropna=False).transform(BETTER[column])
    return values.notna() & np.isclose(values, best, rtol=1e-12, atol=0)


# -- holes --------------------------------------------------------------------------------------------------------
def holes(cells: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Every cell without a finished result, with why: failed, pruned, running or not started."""
    out = []
    for _, c in cells[cells["accuracy"].isna()].iterrows():
        done, expected = (("?" if pd.isna(n) else int(n)) for n in (c["trials"], c["expected_trials"]))
        out.append({"cell": c["cell"], "sweep": c["sweep"], "arch": c["arch"], "status": c["status"],
                    "trials done": f"{done} / {expected}",
                    "reason": hole_reason(c, trials[trials["cell"] == c["cell"]] if len(trials) else trials)})
    return pd.DataFrame(out, columns=["cell", "sweep", "arch", "status", "trials done", "reason"])


def hole_reason(cell: pd.Series, trials: pd.DataFrame) -> str:
    states = cell["states"]
    reasons = [r for r in dict.fromkeys(trials["reason"].fillna("")) if r] if len(trials) else []
    said = "; ".join(_shorten(r) for r in reasons[:2]) + (f"; and {len(reasons) - 2} more" if len(reasons) > 2 else "")
    counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items())
    if cell["status"] == "failed":
        return f"failed ({counts}): {said or 'no reason recorded'}"
    if cell["status"] == "pruned":
        return f"every trial that ended was pruned ({counts}): {said or 'pruned by the median pruner'}"
    if cell["status"] == "running":
        return f"still running ({counts}); no trial has completed yet"
    if not states:
        return "not started: no trial in storage yet"
    return f"waiting for a worker ({counts})" + (f": {said}" if said else "")


def _shorten(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def state_counts(trials: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per arch: trials by state, and cells by status."""
    archs = list(dict.fromkeys([*cells["arch"].dropna(), *(trials["arch"] if len(trials) else [])]))
    out = pd.DataFrame(index=pd.Index(archs, name="arch"))
    for s in TRIAL_STATES:
        out[s.lower()] = trials[trials["state"] == s].groupby("arch").size() if len(trials) else 0
    for s in reversed(STATUS_ORDER):
        out[f"cells {s}"] = cells[cells["status"] == s].groupby("arch").size()
    return out.fillna(0).astype(int).reset_index()


# -- learning rate ------------------------------------------------------------------------------------------------
def lr_edges(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells whose tuned learning rate lies within EDGE_DECADES of an end of the searched range."""
    done = cells[cells["lr"].notna() & cells["lr_low"].notna()].copy()
    done["edge"] = ""
    low = np.log10(done["lr"] / done["lr_low"]) <= EDGE_DECADES
    high = np.log10(done["lr_high"] / done["lr"]) <= EDGE_DECADES
    done.loc[low, "edge"] = "low"
    done.loc[high, "edge"] = "high"
    return done[done["edge"] != ""][["cell", "arch", "d_model", "seq_len", "lr", "lr_low", "lr_high", "edge",
                                     "accuracy"]].reset_index(drop=True)


def tuned_params(trials: pd.DataFrame) -> list[str]:
    """The parameters Optuna searched: lr always, weight_decay where the sweep tuned it (non-NaN somewhere)."""
    return [p for p in ("lr", "weight_decay") if p in trials and trials[p].notna().any()]


def param_importances(trials: pd.DataFrame, arch: str) -> dict[str, float]:
    """PED-ANOVA importances of the tuned parameters for one arch, over its COMPLETE trials of every cell.

    The trials go into an in-memory study with the searched ranges as distributions (the lr range from the
    cells, weight decay from the values seen, both log-scale), and optuna's PED-ANOVA asks how differently each
    parameter is distributed in the top quarter of trials than in all (fANOVA would need scikit-learn). Pooling
    cells of different lengths and widths counts their differences as noise. Raises ValueError when there are
    too few trials or a parameter never varies."""
    params = tuned_params(trials)
    t = trials[(trials["arch"] == arch) & (trials["state"] == "COMPLETE") & trials["accuracy"].notna()]
    t = t.dropna(subset=params)
    if len(t) < MIN_IMPORTANCE_TRIALS:
        raise ValueError(f"{len(t)} complete trials with every parameter set (need {MIN_IMPORTANCE_TRIALS})")
    dists = {"lr": optuna.distributions.FloatDistribution(min(t["lr_low"].min(), t["lr"].min()),
                                                          max(t["lr_high"].max(), t["lr"].max()), log=True)}
    if "weight_decay" in params:
        low, high = t["weight_decay"].min(), t["weight_decay"].max()
        if not low < high:
            raise ValueError("weight_decay never varies")
        dists["weight_decay"] = optuna.distributions.FloatDistribution(low, high, log=low > 0)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per arch
    try:
        study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials([optuna.trial.create_trial(params={p: float(r[p]) for p in params}, distributions=dists,
                                                value=float(r["accuracy"])) for _, r in t.iterrows()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25, evaluate_on_local=False)
        return optuna.importance.get_param_importances(study, evaluator=evaluator)


MIN_IMPORTANCE_TRIALS = 8


# -- Pareto -------------------------------------------------------------------------------------------------------
def pareto_front(points: pd.DataFrame, x: str = "state_size", y: str = "accuracy") -> pd.DataFrame:
    """The points no other point beats on both axes (less or equal x, more or equal y, one strictly), by x."""
    p = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    keep, best = [], -math.inf
    for idx, value in p[y].items():
        if value > best:
            keep.append(idx)
            best = value
    return p.loc[keep]


# -- tidy views ---------------------------------------------------------------------------------------------------
def best_rows(tidy: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The tidy rows of each cell's best trial, with the cell's setting and problem."""
    best = cells[cells["best_trial"].notna()][["cell", "best_trial", "setting", "problem"]]
    best = best.astype({"best_trial": int}).rename(columns={"best_trial": "trial"})
    return tidy.merge(best, on=["cell", "trial"], how="inner")


def by_length(tidy: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of each setting at every evaluation length (best trial per seed, mean over seeds)."""
    rows = best_rows(tidy[tidy["slice"] == "all"], cells)
    keys = ["problem", "setting", "arch", "seq_len", "d_model", "eval_seq_len"]
    return rows.groupby(keys, as_index=False).agg(accuracy=("accuracy", "mean"))


def by_slice(tidy: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per slice value of each setting at every evaluation length (mean over seeds)."""
    rows = best_rows(tidy[tidy["slice"] != "all"], cells)
    keys = ["problem", "setting", "arch", "seq_len", "d_model", "eval_seq_len", "slice", "slice_value"]
    return rows.groupby(keys, as_index=False).agg(accuracy=("accuracy", "mean"), examples=("examples", "sum"))


def top_trials(cells: pd.DataFrame) -> pd.DataFrame:
    """Per setting, the seed whose best trial scored highest: whose learning curve a report shows."""
    done = cells[cells["accuracy"].notna()].sort_values(["accuracy", "seed"], ascending=[False, True])
    return done.drop_duplicates("setting").astype({"best_trial": int})


# -- families and order -------------------------------------------------------------------------------------------
#: the order of families in every legend, table and panel grid; "hybrid" is a pattern mixing families, "other" a
#: label whose arch is unknown (no trial yet names what it builds, and it is no registered name)
FAMILY_ORDER = ["attention", "linear_attention", "ssm", "conv", "monarch", "simplicial", "hybrid", "other"]


def arch_family(arch: str, built: str | None = None) -> str:
    """The family a report colours `arch` (a sweep's label) by.

    A registered label names its family even when it builds a pattern (Zoology's `based` is
    `baseconv_short,based`: a reader looks for linear attention). Otherwise the built arch decides: a pattern
    within one family is that family, across families "hybrid". A label nothing describes yet (a pending cell
    of `mamba_s64`) falls back to its longest registered prefix."""
    if arch in MIXERS:
        return MIXERS[arch].family
    built = built or (arch if "," in arch else None)  # a label that is a pattern builds itself
    if built:
        families = {MIXERS[a.strip()].family if a.strip() in MIXERS else "other" for a in built.split(",")}
        return families.pop() if len(families) == 1 else "hybrid"
    prefixes = [name for name in MIXERS if arch.startswith(name)]
    return MIXERS[max(prefixes, key=len)].family if prefixes else "other"


def built_archs(trials: pd.DataFrame) -> dict[str, str]:
    """label -> the arch it builds, as the trials record it (empty for tables without `arch_built`)."""
    if "arch_built" not in trials or trials.empty:
        return {}
    known = trials.dropna(subset=["arch_built"]).drop_duplicates("arch")
    return dict(zip(known["arch"], known["arch_built"]))


def natural_key(name: str) -> list:
    """`swa32` before `swa128`: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def arch_order(archs, built: dict[str, str] | None = None) -> list[str]:
    """The archs in family order (FAMILY_ORDER), then by name: the one order of every legend and table."""
    built = built or {}
    return sorted(dict.fromkeys(archs), key=lambda a: (FAMILY_ORDER.index(arch_family(a, built.get(a))),
                                                       natural_key(a)))


# -- solved, and what to skip -------------------------------------------------------------------------------------
#: a task counts as solved at this accuracy when the sweep sets no stop_at
SOLVED_DEFAULT = 0.99


def solve_threshold(provenance: dict) -> float:
    """The accuracy that counts as solving a task: the sweeps' stop_at (the strictest, where they differ), as
    the provenance records it per sweep, else SOLVED_DEFAULT."""
    values = [s["stop_at"] for s in provenance.get("sweeps", []) if s.get("stop_at") is not None]
    return max(values) if values else SOLVED_DEFAULT


def drop_flat_panels(df: pd.DataFrame, panel: list[str], x: str) -> tuple[pd.DataFrame, list[tuple]]:
    """The rows of the panels (groups of `panel` columns) whose `x` takes at least two values, and the keys of
    those dropped: a one-value axis shows a stack of dots, which a table says better."""
    if df.empty:
        return df, []
    spread = df.groupby(panel, dropna=False)[x].transform("nunique")
    flat = df[spread < 2]
    dropped = list(dict.fromkeys(flat[panel].itertuples(index=False, name=None)))
    return df[spread >= 2], dropped


# -- the summary --------------------------------------------------------------------------------------------------
def solved_table(settings: pd.DataFrame, threshold: float, order: list[str]) -> pd.DataFrame:
    """Per arch (in `order`) and training length of one problem: the narrowest setting that solves it.

    Columns: arch, seq_len, solved, d_model, state_size, accuracy (of that setting, or of the best one where none
    solves), status (the worst status among the arch's settings at that length, for one without a result)."""
    rows = []
    for (arch, L), g in settings.groupby(["arch", "seq_len"], sort=False):
        done = g.dropna(subset=["accuracy"])
        solves = done[done["accuracy"] >= threshold].sort_values(["d_model", "state_size"])
        pick = solves.iloc[0] if len(solves) else (done.sort_values("accuracy").iloc[-1] if len(done) else None)
        statuses = set(g["status"])
        rows.append({"arch": arch, "seq_len": L, "solved": len(solves) > 0,
                     "d_model": pick["d_model"] if pick is not None else math.nan,
                     "state_size": pick["state_size"] if pick is not None else math.nan,
                     "accuracy": pick["accuracy"] if pick is not None else math.nan,
                     "status": next(s for s in [*STATUS_ORDER, *sorted(statuses)] if s in statuses)})
    out = pd.DataFrame(rows, columns=["arch", "seq_len", "solved", "d_model", "state_size", "accuracy", "status"])
    rank = {a: i for i, a in enumerate(order)}
    return out.sort_values(["arch", "seq_len"], key=lambda c: c.map(rank) if c.name == "arch" else c,
                           ignore_index=True)


# -- MAD's aggregate ----------------------------------------------------------------------------------------------
#: MAD's synthetic suite (Poli et al. 2024) as probe's tasks, in MAD's order (its six tasks, compression through
#: MAD's autoencoder decoder: sweeps/mad.py). `copying` counts only in selective mode: MAD's selective copying.
MAD_TASKS = ("in_context_recall", "fuzzy_recall", "noisy_recall", "copying", "compression", "memorization")


def mad_cells(cells: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The cells that are levels of MAD's suite, with their `level`: the cell key's task part (task, length and
    the fields that vary), one difficulty setting of one task, shared by every arch, width and seed.

    A cell is recognised by its task's name (MAD_TASKS), not by the sweep it came from, so any sweep that runs
    MAD's tasks gets the score. A copying level is MAD's when a trial of it ran in selective mode; a copying level
    no trial has reached yet cannot be told apart from plain copying and is left out."""
    parsed = cells["cell"].map(parse_cell_key)
    out = cells.assign(level=[p["task_key"] if p else s for p, s in zip(parsed, cells["setting"])])
    out = out[out["task"].isin(MAD_TASKS)]
    if "mode" in trials and (out["task"] == "copying").any():
        copying = trials[(trials["task"] == "copying") & (trials["mode"] == "selective")]
        selective = {p["task_key"] for p in copying["cell"].map(parse_cell_key) if p}
        out = out[(out["task"] != "copying") | out["level"].isin(selective)]
    elif "mode" not in trials:
        out = out[out["task"] != "copying"]
    return out.reset_index(drop=True)


def mad_levels(tidy: pd.DataFrame, cells: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of every arch and width at every MAD level: the test accuracy at the training length of each
    seed's best trial (its tuned learning rate, as MAD keeps the best of its grid), mean over the seeds; NaN
    where no seed has a result yet. Columns: arch, d_model, task, level, accuracy, seeds_done."""
    columns = ["arch", "d_model", "task", "level", "accuracy", "seeds_done"]
    mad = mad_cells(cells, trials)
    if mad.empty:
        return pd.DataFrame(columns=columns)
    at_train = tidy[(tidy["slice"] == "all") & (tidy["eval_seq_len"] == tidy["seq_len"])]
    best = best_rows(at_train, cells)[["cell", "accuracy"]]
    rows = mad.drop(columns="accuracy").merge(best, on="cell", how="left")
    out = rows.groupby(["arch", "d_model", "task", "level"], as_index=False, sort=False).agg(
        accuracy=("accuracy", "mean"), seeds_done=("accuracy", "count"))
    return out[columns]


def mad_scores(levels: pd.DataFrame) -> pd.DataFrame:
    """MAD's aggregate per arch and width, from mad_levels: each task's score is the mean over its levels, the
    arch's MAD score the mean over the tasks (sweeps/mad.py's protocol). Levels without a result are left out of
    the means; `levels_done` of `levels` (every level the results hold) says how complete a score is.

    Columns: arch, d_model, score, levels_done, levels, then one per MAD task present (its score)."""
    tasks = [t for t in MAD_TASKS if t in set(levels["task"])]
    columns = ["arch", "d_model", "score", "levels_done", "levels", *tasks]
    if levels.empty:
        return pd.DataFrame(columns=columns)
    per_task = levels.groupby(["arch", "d_model", "task"], sort=False)["accuracy"].mean().unstack("task")
    out = per_task.reindex(columns=tasks)
    out["score"] = out[tasks].mean(axis=1)  # over the tasks with a result
    out["levels_done"] = levels.groupby(["arch", "d_model"], sort=False)["accuracy"].count()
    out["levels"] = levels["level"].nunique()
    return out.reset_index()[columns]
