"""The report's figures: matplotlib Figures (no pyplot state), embedded as inline SVG, or PNG when too dense.

Design choices: one colour per arch, the same in every report (ARCH_COLOURS, hashed for names it lacks);
accuracy always on a 0-1 axis or colour scale so figures compare at a glance; text in SVG stays text
(smaller files, selectable); each SVG gets its own id salt, so the ids of several inline SVGs never collide.
"""
from __future__ import annotations

import base64
import colorsys
import hashlib
import io
import itertools
import math

import matplotlib
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .analysis import pareto_front

#: Fixed colours so an arch looks the same in every report. Families share a hue range: attention and its
#: position schemes blue/purple, other attention variants grey/brown, linear attention green, SSMs red/orange,
#: convolutions gold/pink. A name not listed gets a colour hashed from its name (arch_colour).
ARCH_COLOURS = {
    "attention": "#1f77b4", "attention_alibi": "#17becf", "attention_coca": "#9467bd",
    "attention_leaky_rerope": "#c5b0d5", "attention_learned": "#aec7e8", "attention_nope": "#393b79",
    "attention_ntk": "#6b6ecf", "attention_ntk_dynamic": "#9edae5", "attention_pi": "#5254a3",
    "attention_rerope": "#7b4173", "attention_xpos": "#ce6dbd",
    "gqa": "#636363", "mqa": "#969696", "mla": "#252525", "sliding_window": "#8c564b",
    "simplicial": "#c49c94", "simplicial_det": "#843c39",
    "based": "#2ca02c", "gla": "#98df8a", "gla_scalar": "#c7e9c0", "performer": "#006d2c", "retnet": "#74c476",
    "mamba": "#d62728", "mamba2": "#ff7f0e", "s4d": "#ff9896", "h3": "#e6550d",
    "hyena": "#bcbd22", "baseconv": "#e377c2", "baseconv_short": "#f7b6d2", "m2": "#8c6d31",
}


def arch_colour(arch: str) -> str:
    """The arch's fixed colour; for an unlisted name (a new mixer, a hybrid pattern) a hue from its hash."""
    if arch in ARCH_COLOURS:
        return ARCH_COLOURS[arch]
    h = int.from_bytes(hashlib.sha256(arch.encode()).digest()[:4], "big")
    hue, lightness = (h % 360) / 360, 0.35 + 0.2 * ((h >> 9) % 3) / 2
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))


def position_scheme(arch: str) -> str | None:
    """`attention_alibi` -> `alibi`, plain `attention` -> `rope`; None for an arch that is not softmax attention
    with a named position scheme."""
    if arch == "attention":
        return "rope"
    return arch.removeprefix("attention_") if arch.startswith("attention_") else None


# -- embedding ----------------------------------------------------------------------------------------------------
_svg_ids = itertools.count()


def embed(fig: Figure, *, dense: bool = False) -> Markup:
    """The figure as inline SVG, or as a base64 PNG <img> when `dense` (thousands of marks, dozens of panels)."""
    buf = io.BytesIO()
    if dense:
        fig.savefig(buf, format="png", dpi=110)
        data = base64.b64encode(buf.getvalue()).decode()
        return Markup(f'<img alt="figure" src="data:image/png;base64,{data}">')
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"probe-report-{next(_svg_ids)}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue().decode()
    return Markup(text[text.index("<svg"):])


def _grid(n_rows: int, n_cols: int, panel=(3.2, 2.4), **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * n_cols + 0.8, panel[1] * n_rows + 0.6), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False, **kw)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _acc_axis(ax) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def _legend(fig: Figure, handles: list) -> None:
    """One legend under the panels, in as many columns as fit the figure's width (about 1.6 inches each)."""
    fits = max(1, int(fig.get_figwidth() / 1.6))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(fits, len(handles)), frameon=False)


def _arch_legend(fig: Figure, archs) -> None:
    _legend(fig, [Line2D([], [], color=arch_colour(a), marker="o", label=a) for a in archs])


