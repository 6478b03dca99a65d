"""2-simplicial attention over two causal sliding windows (Roy et al. 2025, "Fast and Simplex: 2-Simplicial
Attention in Triton"; Clift et al. 2019), the contract its kernel is tested against, token-major:

    q [B, L, H, D];  k1, v1, k2, v2 [B, L, G, D]     (K, V over the window w1; K', V' over w2; G dividing H: query
                                                   head h reads kv head h // (H/G), GQA-style, as the paper does)
    A_ijk = Σ_d q_id k1_jd k2_kd / √D                             score="trilinear"
    A_ijk = Σ_c det[q_i^(c), k1_j^(c), k2_k^(c)] / √D              score="determinant" (c: 3-chunks, D = 3·D/3)
    allowed pairs (j, k):  i − w1 < j ≤ i  and  i − w2 < k ≤ i
    o_i = Σ_jk softmax_jk(A_ijk over the allowed pairs) (v1_j ⊙ v2_k)   ->  o [B, L, H, D] in q's dtype

Windows longer than the sequence see the whole prefix. Biases on K' and V' (the authors' k' + 1/D, v' + 1) are
the caller's: the op is the bare equation. Scores and softmax in float32 (float64 for float64 inputs), autocast
off. `simplicial_attention_ref` walks the queries in chunks, each over its own windows (memory
O(chunk·w1·(w2 + D)) per head, never O(L·w1·w2)); `simplicial_attention_naive` materialises every triple
[B, H, L, L, L] with the determinant spelled out by the Levi-Civita symbol, independently of the cross product
the chunked form uses: the tests' dense oracle. `simplicial_window_attend` is the chunk's core, which a mixer's
decoding step shares.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Score = Literal["trilinear", "determinant"]
SCORES = ("trilinear", "determinant")


def check(q, k1, v1, k2, v2, w1, w2, score) -> None:
    """Shapes, windows and score, each misfit named (the same checks on either path)."""
    if score not in SCORES:
        raise ValueError(f"score={score!r} must be one of {', '.join(SCORES)}")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, L, H, D]; got {tuple(q.shape)}")
    B, L, H, D = q.shape
    G = k1.shape[2] if k1.dim() == 4 else 0
    for name, t in (("k1", k1), ("v1", v1), ("k2", k2), ("v2", v2)):
        if t.shape != (B, L, G, D) or G == 0 or H % G:
            raise ValueError(f"{name} must be [B, L, G, D] = [{B}, {L}, G, {D}] like k1, G dividing H = {H}; got "
                             f"{tuple(t.shape)}")
    if not (isinstance(w1, int) and isinstance(w2, int) and w1 >= 1 and w2 >= 1):
        raise ValueError(f"w1={w1!r} and w2={w2!r} must be positive ints")
    if score == "determinant" and D % 3:
        raise ValueError(f"score='determinant' needs D a multiple of 3; got D = {D}")


def _heads(q, k1, v1, k2, v2, dtype):
    """The five inputs head-major [B, H, L, D] in dtype, the kv heads repeated over their query heads."""
    group = q.shape[2] // k1.shape[2]
    kv = [t.to(dtype).transpose(1, 2) for t in (k1, v1, k2, v2)]
    return [q.to(dtype).transpose(1, 2)] + (kv if group == 1 else [t.repeat_interleave(group, 1) for t in kv])


def simplicial_attention_ref(q: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, k2: torch.Tensor,
                             v2: torch.Tensor, w1: int, w2: int, score: Score = "trilinear",
                             query_chunk: int = 128) -> torch.Tensor:
    check(q, k1, v1, k2, v2, w1, w2, score)
    dtype, L = q.dtype, q.shape[1]
    w1, w2 = min(w1, L), min(w2, L)
    compute = torch.promote_types(dtype, torch.float32)  # bf16 logits and sums lose too much
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k1, v1, k2, v2 = _heads(q, k1, v1, k2, v2, compute)  # [B, H, L, D]
        # pad w - 1 zeros before the start so every query has a full window; invalid slots are masked below
        k1, v1 = F.pad(k1, (0, 0, w1 - 1, 0)), F.pad(v1, (0, 0, w1 - 1, 0))  # [B, H, L + w1 - 1, D]
        k2, v2 = F.pad(k2, (0, 0, w2 - 1, 0)), F.pad(v2, (0, 0, w2 - 1, 0))  # [B, H, L + w2 - 1, D]
        valid1, valid2 = _window_is_valid(L, w1, q.device), _window_is_valid(L, w2, q.device)
        chunks = []
        for start in range(0, L, query_chunk):
            end = min(start + query_chunk, L)
            # slice the keys before unfolding: slicing an unfolded [L, w, D] view would cost a full-size zero tensor
            # per chunk in the backward pass
            k1w, v1w = (_sliding_windows(t[:, :, start: end + w1 - 1], w1) for t in (k1, v1))  # [B, H, C, w1, D]
            k2w, v2w = (_sliding_windows(t[:, :, start: end + w2 - 1], w2) for t in (k2, v2))  # [B, H, C, w2, D]
            chunks.append(simplicial_window_attend(q[:, :, start:end], k1w, v1w, k2w, v2w, valid1[start:end],
                                                   valid2[start:end], score))
        return torch.cat(chunks, dim=2).transpose(1, 2).to(dtype)


def simplicial_window_attend(q: torch.Tensor, k1w: torch.Tensor, v1w: torch.Tensor, k2w: torch.Tensor,
                             v2w: torch.Tensor, valid1: torch.Tensor, valid2: torch.Tensor,
                             score: Score) -> torch.Tensor:
    """2-simplicial attention of C queries over their own key windows, head-major (the chunked reference's core,
    and a decoding step's with C = 1).

    q: [B, H, C, D]; k1w, v1w: [B, H, C, W1, D]; k2w, v2w: [B, H, C, W2, D]; valid1: [C, W1]; valid2: [C, W2]
    (bool, False where a window slot lies before the sequence start). Returns [B, H, C, D].
    """
    D = q.shape[-1]
    # A_ijk = <z_ij, k'_k> with z_ij = q_i ⊙ k_j (trilinear) or q_i × k_j per 3-chunk (det[a,b,c] = (a × b)·c),
    # so the [C, W1, W2] logits cost one matmul and the [C, W1, W2, D] product is never formed
    z = _pair_features(q.unsqueeze(3), k1w, score)  # [B, H, C, W1, D]
    logits = z @ k2w.transpose(-1, -2) / math.sqrt(D)  # [B, H, C, W1, W2]
    valid = valid1[:, :, None] & valid2[:, None, :]  # [C, W1, W2]
    logits = logits.masked_fill(~valid, float("-inf"))  # slot (i, i) is always valid, so no row is all -inf
    p = torch.softmax(logits.flatten(-2), dim=-1).view_as(logits)  # joint softmax over the pairs (j, k)
    u = p @ v2w  # [B, H, C, W1, D]: Σ_k p_ijk v'_k
    return (u * v1w).sum(dim=3)  # [B, H, C, D]: Σ_j v_j ⊙ (Σ_k p_ijk v'_k)


def simplicial_attention_naive(q, k1, v1, k2, v2, w1: int, w2: int, score: Score = "trilinear") -> torch.Tensor:
    """Dense O(L³) 2-simplicial attention with masked windows, in the inputs' dtype (float64 in the tests): the
    oracle the chunked reference and the kernel are checked against. Same shapes as `simplicial_attention_ref`."""
    check(q, k1, v1, k2, v2, w1, w2, score)
    L, D = q.shape[1], q.shape[3]
    q, k1, v1, k2, v2 = _heads(q, k1, v1, k2, v2, q.dtype)  # [B, H, L, D]
    if score == "trilinear":
        logits = torch.einsum("bhid,bhjd,bhkd->bhijk", q, k1, k2)  # [B, H, L, L, L]
    else:
        q3, k13, k23 = (t.unflatten(-1, (D // 3, 3)) for t in (q, k1, k2))  # [B, H, L, D/3, 3]
        q_eps = torch.einsum("bhicx,xyz->bhicyz", q3, _levi_civita(q))  # [B, H, L, D/3, 3, 3]
        logits = torch.einsum("bhicyz,bhjcy,bhkcz->bhijk", q_eps, k13, k23)
    logits = logits / math.sqrt(D)
    i = torch.arange(L, device=q.device)
    lag = i[:, None] - i[None, :]  # [L, L]: i - j
    in1, in2 = (lag >= 0) & (lag < w1), (lag >= 0) & (lag < w2)
    logits = logits.masked_fill(~(in1[:, :, None] & in2[:, None, :]), float("-inf"))
    p = torch.softmax(logits.flatten(-2), dim=-1).view_as(logits)
    return torch.einsum("bhijk,bhjd,bhkd->bhid", p, v1, v2).transpose(1, 2)


def _pair_features(q: torch.Tensor, k: torch.Tensor, score: Score) -> torch.Tensor:
    """q ⊙ k (trilinear) or the cross product of every 3-chunk (determinant). Shapes broadcast; last dim D."""
    if score == "trilinear":
        return q * k
    q3, k3 = q.unflatten(-1, (-1, 3)), k.unflatten(-1, (-1, 3))  # [..., D/3, 3]
    return torch.linalg.cross(*torch.broadcast_tensors(q3, k3), dim=-1).flatten(-2)


def _sliding_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, C + w - 1, D] -> [B, H, C, w, D]: row i holds rows i .. i + w - 1 of x (a view, no copy)."""
    return x.unfold(2, w, 1).transpose(-1, -2)


def _window_is_valid(L: int, w: int, device) -> torch.Tensor:
    """[L, w] bool: slot s of row i is a real position (i - w + 1 + s >= 0)."""
    i, s = torch.arange(L, device=device), torch.arange(w, device=device)
    return (i[:, None] - w + 1 + s[None, :]) >= 0


def _levi_civita(like: torch.Tensor) -> torch.Tensor:
    eps = torch.zeros(3, 3, 3, dtype=like.dtype, device=like.device)
    for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        eps[a, b, c], eps[a, c, b] = 1.0, -1.0
    return eps
