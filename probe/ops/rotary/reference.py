"""Rotary position embedding (Su et al. 2021, RoFormer eq. 34) on interleaved pairs, the contract its kernel is
tested against:

    y_{l,2p} = x_{l,2p} cos_{l,p} − x_{l,2p+1} sin_{l,p},   y_{l,2p+1} = x_{l,2p} sin_{l,p} + x_{l,2p+1} cos_{l,p}

x [..., L, D] (D even), cos and sin [L, D/2] (of the caller's angles) -> y [..., L, D] in x's dtype, computed in
float32 or wider (bf16 loses large angles).
"""
from __future__ import annotations

import torch


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    ct = torch.promote_types(x.dtype, torch.float32)
    cos, sin = cos.to(ct), sin.to(ct)
    x1, x2 = x[..., 0::2].to(ct), x[..., 1::2].to(ct)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2).to(x.dtype)
