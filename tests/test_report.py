"""`probe report`: what the HTML page says for full, partial and empty results, and that a browser renders it.

Most tests build a Results by hand (make_results): three archs (two attention position schemes and mamba),
two training lengths, two widths, two seeds, three trials per cell, a pruned and a failed trial. make_zoology
builds the tables of a 112-cell store shaped like sweeps/zoology_mqar.py (7 archs, hybrids among them, 4 lengths
× 4 widths, evaluated at the training length only, one MQAR pair count per test set). One fixture runs a real
sweep of four tiny cells. The browser tests need /usr/bin/chromium and skip without it.
"""
import base64
import io
import itertools
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
from probe.report import figures as F
from probe.report import page
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


def tidy_rows(t: dict, times=(1, 2, 4), pairs=(2, 4)) -> list[dict]:
    """Rows at each evaluation length `times` × seq_len, with a num_kv_pairs slice of each value in `pairs`
    (None: the task's own num_kv_pairs only, as MQAR labels a test set of one pair count)."""
    if t["state"] not in ("COMPLETE", "PRUNED"):
        return []
    rows = []
    for E in (x * t["seq_len"] for x in times):
        acc = t["accuracy"] * (t["seq_len"] / E) ** (0.2 if t["arch"] == "attention_alibi" else 1.0)
        common = {k: t[k] for k in ("sweep", "cell", "trial", "state", "task", "arch", "seq_len", "d_model", "seed",
                                    "lr")}
        state = t["state_size"] * (E / t["seq_len"] if t["arch"].startswith("attention") else 1)
        common.update(eval_seq_len=E, state_size=state, params=t["params"])
        rows.append({**common, "slice": "all", "slice_value": -1, "accuracy": acc, "per_example_accuracy": acc ** 2,
                     "exact_match": acc ** 4, "examples": 256})
        for n in pairs or (t["num_kv_pairs"],):
            rows.append({**common, "slice": "num_kv_pairs", "slice_value": n, "accuracy": acc * (1 - 0.02 * n),
                         "per_example_accuracy": acc ** 2, "exact_match": math.nan, "examples": 128})
    return rows


def curve_rows(t: dict) -> list[dict]:
    if t["state"] not in ("COMPLETE", "PRUNED"):
        return []
    last = 300 if t["state"] == "COMPLETE" else 100
    return [{"sweep": t["sweep"], "cell": t["cell"], "trial": t["trial"], "arch": t["arch"], "d_model": t["d_model"],
             "seq_len": t["seq_len"], "step": step, "eval_seq_len": E, "accuracy": t["accuracy"] * step / last}
            for step in range(50, last + 1, 50) for E in (t["seq_len"], 2 * t["seq_len"])]


def assemble(trials: list[dict], cells: dict, **tidy_kw) -> Results:
    tidy = [r for t in trials for r in tidy_rows(t, **tidy_kw)]
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


#: sweeps/zoology_mqar.py's archs: label -> what it builds
ZOOLOGY = {"attention": "attention", "baseconv": "baseconv_short,baseconv_implicit", "hyena": "hyena", "h3": "h3",
           "retnet": "retnet", "based": "baseconv_short,based", "mamba": "mamba"}
ZOOLOGY_PAIRS = {64: 4, 128: 8, 256: 16, 512: 64}
#: the narrowest width that solves MQAR, per arch and length (None: none does)
ZOOLOGY_SOLVES = {"attention": lambda L: 64, "based": lambda L: 128, "mamba": lambda L: 256 if L <= 256 else None,
                  "h3": lambda L: 512, "baseconv": lambda L: 256 if L <= 128 else None,
                  "hyena": lambda L: 512 if L == 64 else None, "retnet": lambda L: None}
ZOOLOGY_FAILED = "mqar-L512/hyena/d512/seed0"
ZOOLOGY_PENDING = "mqar-L512/retnet/d512/seed0"


def zoology_state_size(arch: str, L: int, d: int) -> int:
    per_layer = {"attention": 2 * L * d, "based": 36 * d, "mamba": 2 * 16 * d, "h3": 64 * d, "retnet": d * d,
                 "baseconv": L * d, "hyena": L * d}[arch]
    return 2 * per_layer


def make_zoology() -> Results:
    """112 cells, 4 trials each (lrs 1e-4..1e-2, the third best); one failed cell, one not started."""
    trials, cells = [], {}
    for arch, built in ZOOLOGY.items():
        for L, pairs in ZOOLOGY_PAIRS.items():
            for d in (64, 128, 256, 512):
                key = cell_key(arch, L, d, 0)
                solves = ZOOLOGY_SOLVES[arch](L)
                top = 1.0 if solves and d >= solves else 0.2 + 0.5 * d / 512 - 0.15 * L / 512
                status = "complete"
                for k in range(4):
                    state = "FAIL" if key == ZOOLOGY_FAILED else "COMPLETE"
                    acc = round(max(0.01, min(1.0, top - 0.15 * abs(k - 2))) - 0.0001 * k, 5)
                    t = make_trial(arch, L, d, 0, k, state, "ValueError: boom" if state == "FAIL" else "",
                                   acc=acc, lr=10 ** (-4 + 2 * k / 3))
                    t.update(arch_built=built, num_kv_pairs=pairs, eval_seq_lens="", lr_low=1e-4, lr_high=1e-2,
                             state_size=zoology_state_size(arch, L, d) if state == "COMPLETE" else math.nan)
                    if key != ZOOLOGY_PENDING:
                        trials.append(t)
                if key == ZOOLOGY_FAILED:
                    status = "failed"
                if key == ZOOLOGY_PENDING:
                    status = "pending"
                cells[key] = {"sweep": "unit", "arch": arch, "status": status, "trials": 4, "expected_trials": 4}
    return assemble(trials, cells, times=(1,), pairs=None)


