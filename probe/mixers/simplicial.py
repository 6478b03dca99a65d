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

Design choices: one fused input projection for W_Q, W_K, W_V, W_K', W_V' without learned biases, read token-major
(no transpose); the core is the op probe.ops.simplicial_attention (its Triton kernel on CUDA, forward and
backward, never forming the L·w1·w2 scores; elsewhere its chunked PyTorch reference, memory O(chunk·w1·(w2 + d))
per head); scores and softmax in float32 or wider.

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

from typing import Literal

import torch
from torch import nn

from ..ops import simplicial_attention, simplicial_window_attend
from ..ops.simplicial import Score
from .base import Mixer, MixerSpec, State


def rotary_3d(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate every 3-chunk c of x about its third coordinate by angle position·θ_c, θ_c = base^(-c/(D/3)).

    x: [..., D] (D a multiple of 3); positions broadcast against x's leading dimensions: [L] for head-major
    [B, H, L, D], [L, 1] for token-major [B, L, H, D] (may be negative: relative positions in `step`).
    """
    n_chunks = x.shape[-1] // 3
    compute = torch.promote_types(x.dtype, torch.float32)
    theta = base ** (-torch.arange(n_chunks, device=x.device, dtype=compute) / n_chunks)  # [D/3], RoPE spacing
    angle = positions.to(compute)[..., None] * theta  # [*positions.shape, D/3]
    cos, sin = angle.cos(), angle.sin()
    a, b, c = x.to(compute).unflatten(-1, (n_chunks, 3)).unbind(-1)  # [..., D/3] each
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
        """[B, L, D] -> q, k, v, k', v', each token-major [B, L, H, head_dim] (views of one projection), k' and v'
        with the reference's biases."""
        q, k1, v1, k2, v2 = self.in_proj(x).unflatten(-1, (5, self.n_heads, self.head_dim)).unbind(2)
        if self.kv_bias:
            # before any rotation and before the cache, so forward and step see the same k', v'
            k2, v2 = k2 + 1.0 / self.head_dim, v2 + 1.0
        return [q, k1, v1, k2, v2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        q, k1, v1, k2, v2 = self._project(x)  # [B, L, H, hd]
        if self.pos == "rope":
            positions = torch.arange(x.shape[1], device=x.device)[:, None]  # [L, 1]: token-major
            q, k1, k2 = (rotary_3d(t, positions, self.rope_base) for t in (q, k1, k2))
        o = simplicial_attention(q, k1, v1, k2, v2, self.w1, self.w2, self.score)  # [B, L, H, hd]
        return self.out_proj(o.flatten(2))

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_heads * self.head_dim * (min(seq_len, self.w1) + min(seq_len, self.w2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k1": empty, "v1": empty, "k2": empty, "v2": empty}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # x_t: [B, D]
        q, k1, v1, k2, v2 = (t.transpose(1, 2) for t in self._project(x_t[:, None]))  # [B, H, 1, hd]
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
        o = simplicial_window_attend(q, k1w[:, :, None], v1w[:, :, None], k2w[:, :, None], v2w[:, :, None],
                                     all_valid1, all_valid2, self.score)  # [B, H, 1, hd]
        return self.out_proj(o.to(dtype).flatten(1)), state

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