# -- heatmaps -----------------------------------------------------------------------------------------------------
def heatmaps(settings: pd.DataFrame) -> Figure:
    """Accuracy over seq_len (rows) × d_model (columns), one panel per arch, one 0-1 colour scale.

    settings: one problem's rows of analysis.settings_table. A point without a result shows its status."""
    settings = settings.dropna(subset=["seq_len", "d_model"])  # a cell whose key says neither cannot be placed
    archs = list(dict.fromkeys(settings["arch"]))
    seq_lens = sorted(settings["seq_len"].dropna().unique())
    d_models = sorted(settings["d_model"].dropna().unique())
    n_cols = min(4, len(archs))
    fig, axes = _grid(math.ceil(len(archs) / n_cols), n_cols,
                      panel=(0.9 + 0.75 * len(d_models), 0.7 + 0.5 * len(seq_lens)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = None
    for ax, arch in zip(axes.flat, archs):
        rows = settings[settings["arch"] == arch]
        grid = np.full((len(seq_lens), len(d_models)), np.nan)
        for _, r in rows.iterrows():
            i, j = seq_lens.index(r["seq_len"]), d_models.index(r["d_model"])
            grid[i, j] = np.fmax(grid[i, j], r["accuracy"])  # two settings at one point: the better one
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto", origin="lower")
        for _, r in rows.iterrows():
            i, j = seq_lens.index(r["seq_len"]), d_models.index(r["d_model"])
            ax.text(j, i, _cell_text(r), ha="center", va="center", fontsize=8,
                    color="black" if math.isnan(r["accuracy"]) or r["accuracy"] > 0.6 else "white")
        ax.set_xticks(range(len(d_models)), [str(int(d)) for d in d_models])
        ax.set_yticks(range(len(seq_lens)), [str(int(L)) for L in seq_lens])
        ax.set_xlabel("d_model")
        ax.set_ylabel("seq_len")
        ax.set_title(arch, color=arch_colour(arch), fontsize=10, fontweight="bold")
    _hide_unused(axes, len(archs))
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    return fig


def _cell_text(r: pd.Series) -> str:
    if math.isnan(r["accuracy"]):
        return r["status"]
    text = f"{r['accuracy']:.2f}"
    if r["seeds_done"] > 1:
        text += f"\n±{r['accuracy_std']:.2f}"
    if r["seeds_done"] < r["seeds"]:
        text += f"\n({r['seeds_done']}/{r['seeds']} seeds)"
    return text


# -- accuracy vs state size ---------------------------------------------------------------------------------------
def state_pareto(settings: pd.DataFrame) -> Figure:
    """Accuracy vs state size (log x), one panel per training length; each arch's Pareto frontier in its colour,
    the frontier over all archs dashed black."""
    done = settings.dropna(subset=["accuracy", "state_size"])
    seq_lens = sorted(done["seq_len"].unique())
    fig, axes = _grid(1, len(seq_lens), panel=(4.2, 3.2))
    for ax, L in zip(axes.flat, seq_lens):
        at = done[done["seq_len"] == L]
        for arch, g in at.groupby("arch", sort=False):
            ax.scatter(g["state_size"], g["accuracy"], color=arch_colour(arch), s=28, zorder=3, label=arch)
            front = pareto_front(g)
            ax.step(front["state_size"], front["accuracy"], where="post", color=arch_colour(arch), alpha=0.6)
        front = pareto_front(at)
        ax.step(front["state_size"], front["accuracy"], where="post", color="black", ls="--", lw=1.2,
                label="frontier (all)")
        ax.set_xscale("log")
        ax.set_xlabel("state size (numbers carried)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"trained at L={int(L)}", fontsize=10)
        _acc_axis(ax)
    _arch_legend(fig, list(dict.fromkeys(done["arch"])))
    return fig


# -- accuracy vs evaluation length --------------------------------------------------------------------------------
def length_curves(lengths: pd.DataFrame, *, label=lambda arch: arch) -> Figure:
    """Accuracy vs evaluation length (log2 x): rows d_model, columns training length (dotted line)."""
    d_models = sorted(lengths["d_model"].unique())
    seq_lens = sorted(lengths["seq_len"].unique())
    fig, axes = _grid(len(d_models), len(seq_lens))
    for i, d in enumerate(d_models):
        for j, L in enumerate(seq_lens):
            ax = axes[i, j]
            at = lengths[(lengths["d_model"] == d) & (lengths["seq_len"] == L)]
            for (arch, _), g in at.groupby(["arch", "setting"], sort=False):
                g = g.sort_values("eval_seq_len")
                ax.plot(g["eval_seq_len"], g["accuracy"], marker="o", ms=4, color=arch_colour(arch), label=label(arch))
            ax.axvline(L, color="grey", ls=":", lw=1.2)
            ax.set_xscale("log", base=2)
            ax.set_title(f"trained at L={int(L)}, d_model={int(d)}", fontsize=9)
            ax.set_xlabel("evaluation length")
            ax.set_ylabel("accuracy")
            _acc_axis(ax)
    archs = list(dict.fromkeys(lengths["arch"]))
    handles = [Line2D([], [], color=arch_colour(a), marker="o", label=label(a)) for a in archs]
    handles.append(Line2D([], [], color="grey", ls=":", label="training length"))
    _legend(fig, handles)
    return fig


# -- learning rate ------------------------------------------------------------------------------------------------
def lr_sensitivity(trials: pd.DataFrame, edges: pd.DataFrame) -> tuple[Figure, bool]:
    """Accuracy vs learning rate over every trial with a result: rows arch, columns d_model. The searched range
    is shaded, the tuned lrs are vertical lines (red where at an edge); colour is the training length; hollow
    markers are pruned trials (their accuracy when stopped). Returns the figure and whether it is dense."""
    t = trials.dropna(subset=["accuracy", "lr"])
    archs = list(dict.fromkeys(t["arch"]))
    d_models = sorted(t["d_model"].unique())
    seq_lens = sorted(t["seq_len"].unique())
    shade = matplotlib.colormaps["plasma"]
    colour = {L: shade(0.15 + 0.7 * i / max(1, len(seq_lens) - 1)) for i, L in enumerate(seq_lens)}
    # every searched range and every lr tried, with a little room either side so the range's ends show
    x_range = (min(t["lr_low"].min(), t["lr"].min()) / 1.6, max(t["lr_high"].max(), t["lr"].max()) * 1.6)
    fig, axes = _grid(len(archs), len(d_models), panel=(3.0, 2.1))
    for i, arch in enumerate(archs):
        for j, d in enumerate(d_models):
            ax = axes[i, j]
            at = t[(t["arch"] == arch) & (t["d_model"] == d)]
            if at.empty:
                ax.text(0.5, 0.5, "no trial with a result", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.axvspan(at["lr_low"].min(), at["lr_high"].max(), color="#ececec", zorder=0)
            for state, filled in (("COMPLETE", True), ("PRUNED", False)):
                g = at[at["state"] == state]
                c = [colour[L] for L in g["seq_len"]]
                ax.scatter(g["lr"], g["accuracy"], s=20, zorder=3, facecolors=c if filled else "none",
                           edgecolors=c)
            flagged = edges[(edges["arch"] == arch) & (edges["d_model"] == d)]
            best = at[at["state"] == "COMPLETE"].sort_values("accuracy").groupby("cell").tail(1)
            for lr in best["lr"]:
                ax.axvline(lr, color="red" if lr in set(flagged["lr"]) else "#999999", lw=0.8, zorder=1)
            ax.set_xscale("log")
            ax.set_xlim(x_range)
            title = f"{arch}, d_model={int(d)}" + ("  (range too narrow)" if len(flagged) else "")
            ax.set_title(title, fontsize=9, color="red" if len(flagged) else arch_colour(arch))
            ax.set_xlabel("learning rate")
            ax.set_ylabel("accuracy")
            _acc_axis(ax)
    handles = [Line2D([], [], ls="", marker="o", color=colour[L], label=f"L={int(L)}") for L in seq_lens]
    handles += [Line2D([], [], ls="", marker="o", mfc="none", color="black", label="pruned"),
                Line2D([], [], color="red", label="tuned lr at an edge")]
    _legend(fig, handles)
    dense = len(archs) * len(d_models) > 24 or len(t) > 3000
    return fig, dense


# -- slices -------------------------------------------------------------------------------------------------------
def slice_curves(slices: pd.DataFrame) -> tuple[Figure, bool]:
    """Accuracy per slice value (one slice name): rows (seq_len, d_model), columns the evaluation length as a
    multiple of the training length (×1 is the training length)."""
    name = slices["slice"].iloc[0]
    slices = slices.assign(times=slices["eval_seq_len"] / slices["seq_len"])
    rows = sorted({(L, d) for L, d in zip(slices["seq_len"], slices["d_model"])})
    times = sorted(slices["times"].unique())
    fig, axes = _grid(len(rows), len(times), panel=(3.0, 2.2))
    for i, (L, d) in enumerate(rows):
        for j, x in enumerate(times):
            ax = axes[i, j]
            at = slices[(slices["seq_len"] == L) & (slices["d_model"] == d) & (slices["times"] == x)]
            for (arch, _), g in at.groupby(["arch", "setting"], sort=False):
                g = g.sort_values("slice_value")
                ax.plot(g["slice_value"], g["accuracy"], marker="o", ms=3, color=arch_colour(arch))
            ax.set_title(f"L={int(L)}, d_model={int(d)}, evaluated at {int(L * x)} (×{x:g})", fontsize=9)
            ax.set_xlabel(name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("accuracy")
            _acc_axis(ax)
    _arch_legend(fig, list(dict.fromkeys(slices["arch"])))
    return fig, len(rows) * len(times) > 24


# -- learning curves ----------------------------------------------------------------------------------------------
def learning_curves(curves: pd.DataFrame) -> Figure:
    """Accuracy at the training length vs step: rows d_model, columns training length, one line per arch."""
    d_models = sorted(curves["d_model"].unique())
    seq_lens = sorted(curves["seq_len"].unique())
    fig, axes = _grid(len(d_models), len(seq_lens))
    for i, d in enumerate(d_models):
        for j, L in enumerate(seq_lens):
            ax = axes[i, j]
            at = curves[(curves["d_model"] == d) & (curves["seq_len"] == L)]
            for (arch, _), g in at.groupby(["arch", "cell"], sort=False):
                g = g.sort_values("step")
                ax.plot(g["step"], g["accuracy"], color=arch_colour(arch), lw=1.4)
            ax.set_title(f"L={int(L)}, d_model={int(d)}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("accuracy at L")
            _acc_axis(ax)
    _arch_legend(fig, list(dict.fromkeys(curves["arch"])))
    return fig


# -- importances --------------------------------------------------------------------------------------------------
def importances(values: dict[str, dict[str, float]]) -> Figure:
    """Horizontal bars of each arch's parameter importances (they sum to 1 per arch)."""
    archs = list(values)
    params = sorted({p for v in values.values() for p in v})
    fig, axes = _grid(1, 1, panel=(6.0, 0.45 * len(archs) * len(params) + 0.8))
    ax = axes[0, 0]
    height = 0.8 / len(params)
    hatches = ["", "//", "..", "xx"]
    for k, p in enumerate(params):
        y = np.arange(len(archs)) + k * height
        ax.barh(y, [values[a].get(p, 0.0) for a in archs], height=height, label=p, hatch=hatches[k % 4],
                color=[arch_colour(a) for a in archs], edgecolor="black", lw=0.5)
    ax.set_yticks(np.arange(len(archs)) + 0.4 - height / 2, archs)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance (PED-ANOVA, sums to 1 per arch)")
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatches[k % 4], label=p)
                       for k, p in enumerate(params)], frameon=False, loc="lower right")
    return fig
