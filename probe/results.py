"""A sweep's trials as tidy pandas tables: what `probe results` exports and `probe report` draws.

    res = load_results(["sweeps/quick.py"], storage=None)   # or load_results([], "runs/quick/journal.log")
    res.trials   # one row per trial: config, tuned params, final metrics, sizes, speed, provenance
    res.tidy     # one row per (trial, evaluation length, slice, slice value); slice "all" is the whole test set
    res.curves   # one row per (trial, step, evaluation length): learning curves
    res.provenance
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from dataclasses import dataclass

import optuna
import pandas as pd

from tasks import TASKS, TaskConfigError

from .config import ModelConfig, TrainConfig
from .errors import ProbeError
from .storage import check_readable, default_url, open_storage
from .sweep import Cell, SearchSpace, Sweep, file_sha256, load_sweep
from .tuning import cell_status, cell_studies

NAN = math.nan


@dataclass
class Results:
    trials: pd.DataFrame
    tidy: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict


def _task_columns(task_config: dict) -> dict:
    return {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in task_config.items()
            if k != "seq_len"}


def _trial_rows(sweep_name: str, cell: Cell, study_name: str, t: optuna.trial.FrozenTrial):
    rec = t.user_attrs.get("record")
    base = {"sweep": sweep_name, "cell": cell.key, "study": study_name, "trial": t.number, "state": t.state.name,
            "reason": t.user_attrs.get("reason", ""), "task": cell.task.name, "arch": cell.label,
            "arch_built": cell.arch, "seq_len": cell.task.seq_len, "d_model": cell.model.d_model, "n_layers": cell.model.n_layers,
            "seed": cell.seed, "lr": t.params.get("lr", NAN), "weight_decay": t.params.get("weight_decay", NAN),
            "lr_low": cell.search.lr[0], "lr_high": cell.search.lr[1]}
    trial = {**base, "accuracy": NAN, "best_accuracy": NAN, "per_example_accuracy": NAN, "exact_match": NAN,
             "state_size": NAN, "params": NAN, "train_tokens_per_s": NAN, "wall_time_s": NAN, "steps": NAN,
             "device": "", "git": "", "versions": "",
             **_task_columns(dataclasses.asdict(cell.task))}
    tidy, curves = [], []
    if rec is not None:
        trial.update({k: rec[k] for k in ("accuracy", "best_accuracy", "per_example_accuracy", "exact_match",
                                          "state_size", "params", "train_tokens_per_s", "wall_time_s", "steps",
                                          "device")})
        trial["git"] = rec["versions"].get("git", "")
        trial["versions"] = json.dumps(rec["versions"], sort_keys=True)
        short = {k: base[k] for k in ("sweep", "cell", "trial", "state", "task", "arch", "seq_len", "d_model",
                                      "seed", "lr")}
        sizes = {int(k): v for k, v in rec["state_size_by_length"].items()}  # JSON made the keys strings
        for length, m in rec["by_length"].items():
            length = int(length)
            common = {**short, "eval_seq_len": length, "state_size": sizes[length], "params": rec["params"]}
            tidy.append({**common, "slice": "all", "slice_value": -1, "accuracy": m["accuracy"],
                         "per_example_accuracy": m["per_example_accuracy"], "exact_match": m["exact_match"],
                         "examples": rec["train_config"]["num_test"]})
            for name, values in m["slices"].items():
                for value, s in values.items():
                    tidy.append({**common, "slice": name, "slice_value": int(value), "accuracy": s["accuracy"],
                                 "per_example_accuracy": s["per_example_accuracy"], "exact_match": NAN,
                                 "examples": s["examples"]})
        for h in rec["history"]:
            for length, acc in h["by_length"].items():
                curves.append({"sweep": sweep_name, "cell": cell.key, "trial": t.number, "arch": cell.label,
                               "d_model": cell.model.d_model, "seq_len": cell.task.seq_len, "step": h["step"],
                               "eval_seq_len": int(length), "accuracy": acc})
    return trial, tidy, curves


TIDY_COLUMNS = ["sweep", "cell", "trial", "state", "task", "arch", "seq_len", "eval_seq_len", "d_model", "seed",
                "lr", "slice", "slice_value", "accuracy", "per_example_accuracy", "exact_match", "examples",
                "state_size", "params"]
CURVE_COLUMNS = ["sweep", "cell", "trial", "arch", "d_model", "seq_len", "step", "eval_seq_len", "accuracy"]


def collect(sweeps: list[tuple[Sweep, str]], storage_url: str | None) -> Results:
    """sweeps: (Sweep, file path) pairs (see open_sweeps). storage_url None: each sweep's default journal. No
    sweeps: every study in the storage, each cell as its trials' records describe it."""
    if not sweeps:
        return _collect_storage(storage_url)
    trials, tidy, curves, cells_info, devices, versions = [], [], [], {}, set(), {}
    storages = []
    for sweep, path in sweeps:
        url = storage_url or default_url(sweep.name)
        storages.append(url)
        for cell, study in cell_studies(sweep, url):
            if study is not None:
                for t in study.get_trials(deepcopy=False):
                    if t.user_attrs.get("surplus"):
                        continue
                    row, tid, cur = _trial_rows(sweep.name, cell, cell.study_name, t)
                    trials.append(row)
                    tidy += tid
                    curves += cur
                    if row["device"]:
                        devices.add(row["device"])
                    if row["versions"]:
                        versions = json.loads(row["versions"])
            n_done = sum(r["cell"] == cell.key and r["sweep"] == sweep.name and r["state"] in ("COMPLETE", "PRUNED")
                         for r in trials)
            cells_info[cell.key] = {"sweep": sweep.name, "arch": cell.label, "status": cell_status(study, sweep),
                                    "trials": n_done, "expected_trials": sweep.trials_per_cell}
    trials_df = pd.DataFrame(trials)
    provenance = {
        "sweeps": [{"name": s.name, "file": p, "sha256": file_sha256(p), "stop_at": s.train.stop_at,
                    "pruner": s.pruning_text()} for s, p in sweeps],
        "storage": ", ".join(dict.fromkeys(storages)),
        "git": versions.get("git", ""), "versions": versions, "devices": sorted(devices),
        "wall_time_s": float(trials_df["wall_time_s"].fillna(0).sum()) if len(trials_df) else 0.0,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cells": cells_info,
    }
    return Results(trials_df, pd.DataFrame(tidy, columns=TIDY_COLUMNS), pd.DataFrame(curves, columns=CURVE_COLUMNS),
                   provenance)


