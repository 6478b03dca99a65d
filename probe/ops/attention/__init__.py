"""Causal softmax attention read from a fused projection: `causal_attention(qkv, n_heads, n_kv_heads, cos=, sin=,
window=, slopes=, scale=)`, qkv [B, L, (H + 2·G)·D] (q heads, then k heads, then v heads, per position) -> o
[B, L, H·D] in qkv's dtype; rotary on half-split pairs (cos, sin [L, D/2]; the keys' own k_cos, k_sin; scaled
tables for xPos or a log-n query scale), ReRoPE's far branch (`far`), a sliding window, ALiBi slopes [H], GQA/MQA
(G dividing H).

Reference: `reference.causal_attention_ref` (its equation). Kernel: `kernel.py` (Triton, flash-attention style,
forward and backward, q and k turned by one first pass, ALiBi, windows and ReRoPE's branches inside the kernels,
the gradient written in the projection's layout), picked by
`probe.ops.dispatch.backend` for heads of even width up to MAX_HEAD_DIM; `causal_attention_serves` says whether a
call would reach it (a mixer keeps its own path where it would not). Under torch.func.vmap a pack of K models is one
launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import causal_attention_ref, check, rotate_half_split

MAX_HEAD_DIM = 128  # a head's halves are register tiles of every kernel: wider ones would spill


def causal_attention_serves(qkv: torch.Tensor, head_dim: int) -> bool:
    """Whether `causal_attention` on qkv runs the kernel (not the reference)."""
    return backend(qkv) == "triton" and head_dim % 2 == 0 and head_dim <= MAX_HEAD_DIM


def causal_attention(qkv: torch.Tensor, n_heads: int, n_kv_heads: int | None = None, *,
                     cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                     k_cos: torch.Tensor | None = None, k_sin: torch.Tensor | None = None, far: tuple | None = None,
                     window: int | None = None, slopes: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d = check(qkv, n_heads, n_kv_heads, cos, sin, window, slopes, k_cos, k_sin, far)
    if not causal_attention_serves(qkv, d) or qkv.numel() == 0:
        return causal_attention_ref(qkv, n_heads, n_kv_heads, cos=cos, sin=sin, k_cos=k_cos, k_sin=k_sin, far=far,
                                    window=window, slopes=slopes, scale=scale)
    from .kernel import causal_attention_kernel
    tables = None if cos is None else (cos, sin, k_cos if k_cos is not None else cos,
                                       k_sin if k_sin is not None else sin)
    return causal_attention_kernel(qkv, n_heads, n_kv_heads, tables, far, window, slopes,
                                   d ** -0.5 if scale is None else scale)


__all__ = ["causal_attention", "causal_attention_ref", "causal_attention_serves", "rotate_half_split"]
