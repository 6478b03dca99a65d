"""Compositional MQAR: Zoology's multi-query associative recall with two-token keys laid out on a grid, so that
neither token of a key alone tells its value (Zoology's `compositional_mqar` generator, HazyResearch/zoology).

MQAR (tasks.mqar) binds one token to a value. Here a key is a pair (K1, K2) and the N = g² keys of an example
are every combination of g K1 tokens with g K2 tokens: K1 = A is bound to g different values, one per K2, and
so is each K2. A model must bind the *conjunction* of two adjacent tokens; one that matches a single token of
the query narrows the answer to the g values of its row (or column) and no further.

    vocab V, third = V // 3; K1 tokens from [1, third), K2 tokens from [third, 2·third), values from
              [2·third, V), the N values of an example distinct
    context   K1 K2 v  K1 K2 v  ...                                  (3N tokens: the grid's pairs in random order)
    queries   the rest of the sequence is split into slots of three tokens; N slots are chosen without
              replacement with p(slot s) ∝ (s+1)^(power_a−1), slot s holds a key's K1 K2 at its first two
              tokens; every key is queried once; every other token is filler (0, or random with
              random_non_queries)
    targets   at a query's K2: the key's value

Worked example (V=15, L=30, N=4 so g=2: K1 from [1, 5), K2 from [5, 10), values from [10, 15); the keys are
K1 {4, 2} × K2 {8, 7}, and K1 = 4 alone could mean 14 or 12):

    inputs    4  8 14  2  7 13  2  8 11  4  7 12 | 4  8  0  4  7  0  2  7  0  0  0  0  0  0  0  2  8  0
    targets   .  .  .  .  .  .  .  .  .  .  .  . | . 14  .  . 12  .  . 13  .  .  .  .  .  .  .  . 11  .

(. = -100, not scored.) Zoology builds L+1 tokens and shifts by one; the pair (inputs, targets) has this layout.

Where this departs from Zoology: (1) draws come from tasks.rng (the same seed gives the same examples on any
device), not numpy's global state: the same distribution, other numbers. (2) random_non_queries defaults to
False (Zoology: True) as in probe's MQAR, and filler is drawn from [1, V) as there. (3) Zoology asserts an even
seq_len and vocab_size > seq_len, which its construction does not need; here only what must fit is checked:
6N tokens (the context and N query slots), and vocab_size >= max(3(g + 1), 3N - 2), so that its thirds hold g
K1 tokens besides the filler 0, g K2 tokens and N distinct values. (4) eval_num_kv_pairs sets the
pairs at each evaluation length, as in tasks.mqar.

Slice: num_kv_pairs. at_length keeps N unless eval_num_kv_pairs says otherwise: more room between the queries.
Chance: 1/(V - 2·(V//3)), a uniform guess among the values; a model that reads one key token and guesses among
its g values scores 1/g, and one that guesses among the N values in the context 1/N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive
from .mqar import check_eval_pairs, pairs_at_length


@dataclass(frozen=True)
class CompositionalMQAR(TaskConfig):
    """Zoology's compositional MQAR: two-token keys on a K1 × K2 grid; neither token alone gives the value."""

    name: ClassVar[str] = "compositional_mqar"
    chance: ClassVar[str] = ("1/(vocab_size - 2·(vocab_size//3)) (a uniform guess among the values; one key token "
                             "alone: 1/sqrt(num_kv_pairs))")

    seq_len: int = 64
    vocab_size: int = 8192
    #: keys, a perfect square g² (the grid of g K1 tokens × g K2 tokens)
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = False
    #: pairs at each evaluation length; empty keeps num_kv_pairs (one entry per eval_seq_lens entry)
    eval_num_kv_pairs: tuple[int, ...] = ()

    def check(self) -> None:
        super().check()
        positive(self, "num_kv_pairs")
        g = self.grid_size
        if g * g != self.num_kv_pairs:
            raise TaskConfigError(f"compositional_mqar: num_kv_pairs={self.num_kv_pairs} must be a perfect square "
                                  "(the keys are a g×g grid of K1 × K2 tokens: 4, 9, 16, ...)")
        # thirds of the vocabulary: g K1 tokens besides the filler 0 need V // 3 >= g + 1; N distinct values in
        # [2·(V//3), V) need V - 2·(V//3) >= N, which every V >= 3N - 2 meets (a bound that only grows with V)
        at_least(self, "vocab_size", max(3 * (g + 1), 3 * self.num_kv_pairs - 2),
                 f"(K1 tokens come from [1, vocab_size/3), K2 from the next third, {self.num_kv_pairs} distinct "
                 "values from the rest)")
        need = 6 * self.num_kv_pairs
        if self.seq_len < need:
            raise TaskConfigError(
                f"compositional_mqar: num_kv_pairs={self.num_kv_pairs} does not fit in seq_len={self.seq_len} "
                f"(the context takes 3N tokens and the N queries 3N more: seq_len must be >= {need})")
        if not self.power_a > 0:
            raise TaskConfigError(f"compositional_mqar: power_a={self.power_a} must be > 0")
        check_eval_pairs(self)

    @property
    def grid_size(self) -> int:
        """g: K1 tokens (and K2 tokens) per example, sqrt(num_kv_pairs)."""
        return math.isqrt(self.num_kv_pairs)

    def at_length(self, seq_len: int) -> "CompositionalMQAR":
        return pairs_at_length(self, seq_len)

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        N, g, L, V = self.num_kv_pairs, self.grid_size, self.seq_len, self.vocab_size
        third = V // 3
        rows = torch.arange(n, device=device)[:, None]
        k1_set = rng.sample_without_replacement(n, g, 1, third, seed, "cmqar/k1", device)  # [n, g]
        k2_set = rng.sample_without_replacement(n, g, third, 2 * third, seed, "cmqar/k2", device)  # [n, g]
        # the grid's cells j = (row j // g, column j % g), in a random order: the context's order
        cell = torch.argsort(rng.uniform(seed, "cmqar/order", rows, torch.arange(N, device=device)[None, :]), dim=1)
        k1, k2 = k1_set.gather(1, cell // g), k2_set.gather(1, cell % g)  # [n, N]
        values = rng.sample_without_replacement(n, N, 2 * third, V, seed, "cmqar/values", device)  # [n, N] distinct

        context = 3 * N
        slots = (L - context) // 3  # each query takes a three-token slot
        s = torch.arange(slots, device=device, dtype=torch.float64)
        log_p = (self.power_a - 1.0) * torch.log1p(s) + math.log(self.power_a)  # p(s) ∝ (s+1)^(a-1)
        gaps = rng.gumbel_top_k(log_p.expand(n, slots), N, seed, "cmqar/gaps")  # [n, N], distinct slots
        query_pos = context + 3 * gaps  # [n, N], where each key's K1 is queried

        if self.random_non_queries:
            inputs = rng.randint(1, V, seed, "cmqar/filler", rows, torch.arange(L, device=device)[None, :])
        else:
            inputs = torch.zeros(n, L, dtype=torch.int64, device=device)
        inputs[:, 0:context:3] = k1
        inputs[:, 1:context:3] = k2
        inputs[:, 2:context:3] = values
        inputs.scatter_(1, query_pos, k1)
        inputs.scatter_(1, query_pos + 1, k2)
        targets = torch.full((n, L), IGNORE, dtype=torch.int64, device=device)
        targets.scatter_(1, query_pos + 1, values)
        slices = {"num_kv_pairs": torch.full((n,), N, dtype=torch.int64, device=device)}
        return Examples(inputs, targets, slices)

