"""Gated convolutions: BaseConv (Zoology) and Hyena.

Both mix a sequence with a causal convolution y_t = Σ_{s≤t} h_s · u_{t-s} whose filter h is as long as the
sequence, gated elementwise by a projection of the input. The long convolution runs as a zero-padded FFT
(`fft_conv`: pad to 2L so the circular convolution of the FFT cannot wrap the future onto the past); the short
convolutions (a few taps) run as a depthwise `conv1d`.

Recurrent form: a long filter has no finite state, so `step` keeps the past inputs of every long convolution
in a buffer and takes one dot product per channel with the reversed filter (`causal_conv_step`); this is what
a convolution must hold to produce the next token, so it is what `state_size` counts.

Filters are stored in "filter order": k[:, s] multiplies u_{t-s}, for short and long filters alike.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Mixer, MixerSpec, State


def fft_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal long convolution by FFT: y[b, d, t] = Σ_{s=0}^{t} k[d, s] · u[b, d, t-s] (+ bias[d] · u[b, d, t]).

    u: [B, D, L], k: [D, Lk] (Lk ≥ L is cut to L; Lk < L acts as zeros past Lk), bias: [D] or None -> [B, D, L].
    `bias` is the per-channel feed-through ("skip") term of Hyena's filters, not an additive constant.
    Both sides are zero-padded to 2L so the FFT's circular convolution equals the linear (causal) one.
    Computed in float32 or wider (bf16 FFTs lose the small tail of a long filter), cast back to u's dtype.
    """
    seq_len = u.shape[-1]
    compute = torch.promote_types(u.dtype, torch.float32)
    n = 2 * seq_len
    u_f = torch.fft.rfft(u.to(compute), n=n)                     # [B, D, n//2+1]
    k_f = torch.fft.rfft(k[..., :seq_len].to(compute), n=n)     # [D, n//2+1]
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :seq_len]           # [B, D, L]
    if bias is not None:
        y = y + u.to(compute) * bias.to(compute)[:, None]
    return y.to(u.dtype)


def short_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise convolution with a few taps: y[b, d, t] = Σ_{s<K} k[d, s] · u[b, d, t-s] + bias[d].

    u: [B, D, L], k: [D, K] in filter order, bias: [D] or None -> [B, D, L].
    """
    taps = k.shape[-1]
    # conv1d cross-correlates, so the filter is flipped; K-1 zeros on the left keep it causal
    return F.conv1d(F.pad(u, (taps - 1, 0)), k.flip(-1).unsqueeze(1), bias, groups=k.shape[0])


def causal_conv_step(u_t: torch.Tensor, past: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One output of a causal convolution from the inputs kept so far.

    u_t: [B, D], past: [B, D, T] (oldest first), k: [D, Lk] in filter order
    -> y_t: [B, D] = Σ_{s=0}^{min(T, Lk-1)} k[:, s] · u_{t-s},  window: [B, D, T+1] (past with u_t appended;
    the caller keeps as much of it as its filter can still reach).
    """
    window = torch.cat([past, u_t.unsqueeze(-1)], dim=-1)       # [B, D, T+1]
    reach = min(window.shape[-1], k.shape[-1])
    y_t = (window[..., -reach:] * k[:, :reach].flip(-1)).sum(-1)  # newest input meets k[:, 0]
    return y_t, window


