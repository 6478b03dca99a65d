"""The report's sections, in reading order, each built from a Results by one function; rendered by Jinja.

A section is a title, notes (what it shows, and why something is missing) and blocks (figures and tables).
Every section renders something for every input: with no data it says so in a note instead of drawing.
"""
from __future__ import annotations

import base64
import datetime
import json
import math
import os
from dataclasses import dataclass, field

import jinja2
import pandas as pd
from markupsafe import Markup

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


@dataclass
class Figure:
    html: Markup
    caption: str = ""
    kind: str = "figure"


@dataclass
class Section:
    id: str
    title: str
    notes: list[str] = field(default_factory=list)
    blocks: list[Table | Figure] = field(default_factory=list)


@dataclass
class Data:
    """What the sections are built from: the Results tables plus the cell and setting views of analysis."""
    trials: pd.DataFrame
    tidy: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict
    cells: pd.DataFrame
    settings: pd.DataFrame

    @property
    def problems(self) -> list[str]:
        return sorted(self.settings["problem"].dropna().unique())


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


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


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


# -- sections -----------------------------------------------------------------------------------------------------
def provenance_section(d: Data) -> Section:
    p = d.provenance
    s = Section("provenance", "Provenance and coverage")
    n_cells, n_done = len(d.cells), int(d.cells["accuracy"].notna().sum())
    s.notes.append(f"{len(d.trials)} trials over {n_cells} cells; {n_done} cells have a completed trial. "
                   f"Generated {p.get('generated') or datetime.datetime.now().isoformat(timespec='seconds')}.")
    sweeps = pd.DataFrame(p.get("sweeps", []), columns=["name", "file", "sha256"])
    s.blocks.append(plain_table(sweeps, "Sweep files and their SHA-256."))
    run = [("storage", p.get("storage", "")), ("git revision", p.get("git", "") or "unknown"),
           ("devices", ", ".join(p.get("devices", [])) or "none recorded"),
           ("wall time (sum over trials)", fmt_seconds(float(p.get("wall_time_s", 0.0) or 0.0)))]
    revisions = sorted({g for g in d.trials["git"].dropna() if g})
    if len(revisions) > 1:  # a sweep resumed after a code change: results may not be comparable
        run.append(("git revisions of the trials", ", ".join(revisions)))
    run += [(f"version: {k}", v) for k, v in sorted(p.get("versions", {}).items()) if k != "git"]
    s.blocks.append(plain_table(pd.DataFrame(run, columns=["what", "value"]), "Where and with what it ran."))
    s.blocks.append(plain_table(A.state_counts(d.trials, d.cells),
                                "Per arch: trials by Optuna state, cells by status."))
    holes = A.holes(d.cells, d.trials)
    if len(holes):
        s.blocks.append(plain_table(holes, f"Holes: {len(holes)} cells without a completed trial, and why. "
                                           "Figures leave these points blank or label them with the status."))
    elif n_cells:
        s.notes.append("No holes: every cell has a completed trial.")
    if not n_cells:
        s.notes.append("The storage holds no trial and the sweep files list no cell: an empty report. "
                       "Run `probe sweep SWEEP_FILE` first, or check --storage.")
    return s


