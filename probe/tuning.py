"""One worker's loop over a sweep: for each cell, ask Optuna for a pack of trials, train them together, tell each.

Design choices:
- Ask-and-tell: a worker asks a cell for as many trials as it still needs (up to the pack size), trains them as
  one pack (probe.pack: one step trains every member) and tells each trial its own result.
- The sampler tunes the cell's search space. A cell's first trials come from a scrambled Sobol sequence seeded by
  the study alone, so the trials of one pack spread over the whole range (one per stratum, like a grid), and
  workers racing for one study draw distinct points of the same sequence. Later trials: GPSampler (Optuna 5
  accounts for running trials, so the members of one pack differ), TPE with the constant liar beyond 3 parameters.
- Each member reports accuracy to its trial at every evaluation, by global step; a member the pruner stops
  leaves the pack (its trial ends PRUNED with its record kept) and the others train on. The pruner is the
  sweep's (`Sweep.pruning`: none for cells of a few trials, else the median rule with patience, since MQAR
  learns in a late jump). The first member to reach the cell's stop-at accuracy solves the cell: the others
  stop there, PRUNED with that reason (`Sweep.end_cell_at_target`), so a solved cell costs its fastest
  learning rate's time, not its slowest's. Where the sweep sets `plateau_epochs`, a member whose accuracy has
  not risen `plateau_min_delta` for that long ends PRUNED too (judged on its own curve, so inside a pack).
- A member whose loss turns NaN/inf ends PRUNED with the reason recorded; if training raises, every trial of the
  pack ends FAILED with the error recorded; neither stops the worker. A pack that does not fit in GPU memory is
  halved and each half trained in turn.
- Budget: a cell is done when it has `trials_per_cell` trials that are COMPLETE, PRUNED, RUNNING or WAITING (a
  stale RDB trial's retry, which the next worker at the cell asks for and trains).
  Workers race: each new trial counts the live trials numbered before it, and a trial beyond the budget ends
  at once, FAILED and marked `surplus`, before any training. So two workers never train the same trial, and no
  cell trains more trials than its budget.
- Lost is not failed: a trial whose worker died or was interrupted is FAILED and marked `lost`; the cell asks
  for a new one, and lost trials never count toward `max_failures_per_cell`.
- Nothing trained is lost to an interrupt: given a folder for them (`checkpoints`; a journal's is
  `<journal>.packs`), a worker asked to pause (`pause`, set by the first SIGINT or SIGTERM: `probe worker`) lets
  each pack in flight train to its next evaluation, saves it there (`PausedPack`: weights, optimiser, curves and
  verdicts, probe.train.fit's `Paused`) and stops; its trials end FAILED and lost as before. The next worker at
  that cell claims the file, asks for new trials with the same parameters (enqueued) and trains the pack on from
  that evaluation, as if it had not stopped. A second signal stops at once, losing the packs in flight.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import traceback
import warnings
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from .config import Logger
from .errors import ProbeError
from .storage import pid_alive, reap_dead_workers, uses_heartbeat, warn_once, worker_identity
from .sweep import Cell, Sweep

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class FixedGrid(optuna.samplers.GridSampler):
    """Optuna's GridSampler (each point once; points in progress are skipped) for ask-and-tell: the budget, not
    the sampler, ends a cell, so it never calls study.stop(), which only an optimize loop may."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(cell: Cell, sweep: Sweep, worker_seed: int) -> optuna.samplers.BaseSampler:
    if cell.search.lr_grid is not None:
        return FixedGrid({"lr": list(cell.search.lr_grid)}, seed=zlib.crc32(cell.study_name.encode()))
    startup = max(2, min(10, sweep.trials_per_cell // 2))
    # the start-up sequence is the study's own (every worker draws from it); the model-based sampler's seed is
    # this process's, so concurrent workers never propose in lockstep
    sobol = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=zlib.crc32(cell.study_name.encode()),
                                       warn_independent_sampling=False)
    seed = zlib.crc32(f"{cell.study_name}/{worker_seed}/{socket.gethostname()}/{os.getpid()}".encode())
    if cell.search.n_params <= 3:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, independent_sampler=sobol,
                                         warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    """The sweep's pruner (`Sweep.pruning`): the median rule after two finished trials and two evaluations,
    wrapped for "patient" so that it may stop a trial only after `pruner_patience` evaluations without a new
    best (Optuna counts patience in reported steps, and a member reports once per evaluation)."""
    if sweep.pruning == "none":
        return optuna.pruners.NopPruner()
    median = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2 * sweep.train.val_every)
    if sweep.pruning == "median":
        return median
    with warnings.catch_warnings():  # "experimental" in Optuna 5, as QMCSampler is
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.PatientPruner(median, patience=sweep.pruner_patience)


