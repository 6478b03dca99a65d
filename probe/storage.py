"""Where a sweep's Optuna studies live.

- Default: a journal file, `runs/<sweep>/journal.log` (optuna's JournalStorage over a JournalFileBackend, which
  locks the file, so many processes on one machine share it safely). Journals have no heartbeat, so a worker
  records its host and pid on each trial, and any worker on that host fails the RUNNING trials of dead pids
  (`reap_dead_workers`) before it looks for work.
- `postgresql://...` (or any SQLAlchemy URL Optuna's RDBStorage takes): one sweep across machines, with
  Optuna's heartbeat: a trial whose worker stops beating is failed and re-queued once as WAITING with the same
  parameters (RetryHeartbeatStaleTrialCallback). Not SQLite: it does not take concurrent writers well.
  Workers that start together on an empty database race to create Optuna's tables; the losers try again.
"""
from __future__ import annotations

import datetime
import os
import random
import socket
import time
import warnings

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from .errors import ProbeError


def default_url(sweep_name: str) -> str:
    return os.path.join("runs", sweep_name, "journal.log")


_SCHEMA_RACE_RETRIES = 5  # how often opening an RDB storage tries again after losing a schema-creation race


def open_storage(url: str, *, heartbeat: int = 60, create: bool = True) -> optuna.storages.BaseStorage:
    """A journal path (no scheme) or an RDB URL -> an Optuna storage."""
    if "://" not in url:
        if not create and not os.path.exists(url):
            raise ProbeError(f"storage {url} does not exist (no sweep has run there yet)")
        parent = os.path.dirname(os.path.abspath(url))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise ProbeError(f"storage {url}: cannot create {parent}: {e.strerror}") from None
        lock = JournalFileOpenLock(url)  # an O_EXCL lock file: works on any local filesystem
        return JournalStorage(JournalFileBackend(url, lock_obj=lock))
    if url.startswith("sqlite"):
        raise ProbeError("storage: SQLite does not take concurrent writers well; use a journal file (a plain "
                         "path) on one machine or postgresql://... across machines")
    for attempt in range(_SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; probe relies on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                                  engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Workers that start together on an empty database all create Optuna's tables and its version row;
            # the losers' transactions fail with a unique violation once the winner's commits. Trying again
            # finds the schema in place. Anything else (a wrong URL, a server that is down) is not retried.
            if attempt == _SCHEMA_RACE_RETRIES or not _is_duplicate(e):
                raise ProbeError(f"storage {url}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
            time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
        except Exception as e:  # a wrong URL, a server that is down: one line, not a SQLAlchemy traceback
            raise ProbeError(f"storage {url}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _is_duplicate(e: Exception) -> bool:
    """A unique violation or an already existing table: what a concurrent schema creation looks like."""
    text = str(e).lower()
    return isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate" in text


def uses_heartbeat(storage) -> bool:
    return isinstance(storage, RDBStorage)


def worker_identity() -> dict:
    """Who trains a trial: host and pid (to reap dead workers) and the GPU the launcher pinned it to."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(study: optuna.Study, untagged_after_s: float = 60.0) -> int:
    """Fail RUNNING trials whose worker is gone; returns how many. Journal storages (one machine) only.

    A worker tags its trial with host and pid within milliseconds of Optuna creating it; a RUNNING trial still
    untagged after `untagged_after_s` belonged to a worker killed in between, and would otherwise hold its
    cell (and every waiting worker) forever.
    """
    if uses_heartbeat(study._storage):
        optuna.storages.fail_stale_trials(study)
        return 0
    host, reaped, now = socket.gethostname(), 0, datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None:
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if age <= untagged_after_s:
                continue
            reason = f"never claimed by a worker ({age:.0f} s old)"
        elif worker.get("host") != host or _pid_alive(worker.get("pid", -1)):
            continue
        else:
            reason = f"worker pid {worker['pid']} on {host} died"
        study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
        study._storage.set_trial_user_attr(t._trial_id, "lost", True)  # retried; not a failure of the cell
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            reaped += 1
    return reaped
