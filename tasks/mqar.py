"""Multi-query associative recall (MQAR), compatible with Zoology's generator (Arora et al. 2023).

The context binds N keys to N values; afterwards every key is queried exactly once, in random order, and at
the query's position the model must emit the bound value.

    vocab V; keys drawn without replacement from [1, V/2), values from [V/2, V)
    context   k1 v1 k2 v2 ... kN vN                           (2N tokens)
    queries   the rest of the sequence is split into slots of two tokens; N slots are chosen without
              replacement with p(slot g) ∝ (g+1)^(power_a−1), and slot g holds the query key at its first
              token; every other token is filler (0, or random tokens with random_non_queries)

Worked example (V=16, L=16, N=2): keys from [1, 8), values from [8, 16)

    inputs   5 12  3  9 | 0  0  3  0  0  0  5  0  0  0  0  0
    targets  .  .  .  . | .  .  9  .  .  .  12 .  .  .  .  .      (. = -100, not scored)

Zoology builds L+1 tokens and shifts by one; the resulting pair (inputs, targets) is the same layout: the
target at a query key's position is its value. Slices: num_kv_pairs, and `query_gap` is not a per-example
slice (it varies per query), so accuracy per example is the mean over its N queries. Chance: 1/(V/2).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive


@dataclass(frozen=True)
class MQAR(TaskConfig):
    name: ClassVar[str] = "mqar"
    chance: ClassVar[str] = "2/vocab_size (a uniform guess among the values)"

    seq_len: int = 64
    vocab_size: int = 8192
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = False
    #: pairs at each evaluation length; empty keeps num_kv_pairs (one entry per eval_seq_lens entry)
    eval_num_kv_pairs: tuple[int, ...] = ()

    def check(self) -> None:
        super().check()
        positive(self, "num_kv_pairs")
        at_least(self, "vocab_size", 2 * self.num_kv_pairs + 2,
                 f"(keys come from [1, vocab_size/2): {self.num_kv_pairs} pairs need at least that many)")
        need = 4 * self.num_kv_pairs
        if self.seq_len < need:
            raise TaskConfigError(
                f"mqar: num_kv_pairs={self.num_kv_pairs} does not fit in seq_len={self.seq_len} "
                f"(the context takes 2N tokens and the N queries 2N more: seq_len must be >= {need})")
        if not self.power_a > 0:
            raise TaskConfigError(f"mqar: power_a={self.power_a} must be > 0")
        check_eval_pairs(self)

    def at_length(self, seq_len: int) -> "MQAR":
        return pairs_at_length(self, seq_len)

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        N, L, V = self.num_kv_pairs, self.seq_len, self.vocab_size
        half = V // 2
        keys = rng.sample_without_replacement(n, N, 1, half, seed, "mqar/keys", device)  # [n, N]
        values = rng.randint(half, V, seed, "mqar/values",
                             torch.arange(n, device=device)[:, None], torch.arange(N, device=device)[None, :])

        context = 2 * N
        slots = (L - context) // 2  # each query takes a two-token slot
        g = torch.arange(slots, device=device, dtype=torch.float64)
        log_p = (self.power_a - 1.0) * torch.log1p(g) + math.log(self.power_a)  # p(g) ∝ (g+1)^(a-1)
        gaps = rng.gumbel_top_k(log_p.expand(n, slots), N, seed, "mqar/gaps")  # [n, N], distinct slots
        query_pos = context + 2 * gaps  # [n, N]

        if self.random_non_queries:
            inputs = rng.randint(1, V, seed, "mqar/filler",
                                 torch.arange(n, device=device)[:, None], torch.arange(L, device=device)[None, :])
        else:
            inputs = torch.zeros(n, L, dtype=torch.int64, device=device)
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        inputs.scatter_(1, query_pos, keys)
        targets = torch.full((n, L), IGNORE, dtype=torch.int64, device=device)
        targets.scatter_(1, query_pos, values)
        slices = {"num_kv_pairs": torch.full((n,), N, dtype=torch.int64, device=device)}
        return Examples(inputs, targets, slices)


def check_eval_pairs(task) -> None:
    """A recall task's `eval_num_kv_pairs`: empty, or one pair count per `eval_seq_lens` entry."""
    if task.eval_num_kv_pairs and len(task.eval_num_kv_pairs) != len(task.eval_seq_lens):
        raise TaskConfigError(
            f"{task.name}: eval_num_kv_pairs={task.eval_num_kv_pairs} has {len(task.eval_num_kv_pairs)} entries but "
            f"eval_seq_lens={task.eval_seq_lens} has {len(task.eval_seq_lens)}: give one pair count per "
            "evaluation length")


def pairs_at_length(task, seq_len: int):
    """The task at one evaluation length, with that length's pair count (`eval_num_kv_pairs`; the training
    length keeps num_kv_pairs)."""
    pairs = dict(zip(task.eval_seq_lens, task.eval_num_kv_pairs)).get(seq_len, task.num_kv_pairs)
    if seq_len == task.seq_len:
        pairs = task.num_kv_pairs
    return dataclasses.replace(task, seq_len=seq_len, num_kv_pairs=pairs, eval_seq_lens=(), eval_num_kv_pairs=())
