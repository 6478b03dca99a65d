"""MAD's in-context recall and noisy in-context recall (Poli et al. 2024, "Mechanistic Design and Scaling of
Hybrid Architectures"), in the layout of MAD's generators.

A sequence of key-value pairs over a small vocabulary, keys drawn with replacement, so keys recur; a key keeps
the value of its first occurrence throughout the sequence. With multi_query (MAD's benchmark setting) every
recurrence of a key is a query: at the key the model must emit its bound value. The last pair always repeats a
key seen earlier (the probe), so every example scores at least once. Noisy recall replaces each pair but one,
with probability frac_noise, by two tokens from a separate noise vocabulary that the model must skip.

    vocab     ns = vocab_size - noise_vocab_size (- 1 without multi_query); keys [0, ns//2), values
              [ns//2, ns), noise [ns, ns + noise_vocab_size), the copy prefix vocab_size - 1 (single query)
    inputs    k v  k v  n n  k v ...  [COPY]  k* v*         B body pairs or noise pairs, then the probe
    targets   v at every key seen before (multi_query), else only v* at k*; -100 elsewhere

Worked example (in_context_recall, vocab_size=8, seq_len=10: keys 0..3, values 4..7; B = 4 body pairs):

    inputs    2  5  0  7  2  5  3  4  0  7
    targets   .  .  .  .  5  .  .  .  7  .           (. = -100; the last pair is the probe k*=0)

Worked example (noisy_recall, vocab_size=12, noise_vocab_size=4, frac_noise=0.5, seq_len=10: keys 0..3,
values 4..7, noise 8..11):

    inputs    1  6  9  9  11 8  1  6  1  6
    targets   .  .  .  .  .  .  6  .  6  .

Pairs: with multi_query P = (seq_len + 1) // 2 (the last value token falls off when seq_len is odd: MAD's own
layout, whose seq_len=128 is 127 input tokens holding 64 pairs), else P = seq_len // 2 and the copy prefix
precedes the probe; B = P - 1. Slice `distinct_keys`: keys bound in the example (the bindings to hold).
at_length keeps the vocabulary: a longer sequence repeats its keys more often.
Chance: 1/(ns - ns//2) per scored position (a uniform guess among the value tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, check_noise


@dataclass(frozen=True)
class InContextRecall(TaskConfig):
    """MAD's in-context recall: recurring keys keep their first value; every recurrence is a query."""

    name: ClassVar[str] = "in_context_recall"
    chance: ClassVar[str] = "1/num_values per query, num_values = ns - ns//2 (ns: the key and value tokens)"

    seq_len: int = 128
    vocab_size: int = 16
    #: every recurring key is a query (MAD's benchmark); False: only the final probe, after a copy prefix
    multi_query: bool = True
    #: noise tokens, taken from the top of the vocabulary below the special tokens
    noise_vocab_size: int = 0
    #: probability that a body pair is replaced by two noise tokens
    frac_noise: float = 0.0

    def check(self) -> None:
        super().check()
        check_noise(self)
        special = 0 if self.multi_query else 1
        at_least(self, "vocab_size", 2 + special + self.noise_vocab_size,
                 f"(at least one key and one value token besides {self.noise_vocab_size} noise "
                 f"and {special} special tokens)")
        at_least(self, "seq_len", 3 + special, "(one pair to recall from, then the probe)")

    @property
    def num_keys(self) -> int:
        return self.kv_tokens // 2

    @property
    def kv_tokens(self) -> int:
        """ns: the tokens that are keys or values."""
        return self.vocab_size - self.noise_vocab_size - (0 if self.multi_query else 1)

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        L, K, ns = self.seq_len, self.num_keys, self.kv_tokens
        special = 0 if self.multi_query else 1
        B = (L - special + 1) // 2 - 1  # body pairs before the probe
        rows = torch.arange(n, device=device)[:, None]  # [n, 1]
        slot = torch.arange(B, device=device)[None, :]  # [1, B]
        keys = rng.randint(0, K, seed, "icr/keys", rows, slot)  # [n, B]
        # A key's value is fixed per example; drawing it up front is drawing it at the key's first occurrence.
        value_of = rng.randint(K, ns, seed, "icr/value_of", rows, torch.arange(K, device=device)[None, :])  # [n, K]
        values = value_of.gather(1, keys)

        keep = rng.randint(0, B, seed, "icr/keep", rows[:, 0])  # one body pair is never noise
        noise = (rng.uniform(seed, "icr/is_noise", rows, slot) < self.frac_noise) & (slot != keep[:, None])
        if self.frac_noise > 0:
            noise_tok = rng.randint(ns, ns + self.noise_vocab_size, seed, "icr/noise", rows[:, :, None],
                                    slot[:, :, None], torch.arange(2, device=device)[None, None, :])  # [n, B, 2]
            keys, values = torch.where(noise, noise_tok[..., 0], keys), torch.where(noise, noise_tok[..., 1], values)

        # first body slot of each key (B where absent); noise slots write into a spare column K
        first = torch.full((n, K + 1), B, dtype=torch.int64, device=device)
        first.scatter_reduce_(1, torch.where(noise, K, keys), slot.expand(n, B), reduce="amin")
        first = first[:, :K]
        presented = first < B  # [n, K]
        seen_before = ~noise & (first.gather(1, keys.clamp(max=K - 1)) < slot)  # [n, B]

        # the probe: uniform among the distinct keys presented
        u = rng.uniform(seed, "icr/probe", rows, torch.arange(K, device=device)[None, :])  # [n, K]
        probe = torch.where(presented, u, -1.0).argmax(dim=1)  # [n]
        probe_value = value_of.gather(1, probe[:, None])[:, 0]

        body = torch.stack([keys, values], dim=2).reshape(n, 2 * B)
        queried = seen_before if self.multi_query else torch.zeros_like(seen_before)
        body_targets = torch.stack([torch.where(queried, values, IGNORE),
                                    torch.full_like(values, IGNORE)], dim=2).reshape(n, 2 * B)
        ignore = torch.full((n, 1), IGNORE, dtype=torch.int64, device=device)
        tail = [probe[:, None], probe_value[:, None]]
        tail_targets = [probe_value[:, None], ignore]
        if not self.multi_query:
            tail, tail_targets = [torch.full_like(ignore, self.vocab_size - 1), *tail], [ignore, *tail_targets]
        inputs = torch.cat([body, *tail], dim=1)[:, :L]
        targets = torch.cat([body_targets, *tail_targets], dim=1)[:, :L]
        return Examples(inputs, targets, {"distinct_keys": presented.sum(dim=1)})


@dataclass(frozen=True)
class NoisyRecall(InContextRecall):
    """MAD's noisy in-context recall: in-context recall with noise pairs between the key-value pairs."""

    name: ClassVar[str] = "noisy_recall"

    vocab_size: int = 32
    noise_vocab_size: int = 16
    frac_noise: float = 0.2

    def check(self) -> None:
        super().check()
        if not self.frac_noise > 0:
            raise TaskConfigError(f"noisy_recall: frac_noise={self.frac_noise} must be > 0 "
                                  "(without noise it is in_context_recall)")