def best_section(d: Data) -> Section:
    s = Section("best", "Best configuration per arch, length and width")
    s.notes.append("Per cell (one seed) the COMPLETE trial with the highest accuracy at the training length; "
                   "then mean ± std over seeds. lr is the tuned learning rate (geometric mean over seeds). "
                   "Highlighted: the best arch at each problem, length and width — highest accuracy and "
                   "tokens/s, smallest state and parameter count.")
    if d.settings["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
    if d.settings.empty:
        return s
    st = d.settings
    best = {c: A.best_in_group(st, c) for c in A.BETTER}
    columns = ["problem", "arch", "seq_len", "d_model", "accuracy", "seeds", "lr", "params", "state size",
               "tokens/s", "status"]
    rows = []
    for i, r in st.iterrows():
        acc = fmt_acc(r["accuracy"]) + ("" if _nan(r["accuracy_std"]) else f" ± {r['accuracy_std']:.3f}")
        lrs = ", ".join(fmt_lr(x) for x in r["lrs"])
        rows.append([
            Cell(r["problem"]), Cell(r["arch"], colour=F.arch_colour(r["arch"])),
            Cell(fmt_int(r["seq_len"]), r["seq_len"]), Cell(fmt_int(r["d_model"]), r["d_model"]),
            Cell(acc, _sort(r["accuracy"]), "best" if best["accuracy"][i] else ""),
            Cell(f"{r['seeds_done']}/{r['seeds']}", r["seeds_done"]),
            Cell(fmt_lr(r["lr"]) if len(set(r["lrs"])) < 2 else f"{fmt_lr(r['lr'])} ({lrs})", _sort(r["lr"])),
            Cell(fmt_int(r["params"]), _sort(r["params"]), "best" if best["params"][i] else ""),
            Cell(fmt_int(r["state_size"]), _sort(r["state_size"]), "best" if best["state_size"][i] else ""),
            Cell(fmt_rate(r["train_tokens_per_s"]), _sort(r["train_tokens_per_s"]),
                 "best" if best["train_tokens_per_s"][i] else ""),
            Cell(r["status"], css=f"status-{r['status']}")])
    s.blocks.append(Table(columns, rows, "Click a column header to sort."))
    return s


def _sort(x):
    return "" if _nan(x) else float(x)


def heatmap_section(d: Data) -> Section:
    s = Section("heatmaps", "Accuracy over sequence length × width")
    s.notes.append("One panel per arch, one colour scale from 0 to 1 for all; each square is the setting's "
                   "accuracy (± std over seeds). A grey square names its status: no completed trial yet.")
    for problem in d.problems:
        at = d.settings[d.settings["problem"] == problem]
        if at["accuracy"].notna().any():
            s.blocks.append(Figure(F.embed(F.heatmaps(at)), problem))
    if not s.blocks:
        s.notes.append(NO_RESULT)
    return s


def state_section(d: Data) -> Section:
    s = Section("state", "Accuracy vs state size")
    s.notes.append("Each point is one setting (arch × d_model) at its training length; x is the number of values "
                   "the model carries from token to token at that length (log scale). Lines are Pareto "
                   "frontiers: per arch in its colour, over all archs dashed black.")
    for problem in d.problems:
        at = d.settings[d.settings["problem"] == problem].dropna(subset=["accuracy", "state_size"])
        if len(at):
            s.blocks.append(Figure(F.embed(F.state_pareto(at)), problem))
    if not s.blocks:
        s.notes.append(NO_RESULT)
    return s


def length_section(d: Data) -> Section:
    s = Section("length", "Capacity vs sequence length: trained short, tested long")
    s.notes.append("Accuracy at each evaluation length of each setting's tuned model (mean over seeds); the "
                   "dotted line is the training length. The second figure per problem compares softmax "
                   "attention's position schemes (plain `attention` is RoPE).")
    lengths = A.by_length(d.tidy, d.cells)
    for problem in sorted(lengths["problem"].unique()):
        at = lengths[lengths["problem"] == problem]
        s.blocks.append(Figure(F.embed(F.length_curves(at)), f"{problem}: every arch"))
        schemes = at[at["arch"].map(F.position_scheme).notna()]
        if schemes["arch"].nunique() >= 2:
            fig = F.length_curves(schemes, label=lambda a: F.position_scheme(a))
            s.blocks.append(Figure(F.embed(fig), f"{problem}: softmax attention by position scheme"))
        else:
            s.notes.append(f"{problem}: fewer than two attention position schemes ran, so no comparison of them.")
    if lengths.empty:
        s.notes.append(NO_RESULT)
    return s


def lr_section(d: Data) -> Section:
    s = Section("lr", "Learning-rate sensitivity")
    s.notes.append("Accuracy against learning rate for every trial with a result (hollow: pruned, at the step "
                   "it was stopped); the searched range is shaded and each cell's tuned lr is a vertical line. "
                   f"A tuned lr within {A.EDGE_DECADES} decades of an end of its range is red: the range is "
                   "probably too narrow, and the true optimum may lie outside it.")
    edges = A.lr_edges(d.cells)
    if len(edges):
        s.blocks.append(plain_table(edges, f"Range too narrow: {len(edges)} cells tuned to an edge.",
                                    {"lr": fmt_lr, "lr_low": fmt_lr, "lr_high": fmt_lr, "accuracy": fmt_acc}))
    elif d.cells["lr"].notna().any():
        s.notes.append("No cell's tuned learning rate sits at an edge of its searched range.")
    if d.trials.empty or d.trials["accuracy"].isna().all():
        s.notes.append(NO_RESULT)
        return s
    fig, dense = F.lr_sensitivity(d.trials, edges)
    s.blocks.append(Figure(F.embed(fig, dense=dense)))
    return s


def slice_section(d: Data) -> Section:
    s = Section("slices", "Accuracy per slice")
    s.notes.append("The test set broken down by the task's own labels (MQAR: number of key-value pairs; passkey: "
                   "depth of the key; ...), for each setting's tuned model at every evaluation length.")
    slices = A.by_slice(d.tidy, d.cells)
    for (problem, name), g in slices.groupby(["problem", "slice"]):
        fig, dense = F.slice_curves(g)
        s.blocks.append(Figure(F.embed(fig, dense=dense), f"{problem}: by {name}"))
    if slices.empty:
        s.notes.append("No per-slice results: " + (NO_RESULT if d.settings["accuracy"].isna().all()
                                                   else "these tasks label no slices."))
    return s


def curves_section(d: Data) -> Section:
    s = Section("curves", "Learning curves")
    s.notes.append("Accuracy at the training length during training, for the best trial of each arch at each "
                   "length and width (the seed that scored highest).")
    top = A.top_trials(d.cells)[["cell", "best_trial", "problem"]].rename(columns={"best_trial": "trial"})
    curves = d.curves.merge(top, on=["cell", "trial"])
    curves = curves[curves["eval_seq_len"] == curves["seq_len"]]
    for problem in sorted(curves["problem"].unique()):
        s.blocks.append(Figure(F.embed(F.learning_curves(curves[curves["problem"] == problem])), problem))
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
    for arch in dict.fromkeys(d.trials["arch"]):
        try:
            values[arch] = A.param_importances(d.trials, arch)
        except ValueError as e:
            skipped.append(f"{arch}: {e}")
    if values:
        s.blocks.append(Figure(F.embed(F.importances(values))))
    if skipped:
        s.notes.append("Not computed for " + "; ".join(skipped) + ".")
    return s


def data_section(d: Data, stem: str) -> Section:
    s = Section("data", "Data")
    links = Markup(", ").join([csv_link(d.tidy, f"{stem}-tidy.csv"), csv_link(d.trials, f"{stem}-trials.csv"),
                               csv_link(d.curves, f"{stem}-curves.csv")])
    s.notes.append(Markup("The tables this report was drawn from, embedded: ") + links + Markup(
        ". tidy has one row per (trial, evaluation length, slice, slice value), slice <code>all</code> being the "
        "whole test set; trials one row per Optuna trial; curves one row per (trial, step, evaluation length)."))
    return s


SECTIONS = [provenance_section, best_section, heatmap_section, state_section, length_section, lr_section,
            slice_section, curves_section, importance_section]


def build(trials, tidy, curves, provenance, stem: str) -> list[Section]:
    trials, tidy, curves = A.conform(trials, tidy, curves)
    cells = A.cell_table(trials, provenance)
    data = Data(trials, tidy, curves, provenance, cells, A.settings_table(cells))
    return [make(data) for make in SECTIONS] + [data_section(data, stem)]


def render(sections: list[Section], title: str, provenance: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(__file__)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    # machine-readable provenance; "</" escaped so no string in it can close the <script> element
    meta = json.dumps(provenance, default=str, sort_keys=True).replace("</", "<\\/")
    return env.get_template("template.html.j2").render(title=title, sections=sections, provenance_json=Markup(meta))
