"""The report's figures: matplotlib Figures (no pyplot state) drawn from the analysis tables, so a notebook can
call any of them on `probe.load_results(...)` (see `probe.report.page.figures` for all of a report's at once).

Design choices:
- Colour says the family (probe.mixers' `MixerSpec.family`): each family owns a band of hues (attention blue,
  linear attention green, SSMs red, convolutions amber, Monarch purple, simplicial teal, hybrids grey), its
  members get distinct shades in it, and a marker and a line style of their own, so two variants of one family
  still read apart in print and for colour-blind readers. A Palette is made once per report from the archs it
  shows; every figure and table takes it, so an arch looks the same and legends keep one order (family, then
  name) throughout.
- One theme (seaborn's whitegrid, paper scale) for every figure; accuracy always on a padded 0-1 axis.
- Lengths and widths sit on log-2 axes ticked at the values that ran (16, 32, 64); state sizes on log-2 axes
  ticked 1k, 2k, 4k (k = 1024: states are mostly powers of two). Limits are padded so no mark sits on the frame.
- A function draws every panel it is given; dropping one-value panels is the caller's (analysis.drop_flat_panels).
- Text in SVG stays text (smaller files, selectable); each SVG gets its own id salt, so the ids of several
  inline SVGs never collide.
"""
from __future__ import annotations

import base64
import colorsys
import functools
import io
import itertools
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator

from . import analysis as A

# -- colours, markers, order --------------------------------------------------------------------------------------
#: per family, the hue band (degrees on the HLS wheel) its members spread over; None: greys. Bands are at least
#: 15 degrees apart, so no two families share a colour
FAMILY_HUES = {"attention": (210, 240), "linear_attention": (95, 145), "ssm": (345, 368), "conv": (28, 50),
               "monarch": (268, 292), "simplicial": (165, 182), "hybrid": None, "other": (310, 328)}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"]
LINESTYLES = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2))]


@dataclass(frozen=True)
class Style:
    """How one arch is drawn everywhere: `colour` from its family's band, `marker` and `linestyle` its own."""
    colour: str
    marker: str
    linestyle: str | tuple
    family: str

    def line(self, **kw) -> dict:
        return {"color": self.colour, "marker": self.marker, "linestyle": self.linestyle, "ms": 5, "lw": 1.5, **kw}


class Palette:
    """The Style of each arch of a report, and the one order they are listed in.

    archs: sweep labels; built: label -> the arch it builds (analysis.built_archs), which places labels such as
    `swa32` in their family. Members of a family spread evenly over its band in name order."""

    def __init__(self, archs, built: dict[str, str] | None = None):
        built = built or {}
        self.order = A.arch_order([a for a in archs if isinstance(a, str)], built)
        family = {a: A.arch_family(a, built.get(a)) for a in self.order}
        self.styles = {}
        for fam, members in itertools.groupby(self.order, key=family.get):
            members = list(members)
            for i, arch in enumerate(members):
                self.styles[arch] = Style(_shade(fam, i, len(members)), MARKERS[i % len(MARKERS)],
                                          LINESTYLES[i % len(LINESTYLES)], fam)

    def __getitem__(self, arch: str) -> Style:
        return self.styles.get(arch) or Palette([arch]).styles[arch]  # an arch the report did not list

    def sorted(self, archs) -> list[str]:
        archs = set(archs)
        return [a for a in self.order if a in archs] + A.arch_order(archs - set(self.order))

    def handles(self, archs, label=lambda arch: arch) -> list[Line2D]:
        return [Line2D([], [], label=label(a), **self[a].line()) for a in self.sorted(archs)]


def _shade(family: str, i: int, n: int) -> str:
    """Member i of n: hues spread over the band, lightness alternating dark and light so neighbours differ."""
    band = FAMILY_HUES.get(family, FAMILY_HUES["other"])
    t = 0.5 if n == 1 else i / (n - 1)
    lightness = 0.42 if n == 1 else (0.30, 0.56, 0.43)[i % 3]
    if band is None:
        r, g, b = colorsys.hls_to_rgb(0, 0.15 + 0.45 * t, 0)
    else:
        hue = (band[0] + t * (band[1] - band[0])) % 360
        r, g, b = colorsys.hls_to_rgb(hue / 360, lightness, 0.78)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))


