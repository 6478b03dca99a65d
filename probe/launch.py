"""`probe sweep`, `probe worker`, `probe status`, `probe results`: running a sweep and reading it back.

`probe sweep FILE` validates the whole sweep first (a bad cell fails before any training), then starts one
worker process per slot: on CUDA, `--workers-per-gpu` per visible GPU, each pinned with CUDA_VISIBLE_DEVICES and
its own TRITON_CACHE_DIR; on the CPU, `--workers`. It shows live progress and returns when no cell needs work.
Killing anything is safe: run the same command again and the sweep goes on where it stopped (a killed worker's
trial is failed and redone). SIGINT or SIGTERM to `probe sweep` is passed on to its workers (each in a session of
its own, so a terminal's Ctrl-C reaches them once, through the launcher), which are waited for: each lets its packs
train to their next evaluation, saves them there (next to a journal, `<journal>.packs/`) and stops, and the next
run trains them on from there; a second interrupt, or 60 s gone by, stops them at once. Worker ids are
`<launcher pid>·1000 + slot`, unique across launchers sharing one journal (logs: runs/<sweep>/logs/worker<id>.log).
`probe sweep A.py B.py ...` runs several sweeps as one suite: every worker works through each sweep in turn,
starting on different ones (so one host's GPUs are all busy until the last sweep's last pack), each sweep in its own
storage (runs/<sweep>/journal.log) or all in one (`--storage`: their studies are named by sweep); logs and Triton
caches then go to runs/suite/. `probe worker FILE... --storage URL` joins a running sweep (or suite) from another
machine. `--logger csv|tensorboard` (on
either) writes each pack's live learning curves to runs/<sweep>/curves/<cell>/trial<i>-trial<j>-...
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time

from .cli import Interrupted, interrupted, on_interrupts
from .errors import ProbeError
from .outputs import check_writable, write_atomically
from .storage import check_readable, default_url, open_storage
from .sweep import load_sweep


def _parser(prog: str, description: str, cells: bool = True, suite: bool = False):
    from .cli import OneLineParser
    p = OneLineParser(prog=prog, description=description)
    if suite:
        p.add_argument("files", nargs="+", metavar="file",
                       help="a sweep file (sweeps/*.py); several: one suite, its workers shared by every sweep")
    else:
        p.add_argument("file", help="a sweep file (sweeps/*.py)")
    p.add_argument("--storage", default=None,
                   help="journal file path (default runs/<sweep>/journal.log, one per sweep) or "
                        "postgresql://user:pw@host/db; a suite's sweeps may share one (their studies are named "
                        "by sweep)")
    if cells:
        p.add_argument("--cells", action="append", metavar="GLOB", default=[],
                       help="only the cells whose key matches this shell pattern, e.g. 'mqar-L64-*' (a row of the "
                            "sweep; keys as `probe status` lists them); repeat for several")
    return p


def _load(args):
    """The sweep file's Sweep, narrowed to --cells."""
    return load_sweep(args.file).select(args.cells)


def _load_suite(args) -> list:
    """The sweep files' Sweeps, in the order given, narrowed to --cells. One file: as `_load`. Several: each
    pattern must match a cell of some sweep; a sweep none of whose cells any pattern matches is left out; two
    files may not name the same sweep (they would share its studies and folders)."""
    sweeps = [load_sweep(f) for f in args.files]
    names = [s.name for s in sweeps]
    for name in names:
        if names.count(name) > 1:
            files = [f for f, s in zip(args.files, sweeps) if s.name == name]
            raise ProbeError(f"{' and '.join(files)} both define sweep {name!r}: a suite needs distinct names")
    if len(sweeps) == 1 or not args.cells:
        return [s.select(args.cells) for s in sweeps]
    import fnmatch
    keys = {s.name: [c.key for c in s.cells()] for s in sweeps}
    for pattern in args.cells:
        if not any(fnmatch.fnmatchcase(k, pattern) for ks in keys.values() for k in ks):
            raise ProbeError(f"--cells {pattern!r} matches no cell of sweeps {', '.join(names)}")
    kept = [s for s in sweeps if any(fnmatch.fnmatchcase(k, p) for k in keys[s.name] for p in args.cells)]
    return [s.select([p for p in args.cells if any(fnmatch.fnmatchcase(k, p) for k in keys[s.name])])
            for s in kept]


