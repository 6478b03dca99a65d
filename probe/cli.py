"""`probe` command line: train, sample, list. Flags come from the typed configs (see probe.flags).

Every user mistake (unknown task or arch, sizes that don't fit, an unwritable --json path, a malformed flag)
is one line on stderr and exit code 2, before any training starts and with nothing written. An interrupt
(Ctrl-C, SIGTERM) is one line too, "probe: interrupted", and exit code 128 + the signal's number (130, 143), as
a shell reports a process the signal killed; every command cleans up first (temporary files, its workers).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import sys

from tasks import TASKS, TaskConfigError

from .config import ModelConfig, TrainConfig
from .errors import ProbeError
from .flags import add_flags, dataclass_fields, pick
from .model import build_model, mixer_options, parse_pattern
from .outputs import check_writable, write_atomically


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"probe: error: {message}\n")


def fail(message: str) -> None:
    print(f"probe: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the process is, so `finally` blocks and interrupt handlers run."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []


def _on_signal(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def interrupted(signum: int, hint: str = "") -> None:
    print(f"probe: interrupted{': ' + hint if hint else ''}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


#: more than the memory of the largest accelerator probe runs on (an H200 holds 139 GiB), or than this machine's
#: RAM where that is more: a run whose smallest possible footprint is larger can never start, so it is refused
#: before anything is allocated
MEMORY_BOUND = max(140 * 2**30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_bytes(what: str, parts: dict[str, int]) -> None:
    """Refuse `what` in one line if its parts (name -> bytes, each a lower bound) add up beyond MEMORY_BOUND."""
    total = sum(parts.values())
    if total > MEMORY_BOUND:
        detail = ", ".join(f"{name} {_size(n)}" for name, n in parts.items() if n >= total / 100)
        raise ProbeError(f"{what} needs at least {_size(total)} ({detail}): more than the "
                         f"{MEMORY_BOUND // 2**30} GiB of the largest GPU probe runs on (or of this machine)")


def _size(n: int) -> str:
    n /= 2**30
    for unit in ("GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n:,.0f} EiB"


@contextlib.contextmanager
def out_of_memory_in_one_line():
    """Sizes under MEMORY_BOUND that this machine still cannot hold: one line, not an allocator's traceback."""
    import torch
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
            raise
        raise ProbeError(f"out of memory: {str(e).strip().splitlines()[0]} (make the run smaller)") from None


def check_fits(task, arch: str, model: ModelConfig, train: TrainConfig, options: dict, *, pack: int = 1) -> None:
    """Refuse a run (a pack of `pack` members) that cannot be allocated anywhere, before anything is. Builds
    the model on the meta device, so the mixers' own checks run too. Lower bounds only, so a run that fits is
    never refused: the data set at every evaluation length (inputs and targets, int64, and the int64 indices of
    the sort that finds the scored positions), each member's fp32 weights with gradients and two AdamW moments,
    and one fp32 activation per layer."""
    import torch
    with torch.device("meta"):
        params = build_model(arch, vocab_size=task.vocab_size, max_seq_len=task.max_seq_len,
                             decoder=task.decoder, **dataclasses.asdict(model), **options).num_params()
    tokens = train.num_train * task.seq_len + train.num_test * sum(t.seq_len for t in task.eval_configs())
    check_bytes("this run", {
        "data set": 24 * tokens, "weights with gradients and AdamW state": 16 * params * pack,
        "activations": 4 * pack * train.batch_size * task.seq_len * model.d_model * model.n_layers})


def _task_class(name: str):
    if name not in TASKS:
        raise ProbeError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]


def _arch_flags(arch: str) -> dict:
    fields = {}
    for name in dict.fromkeys(parse_pattern(arch)):
        for opt, (tp, default) in mixer_options(name).items():
            fields.setdefault(opt, (tp, default))
    return fields


def write_json(path: str, record: dict) -> None:
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, default=str)
    write_atomically(path, "--json", dump)