def live_trials(study: optuna.Study, before: int | None = None) -> list:
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in LIVE and not t.user_attrs.get("surplus") and (before is None or t.number < before)]


def to_ask(study: optuna.Study, sweep: Sweep) -> int:
    """How many trials the cell still needs asked for: its budget less its live trials, where a WAITING trial
    (a stale trial's retry, which `study.ask()` hands out first) is live but still to be asked for."""
    live = live_trials(study)
    return sweep.trials_per_cell - len(live) + sum(t.state == TrialState.WAITING for t in live)


def failures(study: optuna.Study) -> int:
    """Trials that failed in training: not surplus ones, not ones lost to a dead or interrupted worker (nor ones
    an RDB heartbeat re-queued as a retry)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return sum(1 for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")
               and not t.user_attrs.get("lost") and t.number not in retried)


def ask_pack(cell: Cell, sweep: Sweep, study: optuna.Study, size: int) -> tuple[list[tuple[optuna.Trial, dict]], int]:
    """Ask Optuna for up to `size` trials of the cell (ask-and-tell), each claimed by this worker; a trial beyond
    the cell's budget ends at once, FAILED and marked surplus. Returns the trials with their parameters, and how
    many were surplus."""
    asked = []
    for _ in range(size):
        trial = study.ask()
        trial.set_user_attr("worker", worker_identity())
        if len(live_trials(study, before=trial.number)) >= sweep.trials_per_cell:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return asked, 1
        grid = cell.search.lr_grid
        params = {"lr": trial.suggest_float("lr", *((min(grid), max(grid)) if grid else cell.search.lr), log=True)}
        if cell.search.weight_decay is not None:
            params["weight_decay"] = trial.suggest_float("weight_decay", *cell.search.weight_decay, log=True)
        trial.set_user_attr("cell", cell.key)
        asked.append((trial, params))
    return asked, 0


def pruning_judge(trial: optuna.Trial, rule: str):
    """Report each evaluation's accuracy at the training length to the trial; stop the member when pruned (the
    reason names the rule, `Sweep.pruning_text()`)."""
    def judge(step: int, accuracy: float) -> str | None:
        trial.report(accuracy, step)
        return f"pruned by the {rule} rule at step {step}" if trial.should_prune() else None
    return judge


def plateau_judge(patience_steps: int, min_delta: float):
    """Stop a member whose accuracy has not risen `min_delta` above its level for `patience_steps` steps
    (`Sweep.plateau_epochs`); the level resets at each such rise."""
    level, since = float("-inf"), 0

    def judge(step: int, accuracy: float) -> str | None:
        nonlocal level, since
        if accuracy >= level + min_delta:
            level, since = accuracy, step
        if step - since >= patience_steps:
            return (f"plateau: accuracy {accuracy:.4f} has not risen {min_delta:g} above {level:.4f} since step "
                    f"{since} ({patience_steps} steps)")
        return None
    return judge


def cell_judge(trial: optuna.Trial, cell: Cell, sweep: Sweep):
    """A member's judge in a sweep: the pruner (every evaluation is reported to the trial; a pruned trial's reason
    names its rule), then the plateau rule where the sweep has one."""
    prune = pruning_judge(trial, "patient median" if sweep.pruning == "patient" else "median")
    if sweep.plateau_epochs is None:
        return prune
    steps = max(1, round(sweep.plateau_epochs * cell.train.num_train / cell.train.batch_size))
    plateau = plateau_judge(steps, sweep.plateau_min_delta)

    def judge(step: int, accuracy: float) -> str | None:
        return prune(step, accuracy) or plateau(step, accuracy)  # both see every evaluation
    return judge


@dataclass(frozen=True)
class Curves:
    """Live learning curves of a worker's packs (`--logger`): a Lightning logger's files in one folder per pack,
    `<root>/<cell key>/trial<i>-trial<j>...`, each member's curves named by its trial."""

    logger: Logger
    root: str

    def pack_dir(self, cell: Cell, names: list[str]) -> str:
        return os.path.join(self.root, *cell.key.split("/"), "-".join(names))