def position_scheme(arch: str) -> str | None:
    """`attention_alibi` -> `alibi`, plain `attention` -> `rope`; None for an arch that is not softmax attention
    with a named position scheme."""
    if arch == "attention":
        return "rope"
    return arch.removeprefix("attention_") if arch.startswith("attention_") else None


# -- theme, embedding, files --------------------------------------------------------------------------------------
THEME = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper"), "axes.titlesize": 9.5,
         "legend.fontsize": 9, "xtick.bottom": True, "ytick.left": True, "axes.edgecolor": ".6"}


def themed(draw):
    """Draw under THEME: rcParams are read as artists are made, so the whole function runs inside it."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(THEME):
            return draw(*args, **kwargs)
    return wrapper


_svg_ids = itertools.count()


def embed(fig: Figure, *, dense: bool = False) -> Markup:
    """The figure as inline SVG, or as a base64 PNG <img> when `dense` (thousands of marks, dozens of panels)."""
    buf = io.BytesIO()
    with matplotlib.rc_context({**THEME, "svg.fonttype": "none", "svg.hashsalt": f"probe-report-{next(_svg_ids)}"}):
        if dense:
            fig.savefig(buf, format="png", dpi=110)
            data = base64.b64encode(buf.getvalue()).decode()
            return Markup(f'<img alt="figure" src="data:image/png;base64,{data}">')
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue().decode()
    return Markup(text[text.index("<svg"):])


#: no creation date in the files, so a figure regenerated from the same results is the same file
FILE_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def save(fig: Figure, path: str, fmt: str) -> None:
    with matplotlib.rc_context({**THEME, "svg.hashsalt": "probe-figure", "pdf.fonttype": 42}):
        fig.savefig(path, format=fmt, metadata=FILE_METADATA[fmt], dpi=200)


def height_px(fig: Figure) -> int:
    """About how tall the figure shows on the page (96 px per inch)."""
    return round(fig.get_figheight() * 96)


# -- layout and axes ----------------------------------------------------------------------------------------------
def _grid(n_rows: int, n_cols: int, panel=(3.2, 2.4), **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * n_cols + 0.8, panel[1] * n_rows + 0.7), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False, **kw)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _acc_axis(ax, label: str = "accuracy") -> None:
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel(label)


def _legend(fig: Figure, handles: list) -> None:
    """One legend under the panels, in as many columns as fit the figure's width (about 1.6 inches each)."""
    fits = max(1, int(fig.get_figwidth() / 1.6))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(fits, len(handles)), frameon=False)


def fmt_count(v: float) -> str:
    """1024 -> 1k, 3072 -> 3k, 2**20 -> 1M (binary units: state sizes are mostly powers of two)."""
    for unit, n in (("M", 2 ** 20), ("k", 2 ** 10)):
        if abs(v) >= n:
            return f"{v / n:.3g}{unit}"
    return f"{v:.3g}"


