"""The report's sections, in reading order, each built from a Results by one function; rendered by Jinja.

A section is a title, notes (what it shows, and why something is missing) and blocks (figures and tables).
Every section renders something for every input: with no data it says so in a note instead of drawing, and a
panel whose x axis would hold one value is not drawn but named in one line (analysis.drop_flat_panels).

Reading order: a one-screen summary (who solves what, at which width and state size; the Pareto frontier;
holes), then Zoology's Figure-2 view, then the details. Past about a screen of figures and tables a section folds
the rest into <details>, so a 112-cell sweep opens short. The figures a page embeds are the ones
`write_figures` saves as files (`figures` returns them for a notebook).
"""
from __future__ import annotations

import base64
import datetime
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field

import jinja2
import matplotlib.figure
import pandas as pd
from markupsafe import Markup, escape

from ..errors import ProbeError
from . import analysis as A
from . import figures as F


@dataclass
class Cell:
    text: str
    sort: str | float | None = None  # what the inline script sorts by (the text when None)
    css: str = ""
    colour: str = ""  # a swatch before the text: the arch's colour in every figure


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    kind: str = "table"

    @property
    def height_px(self) -> int:
        return 40 + 24 * len(self.rows)


@dataclass
class Figure:
    figure: matplotlib.figure.Figure
    name: str  # the element id on the page, and the file name `write_figures` gives it
    caption: str = ""
    dense: bool = False  # embedded as PNG: thousands of marks or dozens of panels
    kind: str = "figure"

    @functools.cached_property
    def html(self) -> Markup:
        return F.embed(self.figure, dense=self.dense)

    @property
    def height_px(self) -> int:
        return F.height_px(self.figure)


@dataclass
class Note:
    """A paragraph among the blocks, where it belongs to the table or figure before it."""
    html: Markup
    kind: str = "note"
    caption: str = ""
    height_px: int = 24


@dataclass
class Section:
    id: str
    title: str
    notes: list[str] = field(default_factory=list)
    blocks: list[Table | Figure | Note] = field(default_factory=list)
    foldable: bool = True
    fold_at: int | None = None  # blocks from this index on sit inside one <details> (set by fold)


@dataclass
class Data:
    """What the sections are built from: the Results tables plus the cell and setting views of analysis, the
    palette every figure and table shares, and the accuracy that counts as solving a task."""
    trials: pd.DataFrame
    tidy: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict
    cells: pd.DataFrame
    settings: pd.DataFrame
    palette: F.Palette
    threshold: float

    @property
    def problems(self) -> list[str]:
        return sorted(self.settings["problem"].dropna().unique())


def data(trials, tidy, curves, provenance) -> Data:
    trials, tidy, curves = A.conform(trials, tidy, curves)
    cells = A.cell_table(trials, provenance)
    archs = [*cells["arch"].dropna(), *trials["arch"].dropna()]
    return Data(trials, tidy, curves, provenance, cells, A.settings_table(cells),
                F.Palette(archs, A.built_archs(trials)), A.solve_threshold(provenance))


NO_RESULT = "No cell has a completed trial yet, so there is nothing to draw here (see the holes under Provenance)."


# -- formatting ---------------------------------------------------------------------------------------------------
def fmt_acc(x) -> str:
    return "—" if _nan(x) else f"{x:.3f}"


def fmt_lr(x) -> str:
    return "—" if _nan(x) else f"{x:.2e}"


def fmt_int(x) -> str:
    return "—" if _nan(x) else f"{int(x):,}"