def fit_halving(specs: list, judges: list, progress: bool, names: list[str], curves: Curves | None = None,
                cell: Cell | None = None, end_at_target: bool = False, callbacks: list | None = None,
                pause: threading.Event | None = None, resume: dict | None = None) -> list:
    """fit(), halving the pack (and retrying each half) when it does not fit in GPU memory. `names`: the
    members' trials, which name their curves. A pack resumed from a pause (`resume`) is not halved (it fitted
    before)."""
    import torch

    from .train import fit
    log = dict(logger=curves.logger, log_dir=curves.pack_dir(cell, names)) if curves else {}
    try:
        return fit(specs, judges=judges, progress=progress, end_at_first_target=end_at_target, log_names=names,
                   callbacks=callbacks, pause=pause, resume=resume, **log)
    except torch.OutOfMemoryError:
        if len(specs) == 1 or resume is not None:
            raise
    # out of the except block: the error's traceback, which held the failed pack's tensors, is gone
    from .pack import release_memory
    release_memory()
    half = len(specs) // 2
    return (fit_halving(specs[:half], judges[:half], progress, names[:half], curves, cell, end_at_target,
                        callbacks, pause)
            + fit_halving(specs[half:], judges[half:], progress, names[half:], curves, cell, end_at_target,
                          callbacks, pause))


@dataclass
class PausedPack:
    """A pack saved at an evaluation when its worker was asked to pause, as `<checkpoints>/<cell key>/trial<i>-
    ....pt` (written whole or not at all): the cell, each member's parameters and fit's `Paused` state. A worker
    claims one by renaming it to `....pt.claimed-<pid>` (a claim whose process is gone, on this machine, is taken
    over), trains it on, and removes it once the pack has finished, failed or paused again."""

    path: str  # the claimed file
    params: list[dict]
    state: dict

    @staticmethod
    def folder(checkpoints: str, cell: Cell) -> str:
        return os.path.join(checkpoints, *cell.key.split("/"))

    @staticmethod
    def save(checkpoints: str, cell: Cell, asked: list[tuple[optuna.Trial, dict]], state: dict, device: str) -> str:
        import torch

        from .outputs import write_atomically
        from .train import pack_fingerprint
        # a pack halved for memory pauses in one of its parts: the members the state was trained with
        part = next(asked[i:j] for i in range(len(asked)) for j in range(len(asked), i, -1)
                    if pack_fingerprint(_specs(cell, device, asked[i:j])) == state["fingerprint"])
        path = os.path.join(PausedPack.folder(checkpoints, cell), "-".join(f"trial{trial.number}" for trial, _ in part) + ".pt")
        write_atomically(path, "paused pack", lambda tmp: torch.save(
            {"cell": cell.key, "params": [p for _, p in part], "state": state}, tmp))
        return path

    @staticmethod
    def claim(checkpoints: str, cell: Cell) -> "PausedPack | None":
        """A paused pack of this cell, claimed by this process, or None."""
        import torch
        folder = PausedPack.folder(checkpoints, cell)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        for name in names:
            path = os.path.join(folder, name)
            if ".pt.claimed-" in name:  # another worker's: taken over if that process is gone
                pid = name.rsplit(".claimed-", 1)[1]
                if not pid.isdigit() or pid_alive(int(pid)):
                    continue
            elif not name.endswith(".pt"):
                continue
            claimed = path.split(".claimed-")[0] + f".claimed-{os.getpid()}"
            try:
                os.rename(path, claimed)
            except FileNotFoundError:  # another worker claimed it first
                continue
            saved = torch.load(claimed, weights_only=True)
            if saved.get("cell") != cell.key:
                os.rename(claimed, path)
                continue
            return PausedPack(claimed, saved["params"], saved["state"])
        return None

    def release(self) -> None:
        """Give the claim back: the file is there for the next worker."""
        os.rename(self.path, self.path.rsplit(".claimed-", 1)[0])

    def done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def _specs(cell: Cell, device: str, asked: list[tuple[optuna.Trial, dict]]) -> list:
    from .train import RunSpec
    return [RunSpec(cell.task, cell.arch, cell.model, dataclasses.replace(cell.train, device=device, **params),
                    cell.mixer_options) for _, params in asked]