class Sin(nn.Module):
    """sin(ω ⊙ x) with a learnable frequency per feature (the implicit filter's activation in Hyena)."""

    def __init__(self, dim: int, w: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Hyena's implicit long filter: h_t = FFN(PositionalEncoding(t)) · Window(t)   (Poli et al. 2023, §3.3).

    PositionalEncoding(t) = [t̂, cos(2πk·t̂), sin(2πk·t̂)]_{k=1..K}, t̂ = t / max_seq_len, emb_dim = 1 + 2K.
    FFN = Linear(emb_dim, filter_order) -> Sin -> Linear -> Sin -> Linear(filter_order, channels).
    Window(t) = exp(-α_c · t̂) + shift, with the decay rate α_c spread over channels so that channel c's window
    falls to `target` between t̂ = fast_decay_pct and t̂ = slow_decay_pct: some channels see far, some near.
    Positions are normalised by max_seq_len, not by the input length, so h does not depend on L (a causal
    filter that changed with L would let the future leak in through the sequence length).
    """

    def __init__(self, channels: int, max_seq_len: int, emb_dim: int = 3, filter_order: int = 64,
                 w: float = 1.0, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, shift: float = 0.0):
        super().__init__()
        if filter_order < 1:
            raise ValueError(f"filter_order={filter_order} must be >= 1")
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim={emb_dim} must be odd and >= 3 (time + sine/cosine pairs)")
        self.channels, self.max_seq_len, self.shift = channels, max_seq_len, shift
        self.register_buffer("bands", torch.arange(1, (emb_dim - 1) // 2 + 1, dtype=torch.float32),
                             persistent=False)
        self.ffn = nn.Sequential(
            nn.Linear(emb_dim, filter_order), Sin(filter_order, w),
            nn.Linear(filter_order, filter_order), Sin(filter_order, w),
            nn.Linear(filter_order, channels, bias=False),
        )
        # exp(-α · pct) = target  =>  α = -ln(target) / pct; fastest channel first
        alphas = torch.linspace(-math.log(target) / fast_decay_pct, -math.log(target) / slow_decay_pct, channels)
        self.register_buffer("alphas", alphas, persistent=False)

    def positional_encoding(self, seq_len: int, dtype, device) -> torch.Tensor:  # -> [L, emb_dim]
        t = torch.arange(seq_len, dtype=dtype, device=device)[:, None] / self.max_seq_len   # [L, 1]
        angle = 2 * math.pi * t * self.bands.to(dtype)                                      # [L, K]
        return torch.cat([t, torch.cos(angle), torch.sin(angle)], dim=-1)

    def window(self, seq_len: int, dtype, device) -> torch.Tensor:  # -> [channels, L]
        t = torch.arange(seq_len, dtype=dtype, device=device) / self.max_seq_len
        return torch.exp(-self.alphas.to(dtype)[:, None] * t) + self.shift

    def forward(self, seq_len: int) -> torch.Tensor:  # -> [channels, L]
        w0 = self.ffn[0].weight
        h = self.ffn(self.positional_encoding(seq_len, w0.dtype, w0.device)).transpose(0, 1)   # [C, L]
        return h * self.window(seq_len, h.dtype, h.device)


class BaseConv(Mixer):
    """BaseConv (Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models").

        y = (x W + b) ⊙ (h ∗ x + b')

    a linear projection gated by a causal convolution, per channel. `filter="long"`: h spans the sequence,
    either an explicit [d_model, max_seq_len] parameter or (`implicit=True`) Hyena's implicit filter;
    `filter="short"`: h has `kernel_size` taps (the short-conv layer of the Based architecture).

    State after L tokens (the past inputs the convolution still reaches):
        long, explicit: d_model·min(L, max_seq_len − 1);  long, implicit: d_model·L;
        short: d_model·min(L, kernel_size − 1).
    """

    formula = "d_model·L (long; explicit filter: L ≤ max_seq_len−1), d_model·(kernel_size−1) (short)"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 filter: Literal["long", "short"] = "long", kernel_size: int = 3, implicit: bool = False):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        if filter not in ("long", "short"):
            raise ValueError(f"filter={filter!r} must be 'long' or 'short'")
        if kernel_size < 1:
            raise ValueError(f"kernel_size={kernel_size} must be >= 1")
        if implicit and filter != "long":
            raise ValueError(f"implicit={implicit} applies only to filter='long', not filter={filter!r}")
        self.filter, self.kernel_size, self.implicit = filter, kernel_size, implicit
        self.projection = nn.Linear(d_model, d_model)     # x W + b
        self.conv_bias = nn.Parameter(torch.zeros(d_model))  # b', zero at init: the gate starts as h ∗ x alone
        if filter == "short":
            # default conv1d initialization: uniform in ±1/sqrt(fan_in)
            bound = 1 / math.sqrt(kernel_size)
            self.h = nn.Parameter(torch.empty(d_model, kernel_size).uniform_(-bound, bound))
        elif implicit:
            self.implicit_filter = ImplicitFilter(d_model, max_seq_len)
        else:
            # small random explicit filter, as in long-convolution models; the model learns its shape
            self.h = nn.Parameter(0.02 * torch.randn(d_model, max_seq_len))

    @property
    def reach(self) -> int | None:
        """How many inputs (current included) the filter reaches; None = all of them."""
        if self.filter == "short":
            return self.kernel_size
        return None if self.implicit else self.max_seq_len

    def filter_taps(self, seq_len: int) -> torch.Tensor:  # -> [D, Lk], filter order
        if self.filter == "long" and self.implicit:
            return self.implicit_filter(seq_len)
        return self.h

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        u = x.transpose(1, 2)                                           # [B, D, L]
        k = self.filter_taps(x.shape[1])
        conv = short_conv(u, k) if self.filter == "short" else fft_conv(u, k)
        conv = conv.transpose(1, 2) + self.conv_bias                    # [B, L, D]
        return self.projection(x) * conv

    def state_size(self, seq_len: int) -> int:
        reach = self.reach
        return self.d_model * (seq_len if reach is None else min(seq_len, reach - 1))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"past": torch.zeros(batch_size, self.d_model, 0, device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        past = state["past"]                                            # [B, D, T]
        conv, window = causal_conv_step(x_t, past, self.filter_taps(past.shape[-1] + 1))
        reach = self.reach
        if reach is not None:
            # a filter of Lk taps needs only the last Lk-1 inputs to produce the next token
            window = window[..., window.shape[-1] - min(reach - 1, window.shape[-1]):]
        return self.projection(x_t) * (conv + self.conv_bias), {"past": window}


class Hyena(Mixer):
    """Hyena operator (Poli et al. 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models").

        (x_1, ..., x_N, v) = ShortConv(x W_in)          N+1 projections of width D, depthwise conv of 3 taps
        z^1 = v;   z^{n+1} = x_n ⊙ (h_n ∗ z^n + bias_n ⊙ z^n)   for n = 1..N
        y = z^{N+1} W_out

    h_n are implicit long filters (`ImplicitFilter`: sine FFN of a positional encoding, times an exponentially
    decaying window), bias_n the per-channel feed-through term of each filter.

    State after L tokens: each order's long convolution keeps all its past inputs z^n (D·L each), and the
    short convolution its last short_filter_order − 1 inputs over (N+1)·D channels:
        order·d_model·L + (order+1)·d_model·(short_filter_order − 1).
    """

    formula = "order·d_model·L + (order+1)·d_model·(short_filter_order−1)"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048, order: int = 2,
                 filter_order: int = 64, emb_dim: int = 3, short_filter_order: int = 3):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        if order < 1:
            raise ValueError(f"order={order} must be >= 1")
        if short_filter_order < 1:
            raise ValueError(f"short_filter_order={short_filter_order} must be >= 1")
        self.order, self.short_filter_order = order, short_filter_order
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width)
        # default conv1d initialization: uniform in ±1/sqrt(fan_in)
        bound = 1 / math.sqrt(short_filter_order)
        self.short_filter = nn.Parameter(torch.empty(width, short_filter_order).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.implicit_filter = ImplicitFilter(order * d_model, max_seq_len, emb_dim=emb_dim,
                                              filter_order=filter_order)
        # feed-through term drawn standard normal, so each order starts with a direct path past its filter
        self.filter_bias = nn.Parameter(torch.randn(order, d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def long_filters(self, seq_len: int) -> torch.Tensor:  # -> [N, D, L]
        return self.implicit_filter(seq_len).view(self.order, self.d_model, seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        u = self.in_proj(x).transpose(1, 2)                                  # [B, (N+1)·D, L]
        u = short_conv(u, self.short_filter, self.short_bias)
        *gates, z = u.split(self.d_model, dim=1)                             # N × [B, D, L], v: [B, D, L]
        h = self.long_filters(x.shape[1])                                    # [N, D, L]
        for n, gate in enumerate(gates):
            z = gate * fft_conv(z, h[n], self.filter_bias[n])
        return self.out_proj(z.transpose(1, 2))

    def state_size(self, seq_len: int) -> int:
        short = min(seq_len, self.short_filter_order - 1)
        return self.order * self.d_model * seq_len + (self.order + 1) * self.d_model * short

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        def empty(channels):
            return torch.zeros(batch_size, channels, 0, device=device, dtype=dtype)
        state = {"short": empty((self.order + 1) * self.d_model)}
        state.update({f"z{n + 1}": empty(self.d_model) for n in range(self.order)})
        return state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        u_t, window = causal_conv_step(self.in_proj(x_t), state["short"], self.short_filter)
        u_t = u_t + self.short_bias                                          # [B, (N+1)·D]
        keep = min(self.short_filter_order - 1, window.shape[-1])
        new = {"short": window[..., window.shape[-1] - keep:]}
        *gates, z_t = u_t.split(self.d_model, dim=-1)
        h = self.long_filters(state["z1"].shape[-1] + 1)                     # [N, D, t+1]
        for n, gate in enumerate(gates):
            conv, new[f"z{n + 1}"] = causal_conv_step(z_t, state[f"z{n + 1}"], h[n])
            z_t = gate * (conv + self.filter_bias[n] * z_t)
        return self.out_proj(z_t), new


ARCHS: dict[str, MixerSpec] = {
    "baseconv": MixerSpec(BaseConv, "BaseConv: linear projection gated by a long causal convolution (Zoology)",
                          {"filter": "long"}),
    "baseconv_short": MixerSpec(BaseConv, "BaseConv with a short convolution (kernel 3), the Based conv layer",
                                {"filter": "short", "kernel_size": 3}),
    "hyena": MixerSpec(Hyena, "Hyena order 2: gates interleaved with implicit long convolutions"),
}
