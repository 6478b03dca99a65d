"""Synthetic tasks, one per file; `TASKS` is the registry, keyed by each task's `name`.

The package imports nothing from `probe`, so tasks can be generated and tested without any model code.
"""
from .base import IGNORE, Examples, TaskConfig, TaskConfigError
from .copying import Copying
from .mqar import MQAR
from .order import Order
from .passkey import Passkey

TASKS: dict[str, type[TaskConfig]] = {
    "mqar": MQAR,
    "passkey": Passkey,
    "copying": Copying,
    "order": Order,
}

__all__ = ["TASKS", "IGNORE", "Examples", "TaskConfig", "TaskConfigError", "MQAR", "Passkey", "Copying", "Order"]