def train_pack(cell: Cell, sweep: Sweep, study: optuna.Study, asked: list[tuple[optuna.Trial, dict]], *,
               device: str, progress: bool, curves: Curves | None = None,
               callbacks: list | None = None, pause: threading.Event | None = None,
               checkpoints: str | None = None, resume: "PausedPack | None" = None) -> list[tuple[int, TrialState, str]]:
    """Train the asked trials as one pack and tell each its result: COMPLETE with its accuracy, PRUNED (by the
    pruner, whose rule the reason names, by the sweep's plateau rule, diverged, or stopped because another
    member solved the cell: `Sweep.end_cell_at_target`) with the reason, or FAILED with the error if training
    raised. An interrupt fails the pack's trials as lost, which are retried and never count as failures of the
    cell. A pause (`pause` set, and a `checkpoints` folder) first saves the pack at its next evaluation
    (`PausedPack`), from which the next worker at the cell goes on; `resume`: such a pack, claimed, whose
    parameters `asked` has."""
    from .train import Paused
    specs = _specs(cell, device, asked)
    try:
        records = fit_halving(specs, [cell_judge(trial, cell, sweep) for trial, _ in asked], progress,
                              [f"trial{trial.number}" for trial, _ in asked], curves, cell, sweep.end_cell_at_target,
                              callbacks, pause if checkpoints else None, resume.state if resume else None)
    except (KeyboardInterrupt, Interrupted, Paused) as e:
        saved = PausedPack.save(checkpoints, cell, asked, e.state, device) if isinstance(e, Paused) else None
        if resume is not None:
            resume.done()
        for trial, _ in asked:
            trial.set_user_attr("reason", f"paused at step {e.state['step']}" if saved else "interrupted")
            trial.set_user_attr("lost", True)
            if saved:
                trial.set_user_attr("paused", saved)
            study.tell(trial, state=TrialState.FAIL)
        if isinstance(e, Paused):  # the worker stops as at an interrupt, the pack saved
            raise KeyboardInterrupt(f"paused: {saved}") from None
        raise
    except Exception as e:
        if resume is not None:
            resume.done()
        reason = f"{type(e).__name__}: {e}"
        for trial, _ in asked:
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            study.tell(trial, state=TrialState.FAIL)
        return [(trial.number, TrialState.FAIL, reason) for trial, _ in asked]
    if resume is not None:
        resume.done()
    told = []
    for (trial, _), record in zip(asked, records):
        trial.set_user_attr("record", {**record.as_dict(), "worker": worker_identity()})
        reason = record.diverged or record.pruned
        if reason:
            trial.set_user_attr("reason", reason)
            study.tell(trial, state=TrialState.PRUNED)
            told.append((trial.number, TrialState.PRUNED, reason))
        else:
            study.tell(trial, record.accuracy)
            told.append((trial.number, TrialState.COMPLETE, f"{record.accuracy:.4f}"))
    return told


