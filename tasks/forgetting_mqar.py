"""Forgetting MQAR: Zoology's MQAR with some keys re-bound before the queries; the answer is the latest value.

MQAR (tasks.mqar) asks whether a mixer can store N bindings; this asks whether it can also *replace* one. A
state that only accumulates (linear attention without decay, a sum of outer products) holds both the old and
the new value of an overwritten key and answers with a blend; attention can look for the latest write; a
gated or delta-rule recurrence can erase. The queries are MQAR's own: this task is an MQAR example (generated
by tasks.mqar with the same seed) with an overwrite block inserted between its context and its queries.

    vocab V; keys from [1, V/2), values from [V/2, V) as in MQAR
    context     k1 v1 .. kN vN                                   (2N tokens)
    overwrites  M pairs k v: m distinct context keys, in random order, each bound to a new value (never
                its old one); with vary_overwrites m is uniform in [0, M] per example and the M - m unused
                pairs are 0 0 (never random filler, which could pass for a re-binding)
    queries     MQAR's: every key once, at the first token of a two-token slot, p(slot g) ∝ (g+1)^(power_a−1)
    targets     at a query: the key's latest value

Worked example (V=16, L=20, N=2, M=1): keys from [1, 8), values from [8, 16); key 3 re-bound from 9 to 14

    inputs    5 12  3  9 | 3 14 | 0  0  3  0  0  0  5  0  0  0  0  0  0  0
    targets   .  .  .  . | .  . | .  .  14 .  .  .  12 .  .  .  .  .  .  .      (. = -100, not scored)

Slice `num_overwrites` (m per example). A model that answers every key with its first value scores
1 - m/N: the slice shows whether accuracy falls with m. at_length keeps N and M: more room between queries.
Chance: 2/vocab_size (a uniform guess among the values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive
from .mqar import MQAR


@dataclass(frozen=True)
class ForgettingMQAR(TaskConfig):
    """MQAR with keys re-bound before the queries: the answer is the latest value."""

    name: ClassVar[str] = "forgetting_mqar"
    chance: ClassVar[str] = "2/vocab_size (a uniform guess among the values; first values only: 1 - m/N)"

    seq_len: int = 64
    vocab_size: int = 8192
    num_kv_pairs: int = 4
    #: keys re-bound after the context (the most, with vary_overwrites)
    num_overwrites: int = 2
    vary_overwrites: bool = False
    power_a: float = 0.01
    random_non_queries: bool = False

    def check(self) -> None:
        super().check()
        positive(self, "num_kv_pairs")
        at_least(self, "num_overwrites", 0)
        if self.num_overwrites > self.num_kv_pairs:
            raise TaskConfigError(f"forgetting_mqar: num_overwrites={self.num_overwrites} must be <= "
                                  f"num_kv_pairs={self.num_kv_pairs} (each overwrite re-binds a distinct key)")
        at_least(self, "vocab_size", 2 * self.num_kv_pairs + 2,
                 f"(keys come from [1, vocab_size/2): {self.num_kv_pairs} pairs need at least that many)")
        need = 4 * self.num_kv_pairs + 2 * self.num_overwrites
        if self.seq_len < need:
            raise TaskConfigError(
                f"forgetting_mqar: seq_len={self.seq_len} must be >= {need} (context 2N, overwrites 2M and "
                f"N two-token query slots, N={self.num_kv_pairs}, M={self.num_overwrites})")
        if not self.power_a > 0:
            raise TaskConfigError(f"forgetting_mqar: power_a={self.power_a} must be > 0")

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        N, M, V = self.num_kv_pairs, self.num_overwrites, self.vocab_size
        half = V // 2
        base = MQAR(seq_len=self.seq_len - 2 * M, vocab_size=V, num_kv_pairs=N, power_a=self.power_a,
                    random_non_queries=self.random_non_queries).generate(n, seed, device)
        rows = torch.arange(n, device=device)
        slot = torch.arange(M, device=device)[None, :]  # [1, M]
        if self.vary_overwrites:
            m = rng.randint(0, M + 1, seed, "forgetting/num_overwrites", rows)
        else:
            m = torch.full((n,), M, dtype=torch.int64, device=device)
        used = slot < m[:, None]  # [n, M]

        which = rng.sample_without_replacement(n, M, 0, N, seed, "forgetting/which", device)  # [n, M] pair index
        keys = base.inputs[:, 0:2 * N:2].gather(1, which)
        old = base.inputs[:, 1:2 * N:2].gather(1, which)
        shift = rng.randint(1, V - half, seed, "forgetting/new", rows[:, None], slot)  # never 0: a new value
        new = half + (old - half + shift) % (V - half)

        block = torch.where(used.repeat_interleave(2, dim=1), torch.stack([keys, new], 2).reshape(n, 2 * M), 0)

        queries, answers = base.inputs[:, 2 * N:], base.targets[:, 2 * N:]  # [n, Lq]
        hit = (queries[:, :, None] == keys[:, None, :]) & used[:, None, :] & (answers != IGNORE)[:, :, None]
        latest = torch.where(hit.any(2), (hit * new[:, None, :]).sum(2), answers)  # keys are distinct: <= 1 hit
        ignore = torch.full((n, 2 * M), IGNORE, dtype=torch.int64, device=device)
        inputs = torch.cat([base.inputs[:, :2 * N], block, queries], dim=1)
        targets = torch.cat([base.targets[:, :2 * N], ignore, latest], dim=1)
        return Examples(inputs, targets, {"num_overwrites": m})
