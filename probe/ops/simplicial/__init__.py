"""2-simplicial attention over two causal sliding windows: `simplicial_attention(q, k1, v1, k2, v2, w1, w2, score)`,
token-major (q [B, L, H, D], k1, v1, k2, v2 [B, L, G, D] with G dividing H: K, V, K', V' shared by groups of
query heads, GQA-style) -> o [B, L, H, D] in q's dtype, with the trilinear or the determinant score (Roy et al.
2025, "Fast and Simplex: 2-Simplicial Attention in Triton").

Reference: `reference.simplicial_attention_ref` (its equation, queries in chunks). Kernel: `kernel.py` (Triton,
forward and backward, both scores; the query heads of a kv head stacked into a tile's rows), picked by
`probe.ops.dispatch.backend` for heads up to MAX_HEAD_DIM wide. Under torch.func.vmap a pack of K models is one
launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import Score, check, simplicial_attention_naive, simplicial_attention_ref, simplicial_window_attend

MAX_HEAD_DIM = 128  # q and the output accumulator are register tiles of D columns: wider ones would spill


def simplicial_attention(q: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor,
                         w1: int, w2: int, score: Score = "trilinear") -> torch.Tensor:
    check(q, k1, v1, k2, v2, w1, w2, score)
    inputs = (q, k1, v1, k2, v2)
    if any(backend(t) == "ref" for t in inputs) or q.numel() == 0 or q.shape[-1] > MAX_HEAD_DIM:
        return simplicial_attention_ref(q, k1, v1, k2, v2, w1, w2, score)
    from .kernel import simplicial_attention_kernel
    dtype = q.dtype
    for t in inputs[1:]:
        dtype = torch.promote_types(dtype, t.dtype)  # the dots' operand dtype
    cast = [t.to(dtype) for t in inputs]
    return simplicial_attention_kernel(*cast, w1, w2, score == "determinant").to(q.dtype)


__all__ = ["simplicial_attention", "simplicial_attention_naive", "simplicial_attention_ref",
           "simplicial_window_attend"]
