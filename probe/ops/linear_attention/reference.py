"""Causal linear attention with a scalar decay per head and step, the contract its kernel is tested against,
in the token-major layout:

    S_t = a_t S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t          (S_{-1} = initial_state, or 0)

q, k [B, L, H, Dk], v [B, L, H, Dv], log_decay None (a_t = 1), [H] (a constant per head) or [B, L, H]
(log a_t ≤ 0, applied at step t before k_t v_tᵀ is added), initial_state None or [B, H, Dk, Dv]. No scale is
applied: callers scale q. Returns o [B, L, H, Dv] in v's dtype, and with output_final_state the last state
S_{L-1} [B, H, Dk, Dv] in the accumulation dtype. Everything is computed in float32, or float64 when an input is.

The reference is the exact chunked form (what RetNet, GLA and Mamba-2's SSD compute in training): with
b_i = Σ_{s≤i} log a_s cumulative from the start of a chunk, position i of a chunk reads
    o_i = e^{b_i} q_iᵀ S_0 + Σ_{j≤i} e^{b_i - b_j} (q_i·k_j) v_j,
    S_end = e^{b_C} S_0 + Σ_j e^{b_C - b_j} k_j v_jᵀ,
with S_0 the state entering the chunk. Every exponent is ≤ 0 (masked before exp above the diagonal), so nothing
overflows and no decay is divided by. Its step-by-step oracle is probe.mixers.linear_attention's
`linear_attention_recurrent` (the mixers' own recurrent form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64  # positions per chunk: quadratic work within a chunk, one state update between chunks


def check(q, k, v, log_decay, initial_state) -> None:
    """Shapes, each misfit named (the same checks on either path)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, L, H, Dk]; got {tuple(q.shape)} and {tuple(k.shape)}")
    B, L, H, Dk = q.shape
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, L, H, Dv] = [{B}, {L}, {H}, Dv] (q's leading dimensions); "
                         f"got {tuple(v.shape)}")
    if log_decay is not None and log_decay.shape not in ((H,), (B, L, H)):
        raise ValueError(f"log_decay must be None, [H] = [{H}] or [B, L, H] = [{B}, {L}, {H}]; "
                         f"got {tuple(log_decay.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, Dk, v.shape[-1]):
        raise ValueError(f"initial_state must be [B, H, Dk, Dv] = {(B, H, Dk, v.shape[-1])}; "
                         f"got {tuple(initial_state.shape)}")


def _accumulation_dtype(*tensors) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _per_step(log_decay, B, L, H, like) -> torch.Tensor:
    """None, [H] or [B, L, H] -> [B, L, H] in like's dtype."""
    if log_decay is None:
        return like.new_zeros(B, L, H)
    return log_decay.to(like.dtype).expand(B, L, H)


def linear_attention_ref(q, k, v, log_decay=None, initial_state=None, *, output_final_state: bool = False):
    check(q, k, v, log_decay, initial_state)
    B, L, H, Dk = q.shape
    Dv = v.shape[-1]
    acc = _accumulation_dtype(q, k, v, log_decay, initial_state)
    with torch.autocast(device_type=q.device.type, enabled=False):  # autocast would run the matmuls in bf16
        q_, k_, v_ = (t.to(acc) for t in (q, k, v))
        chunk = max(1, min(CHUNK, L))
        n = -(-L // chunk)
        pad = n * chunk - L
        # padded steps have k = 0 (add nothing) and log a = 0 (keep the state)
        q_, k_, v_ = (F.pad(t, (0, 0, 0, 0, 0, pad)).reshape(B, n, chunk, H, t.shape[-1]) for t in (q_, k_, v_))
        b = F.pad(_per_step(log_decay, B, L, H, q_), (0, 0, 0, pad)).reshape(B, n, chunk, H).cumsum(2)
        b = b.permute(0, 1, 3, 2)  # [B, n, H, C]

        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
        decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")))  # [B,n,H,C,C]
        scores = torch.einsum("bnihd,bnjhd->bnhij", q_, k_) * decay
        o_intra = torch.einsum("bnhij,bnjhv->bnihv", scores, v_)  # [B, n, C, H, Dv]
        q_from_start = q_ * b.exp().transpose(2, 3)[..., None]  # [B, n, C, H, Dk]: reads S_0 decayed to i
        k_to_end = k_ * (b[..., -1:] - b).exp().transpose(2, 3)[..., None]  # written decayed to the chunk end
        chunk_decay = b[..., -1].exp()[..., None, None]  # [B, n, H, 1, 1]

        S = q_.new_zeros(B, H, Dk, Dv) if initial_state is None else initial_state.to(acc)
        outs = []
        for c in range(n):
            outs.append(o_intra[:, c] + torch.einsum("bihd,bhdv->bihv", q_from_start[:, c], S))
            S = chunk_decay[:, c] * S + torch.einsum("bjhd,bjhv->bhdv", k_to_end[:, c], v_[:, c])
        o = torch.stack(outs, dim=1).reshape(B, n * chunk, H, Dv)[:, :L] if outs else v_.new_zeros(B, 0, H, Dv)
    o = o.to(v.dtype)
    return (o, S) if output_final_state else o
