"""Monarch Mixer sequence mixing (Fu et al. 2023), made causal: a gated long convolution computed through
Monarch matrices instead of an FFT.

A Monarch matrix of order p = 2 and size n = n1·n2 is  M = P_out · B2 · P · B1 · P_in : two block-diagonal
factors (n2 blocks of n1×n1, then n1 blocks of n2×n2) between stride permutations, so M x costs
O(n·(n1 + n2)) = O(n^1.5) for n1 = n2 = √n, as two batched matrix multiplies (GEMMs).

The DFT is such a matrix (the Cooley–Tukey split). With n = n1·n2, input index j = n2·j1 + j2 and output index
k = k1 + n1·k2, ω_m = exp(−2πi/m):

    X[k1 + n1·k2] = Σ_{j2} ω_{n2}^{j2·k2} · ω_n^{j2·k1} · Σ_{j1} ω_{n1}^{j1·k1} · x[n2·j1 + j2]

the inner sum is B1 (every block the n1-point DFT), the twiddle factor ω_n^{j2·k1} folds into B2's blocks
(block k1 is the n2-point DFT with its columns scaled by ω_n^{j2·k1}). The inverse DFT is the same with ω
conjugated and a 1/n. A long convolution is then  h ∗ u = M⁻¹ (M h ⊙ M u); zero-padding u and h from L to
n ≥ 2L makes the circular convolution equal the linear, causal one (the paper's causal section pads to 2N,
its Monarch matrices then evaluate and interpolate polynomials of degree < N, whose product has degree < 2N).
Valid sizes here are perfect squares (square blocks), so n is the smallest m² ≥ 2L.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import short_conv, short_conv_step
from .base import Mixer, MixerSpec, State
from .conv import ImplicitFilter, causal_conv_step


def monarch_multiply(x: torch.Tensor, blocks1: torch.Tensor, blocks2: torch.Tensor) -> torch.Tensor:
    """Order-2 Monarch matrix times vectors: y = P_out · B2 · P · B1 · P_in · x.

    x: [..., n] with n = n1·n2 (real or complex), blocks1: [n2, n1, n1], blocks2: [n1, n2, n2] -> y: [..., n].
    Reading x[n2·j1 + j2] as a grid [j1, j2]:
        B1 (n2 blocks, one per j2, acting on j1):   Y[k1, j2] = Σ_{j1} blocks1[j2, k1, j1] · x[j1, j2]
        B2 (n1 blocks, one per k1, acting on j2):   Z[k1, k2] = Σ_{j2} blocks2[k1, k2, j2] · Y[k1, j2]
        y[k1 + n1·k2] = Z[k1, k2]
    The permutations are the index bookkeeping of the einsums and the final transpose.
    """
    n2, n1 = blocks1.shape[0], blocks1.shape[1]
    grid = x.unflatten(-1, (n1, n2))                                     # [..., j1, j2]
    y = torch.einsum("...ij,jki->...kj", grid, blocks1)                  # [..., k1, j2]
    z = torch.einsum("...kj,klj->...kl", y, blocks2)                     # [..., k1, k2]
    return z.transpose(-1, -2).flatten(-2)                               # [..., n], index k2·n1 + k1


def monarch_dft_factors(n1: int, n2: int, *, inverse: bool = False, dtype=torch.complex128, device=None):
    """The DFT of size n = n1·n2 as Monarch factors (Cooley–Tukey): blocks1 [n2, n1, n1], blocks2 [n1, n2, n2].

    monarch_multiply(x, *monarch_dft_factors(n1, n2)) == torch.fft.fft(x); with inverse=True, == ifft(x).
    """
    n = n1 * n2
    sign = 1.0 if inverse else -1.0
    real = torch.float64 if dtype == torch.complex128 else torch.float32

    def omega(m, exponent):  # ω_m^exponent with ω_m = exp(sign·2πi/m), exponent taken mod m for accuracy
        angle = sign * 2 * math.pi * torch.remainder(exponent, m).to(real) / m
        return torch.polar(torch.ones_like(angle), angle).to(dtype)

    j1 = torch.arange(n1, device=device)
    j2 = torch.arange(n2, device=device)
    dft_n1 = omega(n1, j1[:, None] * j1[None, :])                        # [k1, j1]
    blocks1 = dft_n1.expand(n2, n1, n1)                                  # same n1-point DFT for every j2
    dft_n2 = omega(n2, j2[:, None] * j2[None, :])                        # [k2, j2]
    twiddle = omega(n, j1[:, None] * j2[None, :])                        # [k1, j2]: ω_n^{j2·k1}
    blocks2 = dft_n2[None, :, :] * twiddle[:, None, :]                   # [k1, k2, j2]
    if inverse:
        blocks2 = blocks2 / n
    return blocks1, blocks2


def monarch_size(seq_len: int) -> int:
    """Side m of the smallest square Monarch size m² ≥ 2·seq_len (the zero padding that keeps it causal)."""
    m = math.isqrt(2 * seq_len)
    return m if m * m >= 2 * seq_len else m + 1


def monarch_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal long convolution through Monarch DFTs: y[b, d, t] = Σ_{s≤t} k[d, s]·u[b, d, t−s] (+ bias[d]·u).

    u: [B, D, L], k: [D, Lk] (cut to L, or zeros past Lk), bias: [D] (per-channel feed-through) or None
    -> [B, D, L]. Both are zero-padded to n = m² ≥ 2L; y = M⁻¹(M k ⊙ M u)[:L] with M the Monarch DFT of size n.
    Computed in complex64 or wider (complex128 for float64 input), cast back to u's dtype.
    """
    seq_len = u.shape[-1]
    real = torch.promote_types(u.dtype, torch.float32)
    cdtype = torch.complex128 if real == torch.float64 else torch.complex64
    m = monarch_size(seq_len)
    forward_factors = monarch_dft_factors(m, m, dtype=cdtype, device=u.device)
    inverse_factors = monarch_dft_factors(m, m, inverse=True, dtype=cdtype, device=u.device)
    pad = m * m - seq_len
    u_pad = nn.functional.pad(u.to(real), (0, pad)).to(cdtype)         # [B, D, n]
    k_cut = k[..., :seq_len].to(real)
    k_pad = nn.functional.pad(k_cut, (0, m * m - k_cut.shape[-1])).to(cdtype)   # [D, n]
    spectrum = monarch_multiply(u_pad, *forward_factors) * monarch_multiply(k_pad, *forward_factors)
    y = monarch_multiply(spectrum, *inverse_factors).real[..., :seq_len]   # [B, D, L]
    if bias is not None:
        y = y + u.to(real) * bias.to(real)[:, None]
    return y.to(u.dtype)


