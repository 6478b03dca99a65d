"""LayerNorm (Ba et al. 2016) over the last dimension, the contract its kernel is tested against:

    y = (x − μ) / sqrt(σ² + eps) · weight + bias,   μ, σ²: the mean and (biased) variance of x's last dimension

x [..., D], weight and bias [D] -> y [..., D], computed in float32 (float64 for float64 inputs) by torch's own layer_norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        y = F.layer_norm(x.to(dtype), x.shape[-1:], weight.to(dtype), bias.to(dtype), eps)
    return y.to(out_dtype or x.dtype)
