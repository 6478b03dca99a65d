"""One exception for every mistake a user can make: the CLI prints its message on one line and exits 2."""


class ProbeError(ValueError):
    """A bad input named in one line: unknown arch or task, sizes that don't fit, an unwritable path, ..."""
