"""`probe report`: one self-contained HTML page comparing archs by accuracy, sequence length and state size.

    probe report sweeps/quick.py -o reports/quick.html
    write_report(load_results(["sweeps/quick.py"]), "reports/quick.html")

Design choices: the page needs no network (inline CSS, figures as inline SVG, PNG only for dense plots); it
carries its own data (tidy, trials and curves as CSV links) and provenance (sweep hashes, git, versions,
devices); a cell without a result is listed with the reason, never dropped; partial and empty results render
with explanations. Layout: analysis.py computes the tables, figures.py draws, page.py assembles the sections,
template.html.j2 is the page.
"""
from __future__ import annotations

import argparse
import os

from ..errors import ProbeError
from ..outputs import check_writable, write_atomically
from ..results import Results

__all__ = ["main", "write_report"]


def write_report(results: Results, path: str) -> str:
    """Write the report for `results` to `path` (atomically: a temporary file renamed); returns the path."""
    from . import page  # matplotlib and jinja only once there is something to draw

    check_output(path)
    stem = os.path.splitext(os.path.basename(path))[0] or "report"
    names = [s["name"] for s in results.provenance.get("sweeps", [])]
    title = "probe report: " + (", ".join(names) or results.provenance.get("storage", "") or "no sweep")
    sections = page.build(results.trials, results.tidy, results.curves, results.provenance, stem)
    html = page.render(sections, title, results.provenance)

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(html)
    write_atomically(path, "-o", dump)
    return path


def check_output(path: str) -> None:
    """Fail in one line, before any work, if the report cannot be written (a missing folder is made on writing)."""
    if not os.path.isdir(path) and not path.endswith((".html", ".htm")):
        raise ProbeError(f"-o {path}: the report is HTML; name it NAME.html")
    check_writable(path, "-o", make_parent=True)


def parser() -> argparse.ArgumentParser:
    from ..cli import OneLineParser
    p = OneLineParser(prog="probe report", description="Write an HTML report comparing the archs of sweeps: "
                      "accuracy against sequence length and state size, tuned learning rates, holes.")
    p.add_argument("sweep_files", nargs="*", metavar="SWEEP_FILE", help="sweep files (Python) whose cells to report")
    p.add_argument("--storage", metavar="URL", help="where the trials are (default: each sweep's journal)")
    p.add_argument("-o", "--output", metavar="PATH", required=True, help="the HTML file to write (reports/NAME.html)")
    p.add_argument("--figures", metavar="DIR", help="also write each figure as DIR/NAME.FORMAT (for a paper)")
    p.add_argument("--format", default="pdf", choices=["pdf", "svg", "png"], help="the figures' format (default pdf)")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from ..results import collect, open_sweeps
    sweeps = open_sweeps(args.sweep_files, args.storage)  # every input is checked before anything is written
    check_output(args.output)
    if args.figures:
        from .page import check_figures
        check_figures(args.figures, args.format)  # one line before any work; makes the folder
    results = collect(sweeps, args.storage)
    print(f"wrote {write_report(results, args.output)}")
    if args.figures:
        from .page import write_figures
        paths = write_figures(results, args.figures, args.format)
        print(f"wrote {len(paths)} figures to {args.figures}")
