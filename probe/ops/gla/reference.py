"""Gated linear attention with a gate per key dimension (Yang et al. 2024, "Gated Linear Attention Transformers
with Hardware-Efficient Training"), the contract its kernel is tested against, in the token-major layout:

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t          (S_{-1} = initial_state, or 0)

q, k [B, L, H, Dk], v [B, L, H, Dv], log_gate [B, L, H, Dk] (log α_t ≤ 0, scaling row d of the state at step t
before k_t v_tᵀ is added), initial_state None or [B, H, Dk, Dv]. No scale is applied: callers scale q. Returns
o [B, L, H, Dv] in v's dtype, and with output_final_state the last state S_{L-1} [B, H, Dk, Dv] in the
accumulation dtype. Everything is computed in float32, or float64 when an input is, with autocast off.

The reference is the exact chunked form (the paper's chunkwise form, §4): with b_i = Σ_{s≤i} log α_s per key
dimension, cumulative from the start of a chunk, position i of a chunk reads
    o_i = (q_i ⊙ e^{b_i})ᵀ S_0 + Σ_{j≤i} Σ_d q_id k_jd e^{b_id - b_jd} v_j,
    S_C = diag(e^{b_C}) S_0 + Σ_j (k_j ⊙ e^{b_C - b_j}) v_jᵀ,
with S_0 the state entering the chunk, and every exponent ≤ 0. The gate does not factor out of q·k as a scalar
decay does, so the intra-chunk weights are built pairwise, [C, C, Dk] per chunk: O(L·C·Dk) memory per head, hence
the small chunk. Splitting them as (q ⊙ e^{b})·(k ⊙ e^{-b}) would save that but overflows once a chunk's
log-gates sum below about -88 in float32 (the kernel splits only between sub-chunks, about a point between
them). Its step-by-step oracle is probe.mixers.linear_attention's `linear_attention_recurrent` with a [B, L, H, Dk]
gate (the mixers' own recurrent form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..linear_attention.reference import check as check_linear_attention

CHUNK = 16  # positions per chunk: the [C, C, Dk] intra-chunk weights grow with C


def check(q, k, v, log_gate, initial_state) -> None:
    """Shapes, each misfit named (the same checks on either path): linear attention's, and a gate shaped like q."""
    check_linear_attention(q, k, v, None, initial_state)
    if log_gate.shape != q.shape:
        raise ValueError(f"log_gate must be [B, L, H, Dk] = {tuple(q.shape)} (q's shape); got {tuple(log_gate.shape)}")


def gla_ref(q, k, v, log_gate, initial_state=None, *, output_final_state: bool = False, chunk: int = CHUNK):
    check(q, k, v, log_gate, initial_state)
    B, L, H, Dk = q.shape
    Dv, out_dtype = v.shape[-1], v.dtype
    acc = torch.float32
    for t in (q, k, v, log_gate, initial_state):
        acc = torch.promote_types(acc, t.dtype) if t is not None else acc
    with torch.autocast(device_type=q.device.type, enabled=False):  # autocast would run the matmuls in bf16
        # computed head-major, [B, H, L, ·]
        q, k, v, g = (t.to(acc).transpose(1, 2) for t in (q, k, v, log_gate))
        chunk = max(1, min(chunk, L))
        # Pad to whole chunks at the end: padded steps have k = 0 (add nothing) and log α = 0 (keep the state).
        n = -(-L // chunk)
        q, k, v, g = (F.pad(t, (0, 0, 0, n * chunk - L)).reshape(B, H, n, chunk, t.shape[-1]) for t in (q, k, v, g))
        b = g.cumsum(-2)  # [B, H, n, C, Dk]

        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()[..., None]  # [C, C, 1]
        # Mask before exp: above the diagonal b_i - b_j > 0 could overflow.
        decay = torch.exp((b[..., :, None, :] - b[..., None, :, :]).masked_fill(~causal, float("-inf")))
        scores = torch.einsum("bhnid,bhnjd,bhnijd->bhnij", q, k, decay)  # [B, H, n, C, C]
        o_intra = scores @ v  # [B, H, n, C, Dv]

        q_from_start = q * b.exp()  # [B, H, n, C, Dk]  reads S_0 gated to position i
        k_to_end = k * (b[..., -1:, :] - b).exp()  # [B, H, n, C, Dk]  written gated to chunk end
        chunk_gate = b[..., -1, :].exp()[..., None]  # [B, H, n, Dk, 1]  scales S_0's rows over the chunk

        S = q.new_zeros(B, H, Dk, Dv) if initial_state is None else initial_state.to(acc)
        outs = []
        for c in range(n):
            outs.append(o_intra[:, :, c] + q_from_start[:, :, c] @ S)  # [B, H, C, Dv]
            S = chunk_gate[:, :, c] * S + k_to_end[:, :, c].transpose(-1, -2) @ v[:, :, c]
        o = (torch.stack(outs, dim=2).reshape(B, H, n * chunk, Dv)[:, :, :L].transpose(1, 2) if outs
             else v.new_zeros(B, 0, H, Dv))  # [B, L, H, Dv]
    o = o.to(out_dtype)
    return (o, S) if output_final_state else o