# -- train ---------------------------------------------------------------------------------------------------
def train_parser(task: str | None, arch: str | None) -> argparse.ArgumentParser:
    p = OneLineParser(prog="probe train", description="Train one model on one task and print its metrics.")
    p.add_argument("--task", required=True, help=f"one of {', '.join(sorted(TASKS))}")
    p.add_argument("--arch", required=True, help="a registered arch or a comma pattern (see `probe list archs`)")
    p.add_argument("--json", metavar="PATH", help="write the full record (metrics per length and slice) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_logger_flag(p)
    p.add_argument("--log-dir", metavar="DIR", default=None,
                   help="where --logger writes (default runs/train/<task>-<arch>/<date-time>)")
    if task in TASKS:
        add_flags(p.add_argument_group(f"task {task}"), dataclass_fields(TASKS[task]))
    add_flags(p.add_argument_group("model"), dataclass_fields(ModelConfig))
    add_flags(p.add_argument_group("training"), dataclass_fields(TrainConfig))
    if arch is not None:
        try:
            flags = _arch_flags(arch)
        except ProbeError:
            flags = {}
        taken = {a.dest for a in p._actions}
        add_flags(p.add_argument_group(f"mixer {arch}"), {k: v for k, v in flags.items() if k not in taken})
    return p


def cmd_train(argv: list[str]) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--arch")
    known, _ = pre.parse_known_args(argv)
    if known.task is not None:  # before the flags: an unknown task would make its own flags "unrecognized"
        _task_class(known.task)
    if known.arch is not None:
        parse_pattern(known.arch)
    args = train_parser(known.task, known.arch).parse_args(argv)
    task_cls = _task_class(args.task)
    task = task_cls(**pick(args, [f.name for f in dataclasses.fields(task_cls)]))
    model_cfg = ModelConfig(**pick(args, [f.name for f in dataclasses.fields(ModelConfig)]))
    train_cfg = TrainConfig(**pick(args, [f.name for f in dataclasses.fields(TrainConfig)]))
    options = pick(args, _arch_flags(args.arch))
    train_cfg.check()
    check_fits(task, args.arch, model_cfg, train_cfg, options)
    if args.json:
        check_writable(args.json, "--json")
    log_dir = check_log_dir(args.logger, args.log_dir or os.path.join(
        "runs", "train", f"{args.task}-{args.arch}", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))

    from .train import train  # heavy imports only once the input is known to be good
    with out_of_memory_in_one_line():
        record = train(task, args.arch, model_cfg, train_cfg, options, progress=not args.no_progress,
                       logger=args.logger, log_dir=log_dir)
    print(summary_line(record))
    if args.json:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    if args.logger:
        print(f"learning curves ({args.logger}) in {log_dir}")


def add_logger_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logger", choices=["csv", "tensorboard"], default=None,
                   help="write live learning curves (each member's loss and accuracy) with this Lightning logger")


def check_log_dir(logger: str | None, log_dir: str) -> str | None:
    """The folder a --logger writes to, once the logger is usable and the folder can be made; None without a
    logger."""
    if logger is None:
        return None
    from .train import check_logger
    check_logger(logger)
    check_writable(os.path.join(log_dir, "metrics.csv"), "--log-dir", make_parent=True)
    return log_dir


def summary_line(r: dict) -> str:
    others = ", ".join(f"L={L}: {v['accuracy']:.3f}" for L, v in r["by_length"].items()
                       if int(L) != r["task_config"]["seq_len"])
    parts = [f"{r['task']} {r['arch']}: accuracy {r['accuracy']:.4f}",
             f"per-example {r['per_example_accuracy']:.4f}", f"exact {r['exact_match']:.4f}",
             f"at L={r['task_config']['seq_len']}"]
    if others:
        parts.append(others)
    parts += [f"state {r['state_size']:,}", f"params {r['params']:,}", f"steps {r['steps']}",
              f"{r['train_tokens_per_s'] / 1e3:.1f}k tok/s", f"{r['wall_time_s']:.1f} s"]
    if r["diverged"]:
        parts.append(f"DIVERGED ({r['diverged']})")
    return " | ".join(parts)