def open_study(cell: Cell, sweep: Sweep, storage, worker_seed: int) -> optuna.Study:
    study = optuna.create_study(study_name=cell.study_name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=make_sampler(cell, sweep, worker_seed),
                                pruner=make_pruner(sweep))
    if "cell" not in study.user_attrs:  # the store describes itself: readable without the sweep file
        describe_study(study, cell, sweep.pruning_text())
    return study


def describe_study(study: optuna.Study, cell: Cell, pruner: str = "") -> None:
    """Record on the study what its cell is and which pruner it uses (`Sweep.pruning_text()`), and name its
    objective (optuna-dashboard shows "accuracy")."""
    with warnings.catch_warnings():  # "experimental" in Optuna 5; the name is what the dashboard shows
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy"])
    for key, value in {"sweep": cell.sweep, "cell": cell.key, "label": cell.label, "arch": cell.arch,
                       "task": cell.task.name, "task_config": dataclasses.asdict(cell.task),
                       "model_config": dataclasses.asdict(cell.model), "mixer_options": cell.mixer_options,
                       "d_model": cell.model.d_model, "seed": cell.seed, "pruner": pruner}.items():
        study.set_user_attr(key, value)


def cell_studies(sweep: Sweep, storage_url: str) -> list[tuple[Cell, optuna.Study | None]]:
    """Each cell of the sweep with its study in the storage, or None where no trial has been asked yet
    (also when the storage does not exist yet). Read-only: creates nothing."""
    from .storage import StorageMissing, open_storage
    try:
        storage = open_storage(storage_url, create=False)
        names = {s.study_name for s in storage.get_all_studies()}
    except StorageMissing:  # no sweep has run there yet; an unreachable or unreadable storage is an error
        storage, names = None, set()
    return [(cell, optuna.load_study(study_name=cell.study_name, storage=storage) if cell.study_name in names
             else None) for cell in sweep.cells()]


def cell_status(study: optuna.Study | None, sweep: Sweep) -> str:
    """pending | running | complete | failed, from the cell's trials."""
    if study is None:
        return "pending"
    live = live_trials(study)
    if sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in live) >= sweep.trials_per_cell:
        return "complete"
    if failures(study) >= sweep.max_failures_per_cell:
        return "failed"
    if any(t.state == TrialState.RUNNING for t in live):
        return "running"
    return "pending"


