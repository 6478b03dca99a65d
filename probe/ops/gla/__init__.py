"""Gated linear attention with a gate per key dimension: `gla(q, k, v, log_gate, initial_state)`, token-major
(q, k [B, L, H, Dk], v [B, L, H, Dv], log_gate [B, L, H, Dk], initial_state [B, H, Dk, Dv]).

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ q_t      (log α_t = log_gate ≤ 0; no scale: callers scale q)

GLA's core (Yang et al. 2024); with the gate tied across key dimensions it is `probe.ops.linear_attention`.
Reference: `reference.gla_ref` (its equation, chunked, exact). Kernel: `kernel.py` (Triton, chunks of 64 in
sub-chunks of 16, forward and backward), picked by `probe.ops.dispatch.backend`. Under torch.func.vmap a pack of
K models is one launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import check, gla_ref


def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_gate: torch.Tensor,
        initial_state: torch.Tensor | None = None, *, output_final_state: bool = False):
    """o [B, L, H, Dv] in v's dtype, and with output_final_state also the final state [B, H, Dk, Dv] (float32;
    float64 for float64 inputs on the reference)."""
    check(q, k, v, log_gate, initial_state)
    if any(backend(t) == "ref" for t in (q, k, v)) or q.shape[1] == 0:
        return gla_ref(q, k, v, log_gate, initial_state, output_final_state=output_final_state)
    from .kernel import gla_kernel
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)  # the dots' operand dtype
    o, final = gla_kernel(q.to(dtype), k.to(dtype), v.to(dtype), log_gate, initial_state)
    o = o.to(v.dtype)
    return (o, final) if output_final_state else o


__all__ = ["gla", "gla_ref"]