def _suite_name(sweeps) -> str:
    """Where a launch keeps its worker logs and Triton caches: runs/<sweep>/, or runs/suite/ for several."""
    return sweeps[0].name if len(sweeps) == 1 else "suite"


def _device(value: str) -> str:
    import torch
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cuda" and not torch.cuda.is_available():
        raise ProbeError("--device cuda but no CUDA device is available")
    return value


PACK_HELP = "trials trained together in one pack (default: the sweep's pack_size, else all of a cell's trials)"
CONCURRENT_HELP = ("CPU only for now: packs (of different cells) a worker trains at once, each in a thread of its own "
                   "(default 1)")


def _check_concurrent(concurrent: int, device: str) -> None:
    if concurrent > 1 and device == "cuda":  # measured on the H200, 2026-12-03 (BENCHMARKS.md)
        raise ProbeError(f"--concurrent {concurrent} with --device cuda: packs on several CUDA streams of one "
                         "process hit an illegal memory access (baseconv, hyena) and gained at most 1.3x; use 1")


def _check_flags(pack: int | None, heartbeat: int, concurrent: int = 1) -> None:
    if pack is not None and pack < 1:
        raise ProbeError(f"--pack {pack} must be >= 1")
    if concurrent < 1:
        raise ProbeError(f"--concurrent {concurrent} must be >= 1")
    if heartbeat < 1:
        raise ProbeError(f"--heartbeat {heartbeat} must be >= 1 (seconds)")


