"""LayerNorm (Ba et al. 2016) over the last dimension, the contract its kernel is tested against:

    y = (x − μ) / sqrt(σ² + eps) · weight + bias,   μ, σ²: the mean and (biased) variance of x's last dimension

x [..., D], weight and bias [D] -> y [..., D], computed in float32 (float64 for float64 inputs) by torch's own layer_norm.

GroupNorm of each position (Wu & He 2018, with groups over channels and statistics per position, as RetNet and GLA
normalise each head): the same equation over each of G equal slices of D, μ and σ² per slice; torch's group_norm
of x viewed as [N, D].

The residual add fused into the LayerNorm that follows it (a pre-norm block boundary):

    s = x + y   (in x's dtype: the residual stream),   h = LayerNorm(s) = (s − μ) / sqrt(σ² + eps) · weight + bias

x and y [..., D] (y may be in another dtype, e.g. a bf16 mixer output added to a float32 stream), weight and bias
[D] -> (s [..., D] in x's dtype, h [..., D] in out_dtype, x's dtype by default), μ and σ² those of s's last
dimension. Gradients: dx = ds + ∂LayerNorm/∂s·dh, in x's dtype, and dy the same sum in y's dtype.
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


def group_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float = 1e-5,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    d = x.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        y = F.group_norm(x.reshape(-1, d).to(dtype), groups, weight.to(dtype), bias.to(dtype), eps)
    return y.view(x.shape).to(out_dtype or x.dtype)


def add_layer_norm_ref(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    s = (x + y).to(x.dtype)  # torch adds in the promoted dtype (float32 for float32 + bf16), then rounds once
    return s, layer_norm_ref(s, weight, bias, eps, out_dtype)
