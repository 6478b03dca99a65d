"""Where a sweep's Optuna studies live.

- Default: a journal file, `runs/<sweep>/journal.log` (optuna's JournalStorage over a JournalFileBackend, which
  locks the file, so many processes on one machine share it safely). Journals have no heartbeat, so a worker
  records its host and pid on each trial, and any worker on that host fails the RUNNING trials of dead pids
  (`reap_dead_workers`) before it looks for work.
- `postgresql://...` (or any SQLAlchemy URL Optuna's RDBStorage takes): one sweep across machines, with
  Optuna's heartbeat: a trial whose worker stops beating is failed and re-queued once as WAITING with the same
  parameters (RetryHeartbeatStaleTrialCallback). Not SQLite: it does not take concurrent writers well.
  Workers that start together on an empty database race to create Optuna's tables; the losers try again.

A journal is one JSON entry per line, appended. A process killed mid-append (or a full disk) leaves its last
line cut off; Optuna reads past it, but the next append would fuse onto it and make the journal unreadable for
good. So before a journal is opened for writing, a cut-off (or undecodable) last line is moved to
`<journal>.partial-<time>` with a warning. An undecodable line inside a journal stops writers, naming the line;
readers (status, results, report) read the entries before it, and of a line where a cut-off entry was fused
with the next (what older probes left), the entry after the cut.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import random
import socket
import sys
import time
import warnings

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from .errors import ProbeError
from .outputs import check_writable


class StorageMissing(ProbeError):
    """A journal that does not exist yet: no sweep has run there, so it holds no study (an empty sweep)."""


def default_url(sweep_name: str) -> str:
    return os.path.join("runs", sweep_name, "journal.log")


_SCHEMA_RACE_RETRIES = 5  # how often opening an RDB storage tries again after losing a schema-creation race


def open_storage(url: str, *, heartbeat: int = 60, create: bool = True) -> optuna.storages.BaseStorage:
    """A journal path (no scheme) or an RDB URL -> an Optuna storage.

    create=True opens it to write (a journal is created, its cut-off last line set aside); create=False opens it
    to read (a journal that does not exist raises StorageMissing). Anything unusable is one ProbeError line."""
    if "://" not in url:
        return _open_journal(url) if create else _read_journal(url)
    if url.startswith("sqlite"):
        raise ProbeError("storage: SQLite does not take concurrent writers well; use a journal file (a plain "
                         "path) on one machine or postgresql://... across machines")
    engine_url = _engine_url(url)
    for attempt in range(_SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; probe relies on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(engine_url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                                  engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Workers that start together on an empty database all create Optuna's tables and its version row;
            # the losers' transactions fail with a unique violation once the winner's commits. Trying again
            # finds the schema in place. Anything else (a wrong URL, a server that is down) is not retried.
            if attempt == _SCHEMA_RACE_RETRIES or not _is_duplicate(e):
                raise ProbeError(f"storage {url}: {type(e).__name__}: {_first_line(e)}") from None
            time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
        except Exception as e:  # a wrong URL, a server that is down: one line, not a SQLAlchemy traceback
            raise ProbeError(f"storage {url}: {type(e).__name__}: {_first_line(e)}") from None


def check_readable(url: str, *, missing_ok: bool = True) -> None:
    """Raise one ProbeError line unless the storage can be read. A journal that does not exist yet holds no
    study, which is an empty sweep, not an error, where `missing_ok`; a server that cannot be reached is."""
    try:
        open_storage(url, create=False).get_all_studies()
    except StorageMissing:
        if not missing_ok:
            raise
    except ProbeError:
        raise
    except Exception as e:  # a database that answered the connection but not the query
        raise ProbeError(f"storage {url}: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _engine_url(url: str) -> str:
    """SQLAlchemy reads postgresql:// as psycopg2, which probe does not install; psycopg (3, the `postgres` extra)
    is its driver. Without either, one line says what to install."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        if importlib.util.find_spec("psycopg") is None:
            raise ProbeError("storage postgresql://...: needs a PostgreSQL driver: pip install 'probe[postgres]'")
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


