"""Based's normalised 2nd-order Taylor attention in its quadratic (attention-like) form, the contract its kernel is
tested against, in the token-major layout:

    s_ts = q_t·k_s / √d'   (s ≤ t: causal),     A_ts = 1 + s_ts + s_ts²/2,
    o_t  = Σ_{s≤t} A_ts v_s / (Σ_{s≤t} A_ts + eps)

q, k [B, L, H, d'] (the projections *before* Based's feature map), v [B, L, H, Dv] -> o [B, L, H, Dv] in v's dtype,
computed in float32 (float64 when an input is) with autocast off. A_ts = ((1 + s)² + 1)/2 ≥ 1/2, so the denominator
never vanishes. φ(q)·φ(k) = 1 + s + s²/2 for Based's Taylor features φ (probe.mixers.linear_attention's
`taylor_feature_map`), so this is the normalised linear attention on those 1 + d' + d'(d'+1)/2 features without
building them: O(L²·(d'+Dv)) work per head instead of O(L·F·Dv), cheaper at the short lengths the recall tasks
train at. Here the L×L scores are materialised: the oracle's clarity, not its speed.
"""
from __future__ import annotations

import torch


def check(q, k, v) -> None:
    """Shapes, each misfit named (the same checks on either path)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, L, H, d']; got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        B, L, H, _ = q.shape
        raise ValueError(f"v must be [B, L, H, Dv] = [{B}, {L}, {H}, Dv] (q's leading dimensions); "
                         f"got {tuple(v.shape)}")


def taylor_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    check(q, k, v)
    L = q.shape[1]
    # sums of up to L terms that grow like s²: float32 at least, float64 where an input is
    acc = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.promote_types(v.dtype, torch.float32))
    with torch.autocast(device_type=q.device.type, enabled=False):  # autocast would run the einsums in bf16
        q_, k_, v_ = (t.to(acc) for t in (q, k, v))
        s = torch.einsum("bthd,bshd->bhts", q_, k_) * q.shape[-1] ** -0.5  # [B, H, L, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        a = (1 + s + 0.5 * s * s).masked_fill(~causal, 0.0)  # [B, H, L, L]
        o = torch.einsum("bhts,bshv->bthv", a, v_) / (a.sum(-1).transpose(1, 2)[..., None] + eps)  # [B, L, H, Dv]
    return o.to(v.dtype)
