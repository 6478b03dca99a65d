"""Short causal depthwise convolution with its activation and gate fused: `short_conv(x, weight, bias, gate,
activation=...)`, token-major: x [B, L, C], weight [C, W] (nn.Conv1d's tap order: weight[:, -1] meets the
current input), bias [C], gate [B, L, C] -> y [B, L, C],

    y_t = act(Σ_i weight[:, i] · x_{t−(W−1)+i} + bias) · gate_t          act: "none" or "silu"

The convolution of the gated-convolution and SSM mixers (BaseConv's short filter, Hyena, Monarch Mixer, Mamba,
Mamba-2). Reference: `reference.short_conv_ref` (its equation); `short_conv_step` its recurrent form. Kernel:
`kernel.py` (Triton, forward and backward), picked by `probe.ops.dispatch.backend`; filters wider than MAX_TAPS
go to the reference. weight [G, C, W] convolves G groups of rows with their own filters; under torch.func.vmap a
pack of K models, each with its own filter, is one launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import check, short_conv_ref, short_conv_step

MAX_TAPS = 8  # the kernel's backward keeps ~4W values an element in registers: a short filter's cost, not a long one's


def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               gate: torch.Tensor | None = None, *, activation: str = "none") -> torch.Tensor:
    check(x, weight, bias, gate, activation)
    if backend(x) == "ref" or weight.shape[-1] > MAX_TAPS:
        return short_conv_ref(x, weight, bias, gate, activation=activation)
    from .kernel import short_conv_kernel
    return short_conv_kernel(x, weight, bias, gate, activation)


__all__ = ["short_conv", "short_conv_ref", "short_conv_step"]
