"""Based's normalised 2nd-order Taylor attention, quadratic form: `taylor_attention(q, k, v, eps)`, token-major
(q, k [B, L, H, d'] before any feature map, v [B, L, H, Dv] -> o [B, L, H, Dv] in v's dtype),

    s_ts = q_t·k_s / √d' (s ≤ t),   A_ts = 1 + s_ts + s_ts²/2,   o_t = Σ_{s≤t} A_ts v_s / (Σ_{s≤t} A_ts + eps)

the attention-like form of Based's linear attention (Arora et al. 2024, "Simple linear attention language models
balance the recall-throughput tradeoff"): φ(q)·φ(k) = 1 + s + s²/2 for its Taylor feature map φ, so this equals the
normalised linear attention on the 1 + d' + d'(d'+1)/2 features, at O(L²·(d'+Dv)) cost: what Based trains with at
short lengths. Reference: `reference.taylor_attention_ref` (its equation, the L×L scores in memory). Kernel:
`kernel.py` (Triton, flash-attention style, forward and backward: only q, k, v, o and one normaliser per row go to
memory), picked by `probe.ops.dispatch.backend`; heads wider than MAX_HEAD_DIM go to the reference. Under
torch.func.vmap a pack of K models is one launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import check, taylor_attention_ref

MAX_HEAD_DIM = 256  # d' and Dv are each one register tile of the kernel: wider ones would spill


def taylor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    check(q, k, v)
    if (any(backend(t) == "ref" for t in (q, k, v)) or q.numel() == 0 or v.numel() == 0
            or max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM):
        return taylor_attention_ref(q, k, v, eps)
    from .kernel import taylor_attention_kernel
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)  # the dots' operand dtype
    return taylor_attention_kernel(q.to(dtype), k.to(dtype), v.to(dtype), eps).to(v.dtype)


__all__ = ["taylor_attention", "taylor_attention_ref"]