@pytest.fixture(scope="module")
def zoology():
    return make_zoology()


@pytest.fixture(scope="module")
def zoology_figures(zoology):
    return page.figures(zoology)


@pytest.fixture(scope="module")
def zoology_report(tmp_path_factory, zoology):
    path = tmp_path_factory.mktemp("report") / "zoology.html"
    write_report(zoology, str(path))
    return path


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
    return len(re.findall(r"<figure\b", fragment))


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


def test_a_cell_whose_trials_all_plateaued_shows_its_best_plateaued_trial_and_says_so():
    # the plateau rule stops a trial whose accuracy stopped rising: where no trial of a cell ran to its end, that
    # accuracy is the cell's result (BaseConv at L 64 in the shipped sweep); a median-pruned trial never counts,
    # and a COMPLETE trial beats a plateaued one that scored higher
    plateau = "plateau: accuracy 0.3000 has not risen 0.01 above 0.2950 since step 800"
    trials = [make_trial("mamba", 32, 32, 0, 0, "PRUNED", plateau, acc=0.25),
              make_trial("mamba", 32, 32, 0, 1, "PRUNED", plateau, acc=0.3),
              make_trial("mamba", 32, 32, 0, 2, "PRUNED", "pruned at step 100 by the median pruner", acc=0.9),
              make_trial("mamba", 32, 64, 0, 0, acc=0.5), make_trial("mamba", 32, 64, 0, 1, "PRUNED", plateau, acc=0.8),
              make_trial("mamba", 64, 32, 0, 0, "PRUNED", "pruned at step 100 by the median pruner", acc=0.7)]
    res = assemble(trials, {})
    cells = A.cell_table(res.trials, res.provenance).set_index(["seq_len", "d_model"])
    assert (cells.loc[(32, 32), "status"], cells.loc[(32, 32), "best_trial"]) == ("plateaued", 1)
    assert cells.loc[(32, 32), "accuracy"] == 0.3
    assert (cells.loc[(32, 64), "status"], cells.loc[(32, 64), "best_trial"]) == ("complete", 0)
    assert cells.loc[(64, 32), "status"] == "pruned" and math.isnan(cells.loc[(64, 32), "accuracy"])
    summary = {s.id: s for s in page.build(res.trials, res.tidy, res.curves, res.provenance, "r")}["summary"]
    notes = " ".join(str(n) for n in summary.notes)
    assert "Holes: 1 of 3 cells" in notes and "Plateaued: 1 of 3 cells" in notes


def test_best_per_column_is_highlighted_within_each_length_and_width(full_report):
    html = full_report.read_text()
    table = section(html, "best")
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    best_acc = {}
    for r in rows:
        cells = re.findall(r"<td([^>]*)>(.*?)</td>", r, re.S)
        arch = re.sub(r"<[^>]+>", "", cells[1][1])
        L, d = int(cells[2][1]), int(cells[3][1])
        if 'class="best-acc"' in cells[4][0]:
            best_acc.setdefault((L, d), []).append(arch)
        if 'class="best-state"' in cells[8][0]:  # state size: mamba's is the smallest everywhere
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


# -- MAD's aggregate ---------------------------------------------------------------------------------------------
#: a MAD store: level (a cell key's task part) -> task, training length, task fields; four of MAD's five tasks
MAD_LEVELS = {
    "in_context_recall-L128-vocab_size16": ("in_context_recall", 128, {"vocab_size": 16}),
    "in_context_recall-L128-vocab_size32": ("in_context_recall", 128, {"vocab_size": 32}),
    "in_context_recall-L256-vocab_size16": ("in_context_recall", 256, {"vocab_size": 16}),
    "noisy_recall-L128-frac_noise0.2": ("noisy_recall", 128, {"frac_noise": 0.2}),
    "noisy_recall-L128-frac_noise0.4": ("noisy_recall", 128, {"frac_noise": 0.4}),
    "copying-L256-num_tokens16": ("copying", 256, {"mode": "selective", "num_tokens": 16}),
    "copying-L256-num_tokens32": ("copying", 256, {"mode": "selective", "num_tokens": 32}),
    "memorization-L32-vocab_size256": ("memorization", 32, {"vocab_size": 256}),
}
#: in the same store, not MAD's: plain copying and MQAR
NOT_MAD = {"copying-L64-modecopy": ("copying", 64, {"mode": "copy", "num_tokens": 16}),
           "mqar-L64": ("mqar", 64, {})}
