"""Long causal depthwise convolution (a filter as long as the sequence), the contract its kernel is tested against,
in the token-major layout:

    y[b, t, c] = Σ_{s=0}^{min(t, Lk−1)} k[c, s] · x[b, t−s, c]  (+ bias[c] · x[b, t, c])

x [B, L, C], k [C, Lk] in filter order (k[:, s] multiplies the input s positions back, so unlike short_conv's
nn.Conv1d order it is not flipped; Lk ≥ L is cut to L, Lk < L acts as zeros past Lk), bias [C] or None: the
per-channel feed-through ("skip") of Hyena's filters and the D·u of an SSM, not an additive constant. k may also
be [G, C, Lk] (and bias [G, C]): the B rows come in G equal groups, group g convolved with k[g] (a pack of G
models folded into the rows). -> y [B, L, C] in x's dtype.

`long_conv_ref` computes it as a zero-padded FFT (both sides padded to 2L, so the FFT's circular convolution
equals the linear, causal one) in float32, or float64 for float64 inputs: bf16 FFTs lose the small tail of a
long filter. O(B·C·L log L), which is what CPUs run.
"""
from __future__ import annotations

import torch


def check(x, k, bias) -> None:
    """Shapes, each misfit named (the same checks on either path)."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, L, C]; got {tuple(x.shape)}")
    rows, _, c = x.shape
    if k.dim() not in (2, 3) or k.shape[-2] != c or k.shape[-1] < 1:
        raise ValueError(f"k must be [C={c}, Lk] or [G, C={c}, Lk] with Lk >= 1; got {tuple(k.shape)}")
    groups = k.shape[0] if k.dim() == 3 else 1
    if rows % groups:
        raise ValueError(f"{rows} rows of x do not split into k's {groups} groups")
    if bias is not None and bias.shape != k.shape[:-1]:
        raise ValueError(f"bias must be {list(k.shape[:-1])} (k's leading dimensions); got {tuple(bias.shape)}")


def long_conv_ref(x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [B, L, C] (x's dtype) from x [B, L, C], k [C, Lk] or [G, C, Lk], bias [C] or [G, C] or None:

        y[b, t, c] = Σ_{s=0}^{min(t, Lk−1)} k[c, s] · x[b, t−s, c]  (+ bias[c] · x[b, t, c])

    by FFT, zero-padded to 2L, in float32 or wider."""
    check(x, k, bias)
    dtype = torch.promote_types(x.dtype, torch.float32)
    rows, length, c = x.shape
    groups = k.shape[0] if k.dim() == 3 else 1
    n = 2 * length
    u = x.to(dtype).reshape(groups, rows // groups, length, c)                          # [G, B/G, L, C]
    h = k[..., :length].to(dtype).reshape(groups, 1, c, -1).transpose(-1, -2)           # [G, 1, min(L, Lk), C]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=2) * torch.fft.rfft(h, n=n, dim=2), n=n, dim=2)[:, :, :length]
    if bias is not None:
        y = y + u * bias.to(dtype).reshape(groups, 1, 1, c)
    return y.reshape(rows, length, c).to(x.dtype)
