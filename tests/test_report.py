"""`probe report`: what the HTML page says for full, partial and empty results, and that a browser renders it.

Most tests build a Results by hand (make_results): three archs (two attention position schemes and mamba),
two training lengths, two widths, two seeds, three trials per cell, a pruned and a failed trial. One test
runs a real sweep of two tiny cells. The browser tests need /usr/bin/chromium and skip without it.
"""
import base64
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probe.errors import ProbeError
from probe.report import main, write_report
from probe.report import analysis as A
from probe.report.figures import ARCH_COLOURS, arch_colour
from probe.results import Results

ARCHS = ("attention", "attention_alibi", "mamba")
LRS = (1e-3, 3e-3, 1e-2)  # the three trials of every cell, inside the searched range (3e-4, 3e-2)
PRUNED = ("mqar-L64/mamba/d64/seed1", 2)
FAILED = ("mqar-L64/attention_alibi/d32/seed0", 1)


def accuracy_of(arch: str, L: int, d: int, seed: int, k: int) -> float:
    """A made-up but plausible landscape: wider is better, longer is harder, the middle lr is best,
    attention beats mamba; every value distinct."""
    base = {"attention": 0.9, "attention_alibi": 0.8, "mamba": 0.6}.get(arch, 0.5)
    return round(min(1.0, base + 0.05 * (d == 64) - 0.1 * (L == 64) - 0.15 * abs(k - 1) + 0.01 * seed
                     + 0.001 * k), 4)


def cell_key(arch, L, d, seed) -> str:
    return f"mqar-L{L}/{arch}/d{d}/seed{seed}"


