"""State tracking: the word problem of a finite group, answered at every position (Merrill, Petty & Sabharwal
2024, "The Illusion of State in State-Space Models"; Grazzi et al. 2024, "Unlocking State-Tracking in Linear
RNNs Through Negative Eigenvalues").

The input is a sequence of group elements g1 .. gL drawn uniformly; the target at position t is the running
product g1 · g2 · ... · gt. Parity and modular addition (abelian) can be tracked by a diagonal recurrence with a
negative (parity) or complex eigenvalue; S3 needs a non-diagonal one; S5 and A5 are NC1-complete, which no
constant-depth transformer or diagonal/positive-decay SSM solves at arbitrary length (Merrill et al.) while a
recurrence with negative eigenvalues and non-diagonal transitions can (Grazzi et al.).

    groups    parity (Z2), modular (Z_modulus, addition), S3, S4, A4, S5, A5 (permutations of 3, 4 or 5 points)
    tokens    0 padding (only with vary_length); element e is token 1 + e, for inputs and targets alike
    elements  permutation groups: the permutations of range(d) in lexicographic order (the alternating group
              keeps the even ones, order kept); Z_m: the residues 0 .. m-1
    product   a · b applies a first, then b: (a · b)[i] = b[a[i]], so the running product reads left to right

Worked example (group="S3", seq_len=4; elements 0..5 are (012) (021) (102) (120) (201) (210)):

    elements  g = (021) (102) (021) (120)        running product (021) (120) (210) (021)
    inputs      2  3  2  4
    targets     2  4  6  2

    (021)·(102): i=0 -> 0 -> 1, i=1 -> 2 -> 2, i=2 -> 1 -> 0 gives (120), element 3, token 4; the target at
    position t is the state after t+1 elements, so position 0's answer is its own input.

Worked example (group="parity", seq_len=5, score="last"): bits 1 0 1 1 0 are tokens 2 1 2 2 1;
targets . . . . 2 (three ones: parity 1, token 2).

score="every" scores all positions (Merrill et al.'s setting: a length-L example holds the word problems of
every length up to L); score="last" scores only the final position (Grazzi et al.'s). With vary_length each
example's length is uniform in [1, seq_len], padding after; slice `length` = (length - 1) * num_length_buckets
// seq_len (one value when lengths do not vary). at_length keeps the group: a longer word problem.
Chance: 1/|G| per scored position: the running product after any prefix is uniform over the group.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive

PAD = 0
Group = Literal["parity", "modular", "S3", "S4", "A4", "S5", "A5"]
PERMUTATION_GROUPS = {"S3": (3, False), "S4": (4, False), "A4": (4, True), "S5": (5, False), "A5": (5, True)}


def permutations(degree: int, even_only: bool) -> list[tuple[int, ...]]:
    perms = list(itertools.permutations(range(degree)))
    if even_only:  # even permutations: an even number of inversions
        perms = [p for p in perms if sum(p[i] > p[j] for i in range(degree) for j in range(i + 1, degree)) % 2 == 0]
    return perms


@functools.lru_cache(maxsize=None)
def cayley_table(group: str, modulus: int) -> tuple[tuple[int, ...], ...]:
    """table[a][b] = the element a · b; built once per group from its definition."""
    if group in ("parity", "modular"):
        m = 2 if group == "parity" else modulus
        return tuple(tuple((a + b) % m for b in range(m)) for a in range(m))
    perms = permutations(*PERMUTATION_GROUPS[group])
    index = {p: i for i, p in enumerate(perms)}
    return tuple(tuple(index[tuple(b[a[i]] for i in range(len(a)))] for b in perms) for a in perms)


def running_product(elements: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[n, L] element ids -> [n, L] prefix products, by a Hillis-Steele scan: log2(L) table look-ups, each
    combining a position with the product of the block before it (associativity makes the blocks composable)."""
    G = table.shape[0]
    flat = table.reshape(-1)
    prefix = elements.clone()
    step = 1
    while step < prefix.shape[1]:
        combined = flat[prefix[:, :-step] * G + prefix[:, step:]]  # earlier block on the left
        prefix = torch.cat([prefix[:, :step], combined], dim=1)
        step *= 2
    return prefix


@dataclass(frozen=True)
class StateTracking(TaskConfig):
    """Word problems of a group (parity, Z_m, S3, S4, A4, S5, A5): the running product at every position."""

    name: ClassVar[str] = "state_tracking"
    chance: ClassVar[str] = ("1/|G| per scored position: parity 1/2, modular 1/modulus, S3 1/6, S4 1/24, A4 1/12, "
                             "S5 1/120, A5 1/60 (the running product is uniform over the group)")

    seq_len: int = 64
    vocab_size: int = 128
    group: Group = "S5"
    #: modular: the modulus m of Z_m (ignored by the other groups)
    modulus: int = 5
    #: "every": the running product at every position; "last": only at the final one
    score: Literal["every", "last"] = "every"
    vary_length: bool = False
    num_length_buckets: int = 8

    def check(self) -> None:
        super().check()
        if self.group not in ("parity", "modular", *PERMUTATION_GROUPS):
            raise TaskConfigError(f"state_tracking: group={self.group!r} must be one of parity, modular, "
                                  f"{', '.join(PERMUTATION_GROUPS)}")
        if self.score not in ("every", "last"):
            raise TaskConfigError(f"state_tracking: score={self.score!r} must be 'every' or 'last'")
        at_least(self, "modulus", 2, "(Z_1 has a single element: nothing to track)")
        positive(self, "num_length_buckets")
        at_least(self, "vocab_size", 1 + self.order, f"(padding plus the {self.order} elements of {self.group})")

    @property
    def order(self) -> int:
        """|G|, the number of group elements."""
        if self.group in PERMUTATION_GROUPS:
            return len(permutations(*PERMUTATION_GROUPS[self.group]))
        return 2 if self.group == "parity" else self.modulus

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        L = self.seq_len
        rows, pos = torch.arange(n, device=device), torch.arange(L, device=device)
        elements = rng.randint(0, self.order, seed, "state_tracking/elements", rows[:, None], pos[None, :])
        table = torch.tensor(cayley_table(self.group, self.modulus), dtype=torch.int64, device=device)
        product = running_product(elements, table)  # [n, L]
        if self.vary_length:
            length = rng.randint(1, L + 1, seed, "state_tracking/length", rows)  # [n]
        else:
            length = torch.full((n,), L, dtype=torch.int64, device=device)
        inside = pos[None, :] < length[:, None]  # [n, L]
        scored = inside if self.score == "every" else pos[None, :] == length[:, None] - 1
        inputs = torch.where(inside, 1 + elements, PAD)
        targets = torch.where(scored, 1 + product, IGNORE)
        return Examples(inputs, targets, {"length": (length - 1) * self.num_length_buckets // L})