def log2_x(ax, values) -> None:
    """A log-2 x axis ticked at the values that ran (16 32 64, not 2⁴ 2⁵ 2⁶), padded a third of an octave."""
    values = sorted({float(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(values) if len(values) <= 8 else LogLocator(base=2, numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(values[0] / 2 ** 0.33, values[-1] * 2 ** 0.33)


def state_x(ax, values) -> None:
    """A log-2 x axis for state sizes, ticked 1k 2k 4k at powers of two (the values themselves when fewer than
    two powers of two fall inside), padded."""
    values = sorted({float(v) for v in values if v > 0})
    pad = max(1.25, (values[-1] / values[0]) ** 0.06)
    low, high = values[0] / pad, values[-1] * pad
    ax.set_xscale("log", base=2)
    if math.floor(math.log2(high)) - math.ceil(math.log2(low)) >= 1:
        ax.xaxis.set_major_locator(LogLocator(base=2, numticks=7))
    else:
        ax.xaxis.set_major_locator(FixedLocator(values[:6]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(low, high)


def lr_x(ax, limits) -> None:
    """A log x axis for learning rates ticked 1e-3 3e-3 1e-2 (not 10⁻³), thinned to a tick a decade past six."""
    ax.set_xscale("log")
    ax.set_xlim(limits)
    decades = math.log10(limits[1] / limits[0])
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0) if decades <= 3 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")))
    ax.xaxis.set_minor_locator(NullLocator())


def integer_x(ax, values) -> None:
    """Whole-number x values (pairs, depths): a tick at each when few, else integer ticks; padded."""
    values = sorted({float(v) for v in values})
    ax.xaxis.set_major_locator(FixedLocator(values) if len(values) <= 10 else MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    pad = 0.06 * (values[-1] - values[0]) or 0.5
    ax.set_xlim(values[0] - pad, values[-1] + pad)


# -- Zoology's Figure 2 -------------------------------------------------------------------------------------------
@themed
def width_curves(settings: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Accuracy vs d_model (log-2 x), one panel per training length, one line per arch: Zoology's Figure 2.

    settings: one problem's rows of analysis.settings_table, where a setting's accuracy is the best trial over
    the tuned learning rates of each seed, averaged over seeds."""
    done = settings.dropna(subset=["accuracy", "d_model", "seq_len"])
    palette = palette or Palette(done["arch"])
    seq_lens = sorted(done["seq_len"].unique())
    n_cols = min(4, len(seq_lens))
    fig, axes = _grid(math.ceil(len(seq_lens) / n_cols), n_cols, panel=(3.3, 2.6))
    for ax, L in zip(axes.flat, seq_lens):
        at = done[done["seq_len"] == L]
        for arch in palette.sorted(at["arch"]):
            acc = at[at["arch"] == arch].groupby("d_model")["accuracy"].max()
            ax.plot(acc.index, acc.to_numpy(), **palette[arch].line())
        log2_x(ax, done["d_model"])
        ax.set_title(f"trained at seq_len {int(L)}")
        ax.set_xlabel("d_model")
        _acc_axis(ax)
    _hide_unused(axes, len(seq_lens))
    _legend(fig, palette.handles(done["arch"]))
    return fig


# -- heatmaps -----------------------------------------------------------------------------------------------------
@themed
def heatmaps(settings: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Accuracy over seq_len (rows) × d_model (columns), one panel per arch, one 0-1 colour scale.

    settings: one problem's rows of analysis.settings_table. A point without a result shows its status."""
    settings = settings.dropna(subset=["seq_len", "d_model"])  # a cell whose key says neither cannot be placed
    palette = palette or Palette(settings["arch"])
    archs = palette.sorted(settings["arch"])
    seq_lens = sorted(settings["seq_len"].unique())
    d_models = sorted(settings["d_model"].unique())
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
        ax.grid(False)
        ax.set_xlabel("d_model")
        ax.set_ylabel("seq_len")
        ax.set_title(arch, color=palette[arch].colour, fontweight="bold")
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
@themed
def state_pareto(settings: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Accuracy vs state size (log-2 x), one panel per training length; each arch's Pareto frontier in its style,
    the frontier over all archs dashed black. settings: one problem's rows of analysis.settings_table."""
    done = settings.dropna(subset=["accuracy", "state_size"])
    palette = palette or Palette(done["arch"])
    seq_lens = sorted(done["seq_len"].unique())
    n_cols = min(4, len(seq_lens))
    fig, axes = _grid(math.ceil(len(seq_lens) / n_cols), n_cols, panel=(4.0, 3.0))
    for ax, L in zip(axes.flat, seq_lens):
        at = done[done["seq_len"] == L]
        for arch in palette.sorted(at["arch"]):
            front = A.pareto_front(at[at["arch"] == arch])
            style = palette[arch]
            ax.scatter(at.loc[at["arch"] == arch, "state_size"], at.loc[at["arch"] == arch, "accuracy"],
                       color=style.colour, marker=style.marker, s=30, zorder=3)
            ax.step(front["state_size"], front["accuracy"], where="post", color=style.colour, ls=style.linestyle,
                    alpha=0.7)
        front = A.pareto_front(at)
        ax.step(front["state_size"], front["accuracy"], where="post", color="black", ls="--", lw=1.2)
        state_x(ax, at["state_size"])
        ax.set_xlabel("state size (numbers carried)")
        ax.set_title(f"trained at seq_len {int(L)}")
        _acc_axis(ax)
    _hide_unused(axes, len(seq_lens))
    _legend(fig, [*palette.handles(done["arch"]), Line2D([], [], color="black", ls="--", label="frontier (all)")])
    return fig


# -- accuracy vs evaluation length --------------------------------------------------------------------------------
@themed
def length_curves(lengths: pd.DataFrame, palette: Palette | None = None, *, label=lambda arch: arch) -> Figure:
    """Accuracy vs evaluation length (log-2 x): rows d_model, columns training length (dotted line).

    lengths: analysis.by_length rows of one problem; a (d_model, seq_len) pair without rows leaves its place
    empty."""
    palette = palette or Palette(lengths["arch"])
    d_models = sorted(lengths["d_model"].unique())
    seq_lens = sorted(lengths["seq_len"].unique())
    fig, axes = _grid(len(d_models), len(seq_lens))
    for i, d in enumerate(d_models):
        for j, L in enumerate(seq_lens):
            ax = axes[i, j]
            at = lengths[(lengths["d_model"] == d) & (lengths["seq_len"] == L)]
            if at.empty:
                ax.set_visible(False)
                continue
            for arch in palette.sorted(at["arch"]):
                for _, g in at[at["arch"] == arch].groupby("setting", sort=False):
                    g = g.sort_values("eval_seq_len")
                    ax.plot(g["eval_seq_len"], g["accuracy"], **palette[arch].line(ms=4))
            ax.axvline(L, color="grey", ls=":", lw=1.2)
            log2_x(ax, at["eval_seq_len"])
            ax.set_title(f"trained at {int(L)}, d_model {int(d)}")
            ax.set_xlabel("evaluation length")
            _acc_axis(ax)
    _legend(fig, [*palette.handles(lengths["arch"], label), Line2D([], [], color="grey", ls=":",
                                                                   label="training length")])
    return fig


# -- learning rate ------------------------------------------------------------------------------------------------
@themed
def lr_sensitivity(trials: pd.DataFrame, edges: pd.DataFrame, palette: Palette | None = None) -> tuple[Figure, bool]:
    """Accuracy vs learning rate over every trial with a result: rows arch, columns d_model.

    One colour code, the training length; everything else is grey or black: the searched range shaded, each
    cell's tuned lr a vertical line (dashed where it sits at an edge of the range), pruned trials hollow (their
    accuracy when stopped). The legend lists only what the figure shows. Returns the figure and whether it is
    dense (then embedded as PNG)."""
    t = trials.dropna(subset=["accuracy", "lr"])
    palette = palette or Palette(t["arch"])
    archs = palette.sorted(t["arch"])
    d_models = sorted(t["d_model"].unique())
    seq_lens = sorted(t["seq_len"].unique())
    shades = sns.color_palette("rocket", as_cmap=True)(np.linspace(0.15, 0.72, len(seq_lens)))
    colour = dict(zip(seq_lens, shades))
    # every searched range and every lr tried, with a little room either side so the range's ends show
    x_range = (min(t["lr_low"].min(), t["lr"].min()) / 1.6, max(t["lr_high"].max(), t["lr"].max()) * 1.6)
    fig, axes = _grid(len(archs), len(d_models), panel=(3.0, 2.1))
    tuned = set()  # which kinds of tuned-lr line were drawn: True at an edge, False inside
    for i, arch in enumerate(archs):
        for j, d in enumerate(d_models):
            ax = axes[i, j]
            at = t[(t["arch"] == arch) & (t["d_model"] == d)]
            if at.empty:  # an arch that ran at other widths only
                ax.set_visible(False)
                continue
            ax.axvspan(at["lr_low"].min(), at["lr_high"].max(), color="#ececec", zorder=0)
            for state, filled in (("COMPLETE", True), ("PRUNED", False)):
                g = at[at["state"] == state]
                c = [colour[L] for L in g["seq_len"]]
                ax.scatter(g["lr"], g["accuracy"], s=20, zorder=3, facecolors=c if filled else "none", edgecolors=c)
            flagged = set(edges.loc[(edges["arch"] == arch) & (edges["d_model"] == d), "lr"])
            best = at[at["state"] == "COMPLETE"].sort_values("accuracy").groupby("cell").tail(1)
            for lr in best["lr"]:
                ax.axvline(lr, color="black", lw=0.9, ls="--" if lr in flagged else "-", alpha=0.6, zorder=1)
                tuned.add(lr in flagged)
            lr_x(ax, x_range)
            ax.set_title(f"{arch}, d_model {int(d)}" + ("  (range too narrow)" if flagged else ""))
            ax.set_xlabel("learning rate")
            _acc_axis(ax)
    _legend(fig, _lr_handles(t, tuned, colour))
    dense = len(archs) * len(d_models) > 24 or len(t) > 3000
    return fig, dense


def _lr_handles(t: pd.DataFrame, tuned: set[bool], colour: dict) -> list:
    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"trained at {int(L)}") for L, c in colour.items()]
    if (t["state"] == "PRUNED").any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="black", label="pruned"))
    if False in tuned:
        handles.append(Line2D([], [], color="black", alpha=0.6, label="tuned lr"))
    if True in tuned:
        handles.append(Line2D([], [], color="black", alpha=0.6, ls="--", label="tuned lr at an edge"))
    return handles


# -- slices -------------------------------------------------------------------------------------------------------
@themed
def slice_curves(slices: pd.DataFrame, palette: Palette | None = None) -> tuple[Figure, bool]:
    """Accuracy per slice value (one slice name): rows (seq_len, d_model), columns the evaluation length as a
    multiple of the training length (×1 is the training length). A pair without rows leaves its place empty."""
    name = slices["slice"].iloc[0]
    palette = palette or Palette(slices["arch"])
    slices = slices.assign(times=slices["eval_seq_len"] / slices["seq_len"])
    rows = sorted({(L, d) for L, d in zip(slices["seq_len"], slices["d_model"])})
    times = sorted(slices["times"].unique())
    fig, axes = _grid(len(rows), len(times), panel=(3.0, 2.2))
    for i, (L, d) in enumerate(rows):
        for j, x in enumerate(times):
            ax = axes[i, j]
            at = slices[(slices["seq_len"] == L) & (slices["d_model"] == d) & (slices["times"] == x)]
            if at.empty:
                ax.set_visible(False)
                continue
            for arch in palette.sorted(at["arch"]):
                for _, g in at[at["arch"] == arch].groupby("setting", sort=False):
                    g = g.sort_values("slice_value")
                    ax.plot(g["slice_value"], g["accuracy"], **palette[arch].line(ms=4))
            ax.set_title(f"seq_len {int(L)}, d_model {int(d)}, at {int(L * x)} (×{x:g})")
            ax.set_xlabel(name)
            integer_x(ax, at["slice_value"])
            _acc_axis(ax)
    _legend(fig, palette.handles(slices["arch"]))
    return fig, len(rows) * len(times) > 24


# -- learning curves ----------------------------------------------------------------------------------------------
@themed
def learning_curves(curves: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Accuracy at the training length vs step: rows d_model, columns training length, one line per arch.
    curves: Results.curves rows (of the trials to show) at eval_seq_len == seq_len."""
    palette = palette or Palette(curves["arch"])
    d_models = sorted(curves["d_model"].unique())
    seq_lens = sorted(curves["seq_len"].unique())
    fig, axes = _grid(len(d_models), len(seq_lens))
    for i, d in enumerate(d_models):
        for j, L in enumerate(seq_lens):
            ax = axes[i, j]
            at = curves[(curves["d_model"] == d) & (curves["seq_len"] == L)]
            for arch in palette.sorted(at["arch"]):
                for _, g in at[at["arch"] == arch].groupby("cell", sort=False):
                    g = g.sort_values("step")
                    ax.plot(g["step"], g["accuracy"], **palette[arch].line(marker="", lw=1.4))
            ax.set_title(f"seq_len {int(L)}, d_model {int(d)}")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.margins(x=0.03)
            _acc_axis(ax, "accuracy at seq_len")
    _legend(fig, [Line2D([], [], label=a, **palette[a].line(marker="")) for a in palette.sorted(curves["arch"])])
    return fig


# -- importances --------------------------------------------------------------------------------------------------
@themed
def importances(values: dict[str, dict[str, float]], palette: Palette | None = None) -> Figure:
    """Horizontal bars of each arch's parameter importances (they sum to 1 per arch), bars in the arch's colour,
    hatching telling the parameters apart."""
    palette = palette or Palette(values)
    archs = palette.sorted(values)
    params = sorted({p for v in values.values() for p in v})
    fig, axes = _grid(1, 1, panel=(6.0, 0.45 * len(archs) * len(params) + 0.8))
    ax = axes[0, 0]
    height = 0.8 / len(params)
    hatches = ["", "//", "..", "xx"]
    for k, p in enumerate(params):
        y = np.arange(len(archs)) + k * height
        ax.barh(y, [values[a].get(p, 0.0) for a in archs], height=height, label=p, hatch=hatches[k % 4],
                color=[palette[a].colour for a in archs], edgecolor="black", lw=0.5)
    ax.set_yticks(np.arange(len(archs)) + 0.4 - height / 2, archs)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("importance (PED-ANOVA, sums to 1 per arch)")
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatches[k % 4], label=p)
                       for k, p in enumerate(params)], frameon=False, loc="lower right")
    return fig
