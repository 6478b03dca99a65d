"""2-simplicial attention: each query attends over *pairs* of earlier tokens through a trilinear score.

Clift, Doryn, Murfet & Wallbridge (2019), "Logic and the 2-Simplicial Transformer", introduced the trilinear
form; Roy, Chou, Duvvuri, Chen, Yu, Wang, Zaheer & Anil (2025), "Fast and Simplex: 2-Simplicial Attention in
Triton", made it affordable with two sliding windows and gave the rotation-invariant determinant score.

Per head, with projections q, k, v, k', v' of the input (head_dim d each):

    k'_k <- k'_k + 1/d,   v'_k <- v'_k + 1                                    (kv_bias=True, the default)
    A_ijk = <q_i, k_j, k'_k> / sqrt(d) = Σ_d q_id k_jd k'_kd / sqrt(d)      (trilinear)
    A_ijk = Σ_c det[q_i^(c), k_j^(c), k'_k^(c)] / sqrt(d)                     (determinant; c runs over 3-chunks)
    p_ijk = softmax over the pairs (j, k) of A_ijk,    i - w1 < j <= i,    i - w2 < k <= i
    o_i   = Σ_jk p_ijk (v_j ⊙ v'_k)

Reference implementation: the authors' code in pytorch/FBGEMM, fbgemm_gpu/experimental/simplicial_attention
(`simplicial/ops/pytorch/two_simplicial_attention.py: torch_fwd_ref` and the Triton kernels, whose K2_BIAS and
V2_BIAS default to 1/d and 1). Its constant biases on K' and V' give every layer a plain-attention path: with
the K' and V' projections at zero, k' = 1/d and v' = 1, so A_ijk = <q_i, k_j>/(d·sqrt(d)) does not depend on k,
the softmax over k is uniform and o_i = Σ_j softmax_j(<q_i, k_j>/(d·sqrt(d))) v_j: sliding-window attention over
K, V (the determinant score reduces the same way, to the bilinear Σ_c (q_i^(c) × k_j^(c))·(1, 1, 1)/(d·sqrt(d))).
kv_bias=False drops both biases (the bare equations above, as the paper writes them).

Design choices: one fused input projection for W_Q, W_K, W_V, W_K', W_V' without learned biases; scores and
softmax in float32 or wider; queries processed in chunks so memory is O(chunk·w1·(w2 + d)) per head, never
O(L·w1·w2·d).

The determinant score is invariant to any rotation R in SO(3) applied to every 3-chunk of q, k and k' alike
(det[Rq, Rk, Rk'] = det R · det[q, k, k'] = det[q, k, k']), which is what lets rotary positions work: rotate
the 3-chunks of q_i, k_j, k'_k by R(i), R(j), R(k) from one one-parameter subgroup and the score depends only on
j - i and k - i. A one-parameter subgroup of SO(3) is a rotation about a fixed axis, and a fixed change of basis
is absorbed by the projections, so chunk c turns about its own third coordinate by angle position·θ_c.
This rotary scheme is probe's own construction: the paper shows the determinant is rotation-invariant but gives
no positional scheme, and the authors' reference applies no position transform to 2-simplicial layers. The
K' bias is added before the rotation (as a bias of W_K' would be), so scores still depend only on j - i, k - i.

Hybrids: the paper interleaves sliding-window 2-simplicial layers with global attention layers (every fourth
layer is a 2-simplicial one in its models). probe's `attention` arch is global causal softmax attention with
RoPE by default (pos="rope", window=None), so the arch pattern `attention,attention,attention,simplicial` (with
n_layers a multiple of 4) reproduces that interleaving and `simplicial,attention` alternates them 1:1. Options
given on the command line reach every layer that takes them: `n_heads`, `head_dim`, `pos` and `rope_base` are
shared by both mixers (`pos=rope` would also ask the trilinear simplicial layers for rotary positions, which
they refuse).

Recurrent form: caches of the last w1 (k, v) and the last w2 (k', v'), stored without rotation; at each step the
cache slot's age gives its relative angle. State per example after L tokens:
    2·n_heads·head_dim·(min(L, w1) + min(L, w2))
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerSpec, State

Score = Literal["trilinear", "determinant"]


# ---------------------------------------------------------------------------------------------------------------
# the core op: windowed 2-simplicial attention (plain PyTorch reference) and a dense O(L^3) oracle for tests
# ---------------------------------------------------------------------------------------------------------------
def simplicial_attention_ref(
    q: torch.Tensor,
    k1: torch.Tensor,
    v1: torch.Tensor,
    k2: torch.Tensor,
    v2: torch.Tensor,
    w1: int,
    w2: int,
    score: Score = "trilinear",
    query_chunk: int = 128,
) -> torch.Tensor:
    """Causal sliding-window 2-simplicial attention.

    q, k1, v1, k2, v2: [B, H, L, D]  (k1, v1 = K, V over the window w1; k2, v2 = K', V' over the window w2)
    returns o: [B, H, L, D], o_i = Σ_{i-w1<j<=i, i-w2<k<=i} softmax_jk(A_ijk) · (v1_j ⊙ v2_k), in q's dtype.
    Memory O(query_chunk · w1 · (w2 + D)) per head beyond the inputs.
    """
    dtype, L = q.dtype, q.shape[2]
    w1, w2 = min(w1, L), min(w2, L)  # a window longer than the sequence sees the whole prefix
    compute = torch.promote_types(dtype, torch.float32)  # bf16 logits and sums lose too much
    q, k1, v1, k2, v2 = (t.to(compute) for t in (q, k1, v1, k2, v2))
    # pad w - 1 zeros before the start so every query has a full window; invalid slots are masked below
    k1, v1 = F.pad(k1, (0, 0, w1 - 1, 0)), F.pad(v1, (0, 0, w1 - 1, 0))  # [B, H, L + w1 - 1, D]
    k2, v2 = F.pad(k2, (0, 0, w2 - 1, 0)), F.pad(v2, (0, 0, w2 - 1, 0))  # [B, H, L + w2 - 1, D]
    valid1, valid2 = _window_is_valid(L, w1, q.device), _window_is_valid(L, w2, q.device)
    chunks = []
    for start in range(0, L, query_chunk):
        end = min(start + query_chunk, L)
        # slice the keys before unfolding: slicing an unfolded [L, w, D] view would cost a full-size zero tensor
        # per chunk in the backward pass
        k1w, v1w = (_sliding_windows(t[:, :, start : end + w1 - 1], w1) for t in (k1, v1))  # [B, H, C, w1, D]
        k2w, v2w = (_sliding_windows(t[:, :, start : end + w2 - 1], w2) for t in (k2, v2))  # [B, H, C, w2, D]
        chunks.append(window_attend(q[:, :, start:end], k1w, v1w, k2w, v2w, valid1[start:end],
                                    valid2[start:end], score))
    return torch.cat(chunks, dim=2).to(dtype)


def window_attend(
    q: torch.Tensor,
    k1w: torch.Tensor,
    v1w: torch.Tensor,
    k2w: torch.Tensor,
    v2w: torch.Tensor,
    valid1: torch.Tensor,
    valid2: torch.Tensor,
    score: Score,
) -> torch.Tensor:
    """2-simplicial attention of C queries over their own key windows (shared by forward and step).

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
    """Dense O(L^3) 2-simplicial attention with masked windows: the oracle the tests check the reference against.

    q, k1, v1, k2, v2: [B, H, L, D] -> [B, H, L, D]. The determinant is spelled out with the Levi-Civita symbol,
    independently of the cross product the reference uses.
    """
    L, D = q.shape[2], q.shape[3]
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
    return torch.einsum("bhijk,bhjd,bhkd->bhid", p, v1, v2)


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