# -- journals ----------------------------------------------------------------------------------------------------
def _open_journal(path: str) -> JournalStorage:
    if os.path.isdir(path):
        raise ProbeError(f"storage {path} is a directory, not a journal file")
    check_writable(path, "storage", make_parent=True)  # a probe file: os.access says yes to root everywhere
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise ProbeError(f"storage {path}: cannot create its folder: {e.strerror}") from None
    lock = JournalFileOpenLock(path)  # an O_EXCL lock file: works on any local filesystem
    _set_aside_cut_off_tail(path, lock)
    try:
        return JournalStorage(JournalFileBackend(path, lock_obj=lock))
    except OSError as e:
        raise ProbeError(f"storage {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:  # Optuna's replay stops at the first line it cannot apply
        problems = _readable_entries(path)[1]
        if not problems:
            raise ProbeError(f"storage {path}: cannot be replayed: {type(e).__name__}: {_first_line(e)}") from None
        line, what, _ = problems[0]
        raise ProbeError(f"storage {path}:{line}: {what}; probe status, results and report read it, but nothing "
                         "writes to it until that line is removed or repaired") from None


def _read_journal(path: str) -> JournalStorage:
    if os.path.isdir(path):
        raise ProbeError(f"storage {path} is a directory, not a journal file")
    if not os.path.exists(path):
        raise StorageMissing(f"storage {path} does not exist (no sweep has run there yet)")
    try:
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    except OSError as e:
        raise ProbeError(f"storage {path}: cannot be read: {e.strerror}") from None
    except (ValueError, KeyError, TypeError):
        pass
    entries, problems = _readable_entries(path)
    if problems:
        line, what, read = problems[0]
        more = f" ({len(problems) - 1} more bad lines after it)" if len(problems) > 1 else ""
        warn_once(f"storage {path}:{line}: {what}{more}; {read}")
    return JournalStorage(_ReadOnlyJournal(entries))


class _ReadOnlyJournal(BaseJournalBackend):
    """The readable entries of a damaged journal, in memory: what status, results and report read."""

    def __init__(self, entries: list[dict]):
        self._entries = entries

    def read_logs(self, log_number_from: int) -> list[dict]:
        return self._entries[log_number_from:]

    def append_logs(self, logs: list[dict]) -> None:
        raise ProbeError("a journal with an undecodable line is read, never written")


_ENTRY = b'{"op_code":'  # how Optuna starts every entry; inside a JSON string the quotes would be escaped


def _entry(line: bytes) -> dict | None:
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return entry if isinstance(entry, dict) and "op_code" in entry else None


def _readable_entries(path: str) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """The entries of a journal that can be replayed safely, and (line, what is wrong, what was read) for each
    line that could not be read whole.

    A line where a cut-off entry was fused with the next gives the entry after the cut: the processes that wrote
    after it never saw the cut-off one. Any other bad line ends the reading: a lost entry that created a study
    or trial would shift the ids of every entry after it."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines.pop()  # after the last newline: b"" or an entry being written (or cut off) right now
    entries, problems = [], []
    for number, line in enumerate(lines, start=1):
        entry = _entry(line)
        if entry is not None:
            entries.append(entry)
            continue
        cut = line.rfind(_ENTRY)
        fused = _entry(line[cut:]) if cut > 0 else None
        if fused is not None:
            entries.append(fused)
            problems.append((number, f"a cut-off entry ({cut} bytes) fused with the next", "read the entry after it"))
            continue
        unread = len(lines) - number
        problems.append((number, "not a journal entry (undecodable JSON)",
                         f"read the {len(entries)} entries before it" + (f", not the {unread} lines after it"
                                                                          if unread else "")))
        break
    return entries, problems


def _set_aside_cut_off_tail(path: str, lock: JournalFileOpenLock) -> None:
    """Move a cut-off or undecodable end of a journal to `<journal>.partial-<time>`, so the next entry starts on
    a line of its own."""
    if _bad_tail(path) is None:
        return
    lock.acquire()  # a live writer may be mid-append: under the lock, a line still cut off has no writer
    try:
        start = _bad_tail(path)
        if start is None:
            return
        aside = f"{path}.partial-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
        with open(path, "r+b") as f:
            f.seek(start)
            tail = f.read()
            with open(aside, "xb") as kept:
                kept.write(tail)
                kept.flush()
                os.fsync(kept.fileno())
            f.truncate(start)
            os.fsync(f.fileno())
    except OSError as e:
        raise ProbeError(f"storage {path}: its last line is cut off and cannot be set aside: {e.strerror}") from None
    finally:
        lock.release()
    warn_once(f"storage {path} ended in a cut-off entry ({len(tail)} bytes, a write that never finished); "
          f"moved it to {aside}")


def _bad_tail(path: str) -> int | None:
    """Where the run of cut-off (no newline) or undecodable lines that ends a journal starts; None if none."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        end, start = f.seek(0, os.SEEK_END), None
        while end > 0:
            f.seek(end - 1)
            whole = f.read(1) == b"\n"
            line = _line_start(f, end - 1 if whole else end)
            f.seek(line)
            if whole and _entry(f.read(end - line)) is not None:
                break
            start = end = line
        return start


def _line_start(f, end: int) -> int:
    """The offset just after the last newline before `end` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = min(1 << 16, pos)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos - step + newline + 1
        pos -= step
    return 0


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """One line on stderr, once per process (status and results open a storage more than once)."""
    if message not in _warned:
        _warned.add(message)
        print(f"probe: warning: {message}", file=sys.stderr, flush=True)


def _is_duplicate(e: Exception) -> bool:
    """A unique violation or an already existing table: what a concurrent schema creation looks like."""
    text = str(e).lower()
    return isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate" in text


def uses_heartbeat(storage) -> bool:
    """An RDB storage (heartbeats find dead workers), also as a study holds it: inside Optuna's cache."""
    return isinstance(getattr(storage, "_backend", storage), RDBStorage)


def worker_identity() -> dict:
    """Who trains a trial: host and pid (to reap dead workers) and the GPU the launcher pinned it to."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def pid_alive(pid: int) -> bool:
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
        elif worker.get("host") != host or pid_alive(worker.get("pid", -1)):
            continue
        else:
            reason = f"worker pid {worker['pid']} on {host} died"
        study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
        study._storage.set_trial_user_attr(t._trial_id, "lost", True)  # retried; not a failure of the cell
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            reaped += 1
    return reaped
