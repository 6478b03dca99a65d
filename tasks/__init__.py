"""Synthetic tasks, one per file; `TASKS` is the registry, keyed by each task's `name`.

The package imports nothing from `probe`, so tasks can be generated and tested without any model code.
"""
from .base import IGNORE, Examples, TaskConfig, TaskConfigError
from .compositional_mqar import CompositionalMQAR
from .compression import Compression
from .copying import Copying
from .forgetting_mqar import ForgettingMQAR
from .fuzzy_recall import FuzzyRecall
from .in_context_recall import InContextRecall, NoisyRecall
from .memorization import Memorization
from .mqar import MQAR
from .order import Order
from .passkey import Passkey
from .phonebook import PhoneBook
from .state_tracking import StateTracking

TASKS: dict[str, type[TaskConfig]] = {
    "mqar": MQAR,
    "passkey": Passkey,
    "copying": Copying,
    "order": Order,
    "state_tracking": StateTracking,
    "in_context_recall": InContextRecall,
    "noisy_recall": NoisyRecall,
    "fuzzy_recall": FuzzyRecall,
    "compression": Compression,
    "memorization": Memorization,
    "forgetting_mqar": ForgettingMQAR,
    "phonebook": PhoneBook,
    "compositional_mqar": CompositionalMQAR,
}

__all__ = ["TASKS", "IGNORE", "Examples", "TaskConfig", "TaskConfigError", "MQAR", "Passkey", "Copying", "Order",
           "StateTracking", "InContextRecall", "NoisyRecall", "FuzzyRecall", "Memorization", "ForgettingMQAR",
           "PhoneBook", "CompositionalMQAR", "Compression"]