def run_worker(sweep: Sweep, storage, *, device: str, worker_seed: int = 0, pack: int | None = None,
               progress: bool = False, log=print, curves: Curves | None = None,
               concurrent: int = 1, pause: threading.Event | None = None,
               checkpoints: str | None = None) -> dict[str, int]:
    """Work on the sweep's cells until none needs a trial. Returns counts of what this worker did.

    Each round asks a cell for as many trials as it still needs, up to the pack size (`pack`, else the sweep's
    `pack_size`, else all of the cell's trials), and trains them as one pack; `curves` logs their learning
    curves live. `concurrent` > 1: up to that many packs (of different cells) train at once, each in a thread
    of its own and, on CUDA, on a CUDA stream of its own, so that small packs share the GPU inside one process
    (processes only take turns on it). An interrupt stops every pack in flight and fails their trials as lost.
    `pause` set (with a `checkpoints` folder): each pack in flight is saved at its next evaluation, and the worker
    stops (KeyboardInterrupt); a cell's paused packs are trained on before new trials are asked for.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    if concurrent < 1:
        raise ProbeError(f"--concurrent {concurrent} must be >= 1")
    did = {"trials": 0, "surplus": 0, "failed": 0, "reaped": 0}
    cells = sweep.cells()
    most = pack or sweep.pack_size or sweep.trials_per_cell
    # start at a different cell per worker so that workers rarely race for the same study
    start = worker_seed % len(cells)
    beats = Heartbeats(storage)
    pool = ThreadPoolExecutor(concurrent, thread_name_prefix="pack") if concurrent > 1 else None
    stop = threading.Event()  # set: the packs in flight stop at their next step and fail their trials as lost
    flying: dict[Future, tuple[Cell, list, float]] = {}

    def told(cell: Cell, asked: list, before: float, results) -> None:
        beats.release(asked)
        for number, state, text in results:
            did["trials"] += 1
            did["failed"] += state == TrialState.FAIL
            log(f"[worker {worker_seed}] {cell.key} trial {number}: {state.name} {text} "
                f"({time.time() - before:.1f} s, pack of {len(asked)})")

    def land(block_until: int) -> None:
        """Tell the packs that have finished, first waiting until at most `block_until` are in flight."""
        done = [f for f in flying if f.done()]
        if not done and len(flying) > block_until:
            done = wait(flying, return_when=FIRST_COMPLETED).done
        for future in done:
            cell, asked, before = flying.pop(future)
            told(cell, asked, before, future.result())

    try:
        while True:
            worked = False
            for cell in cells[start:] + cells[:start]:
                if any(c.key == cell.key for c, _, _ in flying.values()):
                    continue  # one pack of a cell at a time: the next one's sampler sees this one's results
                study = open_study(cell, sweep, storage, worker_seed)
                did["reaped"] += reap_dead_workers(study)
                while True:
                    if pause is not None and pause.is_set():
                        raise KeyboardInterrupt("paused")
                    need = to_ask(study, sweep)
                    if need <= 0 or failures(study) >= sweep.max_failures_per_cell:
                        break
                    before = time.time()
                    resume = _claim_paused(checkpoints, cell, sweep, study, device, need, log) if checkpoints else None
                    asked, surplus = ask_pack(cell, sweep, study, len(resume.params) if resume else min(need, most))
                    did["surplus"] += surplus
                    if resume is not None and [p for _, p in asked] != resume.params:
                        resume.release()  # not the paused pack's trials after all (a race): train them anew
                        resume = None
                    if not asked:
                        break
                    worked = True
                    beats.hold(asked)
                    if resume is not None:
                        log(f"[worker {worker_seed}] {cell.key}: trials {', '.join(str(t.number) for t, _ in asked)} "
                            f"go on from step {resume.state['step']} of a paused pack ({resume.path})")
                    if pool is None:
                        told(cell, asked, before, train_pack(cell, sweep, study, asked, device=device,
                                                             progress=progress, curves=curves, pause=pause,
                                                             checkpoints=checkpoints, resume=resume))
                    else:
                        flying[pool.submit(_train_on_own_stream, cell, sweep, study, asked, device, progress,
                                           curves, stop, pause, checkpoints, resume)] = (cell, asked, before)
                        land(block_until=concurrent - 1)
                        break
                    if surplus:
                        break
            if flying:
                land(block_until=0 if not worked else concurrent - 1)
                continue
            if not worked:
                # nothing to start: done unless trials of other workers are still running (they may fail and
                # need a retry), in which case wait for them
                running = any(any(t.state == TrialState.RUNNING for t in live_trials(open_study(c, sweep, storage, 0)))
                              for c in cells)
                if not running or not uses_heartbeat(storage) and not _other_workers_alive(sweep, storage, cells):
                    return did
                time.sleep(5)
                if pause is not None and pause.is_set():
                    raise KeyboardInterrupt("paused")
    except BaseException:
        if pause is None or not pause.is_set() or checkpoints is None:
            stop.set()  # every pack in flight fails its trials as lost (train_pack), then this re-raises
        # else each pack in flight saves itself at its next evaluation (train_pack), unless a second interrupt
        # comes first
        try:
            wait(list(flying))
        except KeyboardInterrupt:
            stop.set()
            wait(list(flying))
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        beats.close()


class Interrupted(Exception):
    """Raised inside a pack training in a thread of its own when its worker is interrupted (a signal reaches
    only the main thread)."""


def _train_on_own_stream(cell: Cell, sweep: Sweep, study: optuna.Study, asked: list, device: str, progress: bool,
                         curves: Curves | None, stop: threading.Event, pause: threading.Event | None = None,
                         checkpoints: str | None = None, resume: PausedPack | None = None):
    import torch
    with torch.cuda.stream(torch.cuda.Stream()) if device == "cuda" else contextlib.nullcontext():
        return train_pack(cell, sweep, study, asked, device=device, progress=progress, curves=curves,
                          callbacks=[_stop_when(stop)], pause=pause, checkpoints=checkpoints, resume=resume)


def _claim_paused(checkpoints: str, cell: Cell, sweep: Sweep, study: optuna.Study, device: str, need: int,
                  log) -> PausedPack | None:
    """A paused pack of the cell to train on, claimed, with its members' trials enqueued (so that the next asks
    get its parameters), or None. One the cell can no longer take (its budget filled meanwhile) stays for
    later; one trained with other settings (the sweep file changed) is removed."""
    from .train import pack_fingerprint
    resume = PausedPack.claim(checkpoints, cell)
    if resume is None:
        return None
    if len(resume.params) > need:
        resume.release()
        return None
    if pack_fingerprint(_specs(cell, device, [(None, p) for p in resume.params])) != resume.state["fingerprint"]:
        log(f"{cell.key}: the paused pack {resume.path} was trained with other settings; starting anew")
        resume.done()
        return None
    for params in resume.params:
        study.enqueue_trial(params, user_attrs={"resumes": resume.path.rsplit(".claimed-", 1)[0]})
    return resume


def _stop_when(event: threading.Event):
    """A Lightning callback that raises Interrupted at the next step (training or evaluation) once `event` is
    set."""
    import lightning as L

    class StopWhenSet(L.Callback):
        def _check(self, *args):
            if event.is_set():
                raise Interrupted("the worker was interrupted")
        on_train_batch_start = on_validation_batch_start = _check
    return StopWhenSet()


class Heartbeats:
    """RDB storages: records a heartbeat for every trial this worker holds, every heartbeat interval, in a thread
    of its own, so that a dead worker's trials go stale and are retried (`open_storage`'s stale-trial callback).
    Optuna beats only inside `study.optimize`; ask-and-tell trials would otherwise never go stale. Journal
    storages: nothing (dead workers are found by pid, `reap_dead_workers`)."""

    def __init__(self, storage):
        self.storage = storage
        self.interval = storage.get_heartbeat_interval() if uses_heartbeat(storage) else None
        self.held: dict[int, int] = {}  # trial id -> trial number
        self.lock, self.closed = threading.Lock(), threading.Event()
        self.thread = None
        if self.interval:
            self.thread = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
            self.thread.start()

    def hold(self, asked: list) -> None:
        if self.interval:
            with self.lock:
                for trial, _ in asked:
                    self.held[trial._trial_id] = trial.number
                    self.storage.record_heartbeat(trial._trial_id)

    def release(self, asked: list) -> None:
        with self.lock:
            for trial, _ in asked:
                self.held.pop(trial._trial_id, None)

    def _beat(self) -> None:
        while not self.closed.wait(self.interval):
            with self.lock:
                ids = list(self.held)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a lost connection: the trial may go stale and be retried, never lost
                    warn_once(f"heartbeat of trial id {trial_id} not recorded: {type(e).__name__}: {e}")

    def close(self) -> None:
        self.closed.set()
        if self.thread is not None:
            self.thread.join()


def _other_workers_alive(sweep: Sweep, storage, cells) -> bool:
    """Journal storages: is any RUNNING trial held by a live process? (Dead ones are reaped next pass.)"""
    reaped = sum(reap_dead_workers(open_study(c, sweep, storage, 0)) for c in cells)
    if reaped:
        return True  # their cells need work again: go round once more
    return any(any(t.state == TrialState.RUNNING for t in open_study(c, sweep, storage, 0).get_trials(
        deepcopy=False)) for c in cells)