def _collect_storage(url: str) -> Results:
    storage = open_storage(url, create=False)
    trials, tidy, curves, names, versions = [], [], [], {}, {}
    for summary in storage.get_all_studies():
        sweep_name, _, key = summary.study_name.partition(":")
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        frozen = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
        # what the sweep file would say, as its studies and records remember it
        said = names.setdefault(sweep_name, {"stop_at": None, "pruner": ""})
        said["pruner"] = said["pruner"] or summary.user_attrs.get("pruner", "")
        for t in frozen:
            if "record" in t.user_attrs and said["stop_at"] is None:
                said["stop_at"] = t.user_attrs["record"]["train_config"].get("stop_at")
        cell = _recorded_cell(sweep_name, key, frozen)
        for t in frozen:
            if cell is None:
                trials.append(_unrecorded_row(sweep_name, key, summary.study_name, t))
                continue
            row, tid, cur = _trial_rows(sweep_name, cell, summary.study_name, t)
            trials.append(row)
            tidy += tid
            curves += cur
            versions = json.loads(row["versions"]) if row["versions"] else versions
    trials_df = pd.DataFrame(trials)
    devices = sorted({d for d in trials_df.get("device", []) if isinstance(d, str) and d})
    provenance = {
        "sweeps": [{"name": n, "file": "(not given: read from the storage)", "sha256": "", **said}
                   for n, said in names.items()],
        "storage": url, "git": versions.get("git", ""), "versions": versions, "devices": devices,
        "wall_time_s": float(trials_df["wall_time_s"].fillna(0).sum()) if len(trials_df) else 0.0,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cells": {},  # a cell's budget is in its sweep file: the report judges status from the trials
    }
    return Results(trials_df, pd.DataFrame(tidy, columns=TIDY_COLUMNS), pd.DataFrame(curves, columns=CURVE_COLUMNS),
                   provenance)


