"""Files probe writes for a user (the --json record, exported tables, reports): checked before any work, written
atomically (a temporary file beside the target, renamed over it), so a failure leaves nothing half-written."""
from __future__ import annotations

import os
from collections.abc import Callable

from .errors import ProbeError


def check_writable(path: str, flag: str, *, make_parent: bool = False) -> None:
    """Raise one ProbeError line, naming `flag`, if `path` cannot be written; optionally create its folder."""
    if os.path.isdir(path):
        raise ProbeError(f"{flag} {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if make_parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise ProbeError(f"{flag} {path}: cannot create {parent}: {e.strerror}") from None
    elif not os.path.isdir(parent):
        raise ProbeError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ProbeError(f"{flag} {path}: not writable")


def write_atomically(path: str, flag: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename the result over `path`; on failure remove the temporary file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise ProbeError(f"{flag} {path}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
