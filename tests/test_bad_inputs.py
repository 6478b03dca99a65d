"""Every bad input is refused before any work: exit code 2, one line on stderr starting "probe: error:", naming
what is wrong, and nothing written. Run in-process through `probe.cli.main`, so a table of hundreds stays fast;
the inputs (sweep files, a damaged journal) are real files in a folder of their own, which must not change."""
import dataclasses
import importlib.util
import os
import typing

import optuna
import pytest
import torch

from probe.cli import main
from probe.flags import _optional
from probe.mixers import MIXERS
from probe.model import mixer_options
from probe.storage import open_storage
from tasks import TASKS

NO_GPU = not torch.cuda.is_available()
NO_TENSORBOARD = not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
IN = "{inputs}"  # the inputs folder, filled in per test

# -- sweep files: one good, and bad ones made from it by one replacement each -----------------------------------
GOOD = '''import sys
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep():
    return Sweep(name="good", tasks=[MQAR(seq_len=8, vocab_size=16, num_kv_pairs=2)], archs=["attention"],
                 d_models=(8,), train=TrainConfig(batch_size=8, max_steps=4, warmup_steps=0, num_train=16,
                                                  num_test=8, val_every=2, stop_at=None),
                 search=SearchSpace(lr=(1e-3, 1e-2)), trials_per_cell=1, pruner="none")
'''

