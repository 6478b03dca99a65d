"""Passkey retrieval: a key of digits hidden at a random depth in filler, recited at the end
(Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for Transformers").

The test of whether a model can find one short span anywhere in a long context and copy it out: nothing in
the filler predicts the key, so every digit must be carried from the key's position to the end.

    tokens    0 constant filler, 1 KEY marker, 2 QUERY marker, 3..12 the digits 0..9,
              [13, vocab_size) random filler
    inputs    filler...  KEY d1 .. dk  filler...  QUERY d1 .. d(k-1)
    targets   d1 .. dk at QUERY and the k-1 positions after it (teacher forcing), -100 elsewhere

Worked example (vocab_size=16, seq_len=12, num_digits=3, random filler; key 2 7 0 = tokens 5 10 3, placed
after p=2 of the F = seq_len - 2k - 1 = 5 filler tokens):

    inputs   14 13  1  5 10  3 15 14 13  2  5 10
    targets   .  .  .  .  .  .  .  .  .  5 10  3          (. = -100, not scored)

Depth p is uniform in [0, F]; slice `depth` = p * num_depth_buckets // (F + 1), i.e. the key's relative
depth in equal buckets (0 = at the start, num_depth_buckets - 1 = just before the query); above, 2*10//6 = 3.
Slice `num_digits`. at_length keeps the key and grows the filler, so a longer sequence is a deeper haystack.
Chance: 1/10 per digit (digits are independent and uniform).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive

FILLER, KEY, QUERY, DIGIT0 = 0, 1, 2, 3
RESERVED = DIGIT0 + 10  # tokens below this are never random filler


@dataclass(frozen=True)
class Passkey(TaskConfig):
    name: ClassVar[str] = "passkey"
    chance: ClassVar[str] = "1/10 per digit (a uniform guess among the 10 digit tokens)"

    seq_len: int = 64
    vocab_size: int = 64
    num_digits: int = 5
    #: "random": filler drawn uniformly from [13, vocab_size); "constant": every filler token is 0
    filler: Literal["random", "constant"] = "random"
    num_depth_buckets: int = 10

    def check(self) -> None:
        super().check()
        positive(self, "num_digits")
        positive(self, "num_depth_buckets")
        if self.filler not in ("random", "constant"):
            raise TaskConfigError(f"passkey: filler={self.filler!r} must be 'random' or 'constant'")
        if self.filler == "random":
            at_least(self, "vocab_size", RESERVED + 1, "(13 reserved tokens plus at least one filler token)")
        else:
            at_least(self, "vocab_size", RESERVED, "(13 reserved tokens: filler, KEY, QUERY, 10 digits)")
        at_least(self, "seq_len", 2 * self.num_digits + 1,
                 f"(KEY and {self.num_digits} digits, then QUERY and {self.num_digits - 1} digits)")

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        k, L, V = self.num_digits, self.seq_len, self.vocab_size
        rows = torch.arange(n, device=device)
        digits = DIGIT0 + rng.randint(0, 10, seed, "passkey/digits", rows[:, None],
                                      torch.arange(k, device=device)[None, :])  # [n, k] digit tokens
        free = L - 2 * k - 1  # filler tokens, split around the key
        depth = rng.randint(0, free + 1, seed, "passkey/depth", rows)  # [n] filler tokens before KEY

        if self.filler == "random":
            inputs = rng.randint(RESERVED, V, seed, "passkey/filler", rows[:, None],
                                 torch.arange(L, device=device)[None, :])
        else:
            inputs = torch.full((n, L), FILLER, dtype=torch.int64, device=device)
        key_block = torch.cat([torch.full((n, 1), KEY, dtype=torch.int64, device=device), digits], dim=1)
        inputs.scatter_(1, depth[:, None] + torch.arange(k + 1, device=device)[None, :], key_block)
        inputs[:, L - k] = QUERY
        inputs[:, L - k + 1:] = digits[:, :-1]  # teacher forcing: the model sees the digits it already said

        targets = torch.full((n, L), IGNORE, dtype=torch.int64, device=device)
        targets[:, L - k:] = digits
        slices = {"depth": depth * self.num_depth_buckets // (free + 1),
                  "num_digits": torch.full((n,), k, dtype=torch.int64, device=device)}
        return Examples(inputs, targets, slices)
