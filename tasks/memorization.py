"""MAD's memorization (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"): a fixed
key-to-value map that is never shown in context, so it can only be learnt into the weights.

The map is a function of `map_seed` alone, the same for every generation seed (train set, test set, every
evaluation length): each example is a stream of keys, each followed by an insert token at which the model
must emit that key's value. The test measures factual storage in the mixer and channel-mixer weights rather
than any in-context ability; MAD's difficulty levels grow the vocabulary (more facts) at a fixed train size.

    vocab     ns = vocab_size - 1; keys [0, ns//2), values [ns//2, ns), INSERT = vocab_size - 1
    map       key i -> value ns//2 + perm[i], perm a permutation of the values drawn from map_seed: distinct
              keys have distinct values
    inputs    k1 INSERT k2 INSERT ...                    keys uniform with replacement
    targets   map[k_i] at the i-th INSERT, -100 elsewhere

Worked example (vocab_size=9: keys 0..3, values 4..7, INSERT 8; a map 0->6 1->4 2->7 3->5; seq_len=7):

    inputs    2  8  0  8  2  8  1
    targets   .  7  .  6  .  7  .        (with odd seq_len the last key's INSERT falls off)

Slice `num_pairs` (answered pairs per example). at_length keeps the map: more facts recalled per example.
Chance: 1/num_values, num_values = ns - ns//2 (a uniform guess among the value tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, at_least


@dataclass(frozen=True)
class Memorization(TaskConfig):
    """MAD's memorization: a fixed key-value map, the same for every seed, learnt into the weights."""

    name: ClassVar[str] = "memorization"
    chance: ClassVar[str] = "1/num_values, num_values = (vocab_size - 1) - (vocab_size - 1)//2 (a uniform guess)"

    seq_len: int = 32
    vocab_size: int = 256
    #: seeds the key-value map; it never depends on the generation seed (MAD's default seed)
    map_seed: int = 12345

    def check(self) -> None:
        super().check()
        at_least(self, "vocab_size", 3, "(one key, one value and the insert token)")
        at_least(self, "seq_len", 2, "(a key and its insert token)")
        at_least(self, "map_seed", 0)

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    def value_map(self, device="cpu") -> torch.Tensor:
        """[num_keys] the value token of each key, fixed by map_seed."""
        ns = self.vocab_size - 1
        u = rng.uniform(self.map_seed, "memorization/map", torch.arange(ns - self.num_keys, device=device))
        return self.num_keys + torch.argsort(u)[:self.num_keys]

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        L, insert = self.seq_len, self.vocab_size - 1
        P = (L + 1) // 2
        keys = rng.randint(0, self.num_keys, seed, "memorization/keys", torch.arange(n, device=device)[:, None],
                           torch.arange(P, device=device)[None, :])  # [n, P]
        values = self.value_map(device)[keys]
        inputs = torch.stack([keys, torch.full_like(keys, insert)], dim=2).reshape(n, 2 * P)[:, :L]
        targets = torch.stack([torch.full_like(keys, IGNORE), values], dim=2).reshape(n, 2 * P)[:, :L]
        return Examples(inputs, targets, {"num_pairs": torch.full((n,), L // 2, dtype=torch.int64, device=device)})