MAD_ARCHS = ("attention", "mamba", "hyena")
MAD_PENDING = "in_context_recall-L256-vocab_size16/mamba/d32"  # a setting: both seeds
MAD_PRUNED = "noisy_recall-L128-frac_noise0.2/attention/d32/seed0"


def mad_trials() -> tuple[list[dict], dict]:
    """Two seeds × two trials per cell, accuracies drawn at random; a pruned trial that scores higher than any
    complete one, and one level of mamba not started."""
    import random
    trials, cells = [], {}
    for level, (task, L, fields) in {**MAD_LEVELS, **NOT_MAD}.items():
        for arch, seed in itertools.product(MAD_ARCHS, (0, 1)):
            key = f"{level}/{arch}/d32/seed{seed}"
            pending = key.startswith(MAD_PENDING + "/")
            cells[key] = {"sweep": "unit", "arch": arch, "status": "pending" if pending else "complete",
                          "trials": 0 if pending else 2, "expected_trials": 2}
            if pending:
                continue
            for k in range(3 if key == MAD_PRUNED else 2):
                state = "PRUNED" if k == 2 else "COMPLETE"
                acc = 0.999 if k == 2 else round(random.Random(f"{key}/{k}").uniform(0.05, 0.95), 4)
                t = make_trial(arch, L, 32, seed, k, state, acc=acc, lr=(1e-3, 1e-2, 3e-3)[k])
                trials.append(t | {"task": task, "cell": key, "study": f"unit:{key}", "mode": None, **fields})
    return trials, cells


def expected_mad_scores(trials: list[dict]) -> dict[str, tuple[float, dict[str, float]]]:
    """arch -> (MAD score, task -> score), recomputed from the trials with loops: per seed the best complete
    trial, the mean over seeds per level, over levels per task, over tasks per arch."""
    best = {}
    for t in trials:
        level = t["cell"].split("/")[0]
        if t["state"] == "COMPLETE" and level in MAD_LEVELS:
            k = (t["arch"], level, t["seed"])
            best[k] = max(best.get(k, 0.0), t["accuracy"])
    out = {}
    for arch in MAD_ARCHS:
        per_task = {}
        for level, (task, _, _) in MAD_LEVELS.items():
            seeds = [v for (a, lv, _), v in best.items() if (a, lv) == (arch, level)]
            if seeds:
                per_task.setdefault(task, []).append(sum(seeds) / len(seeds))
        per_task = {task: sum(v) / len(v) for task, v in per_task.items()}
        out[arch] = (sum(per_task.values()) / len(per_task), per_task)
    return out


@pytest.fixture(scope="module")
def mad_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "mad.html"
    write_report(assemble(*mad_trials(), times=(1,), pairs=None), str(path))
    return path


def test_mad_score_is_the_mean_over_tasks_of_the_mean_over_levels():
    trials, cells = mad_trials()
    res = assemble(trials, cells, times=(1,), pairs=None)
    trials_df, tidy, _ = A.conform(res.trials, res.tidy, res.curves)
    levels = A.mad_levels(tidy, A.cell_table(trials_df, res.provenance), trials_df)
    assert set(levels["level"]) == set(MAD_LEVELS)  # plain copying and MQAR are not MAD's
    scores = A.mad_scores(levels).set_index("arch")
    assert list(scores.columns[4:]) == ["in_context_recall", "noisy_recall", "copying", "memorization"]
    for arch, (score, per_task) in expected_mad_scores(trials).items():
        assert scores.loc[arch, "score"] == pytest.approx(score, abs=1e-12), arch
        for task, value in per_task.items():
            assert scores.loc[arch, task] == pytest.approx(value, abs=1e-12), (arch, task)
        assert scores.loc[arch, "levels"] == len(MAD_LEVELS)
        assert scores.loc[arch, "levels_done"] == len(MAD_LEVELS) - (arch == "mamba")  # its pending level


def test_results_without_a_mad_task_have_no_mad_section(full_report):
    res = make_results()
    assert A.mad_levels(res.tidy, A.cell_table(res.trials, res.provenance), res.trials).empty
    assert '<section id="mad">' not in full_report.read_text()