BAD_SWEEPS = {  # name: (replace, with, what the message names)
    "search_is_a_tuple": ("search=SearchSpace(lr=(1e-3, 1e-2))", "search=(1e-3, 1e-2)", "search=(0.001, 0.01)"),
    "trials_per_cell_is_a_str": ("trials_per_cell=1", 'trials_per_cell="2"', "trials_per_cell='2'"),
    "trials_per_cell_is_0": ("trials_per_cell=1", "trials_per_cell=0", "trials_per_cell=0"),
    "trials_per_cell_is_a_bool": ("trials_per_cell=1", "trials_per_cell=True", "trials_per_cell=True"),
    "name_is_an_int": ('name="good"', "name=123", "name=123"),
    "name_is_dotdot": ('name="good"', 'name=".."', "name must be"),
    "name_has_a_slash": ('name="good"', 'name="a/b"', "name must be"),
    "name_is_empty": ('name="good"', 'name=""', "name must be"),
    "d_models_is_an_int": ("d_models=(8,)", "d_models=16", "d_models=16"),
    "d_models_is_empty": ("d_models=(8,)", "d_models=()", "'d_models' is empty"),
    "d_model_is_0": ("d_models=(8,)", "d_models=(0,)", "d_model=0"),
    "d_model_cannot_be_allocated": ("d_models=(8,)", "d_models=(10**9,)", "GiB"),
    "seeds_are_strs": ('pruner="none"', 'pruner="none", seeds=("a",)', "seeds=('a',)"),
    "seed_is_negative": ('pruner="none"', 'pruner="none", seeds=(-1,)', "seeds: -1"),
    "pruner_is_unknown": ('pruner="none"', 'pruner="hyperband"', "pruner='hyperband'"),
    "pruner_patience_is_0": ('pruner="none"', 'pruner="patient", pruner_patience=0', "pruner_patience=0"),
    "pruner_patience_is_a_float": ('pruner="none"', 'pruner="patient", pruner_patience=2.5', "pruner_patience=2.5"),
    "channel_mixer_is_unknown": ('pruner="none"', 'pruner="none", channel_mixer="moe"', "channel_mixer='moe'"),
    "lr_high_is_inf": ("lr=(1e-3, 1e-2)", 'lr=(1e-3, float("inf"))', "search.lr"),
    "lr_low_is_nan": ("lr=(1e-3, 1e-2)", 'lr=(float("nan"), 1e-2)', "search.lr"),
    "lr_range_is_reversed": ("lr=(1e-3, 1e-2)", "lr=(1e-2, 1e-3)", "search.lr"),
    "lr_is_one_number": ("lr=(1e-3, 1e-2)", "lr=1e-3", "search.lr"),
    "weight_decay_range_is_inf": ("lr=(1e-3, 1e-2)", 'lr=(1e-3, 1e-2), weight_decay=(0.0, float("inf"))',
                                  "search.weight_decay"),
    "lr_grid_holds_nan": ("lr=(1e-3, 1e-2)", 'lr_grid=(float("nan"),)', "search.lr_grid"),
    "train_lr_is_inf": ("batch_size=8,", 'batch_size=8, lr=float("inf"),', "lr=inf"),
    "train_weight_decay_is_nan": ("batch_size=8,", 'batch_size=8, weight_decay=float("nan"),', "weight_decay=nan"),
    "train_lr_is_a_str": ("batch_size=8,", 'batch_size=8, lr="fast",', "lr='fast'"),
    "train_num_train_cannot_be_allocated": ("num_train=16", "num_train=10**12", "GiB"),
    "train_is_a_dict": ("train=TrainConfig(", "train=dict(", "train={"),
    "epochs_is_inf": ('pruner="none"', 'pruner="none", epochs=float("inf")', "epochs=inf"),
    "train_per_seq_len_sets_a_str": ('pruner="none"', 'pruner="none", train_per_seq_len={8: {"batch_size": "x"}}',
                                     "batch_size='x'"),
    "task_power_a_is_inf": ("num_kv_pairs=2)", 'num_kv_pairs=2, power_a=float("inf"))', "power_a=inf"),
    "task_seq_len_cannot_be_allocated": ("seq_len=8,", "seq_len=10**9,", "GiB"),
    "tasks_are_strs": ("tasks=[MQAR(seq_len=8, vocab_size=16, num_kv_pairs=2)]", 'tasks=["mqar"]', "tasks=['mqar']"),
    "arch_is_unknown": ('archs=["attention"]', 'archs=["nosuch"]', "unknown arch 'nosuch'"),
    "arch_label_has_a_slash": ('archs=["attention"]', 'archs={"a/b": {"arch": "attention"}}', "'a/b'"),
    "mixer_option_is_inf": ('archs=["attention"]', 'archs={"a": {"arch": "attention", "rope_base": float("inf")}}',
                            "rope_base=inf"),
    "mixer_option_is_a_str": ('archs=["attention"]', 'archs={"a": {"arch": "attention", "rope_base": "big"}}',
                              "rope_base='big'"),
    "mixer_option_is_unknown": ('archs=["attention"]', 'archs={"a": {"arch": "attention", "d_state": 4}}',
                                "d_state"),
    "file_calls_sys_exit": ("import sys", "import sys\nsys.exit(3)", "sys.exit(3)"),
    "sweep_calls_sys_exit": ("    return Sweep(", "    sys.exit(0)\n    return Sweep(", "sys.exit(0)"),
    "sweep_takes_an_argument": ("def sweep():", "def sweep(x):", "no arguments"),
    "sweep_misses_a_field": ("d_models=(8,),", "", "missing field 'd_models'"),
    "sweep_returns_a_dict": ("    return Sweep(", "    return dict(", "returned dict"),
    "syntax_error": ("def sweep():", "def sweep(:", "syntax_error.py:7"),
    "no_sweep_function": ("def sweep():", "def make():", "defines no function sweep()"),
    "raises_in_sweep": ("    return Sweep(", "    1 / 0\n    return Sweep(", "ZeroDivisionError"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The folder of inputs: good.py, one file per bad sweep, a folder named like a sweep file, a real journal
    with an undecodable line in the middle."""
    where = tmp_path_factory.mktemp("inputs")
    (where / "good.py").write_text(GOOD)
    for name, (old, new, _) in BAD_SWEEPS.items():
        assert old in GOOD, name
        (where / f"{name}.py").write_text(GOOD.replace(old, new, 1))
    (where / "folder.py").mkdir()
    (where / "folder").mkdir()
    journal = str(where / "broken.log")
    study = optuna.create_study(study_name="good:x", storage=open_storage(journal))
    for _ in range(3):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1e-2, log=True)
        study.tell(trial, 0.5)
    lines = open(journal, "rb").read().splitlines(keepends=True)
    lines[len(lines) // 2] = b"{not json\n"
    (where / "broken.log").write_bytes(b"".join(lines))
    (where / "export.csv").write_text("a,b\n1,2\n")
    return where


def snapshot(folder) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# -- the table ---------------------------------------------------------------------------------------------------
TINY = ["--device", "cpu", "--max-steps", "1", "--num-train", "8", "--num-test", "8", "--batch-size", "8",
        "--seq-len", "16", "--vocab-size", "16", "--num-kv-pairs", "2", "--d-model", "8"]


def train(*flags, arch="attention", task="mqar"):
    return ["train", "--task", task, "--arch", arch, *(TINY if task == "mqar" else ["--device", "cpu"]), *flags]


CASES = []


def case(name: str, argv: list[str], names: str, when: bool = True):
    if when:
        CASES.append(pytest.param(argv, names, id=name))


# top level
case("unknown-command", ["frobnicate"], "unknown command 'frobnicate'")
case("list-things", ["list", "things"], "things")
case("list-nothing", ["list"], "required")

# train: NaN and inf of every float flag, for the first arch or task that has it
for opt in dict.fromkeys(o for name in sorted(MIXERS) for o, (tp, _) in mixer_options(name).items()
                         if _optional(tp)[0] is float):
    arch = next(n for n in sorted(MIXERS) if opt in mixer_options(n))
    for value in ("nan", "inf", "-inf"):
        case(f"train-{arch}-{opt}-{value}", train(f"--{opt.replace('_', '-')}", value, arch=arch),
             f"--{opt.replace('_', '-')}")
for task_name, cls in sorted(TASKS.items()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _optional(hints[f.name])[0] is float:
            flag = f"--{f.name.replace('_', '-')}"
            case(f"train-{task_name}-{f.name}-inf", train(flag, "inf", task=task_name), flag)
            case(f"sample-{task_name}-{f.name}-nan", ["sample", task_name, flag, "nan"], flag)
for flag in ("--lr", "--weight-decay", "--stop-at"):
    for value in ("nan", "inf", "-inf"):
        case(f"train{flag}-{value}", train(flag, value), flag)

# train: sizes that cannot be allocated, ranges, types, names
case("train-d-model-1e9", train("--d-model", "1000000000"), "GiB")
case("train-d-model-float", train("--d-model", "1e9"), "--d-model")
case("train-seq-len-1e9", train("--seq-len", "1000000000"), "GiB")
case("train-num-train-1e12", train("--num-train", "1000000000000"), "GiB")
case("train-num-test-1e12", train("--num-test", "1000000000000"), "GiB")
case("train-eval-length-1e9", train("--eval-seq-lens", "1000000000"), "GiB")
case("train-batch-size-1e12", train("--batch-size", "1000000000000"), "GiB")
case("train-d-state-1e9", train("--d-state", "1000000000", arch="mamba"), "GiB")
case("train-seed-negative", train("--seed", "-1"), "seed=-1")
case("train-seed-2-to-the-32", train("--seed", str(2**32)), "seed=4294967296")
case("train-seed-not-an-int", train("--seed", "one"), "--seed")
case("train-d-model-0", train("--d-model", "0"), "d_model=0")
case("train-d-model-negative", train("--d-model", "-1"), "d_model=-1")
case("train-n-layers-0", train("--n-layers", "0"), "n_layers=0")
case("train-pattern-longer-than-layers", train("--n-layers", "1", arch="attention,mamba"), "n_layers=1")
case("train-seq-len-0", train("--seq-len", "0"), "seq_len=0")
case("train-batch-size-0", train("--batch-size", "0"), "batch_size=0")
case("train-max-steps-0", train("--max-steps", "0"), "max_steps=0")
case("train-num-train-0", train("--num-train", "0"), "num_train=0")
case("train-val-every-0", train("--val-every", "0"), "val_every=0")
case("train-warmup-negative", train("--warmup-steps", "-1"), "warmup_steps")
case("train-lr-0", train("--lr", "0"), "lr=0")
case("train-lr-negative", train("--lr=-1e-3"), "lr=-0.001")
case("train-weight-decay-negative", train("--weight-decay", "-1"), "weight_decay")
case("train-stop-at-0", train("--stop-at", "0"), "stop_at=0")
case("train-stop-at-2", train("--stop-at", "2"), "stop_at=2")
case("train-lr-not-a-number", train("--lr", "fast"), "--lr")
case("train-device-tpu", train("--device", "tpu"), "--device")
case("train-device-cuda-without-a-gpu", train("--device", "cuda"), "cuda", when=NO_GPU)
case("train-channel-mixer-unknown", train("--channel-mixer", "moe"), "--channel-mixer")
case("train-unknown-task", ["train", "--task", "nope", "--arch", "attention", "--num-kv-pairs", "2"],
     "unknown task 'nope'")
case("train-unknown-arch", ["train", "--task", "mqar", "--arch", "nosuch", "--d-state", "4"],
     "unknown arch 'nosuch'")
case("train-unknown-arch-in-a-pattern", train(arch="attention,nosuch"), "unknown arch 'nosuch'")
case("train-empty-arch", train(arch=""), "unknown arch")
case("train-no-task", ["train", "--arch", "attention"], "--task")
case("train-no-arch", ["train", "--task", "mqar"], "--arch")
case("train-unknown-flag", train("--frobnicate", "1"), "--frobnicate")
case("train-mixer-flag-of-another-arch", train("--d-state", "4"), "--d-state")
case("train-mixer-option-out-of-range", train("--n-kv-heads", "3", arch="gqa"), "n_kv_heads")
case("train-pairs-do-not-fit", train("--num-kv-pairs", "8", "--vocab-size", "64"), "num_kv_pairs=8 does not fit")
case("train-vocab-too-small", train("--vocab-size", "4"), "vocab_size")
case("train-passkey-too-short", train("--seq-len", "4", task="passkey"), "passkey")
case("train-copying-string-too-long", train("--string-len", "40", task="copying"), "string_len")
case("train-order-probe-unknown", train("--probe", "middle", task="order"), "--probe")
case("train-eval-length-0", train("--eval-seq-lens", "0"), "eval_seq_lens")
case("train-json-in-proc", train("--json", "/proc/x.json"), "--json /proc/x.json")
case("train-json-is-a-folder", train("--json", f"{IN}/folder"), "is a directory")
case("train-json-folder-missing", train("--json", f"{IN}/missing/r.json"), "does not exist")
case("train-json-dev-null", train("--json", "/dev/null"), "not a regular file")
case("train-logger-unknown", train("--logger", "wandb"), "--logger")
case("train-logger-tensorboard-not-installed", train("--logger", "tensorboard"), "--logger tensorboard needs",
     when=NO_TENSORBOARD)
case("train-log-dir-under-a-file", train("--logger", "csv", "--log-dir", f"{IN}/export.csv/curves"), "--log-dir")
case("train-log-dir-in-proc", train("--logger", "csv", "--log-dir", "/proc/curves"), "--log-dir")

# sample
case("sample-unknown-task", ["sample", "nope", "--seq-len", "8"], "unknown task 'nope'")
case("sample-no-task", ["sample"], "task")
case("sample-n-0", ["sample", "mqar", "-n", "0"], "-n 0")
case("sample-n-negative", ["sample", "mqar", "-n", "-5"], "-n -5")
case("sample-n-1e10", ["sample", "mqar", "-n", "10000000000"], "GiB")
case("sample-n-float", ["sample", "mqar", "-n", "1e10"], "-n")
case("sample-seed-negative", ["sample", "mqar", "--seed", "-1"], "--seed -1")
case("sample-seed-2-to-the-32", ["sample", "mqar", "--seed", str(2**32)], "--seed")
case("sample-bad-config", ["sample", "passkey", "--seq-len", "4"], "passkey")
case("sample-seq-len-0", ["sample", "mqar", "--seq-len", "0"], "seq_len=0")
case("sample-power-a-inf", ["sample", "mqar", "--power-a", "inf"], "--power-a")

# bench
case("bench-unknown-what", ["bench", "everything"], "everything")
case("bench-cuda-without-a-gpu", ["bench", "tasks", "--device", "cuda"], "cuda", when=NO_GPU)
case("bench-unknown-arch", ["bench", "mixers", "--archs", "nosuch"], "nosuch")
case("bench-unknown-train-arch", ["bench", "train", "--archs", "attention,nosuch"], "nosuch")
case("bench-unknown-op", ["bench", "ops", "--archs", "rotary,nosuch"], "nosuch")
case("bench-repeats-0", ["bench", "tasks", "--repeats", "0"], "--repeats 0")
case("bench-seq-len-0", ["bench", "mixers", "--seq-len", "0"], "--seq-len 0")
case("bench-d-model-negative", ["bench", "mixers", "--d-model", "-1"], "--d-model -1")
case("bench-batch-0", ["bench", "mixers", "--batch", "0"], "--batch 0")
case("bench-n-0", ["bench", "tasks", "-n", "0"], "-n 0")
case("bench-steps-0", ["bench", "train", "--steps", "0"], "--steps 0")
case("bench-pack-0", ["bench", "train", "--pack", "1,0"], "--pack")
case("bench-pack-not-ints", ["bench", "train", "--pack", "one"], "--pack")
case("bench-concurrent-0", ["bench", "train", "--concurrent", "1,0"], "--concurrent")
case("bench-concurrent-not-ints", ["bench", "train", "--concurrent", "two"], "--concurrent")
case("bench-train-seq-len-8", ["bench", "train", "--seq-len", "8"], "--seq-len 8")
case("bench-step-seq-len-8", ["bench", "step", "--seq-len", "8"], "--seq-len 8")
case("bench-step-top-0", ["bench", "step", "--top", "0"], "--top 0")
case("bench-step-unknown-arch", ["bench", "step", "--archs", "nosuch"], "nosuch")
case("bench-graphs-both-on-the-cpu", ["bench", "train", "--device", "cpu", "--cuda-graphs", "both"], "--cuda-graphs")
case("bench-graphs-unknown", ["bench", "train", "--cuda-graphs", "sometimes"], "sometimes")
case("bench-n-cannot-be-allocated", ["bench", "tasks", "-n", "100000000000"], "GiB")
case("bench-mixer-cannot-be-allocated", ["bench", "mixers", "--archs", "attention", "--d-model", "10000000"],
     "GiB")
case("bench-d-model-a-mixer-refuses", ["bench", "mixers", "--archs", "gqa", "--d-model", "6"], "gqa")

# every sweep command, every bad sweep file
SWEEP_COMMANDS = {"sweep": ["--device", "cpu"], "worker": ["--device", "cpu"], "status": [], "results": [],
                  "report": ["-o", "new/dir/r.html"]}
for name, (_, _, names) in BAD_SWEEPS.items():
    for command, flags in SWEEP_COMMANDS.items():
        case(f"{command}-{name}", [command, f"{IN}/{name}.py", *flags], names)
for command in SWEEP_COMMANDS:
    case(f"{command}-a-folder-as-sweep-file", [command, f"{IN}/folder.py", *SWEEP_COMMANDS[command]],
         "is a directory")
    case(f"{command}-a-missing-sweep-file", [command, f"{IN}/missing.py", *SWEEP_COMMANDS[command]],
         "does not exist")

# storages and the flags of the sweep commands, with the good sweep file
UNREACHABLE = "postgresql://probe:probe@127.0.0.1:1/x"
GOOD_FILE = f"{IN}/good.py"
for command in ("sweep", "worker"):
    cpu = [command, GOOD_FILE, "--device", "cpu"]
    case(f"{command}-storage-is-a-folder", [*cpu, "--storage", f"{IN}/folder"], "is a directory")
    case(f"{command}-storage-in-proc", [*cpu, "--storage", "/proc/probe/journal.log"], "cannot create")
    case(f"{command}-storage-sqlite", [*cpu, "--storage", "sqlite:///x.db"], "SQLite")
    case(f"{command}-storage-unreachable", [*cpu, "--storage", UNREACHABLE], "Connection refused")
    case(f"{command}-journal-with-a-bad-line", [*cpu, "--storage", f"{IN}/broken.log"], "broken.log:")
    case(f"{command}-pack-0", [*cpu, "--pack", "0"], "--pack 0")
    case(f"{command}-heartbeat-0", [*cpu, "--heartbeat", "0"], "--heartbeat 0")
    case(f"{command}-concurrent-0", [*cpu, "--concurrent", "0"], "--concurrent 0")
    case(f"{command}-concurrent-on-cuda", [command, GOOD_FILE, "--device", "cuda", "--concurrent", "2"],
         "--concurrent 2 with --device cuda", when=not NO_GPU)
    case(f"{command}-device-tpu", [command, GOOD_FILE, "--device", "tpu"], "--device")
    case(f"{command}-cuda-without-a-gpu", [command, GOOD_FILE, "--device", "cuda"], "cuda", when=NO_GPU)
    case(f"{command}-no-sweep-file", [command], "file")
    case(f"{command}-logger-unknown", [*cpu, "--logger", "wandb"], "--logger")
    case(f"{command}-logger-tensorboard-not-installed", [*cpu, "--logger", "tensorboard"],
         "--logger tensorboard needs", when=NO_TENSORBOARD)
    case(f"{command}-log-dir-under-a-file", [*cpu, "--logger", "csv", "--log-dir", f"{IN}/export.csv/curves"],
         "--log-dir")
case("sweep-workers-0", ["sweep", GOOD_FILE, "--device", "cpu", "--workers", "0"], "--workers")
case("sweep-workers-per-gpu-0", ["sweep", GOOD_FILE, "--device", "cpu", "--workers-per-gpu", "0"], "--workers")
case("sweep-workers-1000", ["sweep", GOOD_FILE, "--device", "cpu", "--workers", "1000"], "1000 workers")
case("sweep-workers-not-an-int", ["sweep", GOOD_FILE, "--workers", "two"], "--workers")
case("worker-id-not-an-int", ["worker", GOOD_FILE, "--worker-id", "w1"], "--worker-id")
for command, flags in (("status", []), ("results", []), ("report", ["-o", "r.html"])):
    case(f"{command}-storage-unreachable", [command, GOOD_FILE, "--storage", UNREACHABLE, *flags],
         "Connection refused")
    case(f"{command}-storage-is-a-folder", [command, GOOD_FILE, "--storage", f"{IN}/folder", *flags],
         "is a directory")
    case(f"{command}-storage-sqlite", [command, GOOD_FILE, "--storage", "sqlite:///x.db", *flags], "SQLite")
case("results-parquet-to-stdout", ["results", GOOD_FILE, "--format", "parquet"], "needs -o")
case("results-unknown-format", ["results", GOOD_FILE, "--format", "xlsx"], "--format")
case("results-unknown-table", ["results", GOOD_FILE, "--table", "everything"], "--table")
case("results-output-in-proc", ["results", GOOD_FILE, "-o", "/proc/x.csv"], "-o /proc/x.csv")
case("results-output-is-a-folder", ["results", GOOD_FILE, "-o", f"{IN}/folder"], "is a directory")
case("results-output-folder-missing", ["results", GOOD_FILE, "-o", "missing/r.csv"], "does not exist")
case("results-unreachable-over-an-export", ["results", GOOD_FILE, "--storage", UNREACHABLE, "-o",
                                            f"{IN}/export.csv"], "Connection refused")
case("report-no-output", ["report", GOOD_FILE], "-o")
case("report-not-html", ["report", GOOD_FILE, "-o", "r.txt"], "NAME.html")
case("report-output-in-proc", ["report", GOOD_FILE, "-o", "/proc/x/r.html"], "cannot create")
case("report-output-under-a-file", ["report", GOOD_FILE, "-o", f"{IN}/export.csv/r.html"], "cannot create")
case("report-nothing-to-report", ["report", "-o", "r.html"], "SWEEP_FILE or --storage")
case("report-storage-alone-missing", ["report", "--storage", "missing.log", "-o", "r.html"], "does not exist")
case("report-storage-alone-unreachable", ["report", "--storage", UNREACHABLE, "-o", "r.html"],
     "Connection refused")


@pytest.mark.parametrize("argv,names", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, names, inputs, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = snapshot(inputs)
    with pytest.raises(SystemExit) as exited:
        main([a.replace(IN, str(inputs)) for a in argv])
    out = capsys.readouterr()
    assert exited.value.code == 2, (out.out[-2000:], out.err[-2000:])
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: error:"), out.err
    assert names in lines[0]
    assert list(cwd.iterdir()) == [], "a refused command left files behind"
    assert snapshot(inputs) == before, "a refused command changed its inputs"


def test_the_table_covers_every_command_with_at_least_150_inputs():
    commands = {p.values[0][0] for p in CASES}
    assert commands >= {"train", "sample", "list", "bench", "sweep", "worker", "status", "results", "report"}
    assert len(CASES) >= 150, len(CASES)


@pytest.mark.parametrize("argv", [["sweep", GOOD_FILE, "--device", "cpu"], ["worker", GOOD_FILE, "--device", "cpu"],
                                  ["results", GOOD_FILE, "-o", "r.csv"], ["report", GOOD_FILE, "-o", "r.html"],
                                  train("--json", "r.json")], ids=lambda a: a[0])
def test_an_unwritable_working_directory_is_refused_before_any_work(argv, inputs, monkeypatch, capsys):
    monkeypatch.chdir("/proc")  # unwritable even for root, where a chmod'ed folder is not
    with pytest.raises(SystemExit) as exited:
        main([a.replace(IN, str(inputs)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and err[0].startswith("probe: error:"), err
    assert "not writable" in err[0] or "cannot create" in err[0], err