def rotary_3d(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate every 3-chunk c of x about its third coordinate by angle position·θ_c, θ_c = base^(-c/(D/3)).

    x: [B, H, L, D] (D a multiple of 3); positions: [L] (may be negative: relative positions in `step`).
    """
    n_chunks = x.shape[-1] // 3
    compute = torch.promote_types(x.dtype, torch.float32)
    theta = base ** (-torch.arange(n_chunks, device=x.device, dtype=compute) / n_chunks)  # [D/3], RoPE spacing
    angle = positions.to(compute)[:, None] * theta  # [L, D/3]
    cos, sin = angle.cos(), angle.sin()
    a, b, c = x.to(compute).unflatten(-1, (n_chunks, 3)).unbind(-1)  # [B, H, L, D/3] each
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos, c), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# the mixer
# ---------------------------------------------------------------------------------------------------------------
class SimplicialAttention(Mixer):
    """2-simplicial attention over two causal sliding windows.

    Clift et al. (2019), "Logic and the 2-Simplicial Transformer"; Roy et al. (2025), "Fast and Simplex:
    2-Simplicial Attention in Triton".

        A_ijk = <q_i, k_j, k'_k> / sqrt(d)                      score="trilinear"
        A_ijk = Σ_c det[q_i^(c), k_j^(c), k'_k^(c)] / sqrt(d)    score="determinant" (3-chunks c)
        o_i   = Σ_{i-w1<j<=i, i-w2<k<=i} softmax_jk(A_ijk) (v_j ⊙ v'_k)

    kv_bias adds 1/head_dim to every k' and 1 to every v' (the authors' reference), which makes plain
    sliding-window attention over K, V the layer's value at zero K', V' projections.

    pos="rope" rotates the 3-chunks of q, k, k' by their absolute positions (determinant score only: the
    trilinear form is not rotation-invariant, so rotations would not reduce to relative positions). This scheme
    is probe's construction; neither the paper nor its reference code gives one.

    Hybrid with global RoPE attention as in the paper: arch `attention,attention,attention,simplicial`.

    head_dim=None means d_model // n_heads, rounded down to a multiple of 3 for the determinant score.
    Windows default to (w1, w2) = (64, 16): the paper's large-w1, small-w2 shape (512, 32) scaled to probe's
    sequence lengths.

    State after L tokens: caches of K, V (last w1) and K', V' (last w2) per head:
        2·n_heads·head_dim·(min(L, w1) + min(L, w2))
    """

    formula = "2·n_heads·head_dim·(min(L,w1) + min(L,w2))"

    def __init__(
        self,
        d_model: int,
        *,
        layer_idx: int = 0,
        max_seq_len: int = 2048,
        n_heads: int = 2,
        head_dim: int | None = None,
        w1: int = 64,
        w2: int = 16,
        score: Score = "trilinear",
        pos: Literal["none", "rope"] = "none",
        rope_base: float = 10000.0,
        kv_bias: bool = True,
    ):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        if n_heads < 1:
            raise ValueError(f"n_heads={n_heads} must be >= 1")
        if score not in ("trilinear", "determinant"):
            raise ValueError(f"score={score!r} must be one of 'trilinear', 'determinant'")
        if pos not in ("none", "rope"):
            raise ValueError(f"pos={pos!r} must be one of 'none', 'rope'")
        if pos == "rope" and score != "determinant":
            raise ValueError("pos='rope' needs score='determinant' (the trilinear score is not rotation-invariant)")
        if w1 < 1 or w2 < 1:
            raise ValueError(f"w1={w1} and w2={w2} must both be >= 1")
        if rope_base <= 0:
            raise ValueError(f"rope_base={rope_base} must be > 0")
        if head_dim is None:
            head_dim = d_model // n_heads
            if score == "determinant":
                head_dim -= head_dim % 3
        if head_dim < 1 or (score == "determinant" and head_dim % 3 != 0):
            need = "a positive multiple of 3 for score='determinant'" if score == "determinant" else ">= 1"
            raise ValueError(f"head_dim={head_dim} must be {need} (d_model={d_model}, n_heads={n_heads})")
        self.n_heads, self.head_dim, self.w1, self.w2 = n_heads, head_dim, w1, w2
        self.score, self.pos, self.rope_base, self.kv_bias = score, pos, rope_base, kv_bias
        inner = n_heads * head_dim
        self.in_proj = nn.Linear(d_model, 5 * inner, bias=False)  # W_Q, W_K, W_V, W_K', W_V' in one matmul
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def _project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, L, D] -> q, k, v, k', v', each [B, H, L, head_dim], k' and v' with the reference's biases."""
        qkv = self.in_proj(x).unflatten(-1, (5, self.n_heads, self.head_dim))  # [B, L, 5, H, hd]
        q, k1, v1, k2, v2 = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.kv_bias:
            # before any rotation and before the cache, so forward and step see the same k', v'
            k2, v2 = k2 + 1.0 / self.head_dim, v2 + 1.0
        return [q, k1, v1, k2, v2]

    def _merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        return self.out_proj(o.transpose(1, 2).flatten(2))  # [B, H, L, hd] -> [B, L, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        q, k1, v1, k2, v2 = self._project(x)  # [B, H, L, hd]
        if self.pos == "rope":
            positions = torch.arange(x.shape[1], device=x.device)
            q, k1, k2 = (rotary_3d(t, positions, self.rope_base) for t in (q, k1, k2))
        o = simplicial_attention_ref(q, k1, v1, k2, v2, self.w1, self.w2, self.score)
        return self._merge_heads(o)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_heads * self.head_dim * (min(seq_len, self.w1) + min(seq_len, self.w2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k1": empty, "v1": empty, "k2": empty, "v2": empty}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # x_t: [B, D]
        q, k1, v1, k2, v2 = self._project(x_t[:, None])  # [B, H, 1, hd]
        state = {
            "k1": torch.cat((state["k1"], k1), dim=2)[:, :, -self.w1:],  # [B, H, min(t, w1), hd], oldest first
            "v1": torch.cat((state["v1"], v1), dim=2)[:, :, -self.w1:],
            "k2": torch.cat((state["k2"], k2), dim=2)[:, :, -self.w2:],  # [B, H, min(t, w2), hd]
            "v2": torch.cat((state["v2"], v2), dim=2)[:, :, -self.w2:],
        }
        k1w, k2w = state["k1"], state["k2"]
        if self.pos == "rope":
            # the score sees only relative angles, so put the query at 0 and each cached key at minus its age
            k1w, k2w = (rotary_3d(k, self._ages(k), self.rope_base) for k in (k1w, k2w))
        n1, n2 = k1w.shape[2], k2w.shape[2]
        all_valid1 = torch.ones(1, n1, dtype=torch.bool, device=x_t.device)
        all_valid2 = torch.ones(1, n2, dtype=torch.bool, device=x_t.device)
        dtype, compute = q.dtype, torch.promote_types(q.dtype, torch.float32)
        q, k1w, v1w, k2w, v2w = (t.to(compute) for t in (q, k1w, state["v1"], k2w, state["v2"]))
        o = window_attend(q, k1w[:, :, None], v1w[:, :, None], k2w[:, :, None], v2w[:, :, None],
                          all_valid1, all_valid2, self.score)  # [B, H, 1, hd]
        return self._merge_heads(o.to(dtype))[:, 0], state

    @staticmethod
    def _ages(cache: torch.Tensor) -> torch.Tensor:
        """Relative positions of the cache slots, oldest first: [-(n-1), ..., -1, 0]."""
        n = cache.shape[2]
        return torch.arange(1 - n, 1, device=cache.device)


ARCHS: dict[str, MixerSpec] = {
    "simplicial": MixerSpec(
        SimplicialAttention,
        "2-simplicial attention, trilinear scores over pairs from two sliding windows (Clift 2019; Roy 2025)",
    ),
    "simplicial_det": MixerSpec(
        SimplicialAttention,
        "2-simplicial attention, rotation-invariant determinant scores with 3-D rotary positions (Roy 2025)",
        {"score": "determinant", "pos": "rope"},
    ),
}