# -- sample --------------------------------------------------------------------------------------------------
def cmd_sample(argv: list[str]) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("task", nargs="?")
    known, _ = pre.parse_known_args(argv)
    if known.task is not None and not known.task.startswith("-"):
        _task_class(known.task)
    p = OneLineParser(prog="probe sample", description="Print examples of a task as JSON lines.")
    p.add_argument("task", help=f"one of {', '.join(sorted(TASKS))}")
    p.add_argument("-n", type=int, default=3, help="number of examples (default 3)")
    p.add_argument("--seed", type=int, default=0)
    if known.task in TASKS:
        add_flags(p.add_argument_group(f"task {known.task}"), dataclass_fields(TASKS[known.task]))
    args = p.parse_args(argv)
    task_cls = _task_class(args.task)
    task = task_cls(**pick(args, [f.name for f in dataclasses.fields(task_cls)]))
    if not 0 <= args.seed < 2**32:  # the seeds `probe train` takes
        raise ProbeError(f"--seed {args.seed} must be in [0, 2**32)")
    if args.n < 1:
        raise ProbeError(f"-n {args.n} must be >= 1")
    check_bytes(f"-n {args.n:,}", {"examples": 16 * args.n * task.seq_len})
    with out_of_memory_in_one_line():
        ex = task.generate(args.n, args.seed)
    for i in range(args.n):
        print(json.dumps({"inputs": ex.inputs[i].tolist(), "targets": ex.targets[i].tolist(),
                          "slices": {k: int(v[i]) for k, v in ex.slices.items()}}))


# -- list ----------------------------------------------------------------------------------------------------
REFERENCE = {"vocab_size": 8192, "d_model": 128, "n_layers": 2, "seq_len": 256}


def cmd_list(argv: list[str]) -> None:
    p = OneLineParser(prog="probe list", description="Show the registries.")
    p.add_argument("what", choices=["archs", "tasks"])
    args = p.parse_args(argv)
    if args.what == "tasks":
        width = max(len(name) for name in TASKS)
        for name, cls in sorted(TASKS.items()):
            # a dataclass without a docstring of its own gets its signature as __doc__: use the module's
            own = cls.__doc__ if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else None
            doc = (own or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            print(f"{name:{width}s} {doc}  [chance: {cls.chance}]")
        return
    from .mixers import MIXERS
    r = REFERENCE
    wf = max(len(spec.cls.formula) for spec in MIXERS.values())
    print(f"state and params at the reference size: d_model {r['d_model']}, {r['n_layers']} layers, "
          f"vocab {r['vocab_size']}, L {r['seq_len']}; the formula is per layer after L tokens. state: the "
          "recurrent state as the papers count it (what reports plot); cache: all that inference carries, "
          "where it is more (convolution taps, H3's shift SSM)")
    print(f"{'arch':24s} {'state-size formula':{wf}s} {'state':>10s} {'cache':>10s} {'params':>10s}  summary")
    for name in sorted(MIXERS):
        model = build_model(name, vocab_size=r["vocab_size"], d_model=r["d_model"], n_layers=r["n_layers"],
                            max_seq_len=r["seq_len"])
        spec = MIXERS[name]
        cache = f"; cache {spec.cls.cache_formula}" if spec.cls.cache_formula else ""
        print(f"{name:24s} {spec.cls.formula:{wf}s} {model.state_size(r['seq_len']):>10,d} "
              f"{model.cache_size(r['seq_len']):>10,d} {model.num_params():>10,d}  {spec.summary}{cache}")


def cmd_bench(argv: list[str]) -> None:
    from .bench import main as bench_main
    bench_main(argv)


def _lazy(module: str, name: str):
    def run(argv: list[str]) -> None:
        import importlib
        getattr(importlib.import_module(module, __package__), name)(argv)
    return run


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "list": cmd_list, "bench": cmd_bench,
            "sweep": _lazy(".launch", "cmd_sweep"), "worker": _lazy(".launch", "cmd_worker"),
            "status": _lazy(".launch", "cmd_status"), "results": _lazy(".launch", "cmd_results"),
            "report": _lazy(".report", "main")}


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `probe list archs | head` ends quietly
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            fail(f"unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)})")
        print("usage: probe {" + ",".join(COMMANDS) + "} ...   (probe COMMAND --help for its flags)")
        raise SystemExit(0 if argv else 2)
    _received.clear()
    with on_interrupts(_on_signal):
        try:
            COMMANDS[argv[0]](argv[1:])
        except (ProbeError, TaskConfigError) as e:
            fail(str(e))
        except KeyboardInterrupt as e:
            interrupted(getattr(e, "signum", signal.SIGINT))
        except SystemExit as e:
            if e.code == 1 and _received:  # Lightning's trainer turns an interrupt into exit(1)
                interrupted(_received[-1])
            raise


@contextlib.contextmanager
def on_interrupts(handler):
    """SIGINT and SIGTERM go to `handler` inside the block, the previous handlers back after it. A signal that is
    ignored stays ignored (`nohup` and `&` ignore some)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, previous in handlers.items():
        if previous is not signal.SIG_IGN:
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, previous in handlers.items():
            signal.signal(s, previous)
