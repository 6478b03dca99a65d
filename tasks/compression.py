"""MAD's compression (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"): squeeze a
random sequence into the model's state at its last position, then reconstruct every token from that alone.

The mixer stack reads the sequence causally; the model's decoder (probe.model's CompressionDecoder, picked by
`decoder = "compression"` below) takes the features of the last position, the compression token, as the
sequence's encoding, and decodes output position p from that encoding plus a fixed position embedding of p. So
the target at p is read from the last position only: it is *not* next-token prediction, and a model without
the decoder would solve it by copying its own input. The test measures how much of a sequence a mixer can
pack into one position's state; MAD's levels grow the vocabulary and the length.

    vocab     C = vocab_size - 1 - noise_vocab_size content tokens [0, C), noise [C, vocab_size - 1),
              COMPRESS = vocab_size - 1
    inputs    t_0 t_1 ... t_{L-2} COMPRESS                content tokens uniform with replacement
    noise     each t_p is replaced, with probability frac_noise, by a noise token uniform over the noise vocab
    targets   t_p at every content position p; -100 at noise positions and at the compression token

Worked example (vocab_size=8, noise_vocab_size=2, frac_noise=0.3, seq_len=8: content 0..4, noise 5..6,
COMPRESS 7):

    inputs    3  0  6  4  4  5  1  7
    targets   3  0  .  4  4  .  1  .        (. = -100: the two noise tokens and the compression token)

Where this differs from MAD's generator (mad-lab, `generate_compression_instance`): MAD computes these
targets but returns the inputs as the targets, so it also scores the noise tokens (the model must reproduce
the noise) and the compression token itself; probe scores the content tokens only, ignoring the noise as MAD's
code intends and leaving out the compression token, which is given. One content position per example is
never noise, so every example scores at least once (MAD may draw an example of all noise).

Slice `noise_tokens` (the positions replaced by noise). at_length keeps the vocabulary: a longer sequence is
more to compress into the same state.
Chance: 1/C per scored position (a uniform guess among the content tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, at_least, check_noise


@dataclass(frozen=True)
class Compression(TaskConfig):
    """MAD's compression: encode a random sequence into its last position, decode every token from it."""

    name: ClassVar[str] = "compression"
    chance: ClassVar[str] = "1/C per content token, C = vocab_size - 1 - noise_vocab_size (a uniform guess)"
    decoder: ClassVar[str | None] = "compression"

    seq_len: int = 32
    vocab_size: int = 16
    #: probability that a content position holds a noise token instead (its target is ignored)
    frac_noise: float = 0.0
    #: noise tokens, taken from the top of the vocabulary below the compression token
    noise_vocab_size: int = 0

    def check(self) -> None:
        super().check()
        check_noise(self)
        at_least(self, "vocab_size", 2 + self.noise_vocab_size,
                 f"(one content token besides {self.noise_vocab_size} noise tokens and the compression token)")
        at_least(self, "seq_len", 2, "(a content token, then the compression token)")

    @property
    def num_content(self) -> int:
        """C: the tokens a sequence is made of (and the answers)."""
        return self.vocab_size - 1 - self.noise_vocab_size

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        L, C = self.seq_len, self.num_content
        rows = torch.arange(n, device=device)[:, None]  # [n, 1]
        pos = torch.arange(L - 1, device=device)[None, :]  # [1, L-1]
        tokens = rng.randint(0, C, seed, "compression/tokens", rows, pos)  # [n, L-1]
        noise = torch.zeros_like(tokens, dtype=torch.bool)
        if self.frac_noise > 0:
            keep = rng.randint(0, L - 1, seed, "compression/keep", rows)  # [n, 1], never noise
            noise = (rng.uniform(seed, "compression/is_noise", rows, pos) < self.frac_noise) & (pos != keep)
            noise_tok = rng.randint(C, C + self.noise_vocab_size, seed, "compression/noise", rows, pos)
            tokens = torch.where(noise, noise_tok, tokens)
        compress = torch.full((n, 1), self.vocab_size - 1, dtype=torch.int64, device=device)
        inputs = torch.cat([tokens, compress], dim=1)
        targets = torch.cat([torch.where(noise, IGNORE, tokens), torch.full_like(compress, IGNORE)], dim=1)
        return Examples(inputs, targets, {"noise_tokens": noise.sum(dim=1)})