def fmt_rate(x) -> str:
    return "—" if _nan(x) else (f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k")


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def fmt_values(values) -> str:
    return ", ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values)


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plain_table(df: pd.DataFrame, caption: str = "", formats: dict | None = None) -> Table:
    """A table of df as it is; `formats` maps a column to how its values read (they still sort as numbers)."""
    formats = formats or {}

    def cell(column, v) -> Cell:
        text = "" if _nan(v) else formats.get(column, str)(v)
        return Cell(text, None if _nan(v) or isinstance(v, str) else float(v))
    rows = [[cell(c, v) for c, v in zip(df.columns, r)] for r in df.itertuples(index=False)]
    return Table(list(df.columns), rows, caption)


def csv_link(df: pd.DataFrame, filename: str) -> Markup:
    data = base64.b64encode(df.to_csv(index=False).encode()).decode()
    return Markup(f'<a class="csv" download="{filename}" href="data:text/csv;base64,{data}">{filename}</a>')


def arch_cell(d: Data, arch: str, **kw) -> Cell:
    return Cell(arch, colour=d.palette[arch].colour, **kw)


def not_drawn(problem: str, what: str, dropped: list[tuple], names: list[str], kept: pd.DataFrame) -> str:
    """One line on the panels left out: `mqar: one width ran, so this panel is not drawn: seq_len 512.`, or, when
    none is left, `mqar: no figure, since one width ran in each panel (4 panels).`"""
    if kept.empty:
        return f"{problem}: no figure, since {what} in each panel ({len(dropped)} panel{'s' * (len(dropped) > 1)})."
    panels = "; ".join(", ".join(f"{n} {fmt_values([v])}" for n, v in zip(names, key)) for key in dropped[:6])
    more = f"; and {len(dropped) - 6} more" if len(dropped) > 6 else ""
    return f"{problem}: {what}, so {'this panel is' if len(dropped) == 1 else 'these panels are'} not drawn: " \
           f"{panels}{more}."


# -- the summary --------------------------------------------------------------------------------------------------
def summary_section(d: Data) -> Section:
    s = Section("summary", "Summary", foldable=False)
    source = "the sweep's stop_at" if d.provenance.get("sweeps") and any(
        x.get("stop_at") is not None for x in d.provenance["sweeps"]) else "no stop_at recorded"
    s.notes.append(f"Solved means accuracy at the training length ≥ {d.threshold:g} ({source}). Each entry is the "
                   "narrowest width whose tuned model solves the task at that length, with its state size (values "
                   "carried from token to token); where none does, the best accuracy reached and where.")
    s.notes.append(_holes_line(d))
    if (plateaued := _plateaued_line(d)) is not None:
        s.notes.append(plateaued)
    if d.settings["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
        return s
    for problem in d.problems:
        at = d.settings[d.settings["problem"] == problem]
        s.blocks.append(solved_block(d, problem, at))
        s.blocks.append(Note(Markup("Pareto frontier of accuracy vs state size, ") + frontier_line(at)))
    return s


def solved_block(d: Data, problem: str, settings: pd.DataFrame) -> Table:
    solved = A.solved_table(settings, d.threshold, d.palette.order)
    seq_lens = sorted(solved["seq_len"].dropna().unique())
    rows = []
    for arch, g in solved.groupby("arch", sort=False):
        by_len = {r["seq_len"]: r for _, r in g.iterrows()}
        row = [arch_cell(d, arch)]
        for L in seq_lens:
            r = by_len.get(L)
            if r is None:
                row.append(Cell("", css="absent"))
            elif r["solved"]:
                row.append(Cell(f"d {int(r['d_model'])} · state {F.fmt_count(r['state_size'])}", r["d_model"],
                                "solved"))
            elif _nan(r["accuracy"]):
                row.append(Cell(r["status"], css=f"status-{r['status']}"))
            else:
                row.append(Cell(f"{r['accuracy']:.2f} at d {int(r['d_model'])}", r["accuracy"], "unsolved"))
        rows.append(row)
    n_all = int(solved.groupby("arch")["solved"].all().sum())
    caption = f"{problem}: {n_all} of {solved['arch'].nunique()} archs solve it at every training length."
    return Table(["arch", *[f"seq_len {int(L)}" for L in seq_lens]], rows, caption)


def frontier_line(settings: pd.DataFrame) -> Markup:
    """Per training length, the settings no other beats on both state size and accuracy, smallest state first."""
    parts = []
    for L, g in settings.dropna(subset=["accuracy", "state_size"]).groupby("seq_len"):
        front = A.pareto_front(g)
        points = " → ".join(f"{r['arch']} d {int(r['d_model'])} ({r['accuracy']:.2f} at "
                            f"{F.fmt_count(r['state_size'])})" for _, r in front.iterrows())
        parts.append(Markup(f"at seq_len {int(L)}: ") + points)
    return Markup("; ").join(parts) + "." if parts else Markup("no state size recorded.")


def _holes_line(d: Data) -> Markup:
    missing = d.cells[d.cells["accuracy"].isna()]
    if d.cells.empty:
        return Markup("The storage holds no trial and the sweep files list no cell.")
    if missing.empty:
        return Markup(f"No holes: all {len(d.cells)} cells have a completed trial.")
    counts = ", ".join(f"{n} {s}" for s, n in missing["status"].value_counts().items())
    return Markup(f'Holes: {len(missing)} of {len(d.cells)} cells have no completed trial ({escape(counts)}); '
                  '<a href="#provenance">why, per cell</a>.')


def _plateaued_line(d: Data) -> Markup | None:
    n = int((d.cells["status"] == "plateaued").sum()) if len(d.cells) else 0
    if not n:
        return None
    return Markup(f"Plateaued: {n} of {len(d.cells)} cells have no trial that ran to its end, only trials the "
                  "plateau rule stopped; each shows its best such trial, the accuracy where it stopped rising.")


# -- MAD's aggregate ----------------------------------------------------------------------------------------------
#: how the tables name a MAD task: probe's `copying` runs MAD's selective copying there (analysis.mad_cells)
MAD_NAMES = {"copying": "selective copying"}


def mad_section(d: Data) -> Section | None:
    """MAD's score per arch and width, and each level's accuracy; None when the results hold no MAD task (a
    Zoology report has nothing to say here, so it has no such section)."""
    levels = A.mad_levels(d.tidy, d.cells, d.trials)
    if levels.empty:
        return None
    s = Section("mad", "MAD score")
    s.notes.append("MAD's aggregate (Poli et al. 2024, the protocol of sweeps/mad.py): a level is one difficulty "
                   "setting of one of MAD's tasks, and its accuracy the test accuracy at the training length of the "
                   "best trial over the tuned learning rates (mean over seeds). A task's score is the mean over its "
                   "levels; an arch's MAD score is the mean over the tasks.")
    tasks = [t for t in A.MAD_TASKS if t in set(levels["task"])]
    missing = [MAD_NAMES.get(t, t) for t in A.MAD_TASKS if t not in tasks]
    if missing:
        s.notes.append(f"These results hold {len(tasks)} of MAD's {len(A.MAD_TASKS)} tasks (not here: "
                       f"{', '.join(missing)}), so the score is the mean over those {len(tasks)}.")
    if levels["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
        return s
    scores = A.mad_scores(levels)
    if (scores["levels_done"] < scores["levels"]).any():
        s.notes.append("An arch with fewer levels done than the results hold is scored over the levels done (the "
                       "missing cells are under Provenance): compare it with a complete one with care.")
    s.blocks.append(mad_score_table(d, scores, tasks))
    s.blocks.append(mad_level_table(d, levels))
    return s


def mad_score_table(d: Data, scores: pd.DataFrame, tasks: list[str]) -> Table:
    """One row per arch and width: the MAD score (the best at each width marked), levels done, each task's score."""
    scores = scores.assign(order=scores["arch"].map({a: i for i, a in enumerate(d.palette.sorted(scores["arch"]))}))
    best = scores.groupby("d_model")["score"].transform("max")
    rows = []
    for i, r in scores.sort_values(["order", "d_model"]).iterrows():
        top = "best-acc" if not _nan(r["score"]) and r["score"] == best[i] else ""
        rows.append([arch_cell(d, r["arch"]), Cell(fmt_int(r["d_model"]), r["d_model"]),
                     Cell(fmt_acc(r["score"]), _sort(r["score"]), top),
                     Cell(f"{int(r['levels_done'])}/{int(r['levels'])}", r["levels_done"]),
                     *[Cell(fmt_acc(r[t]), _sort(r[t])) for t in tasks]])
    columns = ["arch", "d_model", "MAD score", "levels done", *[MAD_NAMES.get(t, t) for t in tasks]]
    return Table(columns, rows, f"MAD score per arch and width, over {int(scores['levels'].iloc[0])} levels of "
                                f"{len(tasks)} tasks; marked: the best score at each width.")


def mad_level_table(d: Data, levels: pd.DataFrame) -> Table:
    """One row per level, one column per arch (and width, where several ran): the accuracy behind the scores."""
    archs = d.palette.sorted(levels["arch"])
    widths = sorted(levels["d_model"].unique())
    columns = [(a, w) for a in archs for w in widths if ((levels["arch"] == a) & (levels["d_model"] == w)).any()]
    acc = levels.set_index(["task", "level", "arch", "d_model"])["accuracy"]
    rank = {t: i for i, t in enumerate(A.MAD_TASKS)}
    keys = sorted(set(zip(levels["task"], levels["level"])), key=lambda k: (rank[k[0]], A.natural_key(k[1])))
    rows = []
    for task, level in keys:
        values = [acc.get((task, level, a, w), math.nan) for a, w in columns]
        rows.append([Cell(MAD_NAMES.get(task, task)), Cell(level), *[Cell(fmt_acc(v), _sort(v)) for v in values]])
    names = [a if len(widths) == 1 else f"{a} d{int(w)}" for a, w in columns]
    return Table(["task", "level", *names], rows, f"Accuracy per level: {len(keys)} levels. Click a column header "
                                                  "to sort.")


# -- figures ------------------------------------------------------------------------------------------------------
def width_section(d: Data) -> Section:
    s = Section("width", "Accuracy vs width (Zoology's Figure 2)")
    s.notes.append("Accuracy at the training length against d_model, one panel per training length, one line per "
                   "arch; each point is the best trial over the tuned learning rates (mean over seeds where there "
                   "are several).")
    for problem in d.problems:
        at = d.settings[d.settings["problem"] == problem].dropna(subset=["accuracy"])
        kept, dropped = A.drop_flat_panels(at, ["seq_len"], "d_model")
        if dropped:
            s.notes.append(not_drawn(problem, "one width ran", dropped, ["seq_len"], kept))
        if len(kept):
            s.blocks.append(Figure(F.width_curves(kept, d.palette), f"width-{slug(problem)}", problem))
    if d.settings["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
    return s


def heatmap_section(d: Data) -> Section:
    s = Section("heatmaps", "Accuracy over sequence length × width")
    s.notes.append("One panel per arch, one colour scale from 0 to 1 for all; each square is the setting's "
                   "accuracy (± std over seeds). A grey square names its status: no completed trial yet.")
    for problem in d.problems:
        at = d.settings[d.settings["problem"] == problem]
        if at["accuracy"].isna().all():
            continue
        if at["seq_len"].nunique() < 2 and at["d_model"].nunique() < 2:
            s.notes.append(f"{problem}: one length and one width ran, so no heatmap (the tables above hold it).")
            continue
        s.blocks.append(Figure(F.heatmaps(at, d.palette), f"heatmaps-{slug(problem)}", problem))
    if d.settings["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
    return s


def state_section(d: Data) -> Section:
    s = Section("state", "Accuracy vs state size")
    s.notes.append("Each point is one setting (arch × d_model) at its training length; x is the number of values "
                   "the model carries from token to token at that length (log scale). Lines are Pareto "
                   "frontiers: per arch in its style, over all archs dashed black.")
    for problem in d.problems:
        at = d.settings[d.settings["problem"] == problem].dropna(subset=["accuracy", "state_size"])
        kept, dropped = A.drop_flat_panels(at, ["seq_len"], "state_size")
        if dropped:
            s.notes.append(not_drawn(problem, "every setting carries the same state", dropped, ["seq_len"], kept))
        if len(kept):
            s.blocks.append(Figure(F.state_pareto(kept, d.palette), f"state-{slug(problem)}", problem))
    if d.settings["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
    return s


def length_section(d: Data) -> Section:
    s = Section("length", "Capacity vs sequence length: trained short, tested long")
    s.notes.append("Accuracy at each evaluation length of each setting's tuned model (mean over seeds); the "
                   "dotted line is the training length. The second figure per problem compares softmax "
                   "attention's position schemes (plain `attention` is RoPE).")
    lengths = A.by_length(d.tidy, d.cells)
    if lengths.empty:
        s.notes.append(NO_RESULT)
    for problem in sorted(lengths["problem"].unique()):
        at, dropped = A.drop_flat_panels(lengths[lengths["problem"] == problem], ["d_model", "seq_len"],
                                         "eval_seq_len")
        if at.empty:
            s.notes.append(f"{problem}: evaluated at the training length only, so there is no curve over lengths "
                           "(give the task eval_seq_lens to test longer).")
            continue
        if dropped:
            s.notes.append(not_drawn(problem, "evaluated at one length", dropped, ["d_model", "seq_len"], at))
        s.blocks.append(Figure(F.length_curves(at, d.palette), f"length-{slug(problem)}", f"{problem}: every arch"))
        schemes = at[at["arch"].map(F.position_scheme).notna()]
        if schemes["arch"].nunique() >= 2:
            fig = F.length_curves(schemes, d.palette, label=F.position_scheme)
            s.blocks.append(Figure(fig, f"length-{slug(problem)}-schemes",
                                   f"{problem}: softmax attention by position scheme"))
        else:
            s.notes.append(f"{problem}: fewer than two attention position schemes ran, so no comparison of them.")
    return s


def slice_section(d: Data) -> Section:
    s = Section("slices", "Accuracy per slice")
    s.notes.append("The test set broken down by the task's own labels (MQAR: number of key-value pairs; passkey: "
                   "depth of the key; ...), for each setting's tuned model at every evaluation length.")
    slices = A.by_slice(d.tidy, d.cells)
    for (problem, name), g in slices.groupby(["problem", "slice"]):
        kept, dropped = A.drop_flat_panels(g, ["setting", "eval_seq_len"], "slice_value")
        if kept.empty:
            s.notes.append(f"{problem}: {name} takes one value in each test set, so there is nothing to break "
                           "down by it.")
            continue
        # a setting whose values do not vary loses its line; a panel left with no line is not drawn
        fig, dense = F.slice_curves(kept, d.palette)
        s.blocks.append(Figure(fig, f"slices-{slug(problem)}-{slug(name)}", f"{problem}: by {name}", dense))
    if slices.empty:
        s.notes.append("No per-slice results: " + (NO_RESULT if d.settings["accuracy"].isna().all()
                                                   else "these tasks label no slices."))
    return s


def lr_section(d: Data) -> Section:
    s = Section("lr", "Learning-rate sensitivity")
    s.notes.append("Accuracy against learning rate for every trial with a result (hollow: pruned, at the step "
                   "it was stopped), coloured by training length; the searched range is shaded and each cell's "
                   f"tuned lr is a vertical line, dashed where it lies within {A.EDGE_DECADES} decades of an end of "
                   "its range: the range is probably too narrow, and the true optimum may lie outside it.")
    edges = A.lr_edges(d.cells)
    if len(edges):
        s.blocks.append(plain_table(edges, f"Range too narrow: {len(edges)} cells tuned to an edge.",
                                    {"lr": fmt_lr, "lr_low": fmt_lr, "lr_high": fmt_lr, "accuracy": fmt_acc}))
    elif d.cells["lr"].notna().any():
        s.notes.append("No cell's tuned learning rate sits at an edge of its searched range.")
    if d.trials.empty or d.trials["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
        return s
    tried, dropped = A.drop_flat_panels(d.trials.dropna(subset=["accuracy", "lr"]), ["arch", "d_model"], "lr")
    if dropped:
        s.notes.append(not_drawn("learning rate", "one learning rate ran", dropped, ["arch", "d_model"], tried))
    if len(tried):
        fig, dense = F.lr_sensitivity(tried, edges, d.palette)
        s.blocks.append(Figure(fig, "lr", dense=dense))
    return s


def curves_section(d: Data) -> Section:
    s = Section("curves", "Learning curves")
    s.notes.append("Accuracy at the training length during training, for the best trial of each arch at each "
                   "length and width (the seed that scored highest).")
    top = A.top_trials(d.cells)[["cell", "best_trial", "problem"]].rename(columns={"best_trial": "trial"})
    curves = d.curves.merge(top, on=["cell", "trial"])
    curves = curves[curves["eval_seq_len"] == curves["seq_len"]]
    for problem in sorted(curves["problem"].unique()):
        kept, dropped = A.drop_flat_panels(curves[curves["problem"] == problem], ["d_model", "seq_len"], "step")
        if dropped:
            s.notes.append(not_drawn(problem, "evaluated once", dropped, ["d_model", "seq_len"], kept))
        if len(kept):
            s.blocks.append(Figure(F.learning_curves(kept, d.palette), f"curves-{slug(problem)}", problem))
    if curves.empty:
        s.notes.append(NO_RESULT if top.empty else "The best trials recorded no learning curve.")
    return s


def importance_section(d: Data) -> Section:
    s = Section("importance", "Hyperparameter importance")
    params = A.tuned_params(d.trials)
    if not params:
        s.notes.append(NO_RESULT)
        return s
    if len(params) < 2:
        s.notes.append("Only the learning rate was tuned, so its importance is trivially 1: nothing to compare. "
                       "Tune weight decay too (SearchSpace(weight_decay=...)) to see which matters more.")
        return s
    s.notes.append("PED-ANOVA importance of each tuned parameter per arch (optuna's: how differently the "
                   "parameter is spread in the best quarter of trials than in all), over every completed trial "
                   "of the arch; lengths and widths are pooled, so differences between cells count as noise.")
    values, skipped = {}, []
    for arch in d.palette.sorted(d.trials["arch"].dropna()):
        try:
            values[arch] = A.param_importances(d.trials, arch)
        except ValueError as e:
            skipped.append(f"{arch}: {e}")
    if values:
        s.blocks.append(Figure(F.importances(values, d.palette), "importance"))
    if skipped:
        s.notes.append("Not computed for " + "; ".join(skipped) + ".")
    return s


# -- tables -------------------------------------------------------------------------------------------------------
#: one mark per meaning in the best-configuration table: (css class, what it marks)
BEST_MARKS = {"accuracy": ("best-acc", "highest accuracy"), "state_size": ("best-state", "smallest state"),
              "params": ("best-params", "fewest parameters"), "train_tokens_per_s": ("best-speed", "fastest training")}


def best_section(d: Data) -> Section:
    s = Section("best", "Best configuration per arch, length and width")
    legend = Markup(" ").join(Markup(f'<span class="mark {css}">{what}</span>') for css, what in BEST_MARKS.values())
    s.notes.append(Markup("Per cell (one seed) the COMPLETE trial with the highest accuracy at the training length "
                          "(where none is, the best trial the plateau rule stopped: status plateaued); "
                          "then mean ± std over seeds. lr is the tuned learning rate (geometric mean over seeds). "
                          "Marked, among the archs at each problem, length and width: ") + legend + ".")
    if d.settings["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
    if d.settings.empty:
        return s
    st = d.settings
    best = {c: A.best_in_group(st, c) for c in BEST_MARKS}

    def mark(column, i) -> str:
        return BEST_MARKS[column][0] if best[column][i] else ""
    columns = ["problem", "arch", "seq_len", "d_model", "accuracy", "seeds", "lr", "params", "state size",
               "tokens/s", "status"]
    rows = []
    for i, r in st.iterrows():
        acc = fmt_acc(r["accuracy"]) + ("" if _nan(r["accuracy_std"]) else f" ± {r['accuracy_std']:.3f}")
        lrs = ", ".join(fmt_lr(x) for x in r["lrs"])
        rows.append([
            Cell(r["problem"]), arch_cell(d, r["arch"]),
            Cell(fmt_int(r["seq_len"]), r["seq_len"]), Cell(fmt_int(r["d_model"]), r["d_model"]),
            Cell(acc, _sort(r["accuracy"]), mark("accuracy", i)),
            Cell(f"{r['seeds_done']}/{r['seeds']}", r["seeds_done"]),
            Cell(fmt_lr(r["lr"]) if len(set(r["lrs"])) < 2 else f"{fmt_lr(r['lr'])} ({lrs})", _sort(r["lr"])),
            Cell(fmt_int(r["params"]), _sort(r["params"]), mark("params", i)),
            Cell(fmt_int(r["state_size"]), _sort(r["state_size"]), mark("state_size", i)),
            Cell(fmt_rate(r["train_tokens_per_s"]), _sort(r["train_tokens_per_s"]), mark("train_tokens_per_s", i)),
            Cell(r["status"], css=f"status-{r['status']}")])
    s.blocks.append(Table(columns, rows, f"{len(rows)} settings. Click a column header to sort."))
    return s


def _sort(x):
    return "" if _nan(x) else float(x)


def provenance_section(d: Data) -> Section:
    p = d.provenance
    s = Section("provenance", "Provenance and coverage")
    n_cells, n_done = len(d.cells), int(d.cells["accuracy"].notna().sum())
    s.notes.append(f"{len(d.trials)} trials over {n_cells} cells; {n_done} cells have a completed trial. "
                   f"Generated {p.get('generated') or datetime.datetime.now().isoformat(timespec='seconds')}.")
    holes = A.holes(d.cells, d.trials)
    if len(holes):
        s.blocks.append(plain_table(holes, f"Holes: {len(holes)} cells without a completed trial, and why. "
                                           "Figures leave these points blank or label them with the status."))
    elif n_cells:
        s.notes.append("No holes: every cell has a completed trial.")
    if not n_cells:
        s.notes.append("The storage holds no trial and the sweep files list no cell: an empty report. "
                       "Run `probe sweep SWEEP_FILE` first, or check --storage.")
    sweeps = pd.DataFrame(p.get("sweeps", []), columns=["name", "file", "sha256", "stop_at", "pruner"])
    s.blocks.append(plain_table(sweeps, "Sweep files and their SHA-256, the accuracy that stops a trial "
                                        "(stop_at) and the pruner that stops unpromising ones early."))
    run = [("storage", p.get("storage", "")), ("git revision", p.get("git", "") or "unknown"),
           ("devices", ", ".join(p.get("devices", [])) or "none recorded"),
           ("wall time (sum over trials)", fmt_seconds(float(p.get("wall_time_s", 0.0) or 0.0)))]
    revisions = sorted({g for g in d.trials["git"].dropna() if g})
    if len(revisions) > 1:  # a sweep resumed after a code change: results may not be comparable
        run.append(("git revisions of the trials", ", ".join(revisions)))
    run += [(f"version: {k}", v) for k, v in sorted(p.get("versions", {}).items()) if k != "git"]
    s.blocks.append(plain_table(pd.DataFrame(run, columns=["what", "value"]), "Where and with what it ran."))
    counts = A.state_counts(d.trials, d.cells)
    counts = counts.set_index("arch").loc[d.palette.sorted(counts["arch"])].reset_index()
    s.blocks.append(plain_table(counts, "Per arch: trials by Optuna state, cells by status."))
    return s


def data_section(d: Data, stem: str) -> Section:
    s = Section("data", "Data")
    links = Markup(", ").join([csv_link(d.tidy, f"{stem}-tidy.csv"), csv_link(d.trials, f"{stem}-trials.csv"),
                               csv_link(d.curves, f"{stem}-curves.csv")])
    s.notes.append(Markup("The tables this report was drawn from, embedded: ") + links + Markup(
        ". tidy has one row per (trial, evaluation length, slice, slice value), slice <code>all</code> being the "
        "whole test set; trials one row per Optuna trial; curves one row per (trial, step, evaluation length)."))
    return s


SECTIONS = [summary_section, mad_section, width_section, best_section, heatmap_section, state_section, length_section,
            slice_section, lr_section, curves_section, importance_section, provenance_section]

#: about one screen: a section shows its blocks while they fit, and folds the rest
SCREEN_PX = 900


def fold(s: Section) -> Section:
    """Set where the section's blocks stop fitting one screen (the first block always shows when it fits)."""
    if not s.foldable:
        return s
    total = 0
    for i, b in enumerate(s.blocks):
        total += b.height_px
        if total > SCREEN_PX:
            s.fold_at = i
            break
    return s


def build(trials, tidy, curves, provenance, stem: str) -> list[Section]:
    d = data(trials, tidy, curves, provenance)
    built = (make(d) for make in SECTIONS)  # a section with nothing to say for these results is None
    return [fold(s) for s in built if s is not None] + [data_section(d, stem)]


def render(sections: list[Section], title: str, provenance: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(__file__)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    # machine-readable provenance; "</" escaped so no string in it can close the <script> element
    meta = json.dumps(provenance, default=str, sort_keys=True).replace("</", "<\\/")
    return env.get_template("template.html.j2").render(title=title, sections=sections, provenance_json=Markup(meta),
                                                       folded_summary=folded_summary)


def folded_summary(blocks: list[Table | Figure | Note]) -> str:
    """What a <details> holds, in one line: `show 3 more figures: mqar, passkey, …`."""
    n_fig = sum(b.kind == "figure" for b in blocks)
    n_tab = sum(b.kind == "table" for b in blocks)
    what = " and ".join(x for x in (f"{n_fig} figure{'s' * (n_fig != 1)}" if n_fig else "",
                                    f"{n_tab} table{'s' * (n_tab != 1)}" if n_tab else "") if x)
    captions = [b.caption.split(".")[0] for b in blocks if b.caption][:4]
    return f"show {what}" + (f": {', '.join(captions)}" + (", …" if len(blocks) > 4 else "") if captions else "")


# -- figures as files ---------------------------------------------------------------------------------------------
FORMATS = ("pdf", "svg", "png")


def figures_of(sections: list[Section]) -> dict[str, matplotlib.figure.Figure]:
    """The figures of built sections, by name (`width-mqar`, `lr`, ...), in page order."""
    out = {}
    for s in sections:
        for b in s.blocks:
            if b.kind == "figure":
                name = b.name
                for n in range(2, len(out) + 2):  # two problems whose names slug alike
                    if name not in out:
                        break
                    name = f"{b.name}-{n}"
                out[name] = b.figure
    return out


def figures(results) -> dict[str, matplotlib.figure.Figure]:
    """Every figure of the report of `results` (a probe.results.Results), by name: what a notebook shows, or
    saves in its own way."""
    return figures_of(build(results.trials, results.tidy, results.curves, results.provenance, "report"))


def check_figures(directory: str, fmt: str) -> None:
    """Fail in one line, before any work, if the format is unknown or the folder cannot be made (it is made)."""
    if fmt not in FORMATS:
        raise ProbeError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ProbeError(f"--figures {directory}: is a file, not a folder")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ProbeError(f"--figures {directory}: cannot create it: {e.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise ProbeError(f"--figures {directory}: not writable")


def save_figures(sections: list[Section], directory: str, fmt: str = "pdf") -> list[str]:
    """Write each figure of built sections as DIRECTORY/NAME.FMT; returns the paths."""
    check_figures(directory, fmt)
    paths = []
    for name, fig in figures_of(sections).items():
        path = os.path.join(directory, f"{name}.{fmt}")
        F.save(fig, path, fmt)
        paths.append(path)
    return paths


def write_figures(results, directory: str, fmt: str = "pdf") -> list[str]:
    """Write each figure of the report of `results` as DIRECTORY/NAME.FMT (pdf, svg or png: for a paper), the
    figures the page embeds; returns the paths. Fails in one line, before drawing, on a bad format or folder."""
    check_figures(directory, fmt)
    return save_figures(build(results.trials, results.tidy, results.curves, results.provenance, "report"),
                        directory, fmt)
