"""The `probe` command as a user runs it: a subprocess, its stdout, stderr and exit code."""
import json
import os
import re
import subprocess
import sys

import pytest

from probe.mixers import MIXERS
from tasks import TASKS


def probe(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sample_prints_valid_examples_of_every_task(task):
    out = probe("sample", task, "-n", "3", "--seed", "7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        ex = json.loads(line)
        seq_len = TASKS[task]().seq_len
        assert len(ex["inputs"]) == len(ex["targets"]) == seq_len
        assert any(t != -100 for t in ex["targets"]), "an example with nothing to score"
        assert isinstance(ex["slices"], dict)
    assert probe("sample", task, "-n", "3", "--seed", "7").stdout == out.stdout


def test_sample_takes_task_flags():
    out = probe("sample", "mqar", "--seq-len", "16", "--vocab-size", "16", "--num-kv-pairs", "2", "-n", "1")
    ex = json.loads(out.stdout)
    assert len(ex["inputs"]) == 16 and sum(t != -100 for t in ex["targets"]) == 2


def test_list_archs_shows_every_mixer_with_its_formula():
    out = probe("list", "archs")
    assert out.returncode == 0, out.stderr
    for name, spec in MIXERS.items():
        line = next((l for l in out.stdout.splitlines() if l.split()[:1] == [name]), None)
        assert line is not None, f"{name} missing from `probe list archs`"
        assert spec.cls.formula in line


def test_list_tasks_shows_every_task_and_its_chance():
    out = probe("list", "tasks")
    for name in TASKS:
        assert any(l.startswith(name) and "chance" in l for l in out.stdout.splitlines())


def test_bench_measures_tasks_and_mixers_on_the_cpu():
    out = probe("bench", "tasks", "--device", "cpu", "-n", "50", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert all(re.search(rf"^{t} +n= +50 .* s$", out.stdout, re.M) for t in ("mqar", "passkey", "copying", "order"))
    out = probe("bench", "mixers", "--device", "cpu", "--archs", "based,attention", "--seq-len", "33", "--batch", "2",
                "--d-model", "16", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert all(re.search(rf"^{a} +[\d.]+ ms fwd\+bwd +[\d.]+ M tok/s$", out.stdout, re.M) for a in ("based", "attention"))
    out = probe("bench", "ops", "--device", "cpu", "--archs", "rotary,short_conv", "--seq-len", "33", "--batch", "2",
                "--d-model", "16", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert all(re.search(rf"^{o} +fwd\+bwd reference +[\d.]+ ms +kernel needs CUDA$", out.stdout, re.M)
               for o in ("rotary", "short_conv"))


def test_bench_step_says_where_a_packs_step_goes():
    out = probe("bench", "step", "--device", "cpu", "--archs", "attention", "--pack", "2", "--seq-len", "16",
                "--repeats", "1", "--top", "3")
    assert out.returncode == 0, out.stderr
    head = re.search(r"^attention +L=16 +K=2 +step +([\d.]+) ms \(eager\), +[\d.]+ M tok/s; aten ops ([\d.]+) "
                     r"ms/step of their own$", out.stdout, re.M)
    assert head and float(head[1]) > 0 and float(head[2]) > 0, out.stdout
    ops = re.findall(r"^ +([\d.]+) ms +\d+/step  aten::\w+$", out.stdout, re.M)
    assert len(ops) == 3 and sorted(map(float, ops), reverse=True) == list(map(float, ops))  # the top 3, largest first


def test_train_writes_the_json_record(tmp_path):
    path = tmp_path / "r.json"
    out = probe("train", "--task", "mqar", "--arch", "attention", "--vocab-size", "32", "--seq-len", "16",
                "--num-kv-pairs", "2", "--eval-seq-lens", "32", "--d-model", "16", "--max-steps", "6",
                "--num-train", "64", "--num-test", "32", "--val-every", "3", "--device", "cpu", "--no-progress",
                "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout.splitlines()[0] and str(path) in out.stdout
    r = json.loads(path.read_text())
    for field in ("accuracy", "per_example_accuracy", "exact_match", "by_length", "state_size", "params",
                  "train_tokens_per_s", "wall_time_s", "seed", "versions", "history"):
        assert field in r, field
    assert set(r["by_length"]) == {"16", "32"}
    assert "num_kv_pairs" in r["by_length"]["16"]["slices"]
    assert r["steps"] == 6 and [h["step"] for h in r["history"]] == [3, 6]


def test_mixer_flags_reach_the_mixer(tmp_path):
    path = tmp_path / "r.json"
    out = probe("train", "--task", "mqar", "--arch", "mamba", "--vocab-size", "32", "--seq-len", "16",
                "--num-kv-pairs", "2", "--d-model", "16", "--d-state", "4", "--max-steps", "1", "--num-train",
                "16", "--num-test", "16", "--device", "cpu", "--no-progress", "--json", str(path))
    assert out.returncode == 0, out.stderr
    r = json.loads(path.read_text())
    assert r["mixer_options"] == {"d_state": 4}
    assert r["state_size"] == 2 * (2 * 16) * 4  # 2 layers · d_inner · d_state


TRAIN = ["train", "--device", "cpu", "--max-steps", "1"]


@pytest.mark.parametrize("args,names", [
    (TRAIN + ["--task", "nope", "--arch", "attention"], "unknown task 'nope'"),
    (TRAIN + ["--task", "mqar", "--arch", "transformerxl"], "unknown arch 'transformerxl'"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--seq-len", "16", "--num-kv-pairs", "8"], "num_kv_pairs"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--vocab-size", "8", "--num-kv-pairs", "8"], "vocab_size"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--d-model", "0"], "d_model=0"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--seq-len", "0"], "seq_len=0"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--batch-size", "-1"], "batch_size=-1"),
    (TRAIN + ["--task", "mqar", "--arch", "gqa", "--n-kv-heads", "3"], "n_kv_heads"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--d-model", "abc"], "--d-model"),
    (TRAIN + ["--task", "mqar", "--arch", "attention", "--json", "/nonexistent-dir/r.json"], "--json"),
    (["sample", "nope"], "unknown task 'nope'"),
    (["sample", "passkey", "--seq-len", "4"], "passkey"),
    (["list", "things"], "things"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_bad_input_is_one_line_and_exit_2(args, names, tmp_path):
    out = probe(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: error:"), out.stderr
    assert names in lines[0]
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == [], "a failed command left files behind"
