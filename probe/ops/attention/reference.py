"""Causal softmax attention read straight from a fused q/k/v projection, the contract its kernel is tested against:

    qkv [B, L, (H + 2·G)·D]  = [q heads 0..H-1 | k heads 0..G-1 | v heads 0..G-1] per position, each D wide
    s_hij = scale · q̃_hi · k̃_gj − slope_h · (i − j)      (g = h // (H/G): query heads share k/v heads in groups)
    allowed: j ≤ i, and i − j < window when a window is given
    o_hi  = Σ_j softmax_j(s_hij over the allowed j) v_gj  ->  o [B, L, H·D], head h in columns h·D .. h·D + D

q̃, k̃: q and k turned (when cos and sin [L, D/2] are given) on half-split pairs (x_p, x_{p+D/2}) by the tables
of position i, pair p:  x̃_p = x_p cos − x_{p+D/2} sin,  x̃_{p+D/2} = x_p sin + x_{p+D/2} cos, rounded to qkv's
dtype (as a separate rotation would leave them). cos and sin turn the queries and, unless k_cos and k_sin are
given, the keys. Tables need not be a pure rotation: scaled ones (cos·a, sin·a) also scale (xPos's per-pair
decay, a log-n query scale; sin = 0 scales alone). `far` = (w, q_cos, q_sin, k_cos, k_sin): pairs at distance
i − j ≥ w score with q and k turned by these tables instead (ReRoPE's and Leaky ReRoPE's far branch, Su 2023).
A caller whose rotary pairs are interleaved, (x_2p, x_2p+1), permutes the q and k columns of its projection to
half-split order first: q·k is unchanged by one permutation of both, so the scores are the interleaved scheme's.
scale defaults to D^-1/2; slopes [H] are ALiBi's (Press et al. 2022). Scores and softmax in float32 (float64 for
float64 inputs); o in qkv's dtype. Here every score is materialised ([B, H, L, L]): the oracle's clarity, not its
speed.
"""
from __future__ import annotations

import torch


def check(qkv: torch.Tensor, n_heads: int, n_kv_heads: int, cos, sin, window, slopes, k_cos=None, k_sin=None,
          far=None) -> int:
    """The head width D, after naming every misfit (the same checks on either path)."""
    if not (isinstance(n_heads, int) and isinstance(n_kv_heads, int) and n_heads >= 1 and n_kv_heads >= 1
            and n_heads % n_kv_heads == 0):
        raise ValueError(f"n_kv_heads={n_kv_heads!r} must be a positive divisor of n_heads={n_heads!r}")
    width = n_heads + 2 * n_kv_heads
    if qkv.dim() != 3 or qkv.shape[-1] % width or qkv.shape[-1] == 0:
        raise ValueError(f"qkv must be [B, L, (n_heads + 2·n_kv_heads)·D] = [B, L, {width}·D]; got "
                         f"{tuple(qkv.shape)}")
    d = qkv.shape[-1] // width
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin come together (rotary) or not at all")
    want = (qkv.shape[1], d // 2)
    if cos is not None and (d % 2 or cos.shape != want or sin.shape != want):
        raise ValueError(f"cos and sin must be [L, D/2] = [{want[0]}, {want[1]}] with D = {d} even; got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    if (k_cos is None) != (k_sin is None) or (k_cos is not None and cos is None):
        raise ValueError("k_cos and k_sin come together, and only beside cos and sin")
    if k_cos is not None and (k_cos.shape != want or k_sin.shape != want):
        raise ValueError(f"k_cos and k_sin must be [L, D/2] = [{want[0]}, {want[1]}]; got {tuple(k_cos.shape)} and "
                         f"{tuple(k_sin.shape)}")
    if far is not None:
        if cos is None or len(far) != 5 or not isinstance(far[0], int) or far[0] < 1:
            raise ValueError("far must be (rerope_window >= 1, q_cos, q_sin, k_cos, k_sin), beside cos and sin")
        if any(t.shape != want for t in far[1:]):
            raise ValueError(f"far's tables must be [L, D/2] = [{want[0]}, {want[1]}]; got "
                             f"{[tuple(t.shape) for t in far[1:]]}")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window={window!r} must be a positive int or None")
    if slopes is not None and slopes.shape != (n_heads,):
        raise ValueError(f"slopes must be [n_heads] = [{n_heads}]; got {tuple(slopes.shape)}")
    return d


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., L, D] rotated on pairs (x_p, x_{p+D/2}) by cos, sin [L, D/2], in float32 or wider, back in x's dtype."""
    ct = torch.promote_types(x.dtype, torch.float32)
    a, b = x.to(ct).chunk(2, -1)
    c, s = cos.to(ct), sin.to(ct)
    return torch.cat((a * c - b * s, a * s + b * c), -1).to(x.dtype)


def causal_attention_ref(qkv: torch.Tensor, n_heads: int, n_kv_heads: int | None = None, *,
                         cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                         k_cos: torch.Tensor | None = None, k_sin: torch.Tensor | None = None,
                         far: tuple | None = None, window: int | None = None, slopes: torch.Tensor | None = None,
                         scale: float | None = None) -> torch.Tensor:
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d = check(qkv, n_heads, n_kv_heads, cos, sin, window, slopes, k_cos, k_sin, far)
    B, L, _ = qkv.shape
    scale = d ** -0.5 if scale is None else scale
    q, k, v = qkv.split([n_heads * d, n_kv_heads * d, n_kv_heads * d], -1)
    q, k, v = (t.reshape(B, L, -1, d).transpose(1, 2) for t in (q, k, v))  # [B, heads, L, D]
    group = n_heads // n_kv_heads
    ct = torch.promote_types(qkv.dtype, torch.float32)
    i = torch.arange(L, device=qkv.device)[:, None]
    j = torch.arange(L, device=qkv.device)[None, :]

    def scores(q_cos, q_sin, kc, ks):  # [B, H, L, L] of q and k turned by these tables (none: as they are)
        qt = rotate_half_split(q, q_cos, q_sin) if q_cos is not None else q
        kt = rotate_half_split(k, kc, ks) if kc is not None else k
        return qt.to(ct) @ kt.repeat_interleave(group, 1).to(ct).transpose(-1, -2)
    v = v.repeat_interleave(group, 1)
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        s = scores(cos, sin, k_cos if k_cos is not None else cos, k_sin if k_sin is not None else sin)
        if far is not None:
            s = torch.where(i - j < far[0], s, scores(*far[1:]))
        s = s * scale
        if slopes is not None:
            s = s - slopes.to(ct)[:, None, None] * (i - j).to(ct)
        allowed = j <= i
        if window is not None:
            allowed = allowed & (i - j < window)
        p = s.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = p @ v.to(ct)
    return o.transpose(1, 2).reshape(B, L, n_heads * d).to(qkv.dtype)