def test_mad_section_follows_the_summary_with_scores_per_arch_and_task(mad_report):
    html = mad_report.read_text()
    assert re.findall(r'<section id="([^"]+)">', html)[:2] == ["summary", "mad"]
    mad = section(html, "mad")
    assert "hold 4 of MAD&#39;s 6 tasks (not here: fuzzy_recall, compression)" in mad and "selective copying" in mad
    tables = re.findall(r"<table.*?</table>", mad, re.S)
    assert len(tables) == 2
    body = re.findall(r"<tr>(.*?)</tr>", tables[0])[1:]
    rows = {re.sub(r"<[^>]+>", "", r.split("</td>")[0]).strip(): re.findall(r"<td[^>]*>(.*?)</td>", r) for r in body}
    marks = {re.sub(r"<[^>]+>", "", r.split("</td>")[0]).strip(): re.findall(r"<td([^>]*)>", r) for r in body}
    expected = expected_mad_scores(mad_trials()[0])
    assert set(rows) == set(MAD_ARCHS)
    for arch, (score, per_task) in expected.items():
        assert rows[arch][2] == f"{score:.3f}"
        assert rows[arch][3] == f"{len(MAD_LEVELS) - (arch == 'mamba')}/{len(MAD_LEVELS)}"
        assert rows[arch][4:] == [f"{per_task[t]:.3f}" for t in
                                  ("in_context_recall", "noisy_recall", "copying", "memorization")]
    marked = [arch for arch, r in marks.items() if 'class="best-acc"' in r[2]]
    assert marked == [max(expected, key=lambda a: expected[a][0])]  # the best score at the one width
    levels = tables[1]
    assert all(level in levels for level in MAD_LEVELS) and "modecopy" not in levels and "mqar" not in levels
    assert "fewer levels done" in mad  # mamba's pending level


# -- colours and order ---------------------------------------------------------------------------------------------
def hue_of(colour: str) -> tuple[float, float]:
    """(hue in degrees, saturation) of a #rrggbb colour."""
    import colorsys
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, _, sat = colorsys.rgb_to_hls(r, g, b)
    return 360 * h, sat


def hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def based_tradeoff_palette() -> F.Palette:
    from probe.sweep import load_sweep
    cells = load_sweep("sweeps/based_tradeoff.py").cells()
    return F.Palette([c.label for c in cells], {c.label: c.arch for c in cells})


def test_every_registered_mixer_has_a_family_with_its_own_hue_band():
    from probe.mixers import MIXERS
    for name, spec in MIXERS.items():
        assert A.arch_family(name) == spec.family and spec.family in F.FAMILY_HUES, name
    bands = [(f, b) for f, b in F.FAMILY_HUES.items() if b is not None]
    for (f1, (lo1, hi1)), (f2, (lo2, hi2)) in itertools.combinations(bands, 2):
        gap = min(hue_distance(x % 360, y % 360) for x in (lo1, hi1) for y in (lo2, hi2))
        overlap = lo2 % 360 <= lo1 % 360 <= hi2 % 360 or lo1 % 360 <= lo2 % 360 <= hi1 % 360
        assert gap >= 15 and not overlap, (f1, f2)


def test_no_two_families_share_a_colour():
    from probe.mixers import MIXERS
    palette = F.Palette([*MIXERS, "hyena,attention", "hyena,mamba"])
    assert palette["hyena,attention"].family == "hybrid"
    by_family = {}
    for arch in palette.order:
        by_family.setdefault(palette[arch].family, []).append(palette[arch].colour)
    for f1, f2 in itertools.combinations(by_family, 2):
        assert not set(by_family[f1]) & set(by_family[f2]), (f1, f2)
        for c1, c2 in itertools.product(by_family[f1], by_family[f2]):
            (h1, s1), (h2, s2) = hue_of(c1), hue_of(c2)
            assert min(s1, s2) < 0.1 or hue_distance(h1, h2) >= 10, (f1, c1, f2, c2)
    # within a family every member has its own colour, and marker and line style tell neighbours apart
    styles = [(palette[a].colour, palette[a].marker, palette[a].linestyle) for a in palette.order]
    assert len({c for c, _, _ in styles}) == len(styles)


def test_based_tradeoff_pairs_are_told_apart_by_family_colour():
    palette = based_tradeoff_palette()
    for a, b in (("attention", "mamba_s64"), ("hyena", "based_f16"), ("based_f8", "swa32")):
        assert palette[a].family != palette[b].family, (a, b)
        assert hue_distance(hue_of(palette[a].colour)[0], hue_of(palette[b].colour)[0]) >= 30, (a, b)
    # variants of one arch: a shade, a marker and a line style of their own
    for a, b in (("mamba_s16", "mamba_s64"), ("based_f8", "based_f16"), ("swa32", "swa128")):
        assert palette[a].family == palette[b].family
        assert palette[a].colour != palette[b].colour and palette[a].marker != palette[b].marker
        assert palette[a].linestyle != palette[b].linestyle


def test_legend_order_is_family_then_name_everywhere(zoology_figures):
    palette = based_tradeoff_palette()
    assert palette.order == ["attention", "swa32", "swa128", "based_f8", "based_f16", "gla", "mamba_s16",
                             "mamba_s64", "hyena"]
    assert A.arch_family("mamba_s64") == "ssm"  # a pending label, no trial to say what it builds: by its prefix
    assert A.arch_family("based", "baseconv_short,based") == "linear_attention"  # Zoology's hybrid keeps its name
    expected = ["attention", "based", "retnet", "h3", "mamba", "baseconv", "hyena"]
    for name in ("width-mqar", "state-mqar", "curves-mqar"):
        labels = [t.get_text() for t in zoology_figures[name].legends[0].texts]
        assert [x for x in labels if x in ZOOLOGY] == expected, name


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
    expected = {"summary": 0, "width": 1, "provenance": 0, "best": 0, "heatmaps": 1, "state": 1, "length": 2,
                "lr": 1, "slices": 1, "curves": 1, "importance": 0, "data": 0}
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
    for sid in ("summary", "width", "best", "heatmaps", "state", "length", "lr", "slices", "curves"):
        assert "nothing to draw" in section(html, sid), sid
    empty = Results(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {})
    write_report(empty, str(tmp_path / "bare.html"))
    assert "an empty report" in (tmp_path / "bare.html").read_text()


