"""Files probe writes for a user (the --json record, exported tables, reports): checked before any work, written
atomically (a temporary file beside the target, renamed over it), so a failure leaves nothing half-written."""
from __future__ import annotations

import os
from collections.abc import Callable

from .errors import ProbeError


def check_writable(path: str, flag: str, *, make_parent: bool = False) -> None:
    """Raise one ProbeError line, naming `flag`, if `path` cannot be written (with `make_parent`, if its missing
    folders cannot be created). Creates nothing: write_atomically makes the folders when it writes.

    Tried, not asked: a probe file is created and removed where the file (or its first missing folder) would
    go, since os.access says yes to root everywhere, even on /proc or a read-only mount."""
    if os.path.isdir(path):
        raise ProbeError(f"{flag} {path}: is a directory")
    if os.path.exists(path) and not os.path.isfile(path):  # the file is renamed over it: never over /dev/null
        raise ProbeError(f"{flag} {path}: is not a regular file")
    parent = os.path.dirname(os.path.abspath(path))
    where, problem = parent, "not writable"
    if not os.path.isdir(parent):
        if not make_parent:
            raise ProbeError(f"{flag} {path}: directory {parent} does not exist")
        while not os.path.exists(where):
            where = os.path.dirname(where)
        if not os.path.isdir(where):
            raise ProbeError(f"{flag} {path}: cannot create {parent}: {where} is not a directory")
        problem = f"cannot create {parent}"
    probe = os.path.join(where, f".{os.path.basename(path)}.probe{os.getpid()}")
    try:
        open(probe, "x").close()
        os.remove(probe)
        if os.path.exists(path):  # opened to append nothing, without blocking on a FIFO: may it be written?
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as e:
        raise ProbeError(f"{flag} {path}: {problem} ({e.strerror})") from None


def write_atomically(path: str, flag: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename the result over `path`; on failure remove the temporary file. Makes the
    missing folders of `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise ProbeError(f"{flag} {path}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
