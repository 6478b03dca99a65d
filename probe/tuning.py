"""One worker's loop over a sweep: for each cell, run Optuna trials until the cell has its budget.

Design choices:
- The sampler tunes the cell's search space: GPSampler for up to 3 continuous parameters, TPE otherwise;
  few random start-up trials, since a cell gets only a handful of trials.
- probe's own Lightning callback reports accuracy to the trial at every evaluation, by global step, and stops
  the trainer cleanly when the pruner says so (the trial ends PRUNED with its record kept).
- A loss that turns NaN/inf ends the trial as PRUNED with the reason recorded; any other exception ends it
  FAILED with the error recorded; neither stops the worker.
- Budget: a cell is done when it has `trials_per_cell` trials that are COMPLETE, PRUNED, RUNNING or WAITING.
  Workers race: each new trial counts the live trials numbered before it, and a trial beyond the budget ends
  at once, FAILED and marked `surplus`, before any training. So two workers never train the same trial, and no
  cell trains more trials than its budget.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import zlib

import lightning as L
import optuna
from optuna.trial import TrialState

from .storage import reap_dead_workers, uses_heartbeat, worker_identity
from .sweep import Cell, Sweep

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class Surplus(Exception):
    """The cell already has its budget of trials; this one ends before training."""


class TrialFailed(Exception):
    """Training raised; the trial ends FAILED with the error recorded and the worker goes on."""


class OptunaPruning(L.Callback):
    """Report accuracy at the training length after every evaluation; stop the trainer when pruned."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not pl_module.history or trainer.state.fn != "fit":
            return
        entry = pl_module.history[-1]
        self.trial.report(entry["accuracy"], entry["step"])
        if self.trial.should_prune():
            self.pruned_at = entry["step"]
            trainer.should_stop = True


def make_sampler(cell: Cell, sweep: Sweep, worker_seed: int) -> optuna.samplers.BaseSampler:
    startup = max(2, min(10, sweep.trials_per_cell // 2))
    seed = zlib.crc32(f"{cell.study_name}/{worker_seed}".encode())
    if cell.search.n_params <= 3:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2 * sweep.train_config().val_every)


def live_trials(study: optuna.Study, before: int | None = None) -> list:
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in LIVE and not t.user_attrs.get("surplus") and (before is None or t.number < before)]


def failures(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
               if not t.user_attrs.get("surplus"))


def objective(cell: Cell, sweep: Sweep, trial: optuna.Trial, *, device: str, progress: bool) -> float:
    from .train import train
    trial.set_user_attr("worker", worker_identity())
    if len(live_trials(trial.study, before=trial.number)) >= sweep.trials_per_cell:
        trial.set_user_attr("surplus", True)
        raise Surplus(cell.key)
    lr = trial.suggest_float("lr", *cell.search.lr, log=True)
    overrides = {"lr": lr, "device": device}
    if cell.search.weight_decay is not None:
        overrides["weight_decay"] = trial.suggest_float("weight_decay", *cell.search.weight_decay, log=True)
    trial.set_user_attr("cell", cell.key)
    pruning = OptunaPruning(trial)
    try:
        record = train(cell.task, cell.arch, cell.model, dataclasses.replace(cell.train, **overrides),
                       cell.mixer_options, progress=progress, callbacks=[pruning])
    except Exception as e:
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        raise TrialFailed(str(e)) from e
    record["worker"] = worker_identity()
    trial.set_user_attr("record", record)
    if record["diverged"]:
        trial.set_user_attr("reason", record["diverged"])
        raise optuna.TrialPruned(record["diverged"])
    if pruning.pruned_at is not None:
        trial.set_user_attr("reason", f"pruned by the median rule at step {pruning.pruned_at}")
        raise optuna.TrialPruned()
    return record["accuracy"]


def open_study(cell: Cell, sweep: Sweep, storage, worker_seed: int) -> optuna.Study:
    study = optuna.create_study(study_name=cell.study_name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=make_sampler(cell, sweep, worker_seed),
                                pruner=make_pruner(sweep))
    return study


def cell_studies(sweep: Sweep, storage_url: str) -> list[tuple[Cell, optuna.Study | None]]:
    """Each cell of the sweep with its study in the storage, or None where no trial has been asked yet
    (also when the storage does not exist yet). Read-only: creates nothing."""
    from .errors import ProbeError
    from .storage import open_storage
    try:
        storage = open_storage(storage_url, create=False)
        names = {s.study_name for s in storage.get_all_studies()}
    except ProbeError:
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


def run_worker(sweep: Sweep, storage, *, device: str, worker_seed: int = 0, progress: bool = False,
               log=print) -> dict[str, int]:
    """Work on the sweep's cells until none needs a trial. Returns counts of what this worker did."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    did = {"trials": 0, "surplus": 0, "failed": 0, "reaped": 0}
    cells = sweep.cells()
    # start at a different cell per worker so that workers rarely race for the same study
    start = worker_seed % len(cells)
    while True:
        worked = False
        for cell in cells[start:] + cells[:start]:
            study = open_study(cell, sweep, storage, worker_seed)
            did["reaped"] += reap_dead_workers(study)
            while True:
                live = live_trials(study)
                if len(live) >= sweep.trials_per_cell or failures(study) >= sweep.max_failures_per_cell:
                    break
                before = time.time()
                ran: list[optuna.trial.FrozenTrial] = []
                study.optimize(lambda t: objective(cell, sweep, t, device=device, progress=progress),
                               n_trials=1, catch=(Surplus, TrialFailed), gc_after_trial=True,
                               callbacks=[lambda _study, frozen: ran.append(frozen)])
                last = ran[0]
                if last.user_attrs.get("surplus"):
                    did["surplus"] += 1
                    break
                worked = True
                did["trials"] += 1
                did["failed"] += last.state == TrialState.FAIL
                value = f"{last.value:.4f}" if last.value is not None else last.user_attrs.get("reason", "")
                log(f"[worker {worker_seed}] {cell.key} trial {last.number}: {last.state.name} {value} "
                    f"({time.time() - before:.1f} s)")
        if not worked:
            # nothing to start: done unless trials of other workers are still running (they may fail and
            # need a retry), in which case wait for them
            running = any(any(t.state == TrialState.RUNNING for t in live_trials(open_study(c, sweep, storage, 0)))
                          for c in cells)
            if not running or not uses_heartbeat(storage) and not _other_workers_alive(sweep, storage, cells):
                return did
            time.sleep(5)


def _other_workers_alive(sweep: Sweep, storage, cells) -> bool:
    """Journal storages: is any RUNNING trial held by a live process? (Dead ones are reaped next pass.)"""
    reaped = sum(reap_dead_workers(open_study(c, sweep, storage, 0)) for c in cells)
    if reaped:
        return True  # their cells need work again: go round once more
    return any(any(t.state == TrialState.RUNNING for t in open_study(c, sweep, storage, 0).get_trials(
        deepcopy=False)) for c in cells)