def plotted_x(ax) -> set[float]:
    """The x values of the data an Axes draws: lines and scatters in data coordinates (not axvline or spans)."""
    xs = {float(x) for line in ax.lines if line.get_transform() is ax.transData for x in line.get_xdata()}
    for c in ax.collections:
        if c.get_offset_transform() is ax.transData:
            xs |= {float(x) for x in np.asarray(c.get_offsets())[:, 0]}
    return xs


def assert_no_flat_panel(figures: dict) -> None:
    for name, fig in figures.items():
        for ax in fig.axes:
            xs = plotted_x(ax) if ax.get_visible() else set()
            assert len(xs) != 1, f"{name}: panel {ax.get_title()!r} has one x value"


def tick_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def test_the_report_opens_with_the_summary_then_zoologys_figure_2(zoology_report):
    html = zoology_report.read_text()
    ids = re.findall(r'<section id="([^"]+)">', html)
    assert ids[:3] == ["summary", "width", "best"] and ids[-2:] == ["provenance", "data"]
    summary = section(html, "summary")
    assert count_figures(summary) == 0 and "Holes: 2 of 112 cells" in summary
    assert "mqar: 3 of 7 archs solve it at every training length" in summary
    rows = {re.sub(r"<[^>]+>", "", r.split("</td>")[0]).strip(): r for r in re.findall(r"<tr>(.*?)</tr>", summary)}
    # based solves at d 128 everywhere, with its state at that width (2 layers × 36 × 128 = 9k)
    assert rows["based"].count('class="solved"') == 4 and "d 128 · state 9k" in rows["based"]
    assert 'class="solved"' not in rows["retnet"] and "0.30 at d 256" in rows["retnet"]  # d 512 at L 512: pending
    assert "Pareto frontier" in summary and "based d 128 (1.00 at 9k)" in summary
    assert count_figures(section(html, "width")) == 1


