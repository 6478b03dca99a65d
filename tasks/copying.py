"""Copying, in two modes: verbatim copy of a random string, and selective copying of tokens scattered in noise.

`copy` (Jelassi et al. 2024, "Repeat After Me: Transformers are Better than State Space Models at Copying"):
a random string from the alphabet, a separator, then the model repeats the string. A recurrent model must
hold the whole string in its fixed-size state, so accuracy falls once string_len outgrows the state.

    tokens    0 padding, 1 SEP, [2, 2 + alphabet_size) the alphabet
    inputs    x1 .. xs  SEP  x1 .. x(s-1)  padding...
    targets   x1 .. xs at SEP and the s-1 positions after it (teacher forcing), -100 elsewhere

Worked example (seq_len=10, alphabet_size=4 = tokens 2..5, string_len=4):

    inputs    3  5  2  2  1  3  5  2  0  0
    targets   .  .  .  .  3  5  2  2  .  .          (. = -100, not scored)

`selective` (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", the selective
copying task): num_tokens data tokens at random positions (distinct, order kept) among noise tokens in the
first seq_len - num_tokens positions, then SEP, then the model emits the data tokens in order. Solving it
needs content-dependent gating: the model must skip the noise, which a time-invariant filter cannot do.

    inputs    noise with d1 .. dk scattered, in order  SEP  d1 .. d(k-1)
    targets   d1 .. dk at SEP and the k-1 positions after it

Worked example (seq_len=10, alphabet 2..5, num_tokens=3; the noise region is the first 10 - 3 = 7 tokens):

    inputs    0  4  0  0  2  5  0  1  4  2
    targets   .  .  .  .  .  .  .  4  2  5

With vary_length, each example's string_len (copy) or num_tokens (selective) is uniform in [1, that field]:
the copy then ends early and the rest is padding; selective keeps SEP at seq_len - num_tokens and pads after
the answer. Slices: `string_len` (copy) or `num_tokens` (selective), per example.

at_length keeps string_len / num_tokens fixed, so a longer sequence adds only padding (copy) or noise
(selective); with scale_with_length they grow in proportion, string_len * L // seq_len, so the sequence stays
as full as in training and length generalisation means copying longer strings.
Chance: 1/alphabet_size per token (a uniform guess among the alphabet).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive

PAD, SEP, ALPHABET0 = 0, 1, 2  # PAD is also the selective-copying noise token


@dataclass(frozen=True)
class Copying(TaskConfig):
    name: ClassVar[str] = "copying"
    chance: ClassVar[str] = "1/alphabet_size per token (a uniform guess among the alphabet)"

    seq_len: int = 64
    vocab_size: int = 32
    mode: Literal["copy", "selective"] = "copy"
    #: copy: tokens in the string to repeat (the maximum, with vary_length)
    string_len: int = 16
    #: selective: data tokens scattered in the noise (the maximum, with vary_length)
    num_tokens: int = 8
    alphabet_size: int = 16
    vary_length: bool = False
    scale_with_length: bool = False

    def check(self) -> None:
        super().check()
        if self.mode not in ("copy", "selective"):
            raise TaskConfigError(f"copying: mode={self.mode!r} must be 'copy' or 'selective'")
        positive(self, "string_len")
        positive(self, "num_tokens")
        positive(self, "alphabet_size")
        at_least(self, "vocab_size", ALPHABET0 + self.alphabet_size,
                 f"(2 reserved tokens, PAD and SEP, plus alphabet_size={self.alphabet_size})")
        if self.mode == "copy" and self.seq_len < 2 * self.string_len:
            raise TaskConfigError(
                f"copying: string_len={self.string_len} does not fit in seq_len={self.seq_len} "
                f"(the string and its copy take 2*string_len tokens: string_len must be <= {self.seq_len // 2})")
        if self.mode == "selective" and self.seq_len < 2 * self.num_tokens:
            raise TaskConfigError(
                f"copying: num_tokens={self.num_tokens} does not fit in seq_len={self.seq_len} "
                f"(the noise region holds them and the answer takes as many: num_tokens must be "
                f"<= {self.seq_len // 2})")

    def at_length(self, seq_len: int) -> "Copying":
        if not self.scale_with_length:
            return super().at_length(seq_len)
        return dataclasses.replace(self, seq_len=seq_len, eval_seq_lens=(),
                                   string_len=max(1, self.string_len * seq_len // self.seq_len),
                                   num_tokens=max(1, self.num_tokens * seq_len // self.seq_len))

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        K = self.string_len if self.mode == "copy" else self.num_tokens  # tokens to copy, at most
        rows = torch.arange(n, device=device)
        data = ALPHABET0 + rng.randint(0, self.alphabet_size, seed, "copying/data", rows[:, None],
                                       torch.arange(K, device=device)[None, :])  # [n, K]
        if self.vary_length:
            k = rng.randint(1, K + 1, seed, "copying/length", rows)  # [n]
        else:
            k = torch.full((n,), K, dtype=torch.int64, device=device)
        if self.mode == "copy":
            inputs, answer_at = self._string(data, k), k  # the string fills positions [0, k)
        else:
            inputs, answer_at = self._scattered(data, k, seed), torch.full_like(k, self.seq_len - K)
        inputs, targets = self._answer(inputs, data, k, answer_at)
        return Examples(inputs, targets, {"string_len" if self.mode == "copy" else "num_tokens": k})

    def _string(self, data: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """[n, L]: data[:, :k] at positions [0, k), PAD elsewhere (the answer is written later)."""
        n, K = data.shape
        pos = torch.arange(self.seq_len, device=data.device)[None, :]  # [1, L]
        return torch.where(pos < k[:, None], data.gather(1, pos.clamp(max=K - 1).expand(n, -1)), PAD)

    def _scattered(self, data: torch.Tensor, k: torch.Tensor, seed: int) -> torch.Tensor:
        """[n, L]: the first k data tokens at random increasing positions in [0, R), noise elsewhere."""
        n, K = data.shape
        R = self.seq_len - K  # the noise region, the same for every example so SEP sits at a fixed place
        # The first k of K distinct draws are a uniform k-subset; sorting them keeps the data tokens in order.
        drawn = rng.sample_without_replacement(n, K, 0, R, seed, "copying/positions", data.device)  # [n, K]
        used = torch.arange(K, device=data.device)[None, :] < k[:, None]  # [n, K]
        pos = torch.where(used, drawn, R).sort(dim=1).values  # unused slots sort last, pointing at R
        inputs = torch.full((n, self.seq_len + 1), PAD, dtype=torch.int64, device=data.device)
        inputs.scatter_(1, torch.where(used, pos, self.seq_len), data)  # unused go to a spare last column
        return inputs[:, :self.seq_len]

    def _answer(self, inputs: torch.Tensor, data: torch.Tensor, k: torch.Tensor,
                answer_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write SEP at answer_at, the teacher-forced answer after it, and the targets; both [n, L]."""
        n, K = data.shape
        offset = torch.arange(self.seq_len, device=data.device)[None, :] - answer_at[:, None]  # [n, L]
        in_answer = (offset >= 0) & (offset < k[:, None])
        wanted = data.gather(1, offset.clamp(0, K - 1))  # [n, L]: data[offset] where the answer is
        targets = torch.where(in_answer, wanted, IGNORE)
        shifted = data.gather(1, (offset - 1).clamp(0, K - 1))  # the token said one step earlier
        inputs = torch.where(offset == 0, SEP, torch.where(in_answer, shifted, inputs))
        return inputs, targets
