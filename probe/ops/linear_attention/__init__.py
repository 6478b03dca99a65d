"""Causal linear attention with a scalar decay: `linear_attention(q, k, v, log_decay, initial_state)`, token-major
(q, k [B, L, H, Dk], v [B, L, H, Dv], log_decay None, [H] or [B, L, H], initial_state [B, H, Dk, Dv]).

    S_t = a_t S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ q_t      (no scale inside: callers scale q)

The core of RetNet, gla_scalar, Performer and Based (normalised ones append a column of ones to v) and of
Mamba-2's SSD (q = C, k = B, v = Δ·x, log a = Δ·A). Reference: `reference.linear_attention_ref` (its equation,
chunked, exact). Kernel: `kernel.py` (Triton, chunked, forward and backward), picked by
`probe.ops.dispatch.backend`. Under torch.func.vmap a pack of K models is one launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import check, linear_attention_ref


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor | None = None,
                     initial_state: torch.Tensor | None = None, *, output_final_state: bool = False):
    """o [B, L, H, Dv] in v's dtype, and with output_final_state also the final state [B, H, Dk, Dv] (float32;
    float64 for float64 inputs on the reference)."""
    check(q, k, v, log_decay, initial_state)
    if any(backend(t) == "ref" for t in (q, k, v)) or q.shape[1] == 0:
        return linear_attention_ref(q, k, v, log_decay, initial_state, output_final_state=output_final_state)
    from .kernel import linear_attention_kernel
    B, L, H, _ = q.shape
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)  # the dots' operand dtype
    if log_decay is not None and log_decay.dim() == 1:
        log_decay = log_decay.expand(B, L, H)  # a constant per head
    o, final = linear_attention_kernel(q.to(dtype), k.to(dtype), v.to(dtype), log_decay, initial_state)
    o = o.to(v.dtype)
    return (o, final) if output_final_state else o


__all__ = ["linear_attention", "linear_attention_ref"]
