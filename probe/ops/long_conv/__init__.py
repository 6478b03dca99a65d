"""Long causal depthwise convolution: `long_conv(x, k, bias)`, token-major: x [B, L, C], k [C, Lk] in filter order
(k[:, s] multiplies x_{t−s}: not flipped, unlike short_conv), bias [C] or None (the feed-through) -> y [B, L, C],

    y_t = Σ_{s=0}^{min(t, Lk−1)} k[:, s] · x_{t−s}  (+ bias · x_t)

The convolution with a filter as long as the sequence of BaseConv, Hyena, S4D and H3. Reference:
`reference.long_conv_ref` (its equation, as a zero-padded FFT: what CPUs run). Kernel: `kernel.py` (Triton,
forward and backward: the convolution as lower-triangular Toeplitz products on tensor cores, token-major, a block
of channels a program; float32 tiles on `channel_major.py`'s kernels), picked by `probe.ops.dispatch.backend`. k [G, C, Lk] convolves G groups of rows with their own filters; under
torch.func.vmap a pack of K models, each with its own filter, is one launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import check, long_conv_ref


def long_conv(x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    check(x, k, bias)
    if backend(x) == "ref":
        return long_conv_ref(x, k, bias)
    from .kernel import long_conv_kernel
    return long_conv_kernel(x, k, bias)


__all__ = ["long_conv", "long_conv_ref"]