def make_trial(arch, L, d, seed, k, state="COMPLETE", reason="", acc=None, lr=None, wd=math.nan):
    key = cell_key(arch, L, d, seed)
    acc = accuracy_of(arch, L, d, seed, k) if acc is None else acc
    has_record = state in ("COMPLETE", "PRUNED")
    state_size = 2 * 2 * L * d if arch.startswith("attention") else 2 * 16 * 2 * d
    return {
        "sweep": "unit", "cell": key, "study": f"unit:{key}", "trial": k, "state": state, "reason": reason,
        "task": "mqar", "arch": arch, "seq_len": L, "d_model": d, "n_layers": 2, "seed": seed,
        "lr": LRS[k] if lr is None else lr, "weight_decay": wd, "lr_low": 3e-4, "lr_high": 3e-2,
        "accuracy": acc if has_record else math.nan, "best_accuracy": acc if has_record else math.nan,
        "per_example_accuracy": acc ** 2 if has_record else math.nan,
        "exact_match": acc ** 4 if has_record else math.nan,
        "state_size": state_size if has_record else math.nan, "params": 1000 * d + (arch == "mamba") * 77,
        "train_tokens_per_s": 1e5 / d * (1.5 if arch == "mamba" else 1.0) if has_record else math.nan,
        "wall_time_s": 12.5 if has_record else math.nan, "steps": 300 if has_record else math.nan,
        "device": "cpu" if has_record else "", "git": "abc123" if has_record else "",
        "versions": '{"git": "abc123", "torch": "2.13.0"}' if has_record else "",
        "vocab_size": 64, "num_kv_pairs": L // 8, "eval_seq_lens": f"{2 * L},{4 * L}"}


def tidy_rows(t: dict) -> list[dict]:
    if t["state"] not in ("COMPLETE", "PRUNED"):
        return []
    rows = []
    for E in (t["seq_len"], 2 * t["seq_len"], 4 * t["seq_len"]):
        acc = t["accuracy"] * (t["seq_len"] / E) ** (0.2 if t["arch"] == "attention_alibi" else 1.0)
        common = {k: t[k] for k in ("sweep", "cell", "trial", "state", "task", "arch", "seq_len", "d_model", "seed",
                                    "lr")}
        state = t["state_size"] * (E / t["seq_len"] if t["arch"].startswith("attention") else 1)
        common.update(eval_seq_len=E, state_size=state, params=t["params"])
        rows.append({**common, "slice": "all", "slice_value": -1, "accuracy": acc, "per_example_accuracy": acc ** 2,
                     "exact_match": acc ** 4, "examples": 256})
        for pairs in (2, 4):
            rows.append({**common, "slice": "num_kv_pairs", "slice_value": pairs, "accuracy": acc * (1 - 0.02 * pairs),
                         "per_example_accuracy": acc ** 2, "exact_match": math.nan, "examples": 128})
    return rows


def curve_rows(t: dict) -> list[dict]:
    if t["state"] not in ("COMPLETE", "PRUNED"):
        return []
    last = 300 if t["state"] == "COMPLETE" else 100
    return [{"sweep": t["sweep"], "cell": t["cell"], "trial": t["trial"], "arch": t["arch"], "d_model": t["d_model"],
             "seq_len": t["seq_len"], "step": step, "eval_seq_len": E, "accuracy": t["accuracy"] * step / last}
            for step in range(50, last + 1, 50) for E in (t["seq_len"], 2 * t["seq_len"])]


def assemble(trials: list[dict], cells: dict) -> Results:
    tidy = [r for t in trials for r in tidy_rows(t)]
    curves = [r for t in trials for r in curve_rows(t)]
    trials_df = pd.DataFrame(trials)
    provenance = {
        "sweeps": [{"name": "unit", "file": "sweeps/unit.py", "sha256": "ab" * 32}], "storage": "runs/unit/journal.log",
        "git": "abc123", "versions": {"git": "abc123", "torch": "2.13.0", "probe": "0.1.0"}, "devices": ["cpu"],
        "wall_time_s": float(trials_df["wall_time_s"].fillna(0).sum()) if len(trials_df) else 0.0,
        "generated": "2025-01-01T00:00:00+00:00", "cells": cells}
    return Results(trials_df, pd.DataFrame(tidy), pd.DataFrame(curves), provenance)


def make_results(archs=ARCHS) -> Results:
    trials, cells = [], {}
    for arch in archs:
        for L in (32, 64):
            for d in (32, 64):
                for seed in (0, 1):
                    key = cell_key(arch, L, d, seed)
                    for k in range(3):
                        state, reason = "COMPLETE", ""
                        if (key, k) == PRUNED:
                            state, reason = "PRUNED", "pruned at step 100 by the median pruner"
                        if (key, k) == FAILED:
                            state, reason = "FAIL", "RuntimeError: out of memory"
                        trials.append(make_trial(arch, L, d, seed, k, state, reason))
                    cells[key] = {"sweep": "unit", "arch": arch, "status": "complete", "trials": 3,
                                  "expected_trials": 3}
    return assemble(trials, cells)


def make_partial() -> Results:
    """attention complete except one running cell; hyena failed everywhere; one cell of mamba not started."""
    trials, cells = [], {}
    for L in (32, 64):
        for d in (32, 64):
            key = cell_key("attention", L, d, 0)
            if (L, d) == (64, 64):
                trials.append(make_trial("attention", L, d, 0, 0, "RUNNING"))
                cells[key] = {"sweep": "unit", "arch": "attention", "status": "running", "trials": 0,
                              "expected_trials": 3}
            else:
                trials += [make_trial("attention", L, d, 0, k) for k in range(3)]
                cells[key] = {"sweep": "unit", "arch": "attention", "status": "complete", "trials": 3,
                              "expected_trials": 3}
            key = cell_key("hyena", L, d, 0)
            trials += [make_trial("hyena", L, d, 0, k, "FAIL", "ValueError: hyena needs seq_len a power of two")
                       for k in range(3)]
            cells[key] = {"sweep": "unit", "arch": "hyena", "status": "failed", "trials": 0, "expected_trials": 3}
    cells[cell_key("mamba", 32, 32, 0)] = {"sweep": "unit", "arch": "mamba", "status": "pending", "trials": 0,
                                           "expected_trials": 3}
    return assemble(trials, cells)


def make_empty() -> Results:
    cells = {cell_key(a, 32, 32, 0): {"sweep": "unit", "arch": a, "status": "pending", "trials": 0,
                                      "expected_trials": 3} for a in ARCHS}
    return Results(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {**assemble([], {}).provenance, "cells": cells})


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "full.html"
    write_report(make_results(), str(path))
    return path


def section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def count_figures(fragment: str) -> int:
    return len(re.findall(r"<figure>", fragment))


# -- analysis -----------------------------------------------------------------------------------------------------
def test_best_config_takes_the_best_complete_trial_per_seed_then_averages_seeds():
    res = make_results()
    cells = A.cell_table(res.trials, res.provenance)
    settings = A.settings_table(cells).set_index("setting")
    row = settings.loc["mqar-L32/attention/d64"]
    per_seed = [accuracy_of("attention", 32, 64, s, 1) for s in (0, 1)]  # the middle lr wins on every seed
    assert row["accuracy"] == pytest.approx(np.mean(per_seed))
    assert row["accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert row["lrs"] == [LRS[1], LRS[1]] and row["lr"] == pytest.approx(LRS[1])
    assert (row["seeds"], row["seeds_done"]) == (2, 2)
    assert row["state_size"] == 2 * 2 * 32 * 64 and row["params"] == 64_000


def test_best_config_ignores_pruned_trials_even_when_they_score_higher():
    trials = [make_trial("mamba", 32, 32, 0, 0, acc=0.5), make_trial("mamba", 32, 32, 0, 1, "PRUNED", acc=0.9),
              make_trial("mamba", 32, 32, 0, 2, acc=0.7)]
    res = assemble(trials, {})
    cells = A.cell_table(res.trials, res.provenance)
    assert cells.loc[0, "best_trial"] == 2 and cells.loc[0, "accuracy"] == 0.7


def test_best_per_column_is_highlighted_within_each_length_and_width(full_report):
    html = full_report.read_text()
    table = section(html, "best")
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    best_acc = {}
    for r in rows:
        cells = re.findall(r"<td([^>]*)>(.*?)</td>", r, re.S)
        arch = re.sub(r"<[^>]+>", "", cells[1][1])
        L, d = int(cells[2][1]), int(cells[3][1])
        if 'class="best"' in cells[4][0]:
            best_acc.setdefault((L, d), []).append(arch)
        if 'class="best"' in cells[8][0]:  # state size: mamba's is the smallest everywhere
            assert arch == "mamba"
    # attention beats alibi and mamba at every length and width, so it alone is highlighted
    assert best_acc == {(L, d): ["attention"] for L in (32, 64) for d in (32, 64)}


def test_best_in_group_counts_ties_and_skips_missing():
    df = pd.DataFrame({"problem": "p", "seq_len": 1, "d_model": 1, "accuracy": [0.9, 0.9, 0.5, math.nan],
                       "params": [3, 1, 2, math.nan]})
    assert A.best_in_group(df, "accuracy").tolist() == [True, True, False, False]
    assert A.best_in_group(df, "params").tolist() == [False, True, False, False]


def test_lr_at_the_edge_of_the_searched_range_is_flagged(tmp_path):
    inside = make_trial("attention", 32, 32, 0, 0, lr=1e-3)
    near_low = make_trial("mamba", 32, 32, 0, 0, lr=3e-4 * 10 ** 0.05)  # 0.05 decades above lr_low
    near_high = make_trial("based", 32, 32, 0, 0, lr=3e-2 / 10 ** 0.09)
    just_inside = make_trial("mamba", 32, 64, 0, 0, lr=3e-4 * 10 ** 0.15)
    res = assemble([inside, near_low, near_high, just_inside], {})
    edges = A.lr_edges(A.cell_table(res.trials, res.provenance))
    assert dict(zip(edges["cell"], edges["edge"])) == {near_low["cell"]: "low", near_high["cell"]: "high"}
    write_report(res, str(tmp_path / "r.html"))
    lr = section((tmp_path / "r.html").read_text(), "lr")
    assert "Range too narrow: 2 cells" in lr and near_low["cell"] in lr and inside["cell"] not in lr


def test_pareto_front_keeps_only_undominated_points():
    pts = pd.DataFrame({"state_size": [10, 20, 20, 40, 80, 5], "accuracy": [0.5, 0.7, 0.6, 0.65, 0.9, 0.1]})
    front = A.pareto_front(pts)
    assert list(zip(front["state_size"], front["accuracy"])) == [(5, 0.1), (10, 0.5), (20, 0.7), (80, 0.9)]


def test_parse_cell_key_reads_the_keys_sweeps_make():
    from probe.sweep import Sweep
    from tasks.mqar import MQAR
    sweep = Sweep(name="k", tasks=[MQAR(seq_len=32, num_kv_pairs=4, vocab_size=64),
                                   MQAR(seq_len=32, num_kv_pairs=8, vocab_size=64)],
                  archs=["attention_alibi", "hyena,attention"], d_models=(16,), seeds=(0, 3))
    for cell in sweep.cells():
        parsed = A.parse_cell_key(cell.key)
        assert parsed is not None, cell.key
        assert (parsed["task"], parsed["seq_len"], parsed["arch"], parsed["d_model"], parsed["seed"]) == \
            (cell.task.name, cell.task.seq_len, cell.arch, cell.model.d_model, cell.seed)
        assert parsed["setting"] + f"/seed{cell.seed}" == cell.key


def test_a_task_field_swept_at_one_length_splits_problems_but_one_that_follows_the_length_does_not():
    t = make_results(archs=("attention", "mamba")).trials
    t["arch_built"] = t["arch"] + "-built"  # a column that follows the arch
    assert A.problem_fields(t) == []  # num_kv_pairs = L / 8 follows the length
    more = t.assign(num_kv_pairs=99, cell=t["cell"].str.replace("/", "-num_kv_pairs99/", n=1))
    both = pd.concat([t, more], ignore_index=True)
    assert A.problem_fields(both) == ["num_kv_pairs"]
    assert set(A.problem_labels(both)) == {"mqar num_kv_pairs=4", "mqar num_kv_pairs=8", "mqar num_kv_pairs=99"}


def test_arch_colours_are_fixed_distinct_and_hashed_for_unknown_names():
    from probe.mixers import MIXERS
    assert len(set(ARCH_COLOURS.values())) == len(ARCH_COLOURS)
    assert arch_colour("attention") == "#1f77b4"
    unknown = arch_colour("hyena,attention")
    assert re.fullmatch(r"#[0-9a-f]{6}", unknown) and unknown == arch_colour("hyena,attention")
    assert arch_colour("new_mixer_a") != arch_colour("new_mixer_b")
    missing = sorted(set(MIXERS) - set(ARCH_COLOURS))
    assert not missing, f"give these archs a fixed colour in probe/report/figures.py: {missing}"


def test_param_importances_with_two_tuned_parameters(tmp_path):
    rng = np.random.default_rng(0)
    trials = []
    for k in range(12):
        lr, wd = 10 ** rng.uniform(-3.5, -1.5), 10 ** rng.uniform(-3, -1)
        acc = 1 - abs(np.log10(lr) + 2.5) / 2  # only the lr matters
        trials.append(make_trial("attention", 32, 32, 0, 0, acc=acc, lr=lr, wd=wd) | {"trial": k})
    res = assemble(trials, {})
    imp = A.param_importances(res.trials, "attention")
    assert set(imp) == {"lr", "weight_decay"} and imp["lr"] > imp["weight_decay"]
    write_report(res, str(tmp_path / "r.html"))
    assert count_figures(section((tmp_path / "r.html").read_text(), "importance")) == 1


# -- the page -----------------------------------------------------------------------------------------------------
def test_full_report_has_every_section_and_figure(full_report):
    html = full_report.read_text()
    expected = {"provenance": 0, "best": 0, "heatmaps": 1, "state": 1, "length": 2, "lr": 1, "slices": 1,
                "curves": 1, "importance": 0, "data": 0}
    for sid, n in expected.items():
        assert count_figures(section(html, sid)) == n, sid
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(u.startswith(("data:", "#")) for u in links), "the page must fetch nothing"
    assert not re.search(r"url\((?!#)", html) and "@import" not in html
    assert "importance is trivially 1" in section(html, "importance")


def test_provenance_lists_hashes_versions_counts_and_the_failed_trial(full_report):
    prov = section(full_report.read_text(), "provenance")
    for text in ("ab" * 32, "sweeps/unit.py", "abc123", "2.13.0", "cpu"):
        assert text in prov
    # per-arch counts: 24 trials each; alibi lost one to a failure, mamba one to pruning
    assert re.search(r"attention_alibi</td><td[^>]*>23</td><td[^>]*>0</td><td[^>]*>1</td>", prov)
    assert re.search(r"mamba</td><td[^>]*>23</td><td[^>]*>1</td><td[^>]*>0</td>", prov)
    assert "No holes" in prov


def test_embedded_csv_parses_back_to_the_tidy_table(full_report):
    html = full_report.read_text()
    m = re.search(r'download="full-tidy.csv" href="data:text/csv;base64,([^"]+)"', html)
    back = pd.read_csv(io.BytesIO(base64.b64decode(m.group(1))))
    tidy = make_results().tidy
    pd.testing.assert_frame_equal(back, tidy, check_dtype=False)


def test_partial_results_show_the_running_cell_and_the_failed_arch(tmp_path):
    path = tmp_path / "partial.html"
    write_report(make_partial(), str(path))
    html = path.read_text()
    prov = section(html, "provenance")
    assert "Holes: 6 cells" in prov
    assert "mqar-L64/attention/d64/seed0" in prov and "still running" in prov
    assert "hyena needs seq_len a power of two" in prov and "failed (3 fail)" in prov
    assert "mqar-L32/mamba/d32/seed0" in prov and "not started" in prov
    assert "running" in section(html, "best") and "failed" in section(html, "best")
    assert count_figures(section(html, "heatmaps")) == 1


def test_empty_results_render_with_an_explanation(tmp_path):
    path = tmp_path / "empty.html"
    write_report(make_empty(), str(path))
    html = path.read_text()
    assert "Holes: 3 cells" in section(html, "provenance")
    for sid in ("best", "heatmaps", "state", "length", "lr", "slices", "curves"):
        assert "nothing to draw" in section(html, sid), sid
    empty = Results(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {})
    write_report(empty, str(tmp_path / "bare.html"))
    assert "an empty report" in (tmp_path / "bare.html").read_text()


def test_bad_output_paths_are_one_line_errors(tmp_path):
    res = make_empty()
    with pytest.raises(ProbeError, match="is a directory"):
        write_report(res, str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ProbeError, match="cannot create"):
        write_report(res, str(blocker / "sub" / "r.html"))
    with pytest.raises(ProbeError, match="name it NAME.html"):
        write_report(res, str(tmp_path / "r.txt"))
    with pytest.raises(ProbeError, match="does not exist"):
        main([str(tmp_path / "missing.py"), "-o", str(tmp_path / "r.html")])
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*tmp*"))


def test_the_report_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "r.html"
    path.write_text("old")
    write_report(make_empty(), str(path))
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_probe_report_command_line_errors_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "probe", "report", str(tmp_path / "nope.py"), "-o",
                          str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"probe: error: sweep file {tmp_path / 'nope.py'} does not exist"]


# -- a real sweep -------------------------------------------------------------------------------------------------
SWEEP = '''
from probe.sweep import SearchSpace, Sweep
from probe.train import TrainConfig
from tasks.mqar import MQAR


def sweep() -> Sweep:
    return Sweep(name="tiny", tasks=[MQAR(seq_len=16, vocab_size=16, num_kv_pairs=2, eval_seq_lens=(32,))],
                 archs=["attention", "mamba2"], d_models=(16,), n_layers=1,
                 train=TrainConfig(batch_size=16, max_steps=6, warmup_steps=1, num_train=64, num_test=32,
                                   val_every=3, device="cpu"),
                 search=SearchSpace(lr=(1e-3, 1e-2)), trials_per_cell=1)
'''


@pytest.mark.slow
def test_report_from_a_real_sweep(tmp_path):
    sweep_file = tmp_path / "tiny.py"
    sweep_file.write_text(SWEEP)
    storage = str(tmp_path / "journal.log")
    main([str(sweep_file), "--storage", storage, "-o", str(tmp_path / "before.html")])  # nothing has run yet
    before = section((tmp_path / "before.html").read_text(), "provenance")
    assert "Holes: 2 cells" in before and before.count("not started") == 2
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "probe", "sweep", str(sweep_file), "--storage", storage,
                          "--device", "cpu", "--workers", "1"], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "reports" / "tiny.html"
    main([str(sweep_file), "--storage", storage, "-o", str(out)])
    html = out.read_text()
    assert "No holes" in section(html, "provenance")
    assert count_figures(section(html, "heatmaps")) == 1 and count_figures(section(html, "length")) == 1
    assert "mamba2" in section(html, "best") and "attention" in section(html, "best")


