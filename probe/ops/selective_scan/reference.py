"""Mamba's selective scan (Gu & Dao 2023), the contract its kernel is tested against, in the token-major layout:

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t,     y_t = h_t C_t + D u_t          (h_0 = 0, per batch row)

u, Δ [B, L, D] (Δ already positive, after softplus), A [D, N], B, C [B, L, N], D [D] or None -> y [B, L, D] in
u's dtype. A may also be [G, D, N] (and D [G, D]): the B rows come in G equal groups, group g with A[g], D[g] (a
pack of G models folded into the rows). Sequential, accumulating in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch


def check(u, delta, A, B, C, D) -> None:
    """Shapes, each misfit named (the same checks on either path)."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be [B, L, D]; got {tuple(u.shape)} and {tuple(delta.shape)}")
    rows, L, d = u.shape
    if A.dim() not in (2, 3) or A.shape[-2] != d:
        raise ValueError(f"A must be [D={d}, N] or [G, D={d}, N]; got {tuple(A.shape)}")
    groups, n = (A.shape[0] if A.dim() == 3 else 1), A.shape[-1]
    if rows % groups:
        raise ValueError(f"{rows} rows do not split into A's {groups} groups")
    for name, t in (("B", B), ("C", C)):
        if t.shape != (rows, L, n):
            raise ValueError(f"{name} must be [B, L, N] = {(rows, L, n)}; got {tuple(t.shape)}")
    if D is not None and D.shape != A.shape[:-1]:
        raise ValueError(f"D must be {list(A.shape[:-1])} (A's leading dimensions); got {tuple(D.shape)}")


def selective_scan_step(h, u_t, delta_t, A, B_t, C_t):
    """One step (zero-order hold on A, Euler on B, as in Mamba): h [B, D, N], u_t, delta_t [B, D], A [D, N] (or
    [B, D, N]), B_t, C_t [B, N] -> (y_t [B, D], h [B, D, N])."""
    dA = torch.exp(delta_t.unsqueeze(-1) * A)  # [B, D, N]
    dBu = (delta_t * u_t).unsqueeze(-1) * B_t.unsqueeze(1)  # [B, D, N]
    h = dA * h + dBu
    return (h * C_t.unsqueeze(1)).sum(-1), h


def selective_scan_ref(u, delta, A, B, C, D=None):
    check(u, delta, A, B, C, D)
    dtype = torch.promote_types(u.dtype, torch.float32)
    rows, length, d = u.shape
    groups = A.shape[0] if A.dim() == 3 else 1
    A_ = A.reshape(groups, d, -1).to(dtype)  # [G, D, N] -> each row's own (broadcast when G = 1)
    A_ = A_.repeat_interleave(rows // groups, 0) if groups > 1 else A_
    u_, delta_, B_, C_ = (t.to(dtype) for t in (u, delta, B, C))
    h = u_.new_zeros(rows, d, A.shape[-1])
    ys = []
    for t in range(length):
        y_t, h = selective_scan_step(h, u_[:, t], delta_[:, t], A_, B_[:, t], C_[:, t])
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else u_.new_zeros(rows, 0, d)  # [B, L, D]
    if D is not None:
        D_ = D.reshape(groups, d).to(dtype)
        y = y + (D_.repeat_interleave(rows // groups, 0) if groups > 1 else D_)[:, None] * u_
    return y.to(u.dtype)