def cmd_worker(argv: list[str]) -> None:
    p = _parser("probe worker", "Work on a sweep's cells until none needs a trial (one process); given several "
                "sweep files, on each in turn.", suite=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--worker-id", type=int, default=None, help="spreads workers over cells (default: the pid)")
    p.add_argument("--heartbeat", type=int, default=60, help="RDB storages: seconds between heartbeats")
    p.add_argument("--progress", action="store_true", help="a progress bar per trial")
    p.add_argument("--pack", type=int, default=None, help=PACK_HELP)
    p.add_argument("--concurrent", type=int, default=1, help=CONCURRENT_HELP)
    _add_logger_flags(p)
    args = p.parse_args(argv)
    _check_flags(args.pack, args.heartbeat, args.concurrent)
    sweeps = _load_suite(args)
    device = _device(args.device)
    _check_concurrent(args.concurrent, device)
    curves = {s.name: _curves(args, s.name) for s in sweeps}
    urls = {s.name: args.storage or default_url(s.name) for s in sweeps}
    storages = {s.name: open_storage(urls[s.name], heartbeat=args.heartbeat) for s in sweeps}
    from .train import quiet_lightning
    from .tuning import run_worker
    quiet_lightning()
    wid = args.worker_id if args.worker_id is not None else os.getpid()
    # a suite's workers start on different sweeps (by launch slot), then each works through the others in turn
    first = wid % 1000 % len(sweeps)
    order = sweeps[first:] + sweeps[:first]
    checkpoints = {s.name: checkpoint_dir(urls[s.name]) for s in sweeps}
    total = {"trials": 0, "failed": 0, "reaped": 0}
    # where paused packs can be saved, the first signal pauses them; elsewhere it interrupts at once (cli's)
    with _pausing() if all(checkpoints.values()) else contextlib.nullcontext((None, [])) as (pause, received):
        for sweep in order:
            try:
                did = run_worker(sweep, storages[sweep.name], device=device, worker_seed=wid, pack=args.pack,
                                 concurrent=args.concurrent, progress=args.progress, curves=curves[sweep.name],
                                 log=lambda m: print(m, flush=True), pause=pause,
                                 checkpoints=checkpoints[sweep.name])
            except KeyboardInterrupt as e:
                if received and not isinstance(e, Interrupted):  # paused: exit as the signal's interrupt
                    raise Interrupted(received[0]) from None
                raise
            total = {k: total[k] + did[k] for k in total}
            if len(sweeps) > 1:
                print(f"[worker {wid}] sweep {sweep.name} needs no more work", flush=True)
    print(f"[worker {wid}] done: {total['trials']} trials ({total['failed']} failed), "
          f"{total['reaped']} dead workers' trials failed for retry", flush=True)


def checkpoint_dir(url: str) -> str | None:
    """Where a sweep's workers save the packs they pause: next to a journal, `<journal>.packs`; none for an RDB
    storage (its workers may not share a file system)."""
    return None if "://" in url else url + ".packs"


@contextlib.contextmanager
def _pausing():
    """A worker's SIGINT and SIGTERM: the first sets `pause` (each pack in flight is saved at its next
    evaluation, then the worker stops), a second interrupts at once (the packs in flight are lost)."""
    import threading
    pause, received = threading.Event(), []

    def on_signal(signum, frame):
        if pause.is_set():
            raise Interrupted(signum)
        received.append(signum)
        pause.set()
    with on_interrupts(on_signal):
        yield pause, received


def _add_logger_flags(p) -> None:
    from .cli import add_logger_flag
    add_logger_flag(p)
    p.add_argument("--log-dir", metavar="DIR", default=None,
                   help="where --logger writes, a folder per pack: DIR/<cell>/trial<i>-... "
                        "(default runs/<sweep>/curves)")


def _curves(args, sweep_name: str):
    """The worker's --logger settings (tuning.Curves), once the logger and its folder are known usable."""
    from .cli import check_log_dir
    root = check_log_dir(args.logger, args.log_dir or os.path.join("runs", sweep_name, "curves"))
    if root is None:
        return None
    from .tuning import Curves
    return Curves(args.logger, root)


def _counts(sweep, storage_url: str) -> dict:
    from .tuning import cell_status, cell_studies, live_trials
    counts = {"complete": 0, "running": 0, "failed": 0, "pending": 0, "trials": 0, "pruned": 0, "best": {}}
    for cell, study in cell_studies(sweep, storage_url):
        counts[cell_status(study, sweep)] += 1
        if study is not None:
            live = live_trials(study)
            counts["trials"] += sum(t.state.name == "COMPLETE" for t in live)
            counts["pruned"] += sum(t.state.name == "PRUNED" for t in live)
            values = [t.value for t in live if t.value is not None]
            if values:
                counts["best"][cell.key] = max(values)
    return counts


def cmd_status(argv: list[str]) -> None:
    from .tuning import cell_status, cell_studies, failures, live_trials
    args = _parser("probe status", "Cells done / running / failed / pruned and the best accuracy so far.").parse_args(argv)
    sweep = _load(args)
    url = args.storage or default_url(sweep.name)
    check_readable(url)  # cell_studies reads an unusable storage as an empty one
    pairs = cell_studies(sweep, url)
    width = max(len(c.key) for c, _ in pairs)
    print(f"{'cell':{width}s}  {'status':9s} {'done':>5s} {'run':>4s} {'pruned':>6s} {'failed':>6s}  best acc")
    totals = {}
    for cell, study in pairs:
        status = cell_status(study, sweep)
        totals[status] = totals.get(status, 0) + 1
        live = live_trials(study) if study else []
        n = {s: sum(t.state.name == s for t in live) for s in ("COMPLETE", "RUNNING", "PRUNED")}
        best = max((t.value for t in live if t.value is not None), default=None)
        print(f"{cell.key:{width}s}  {status:9s} {n['COMPLETE']:>5d} {n['RUNNING']:>4d} {n['PRUNED']:>6d} "
              f"{failures(study) if study else 0:>6d}  {'' if best is None else f'{best:.4f}'}")
    print(f"{len(pairs)} cells: " + ", ".join(f"{v} {k}" for k, v in sorted(totals.items())) + f"  [storage {url}]")
    packs = checkpoint_dir(url)
    paused = [f for _, _, files in os.walk(packs) for f in files if f.endswith(".pt") or ".pt.claimed-" in f] \
        if packs else []
    if paused:
        print(f"{len(paused)} paused pack(s) in {packs}: the next run trains them on from where they stopped")


def cmd_sweep(argv: list[str]) -> None:
    p = _parser("probe sweep", "Run a sweep: one worker process per slot, live progress, resumable. Several sweep "
                "files: one suite, every worker on each sweep in turn (starting on different ones).", suite=True)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers-per-gpu", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="CPU: number of worker processes")
    p.add_argument("--heartbeat", type=int, default=60)
    p.add_argument("--pack", type=int, default=None, help=PACK_HELP)
    p.add_argument("--concurrent", type=int, default=1, help=CONCURRENT_HELP)
    _add_logger_flags(p)
    args = p.parse_args(argv)
    _check_flags(args.pack, args.heartbeat, args.concurrent)
    sweeps = _load_suite(args)
    device = _device(args.device)
    _check_concurrent(args.concurrent, device)
    slots = _slots(device, args.workers_per_gpu, args.workers)
    curves = [_curves(args, s.name) for s in sweeps]
    runs = [(s, args.storage or default_url(s.name)) for s in sweeps]
    name = _suite_name(sweeps)
    log_dir = os.path.join("runs", name, "logs")
    check_writable(os.path.join(log_dir, "worker.log"), "worker logs", make_parent=True)
    for url in dict.fromkeys(url for _, url in runs):
        open_storage(url, heartbeat=args.heartbeat)  # fails here, once, if a storage is unusable
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as e:
        raise ProbeError(f"worker logs: cannot create {log_dir}: {e.strerror}") from None
    at_once = f", {args.concurrent} packs at once each" if args.concurrent > 1 else ""
    for (sweep, url), curve in zip(runs, curves):
        print(f"sweep {sweep.name}: {len(sweep.cells())} cells × {sweep.trials_per_cell} trials; {len(slots)} "
              f"worker(s) on {device}{at_once}; storage {url}; pruner {sweep.pruning_text()}"
              + (f"; learning curves ({curve.logger}) in {curve.root}" if curve else ""), flush=True)
    procs, start = [], time.time()
    try:
        for slot, gpu in enumerate(slots):
            procs.append(_start_worker(args, name, runs[0][1] if len(sweeps) == 1 else args.storage, device, slot,
                                       gpu, len(slots), log_dir))
        while any(proc.poll() is None for proc, _ in procs):
            _show_progress(runs, start)
            time.sleep(2)
    except KeyboardInterrupt as e:
        _stop(procs)
        interrupted(getattr(e, "signum", signal.SIGINT), "run the same command again to resume")
    finally:
        for _, log in procs:
            log.close()
    counts = _show_progress(runs, start, final=True)
    bad = [log.name for proc, log in procs if proc.returncode != 0]
    if bad:
        raise ProbeError(f"{len(bad)} worker(s) exited with an error: see {', '.join(bad)}")
    print(f"done in {time.time() - start:.0f} s: {counts['complete']} cells complete, {counts['failed']} failed, "
          f"{counts['pending'] + counts['running']} unfinished. `probe status {args.files[0]}` for the table"
          + (" (one sweep file at a time)." if len(sweeps) > 1 else "."))


def _start_worker(args, name: str, url: str | None, device: str, slot: int, gpu, n_slots: int, log_dir: str):
    """One `probe worker` on every sweep file of the launch; url None: each sweep's default storage."""
    wid = os.getpid() * 1000 + slot  # unique across launchers on one journal; slot keeps them on neighbouring cells
    env = _worker_env(name, slot, gpu, n_slots)
    log = open(os.path.join(log_dir, f"worker{wid}.log"), "a")
    cmd = [sys.executable, "-m", "probe", "worker", *args.files, "--device", device,
           "--worker-id", str(wid), "--heartbeat", str(args.heartbeat)]
    if url is not None:
        cmd += ["--storage", url]
    for pattern in args.cells:
        cmd += ["--cells", pattern]
    if args.pack is not None:
        cmd += ["--pack", str(args.pack)]
    if args.concurrent != 1:
        cmd += ["--concurrent", str(args.concurrent)]
    if args.logger is not None:
        cmd += ["--logger", args.logger] + (["--log-dir", args.log_dir] if args.log_dir else [])
    # a session of its own: a terminal's Ctrl-C reaches the launcher only, which passes it on exactly once
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log


def _worker_env(name: str, slot: int, gpu, n_slots: int) -> dict:
    """A worker's environment: pinned to its GPU (CUDA_VISIBLE_DEVICES, so it sees that one as cuda:0) with a
    Triton cache of its own (workers compiling into one cache race), or on the CPU a share of the cores."""
    env = dict(os.environ, TRITON_CACHE_DIR=os.path.abspath(os.path.join("runs", name, "triton", f"w{slot}")),
               PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    else:  # CPU workers split the cores: oversubscribed torch threads spin against each other
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_slots))
    return env