# -- in a browser -------------------------------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium")


def chromium(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    """What the page printed to the console, uncaught errors included: Chromium logs each as a CONSOLE line."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_console_check_catches_a_javascript_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>notDefined();</script></body></html>")
    out = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert any("Uncaught ReferenceError" in m for m in console_messages(out.stderr))


@needs_chromium
def test_report_renders_in_chromium_without_console_errors(full_report, tmp_path):
    shot = tmp_path / "shot.png"
    out = chromium(full_report.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,3000")
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    assert console_messages(out.stderr) == []
    dom = chromium(full_report.as_uri(), tmp_path, "--dump-dom")
    assert console_messages(dom.stderr) == []
    for sid, n in {"heatmaps": 1, "state": 1, "length": 2, "lr": 1, "slices": 1, "curves": 1}.items():
        figures = section(dom.stdout, sid)
        assert len(re.findall(r"<svg\b", figures)) + len(re.findall(r"<img\b", figures)) == n, sid
    import matplotlib.image
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1400)
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200, "a blank or nearly blank page"
    assert (pixels.min(axis=-1) < 0.9).mean() > 0.05, "almost every pixel is white"


@needs_chromium
def test_sorting_script_reorders_a_table(full_report, tmp_path):
    """Clicking the accuracy header twice sorts the best-config table by accuracy, highest first."""
    html = full_report.read_text().replace("</body>", """<script>
      var th = document.querySelector('#best th:nth-child(5)'); th.click(); th.click();
      var acc = Array.prototype.map.call(document.querySelectorAll('#best tbody tr td:nth-child(5)'),
                                         function (td) { return parseFloat(td.getAttribute('data-sort')); });
      document.body.setAttribute('data-sorted', acc.every(function (v, i) { return i === 0 || acc[i - 1] >= v; }));
      </script></body>""")
    page = tmp_path / "sorted.html"
    page.write_text(html)
    dom = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert console_messages(dom.stderr) == []
    assert 'data-sorted="true"' in dom.stdout