class MonarchMixer(Mixer):
    """Monarch Mixer sequence mixer, causal (Fu et al. 2023, "Monarch Mixer: A Simple Sub-Quadratic GEMM-Based
    Architecture").

        (q, k, v) = ShortConv(x W_in)                     three projections of width D, depthwise conv of 3 taps
        y = (q ⊙ (h ∗ (k ⊙ v) + bias ⊙ (k ⊙ v))) W_out    h ∗ · = M⁻¹(M h ⊙ M ·), M the Monarch DFT, padded to 2L

    the gated long convolution of M2's sequence mixer, with an implicit long filter h (Hyena's: sine FFN of a
    positional encoding times a decaying window, as M2's GPT-style models use) and a per-channel feed-through.

    State after L tokens: the long convolution keeps all its past inputs k ⊙ v (D·L), the short convolution its
    last short_filter_order − 1 inputs over 3·D channels:
        d_model·L + 3·d_model·(short_filter_order − 1).
    """

    formula = "d_model·L + 3·d_model·(short_filter_order−1)"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048, filter_order: int = 64,
                 emb_dim: int = 3, short_filter_order: int = 3):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        if short_filter_order < 1:
            raise ValueError(f"short_filter_order={short_filter_order} must be >= 1")
        self.short_filter_order = short_filter_order
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        # default conv1d initialization: uniform in ±1/sqrt(fan_in)
        bound = 1 / math.sqrt(short_filter_order)
        self.short_filter = nn.Parameter(torch.empty(3 * d_model, short_filter_order).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty(3 * d_model).uniform_(-bound, bound))
        self.implicit_filter = ImplicitFilter(d_model, max_seq_len, emb_dim=emb_dim, filter_order=filter_order)
        # feed-through term drawn like Hyena's, standard normal
        self.filter_bias = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        # the short filter is stored in filter order (k[:, s] meets u_{t−s}); the op takes Conv1d's, flipped
        u = short_conv(self.in_proj(x), self.short_filter.flip(-1), self.short_bias)   # [B, L, 3D]
        q, k, v = u.transpose(1, 2).split(self.d_model, dim=1)               # 3 × [B, D, L]
        y = q * monarch_conv(k * v, self.implicit_filter(x.shape[1]), self.filter_bias)
        return self.out_proj(y.transpose(1, 2))

    def state_size(self, seq_len: int) -> int:
        return self.d_model * seq_len + 3 * self.d_model * min(seq_len, self.short_filter_order - 1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"short": torch.zeros(batch_size, 3 * self.d_model, 0, device=device, dtype=dtype),
                "past": torch.zeros(batch_size, self.d_model, 0, device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        # one output needs one dot product with the reversed filter; no transform is worth it for a single t
        u_t, short = short_conv_step(self.in_proj(x_t), state["short"], self.short_filter.flip(-1),
                                     self.short_bias)
        q, k, v = u_t.split(self.d_model, dim=-1)                         # 3 × [B, D]
        z_t = k * v
        conv, past = causal_conv_step(z_t, state["past"], self.implicit_filter(state["past"].shape[-1] + 1))
        y_t = self.out_proj(q * (conv + self.filter_bias * z_t))
        return y_t, {"short": short, "past": past}


ARCHS: dict[str, MixerSpec] = {
    "m2": MixerSpec(MonarchMixer, "Monarch Mixer: gated implicit long convolution through Monarch DFTs, causal"),
}
