"""Rotary embedding of interleaved pairs: `rotary(x, cos, sin)`, x [..., L, D], cos and sin [L, D/2] -> [..., L, D].

Reference: `reference.rotary_ref` (its equation). Kernel: `kernel.py` (Triton, forward and backward), picked by
`probe.ops.dispatch.backend`; under torch.func.vmap with shared angles a pack rotates in one launch. The angles
carry no gradient (they come from positions and fixed frequencies).
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import rotary_ref


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    length, d = x.shape[-2:] if x.dim() >= 2 else (None, None)
    if x.dim() < 2 or d % 2 or cos.shape != (length, d // 2) or sin.shape != cos.shape:
        raise ValueError(f"x must be [..., L, D] with D even and cos, sin [L, D/2]; got {tuple(x.shape)}, "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    if backend(x) == "ref":
        return rotary_ref(x, cos, sin)
    from .kernel import rotary_kernel
    return rotary_kernel(x, cos, sin)


__all__ = ["rotary", "rotary_ref"]