def test_zoology_figure_2_is_one_panel_per_length_ticked_at_the_widths(zoology, zoology_figures):
    fig = zoology_figures["width-mqar"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [f"trained at seq_len {L}" for L in (64, 128, 256, 512)]
    for ax in panels:
        assert ax.get_xscale() == "log" and tick_labels(ax) == ["64", "128", "256", "512"]
        low, high = ax.get_xlim()
        assert low < 64 and high > 512  # padded: no point on the frame
        assert len(ax.lines) == 7 or ax.get_title().endswith("512")  # one line per arch (retnet's d 512 pending)
    # each point is the best trial over the tuned learning rates
    t = zoology.trials
    best = t[(t["arch"] == "attention") & (t["seq_len"] == 64)].groupby("d_model")["accuracy"].max()
    attention = panels[0].lines[0]
    assert list(attention.get_xdata()) == [64, 128, 256, 512] and list(attention.get_ydata()) == list(best)


def test_no_report_draws_a_panel_with_one_x_value(zoology_figures):
    assert_no_flat_panel(zoology_figures)
    for res in (make_results(), make_partial()):
        assert_no_flat_panel(page.figures(res))


def test_one_value_views_are_named_in_one_line_instead_of_drawn(zoology_report):
    html = zoology_report.read_text()
    assert count_figures(section(html, "length")) == 0
    assert "evaluated at the training length only" in section(html, "length")
    assert count_figures(section(html, "slices")) == 0  # MQAR: one pair count per test set
    assert "num_kv_pairs takes one value in each test set" in section(html, "slices")


def test_axes_read_as_plain_numbers_and_state_sizes_in_k(zoology_figures):
    figures = page.figures(make_results())
    length = [ax for ax in figures["length-mqar"].axes if ax.get_visible()][0]
    assert tick_labels(length) == ["32", "64", "128"]
    for ax in figures["slices-mqar-num-kv-pairs"].axes:
        if ax.get_visible():
            assert tick_labels(ax) == ["2", "4"]
    for ax in zoology_figures["state-mqar"].axes:
        if ax.get_visible():
            labels = tick_labels(ax)
            assert len(labels) >= 2 and all(re.fullmatch(r"\d+(\.\d+)?[kM]?", t) for t in labels), labels
            assert "k" in "".join(labels)
    assert [F.fmt_count(v) for v in (512, 1024, 2048, 6144, 2 ** 20)] == ["512", "1k", "2k", "6k", "1M"]


def test_best_table_gives_each_kind_of_best_its_own_colour(full_report):
    html = full_report.read_text()
    best = section(html, "best")
    marks = {css: re.search(rf"td\.{css}, span\.{css} {{ background: (#[0-9a-f]+)", html).group(1)
             for css, _ in page.BEST_MARKS.values()}
    assert len(set(marks.values())) == 4
    for css, what in page.BEST_MARKS.values():
        assert f'class="{css}"' in best and f'<span class="mark {css}">{what}</span>' in best


def test_lr_legend_lists_only_what_occurs():
    def legend(res) -> list[str]:
        return [t.get_text() for t in page.figures(res)["lr"].legends[0].texts]
    assert legend(make_results()) == ["trained at 32", "trained at 64", "pruned", "tuned lr"]
    no_pruned = [make_trial("attention", 32, 32, 0, k) for k in range(3)]
    assert legend(assemble(no_pruned, {})) == ["trained at 32", "tuned lr"]
    at_edge = [make_trial("attention", 32, 32, 0, 0, lr=3e-2, acc=0.99), make_trial("attention", 32, 32, 0, 1)]
    assert legend(assemble(at_edge, {})) == ["trained at 32", "tuned lr at an edge"]
    both = [*at_edge, make_trial("attention", 32, 64, 0, 0), make_trial("attention", 32, 64, 0, 1)]
    assert legend(assemble(both, {})) == ["trained at 32", "tuned lr", "tuned lr at an edge"]


def test_the_solved_threshold_is_the_sweeps_stop_at():
    res = make_results()
    res.provenance["sweeps"][0]["stop_at"] = 0.9
    sections = {s.id: s for s in page.build(res.trials, res.tidy, res.curves, res.provenance, "r")}
    assert "≥ 0.9 (the sweep's stop_at)" in sections["summary"].notes[0]
    solved = sections["summary"].blocks[0]
    attention = next(r for r in solved.rows if r[0].text == "attention")
    # 0.906 at L 32 from d 32 on; at most 0.856 at L 64
    assert [(c.css, c.text) for c in attention[1:]] == [("solved", "d 32 · state 4k"), ("unsolved", "0.86 at d 64")]


def test_long_sections_fold_and_the_summary_never_does(zoology_report):
    html = zoology_report.read_text()
    assert "<details>" not in section(html, "summary")
    best = section(html, "best")
    assert re.search(r"<details>\s*<summary>show 1 table: 112 settings</summary>", best)
    assert best.count("<tr>") == 113  # folded, not dropped


def test_write_figures_writes_each_figure_as_a_file(tmp_path):
    res = make_results()
    paths = page.write_figures(res, str(tmp_path / "figs"), "pdf")
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "width-mqar.pdf" and {n.removesuffix(".pdf") for n in names} == PROMISED["full"]
    for p in paths:
        assert Path(p).read_bytes().startswith(b"%PDF")
    sections = page.build(res.trials, res.tidy, res.curves, res.provenance, "r")  # what write_report draws
    svg = page.save_figures(sections, str(tmp_path / "svg"), "svg")
    assert all(b"<svg" in Path(p).read_bytes()[:400] for p in svg)
    png = page.save_figures(sections, str(tmp_path / "png"), "png")
    assert all(Path(p).read_bytes().startswith(b"\x89PNG") for p in png)
    with pytest.raises(ProbeError, match="choose one of pdf, svg, png"):
        page.write_figures(res, str(tmp_path / "x"), "jpg")
    (tmp_path / "file").write_text("")
    with pytest.raises(ProbeError, match="is a file"):
        page.write_figures(res, str(tmp_path / "file"), "pdf")


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
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep() -> Sweep:
    return Sweep(name="tiny", tasks=[MQAR(seq_len=16, vocab_size=16, num_kv_pairs=2, eval_seq_lens=(32,))],
                 archs=["attention", "mamba2"], d_models=(16, 32), n_layers=1,
                 train=TrainConfig(batch_size=16, max_steps=6, warmup_steps=1, num_train=64, num_test=32,
                                   val_every=3, device="cpu"),
                 search=SearchSpace(lr=(1e-3, 1e-2)), trials_per_cell=1)
'''


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """Four tiny cells (attention and mamba2 at two widths, one trial each) trained for real: the folder holds
    before.html (reported before anything ran) and reports/tiny.html (after)."""
    tmp = tmp_path_factory.mktemp("real")
    sweep_file = tmp / "tiny.py"
    sweep_file.write_text(SWEEP)
    storage = str(tmp / "journal.log")
    main([str(sweep_file), "--storage", storage, "-o", str(tmp / "before.html")])  # nothing has run yet
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "probe", "sweep", str(sweep_file), "--storage", storage,
                          "--device", "cpu", "--workers", "1"], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp)
    assert run.returncode == 0, run.stderr[-2000:]
    main([str(sweep_file), "--storage", storage, "-o", str(tmp / "reports" / "tiny.html")])
    return tmp


#: the figures each report promises, by element id (the names `write_figures` gives their files)
PROMISED = {
    "full": {"width-mqar", "heatmaps-mqar", "state-mqar", "length-mqar", "length-mqar-schemes", "lr",
             "slices-mqar-num-kv-pairs", "curves-mqar"},
    "zoology": {"width-mqar", "heatmaps-mqar", "state-mqar", "lr", "curves-mqar"},
    "real": {"width-mqar", "heatmaps-mqar", "state-mqar", "length-mqar", "curves-mqar"},
}


@pytest.mark.slow
def test_report_from_a_real_sweep(real_sweep):
    before = section((real_sweep / "before.html").read_text(), "provenance")
    assert "Holes: 4 cells" in before and before.count("not started") == 4
    html = (real_sweep / "reports" / "tiny.html").read_text()
    assert "No holes" in section(html, "provenance")
    assert set(re.findall(r'<figure id="fig-([^"]+)"', html)) == PROMISED["real"]
    assert "mamba2" in section(html, "best") and "attention" in section(html, "best")
    # one trial per cell: one learning rate per panel, so no sensitivity figure, and a line that says so
    assert count_figures(section(html, "lr")) == 0 and "one learning rate ran" in section(html, "lr")
    assert "num_kv_pairs takes one value in each test set" in section(html, "slices")


#: tiny configurations of the shipped MAD and state-tracking sweeps: their tasks (a subset of MAD's levels) and
#: their protocol (MAD's learning-rate grid, state tracking's lengths), at d_model 16 for a few steps
TINY_SUITES = {
    "mad_tiny": '''
import dataclasses, runpy
from probe.sweep import SearchSpace
from probe.config import TrainConfig

MAD = runpy.run_path({path!r})


def sweep():
    kept = {{}}
    for t in MAD["TASKS"]:  # each task's baseline; in_context_recall's first harder level too
        kept.setdefault(t.name, [])
        if len(kept[t.name]) < (2 if t.name == "in_context_recall" else 1):
            kept[t.name].append(t)
    return dataclasses.replace(
        MAD["sweep"](), name="mad_tiny", tasks=[t for ts in kept.values() for t in ts], archs=["attention", "mamba"],
        d_models=(16,), epochs=None, train_per_seq_len={{}}, train_per_task={{}},
        search=SearchSpace(lr_grid=(1e-3, 1e-2)), trials_per_cell=2,
        train=TrainConfig(batch_size=16, max_steps=3, warmup_steps=1, num_train=32, num_test=32, val_every=3,
                          stop_at=None, weight_decay=0.0, device="cpu"))
''',
    "state_tracking_tiny": '''
import dataclasses, runpy
from probe.sweep import SearchSpace
from probe.config import TrainConfig


def sweep():
    return dataclasses.replace(
        runpy.run_path({path!r})["sweep"](), name="state_tracking_tiny", archs=["attention", "mamba"],
        d_models=(16,), epochs=None, search=SearchSpace(lr=(1e-3, 1e-2)), trials_per_cell=1,
        train=TrainConfig(batch_size=16, max_steps=3, warmup_steps=1, num_train=32, num_test=32, val_every=3,
                          stop_at=None, device="cpu"))
''',
}
SUITE_FILES = {"mad_tiny": "mad.py", "state_tracking_tiny": "state_tracking.py"}


@pytest.fixture(scope="module")
def real_suites(tmp_path_factory) -> Path:
    """Both suites trained for real into one journal (14 + 8 tiny cells, about 40 s on 2 cores), then one
    report of the two: the folder holds suites.html."""
    tmp = tmp_path_factory.mktemp("suites")
    repo = Path(__file__).resolve().parents[1] / "sweeps"
    storage = str(tmp / "journal.log")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    files = []
    for name, body in TINY_SUITES.items():
        files.append(tmp / f"{name}.py")
        files[-1].write_text(body.format(path=str(repo / SUITE_FILES[name])))
        run = subprocess.run([sys.executable, "-m", "probe", "sweep", str(files[-1]), "--storage", storage,
                              "--device", "cpu", "--workers", "1"], capture_output=True, text=True, env=env,
                             timeout=300, cwd=tmp)
        assert run.returncode == 0, run.stderr[-2000:]
    main([*map(str, files), "--storage", storage, "-o", str(tmp / "suites.html")])
    return tmp


@pytest.mark.slow
def test_tiny_mad_and_state_tracking_sweeps_render_in_one_report(real_suites):
    from probe.results import load_results
    html = (real_suites / "suites.html").read_text()
    assert "No holes" in section(html, "provenance")
    # MAD: one row per arch over all 7 levels of the 6 tasks, each score the mean over tasks of the mean over levels
    mad = section(html, "mad")
    assert "over 7 levels of 6 tasks" in mad
    res = load_results([str(real_suites / f"{n}.py") for n in TINY_SUITES], str(real_suites / "journal.log"))
    t = res.trials[(res.trials["state"] == "COMPLETE") & (res.trials["sweep"] == "mad_tiny")]
    for arch in ("attention", "mamba"):
        best = t[t["arch"] == arch].groupby(["task", "cell"])["accuracy"].max()
        score = best.groupby("task").mean().mean()
        row = re.search(rf"</span>{arch}</td>(.*?)</tr>", mad).group(1)
        assert re.findall(r"<td[^>]*>(.*?)</td>", row)[1:3] == [f"{score:.3f}", "7/7"]
    # state tracking: trained at 64, tested to 512, one curve per group
    groups = {"parity", "modular", "s3", "s5"}
    lengths = set(re.findall(r'<figure id="fig-length-state-tracking-[^"]*group-([a-z0-9]+)"', html))
    assert lengths == groups
    assert '<section id="mad">' in html and html.index('<section id="mad">') < html.index('<section id="width">')


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


def rendered(page_path: Path, tmp_path: Path, script: str = "") -> str:
    """The DOM Chromium builds of the page (with `script` run at its end), after asserting it logged nothing."""
    html = page_path.read_text()
    if script:
        page_path = tmp_path / page_path.name
        page_path.write_text(html.replace("</body>", f"<script>{script}</script></body>"))
    dom = chromium(page_path.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0 and console_messages(dom.stderr) == [], dom.stderr[-2000:]
    return dom.stdout


def assert_every_promised_figure_drawn(dom: str, promised: set[str]) -> None:
    ids = re.findall(r'<figure id="fig-([^"]+)">\s*(?:<figcaption>.*?</figcaption>\s*)?<(svg|img)\b', dom, re.S)
    assert {i for i, _ in ids} == promised


def assert_families_have_their_own_colours(dom: str, built: dict[str, str]) -> None:
    """The swatches of the best-configuration table: one colour per arch, no colour in two families."""
    swatches = re.findall(r'<span class="swatch" style="background:\s*([^;"]+);?"></span>([^<]+)</td>',
                          section(dom, "best"))
    colour = dict((arch.strip(), c.strip()) for c, arch in swatches)
    assert set(colour) == set(built)
    families = {}
    for arch, c in colour.items():
        families.setdefault(A.arch_family(arch, built[arch]), set()).add(c)
    for f1, f2 in itertools.combinations(families, 2):
        assert not families[f1] & families[f2], (f1, f2)


PAGE_HEIGHTS = "document.body.setAttribute('data-height', document.body.scrollHeight);" \
               "document.body.setAttribute('data-summary', document.getElementById('summary').offsetHeight);"


@needs_chromium
def test_zoology_store_renders_in_chromium_short_and_in_family_colours(zoology_report, tmp_path):
    dom = rendered(zoology_report, tmp_path, PAGE_HEIGHTS)
    assert_every_promised_figure_drawn(dom, PROMISED["zoology"])
    assert_families_have_their_own_colours(dom, ZOOLOGY)
    summary = int(re.search(r'data-summary="(\d+)"', dom).group(1))
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    assert summary < 900, "the summary no longer fits one screen"
    assert height < 7000, f"the page opens {height} px tall"


@needs_chromium
@pytest.mark.slow
def test_real_sweep_report_renders_in_chromium(real_sweep, tmp_path):
    dom = rendered(real_sweep / "reports" / "tiny.html", tmp_path)
    assert_every_promised_figure_drawn(dom, PROMISED["real"])
    assert_families_have_their_own_colours(dom, {"attention": "attention", "mamba2": "mamba2"})


@needs_chromium
def test_mad_report_renders_in_chromium(mad_report, tmp_path):
    dom = rendered(mad_report, tmp_path)
    mad = section(dom, "mad")
    assert len(re.findall(r"<table\b", mad)) == 2 and mad.count("<tr>") == 1 + len(MAD_ARCHS) + 1 + len(MAD_LEVELS)


@needs_chromium
@pytest.mark.slow
def test_tiny_suites_report_renders_in_chromium(real_suites, tmp_path):
    dom = rendered(real_suites / "suites.html", tmp_path)
    figures = set(re.findall(r'<figure id="fig-([^"]+)"', (real_suites / "suites.html").read_text()))
    assert_every_promised_figure_drawn(dom, figures)
    assert len(re.findall(r"<table\b", section(dom, "mad"))) == 2


@needs_chromium
def test_report_renders_in_chromium_without_console_errors(full_report, tmp_path):
    shot = tmp_path / "shot.png"
    out = chromium(full_report.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,3000")
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    assert console_messages(out.stderr) == []
    dom = chromium(full_report.as_uri(), tmp_path, "--dump-dom")
    assert console_messages(dom.stderr) == []
    for sid, n in {"width": 1, "heatmaps": 1, "state": 1, "length": 2, "lr": 1, "slices": 1, "curves": 1}.items():
        figures = section(dom.stdout, sid)
        assert len(re.findall(r"<svg\b", figures)) + len(re.findall(r"<img\b", figures)) == n, sid
    assert_every_promised_figure_drawn(dom.stdout, PROMISED["full"])
    assert_families_have_their_own_colours(dom.stdout, {a: a for a in ARCHS})
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


@pytest.mark.slow
def test_report_figures_flag_writes_each_figure_as_a_pdf(real_sweep, tmp_path):
    main([str(real_sweep / "tiny.py"), "--storage", str(real_sweep / "journal.log"), "-o", str(tmp_path / "r.html"),
          "--figures", str(tmp_path / "figs"), "--format", "pdf"])
    files = sorted((tmp_path / "figs").iterdir())
    assert {f.stem for f in files} == PROMISED["real"]
    assert all(f.read_bytes().startswith(b"%PDF") for f in files)