def _stop(procs, grace_s: float = 60.0) -> None:
    """Pass an interrupt on to the workers (SIGTERM: each saves its packs at their next evaluation) and wait for
    them; kill what is left after `grace_s` or at a second interrupt."""
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + grace_s
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(0.1, deadline - time.time()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


MAX_SLOTS = 999  # worker ids are launcher pid · 1000 + slot


def _slots(device: str, per_gpu: int, workers: int) -> list[int | None]:
    if per_gpu < 1 or workers < 1:
        raise ProbeError("--workers-per-gpu and --workers must be >= 1")
    if device == "cuda":
        import torch
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = [g.strip() for g in visible.split(",")] if visible else list(range(torch.cuda.device_count()))
        slots = [g for g in gpus for _ in range(per_gpu)]
    else:
        slots = [None] * workers
    if len(slots) > MAX_SLOTS:
        raise ProbeError(f"{len(slots)} workers: at most {MAX_SLOTS} per `probe sweep` (start another on the journal)")
    return slots


def _show_progress(runs, start: float, final: bool = False) -> dict:
    """runs: (sweep, storage url) pairs; their counts summed."""
    counts = {"complete": 0, "running": 0, "failed": 0, "pending": 0, "trials": 0, "pruned": 0, "best": {}}
    for sweep, url in runs:
        one = _counts(sweep, url)
        counts = {k: ({**counts[k], **{f"{sweep.name}:{c}": v for c, v in one[k].items()}} if k == "best"
                      else counts[k] + one[k]) for k in counts}
    n = sum(len(sweep.cells()) for sweep, _ in runs)
    best = max(counts["best"].values(), default=None) if len(runs) == 1 else None  # across tasks it means nothing
    line = (f"[{time.time() - start:6.0f} s] cells {counts['complete']}/{n} complete, {counts['running']} running, "
            f"{counts['failed']} failed | trials {counts['trials']} complete, {counts['pruned']} pruned"
            + (f" | best accuracy {best:.4f}" if best is not None else ""))
    if sys.stdout.isatty() and not final:
        print("\r" + line, end="", flush=True)
    elif final or line.split("] ", 1)[1] != _last_line[0]:  # a log file gets a line per change, not per poll
        print(line, flush=True)
    _last_line[0] = line.split("] ", 1)[1]
    return counts


_last_line = [""]


def cmd_results(argv: list[str]) -> None:
    p = _parser("probe results", "Export a sweep's trials as one tidy table.", cells=False)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--table", choices=["tidy", "trials", "curves"], default="tidy")
    p.add_argument("-o", "--output", default=None, help="file to write (default: stdout for csv)")
    args = p.parse_args(argv)
    if args.output is None and args.format == "parquet":
        raise ProbeError("--format parquet needs -o PATH")
    if args.format == "parquet" and not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
        raise ProbeError("--format parquet needs pyarrow: pip install 'probe[parquet]'")
    from .results import collect, open_sweeps
    sweeps = open_sweeps([args.file], args.storage)
    if args.output is not None:
        check_writable(args.output, "-o")
    table = getattr(collect(sweeps, args.storage), args.table)
    if args.output is None:
        table.to_csv(sys.stdout, index=False)
        return
    write_atomically(args.output, "-o", lambda tmp: table.to_csv(tmp, index=False) if args.format == "csv"
                     else table.to_parquet(tmp, index=False))
    print(f"wrote {len(table)} rows ({args.table}) to {args.output}")