def _recorded_cell(sweep_name: str, key: str, trials: list) -> Cell | None:
    """A cell as a record of one of its trials describes it (a storage read without its sweep file); None if no
    trial has a record of a task probe knows."""
    for t in trials:
        rec = t.user_attrs.get("record")
        if rec is None or rec.get("task") not in TASKS:
            continue
        task_cls = TASKS[rec["task"]]
        known = {f.name for f in dataclasses.fields(task_cls)}
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in rec["task_config"].items() if k in known}
        try:
            task = task_cls(**config)
        except (TaskConfigError, TypeError, ValueError):
            continue
        lr = t.distributions.get("lr")
        parts = key.split("/")
        return Cell(sweep=sweep_name, task=task, arch=rec["arch"], label=parts[1] if len(parts) == 4 else rec["arch"],
                    mixer_options=rec["mixer_options"], model=ModelConfig(**rec["model_config"]),
                    train=TrainConfig(),  # not read: each trial's own training config is in its record
                    search=SearchSpace(lr=(lr.low, lr.high)) if lr is not None else SearchSpace(),
                    seed=rec["seed"], key=key)
    return None


_KEY = re.compile(r"(?P<task>[^-/]+)-L(?P<seq_len>\d+)[^/]*/(?P<arch>[^/]+)/d(?P<d_model>\d+)/seed(?P<seed>\d+)")


def _unrecorded_row(sweep_name: str, key: str, study_name: str, t: optuna.trial.FrozenTrial) -> dict:
    """A trial of a cell no record describes (every trial failed, or none has finished): what its key says."""
    m = _KEY.fullmatch(key)
    lr = t.distributions.get("lr")
    return {"sweep": sweep_name, "cell": key, "study": study_name, "trial": t.number, "state": t.state.name,
            "reason": t.user_attrs.get("reason", ""), "task": m["task"] if m else "", "arch": m["arch"] if m else "",
            "arch_built": m["arch"] if m else "", "seq_len": int(m["seq_len"]) if m else NAN,
            "d_model": int(m["d_model"]) if m else NAN, "n_layers": NAN, "seed": int(m["seed"]) if m else NAN,
            "lr": t.params.get("lr", NAN), "weight_decay": t.params.get("weight_decay", NAN),
            "lr_low": lr.low if lr is not None else NAN, "lr_high": lr.high if lr is not None else NAN,
            "accuracy": NAN, "best_accuracy": NAN, "per_example_accuracy": NAN, "exact_match": NAN,
            "state_size": NAN, "params": NAN, "train_tokens_per_s": NAN, "wall_time_s": NAN, "steps": NAN,
            "device": "", "git": "", "versions": ""}


def open_sweeps(sweep_files: list[str], storage: str | None = None) -> list[tuple[Sweep, str]]:
    """The sweep files, loaded, as (Sweep, path) pairs, once their storages are known to be readable: what
    collect() takes. A storage alone (no files) must exist; a sweep's journal that does not exist yet is empty."""
    if not sweep_files:
        if storage is None:
            raise ProbeError("give at least one SWEEP_FILE or --storage")
        check_readable(storage, missing_ok=False)
        return []
    sweeps = [(load_sweep(p), p) for p in sweep_files]
    for url in dict.fromkeys(storage or default_url(s.name) for s, _ in sweeps):
        check_readable(url)  # cell_studies would read an unusable storage as an empty one
    return sweeps


def load_results(sweep_files: list[str], storage: str | None = None) -> Results:
    return collect(open_sweeps(sweep_files, storage), storage)


def best_per_cell(trials: pd.DataFrame) -> pd.DataFrame:
    """The best COMPLETE trial of each cell (highest accuracy, then lowest trial number): one row per cell.

    A cell without a COMPLETE trial whose trials the plateau rule stopped (Sweep.plateau_epochs) has its best
    plateaued trial instead, `plateaued` True: it trained until its accuracy stopped rising, so that accuracy is
    the cell's result (a lower bound, had it trained on), as a learning-rate grid's best point is whatever it
    reached. Trials stopped by the median pruner, by divergence or because the cell was solved never count."""
    reason = trials["reason"] if "reason" in trials else pd.Series("", index=trials.index)
    plateau = (trials["state"] == "PRUNED") & reason.fillna("").astype(str).str.startswith("plateau")
    done = trials[(trials["state"] == "COMPLETE") | plateau].assign(plateaued=plateau)
    done = done.sort_values(["cell", "plateaued", "accuracy", "trial"], ascending=[True, True, False, True])
    return done.groupby(["sweep", "cell"], as_index=False).head(1).reset_index(drop=True)
