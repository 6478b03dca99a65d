"""Gated convolutions: BaseConv (Zoology) and Hyena.

Both mix a sequence with a causal convolution y_t = Σ_{s≤t} h_s · u_{t-s} whose filter h is as long as the
sequence, gated elementwise by a projection of the input. The long convolution runs as probe.ops.long_conv
(token-major, with Hyena's feed-through fused: a Toeplitz product on tensor cores on a GPU, a zero-padded FFT on
a CPU); the short convolutions (a few taps) run as probe.ops.short_conv, token-major, with their bias (and
BaseConv's gate) fused.

Recurrent form: a long filter has no finite state, so `step` keeps the past inputs of every long convolution
in a buffer and takes one dot product per channel with the reversed filter (`causal_conv_step`); this is what
a convolution must hold to produce the next token, so it is what `state_size` counts.

Filters are stored in "filter order": k[:, s] multiplies u_{t-s}, for short and long filters alike; long_conv
takes that order, short_conv nn.Conv1d's (its last tap meets u_t), so a short filter is flipped where it is called.

Implicit filters: `ImplicitFilter` is probe's reading of Hyena §3.3 (kept for Monarch Mixer and for the paper
form of BaseConv(implicit=True)); `HyenaFilter` is the filter as Hyena's reference code computes it (safari,
copied into Zoology), which the `hyena` mixer uses; `ZoologyImplicitFilter` is Zoology's implicit filter for
BaseConv.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..ops import long_conv, short_conv, short_conv_step
from .base import Mixer, MixerSpec, State


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


def keep_last(window: torch.Tensor, n: int) -> torch.Tensor:
    """The last min(n, T) inputs of window: [B, D, T] (n = 0 keeps none)."""
    return window[..., window.shape[-1] - min(n, window.shape[-1]):]


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
    Used by Monarch Mixer and by BaseConv(implicit=True, form="paper"); the `hyena` mixer uses `HyenaFilter`,
    the reference code's form (other features, two inner layers, one shared frequency).
    """

    def __init__(self, channels: int, max_seq_len: int, emb_dim: int = 3, filter_order: int = 64,
                 w: float = 1.0, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, shift: float = 0.0):
        super().__init__()
        check_filter_shape(emb_dim, filter_order)
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


def check_filter_shape(emb_dim: int, filter_order: int) -> None:
    if filter_order < 1:
        raise ValueError(f"filter_order={filter_order} must be >= 1")
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"emb_dim={emb_dim} must be odd and >= 3 (time + sine/cosine pairs)")


def positional_table(max_seq_len: int, emb_dim: int) -> torch.Tensor:  # -> [max_seq_len, emb_dim]
    """The implicit filters' input in Hyena's reference code (safari; Zoology copies it), one row per position l:

        [t_l, cos(f_k·ω_l), −sin(f_k·ω_l)]_{k=1..K},   t_l = l / (max_seq_len − 1)   (a linspace from 0 to 1),
        ω_l = 2π·l / max_seq_len,   f = linspace(1e-4, K − 1, K),   emb_dim = 1 + 2K

    (the real and imaginary parts of exp(−i·f_k·ω_l)). The lowest frequency is 1e-4 rather than 0, so at
    emb_dim = 3 (K = 1) the features are nearly [t, 1, 0] and the filter is a smooth function of t alone.
    Built in float64 and stored in the default dtype.
    """
    bands = (emb_dim - 1) // 2
    pos = torch.arange(max_seq_len, dtype=torch.float64)[:, None]                     # [L, 1]
    t = torch.linspace(0, 1, max_seq_len, dtype=torch.float64)[:, None]
    angle = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64) * (2 * math.pi * pos / max_seq_len)
    return torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1).to(torch.get_default_dtype())


class HyenaFilter(nn.Module):
    """Hyena's implicit filter as its reference code computes it (safari's HyenaFilter; Zoology's Filter):

        h[c, l] = FFN(z_l)[c] · (exp(−|δ_c| · t_l) + shift),   z_l = `positional_table` row l
        FFN = Linear(emb_dim, F) → sin(ω⊙·) → [Linear(F, F) → sin(ω⊙·)] × inner_layers → Linear(F, C, no bias)

    with one learnt frequency vector ω (init w) shared by every sine, since the reference appends one Sin
    module after each layer. |δ_c| runs linearly from −ln(target)/slow_decay_pct (channel 0, the slowest) to
    −ln(target)/fast_decay_pct (the last channel): channel c's window reaches `target` at t = −ln(target)/|δ_c|.
    Differs from `ImplicitFilter` in the features (t over max_seq_len − 1; frequencies 1e-4..K−1, not 1..K),
    the two inner layers, the shared ω, the channel order of the decays, and `learn_positions`.

    learn_positions: the reference registers the table z as a parameter (safari meant it for a learning rate of
    1e-5; Zoology's trainer gives every parameter the same one, so there it learns like any weight). True
    learns it, which ties the filter to positions < max_seq_len; False keeps it fixed. The window's t is fixed.
    """

    def __init__(self, channels: int, max_seq_len: int, emb_dim: int = 3, filter_order: int = 64,
                 inner_layers: int = 2, w: float = 1.0, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, shift: float = 0.0, learn_positions: bool = True):
        super().__init__()
        check_filter_shape(emb_dim, filter_order)
        self.max_seq_len, self.shift = max_seq_len, shift
        table = positional_table(max_seq_len, emb_dim)
        if learn_positions:
            self.positions = nn.Parameter(table)
        else:
            self.register_buffer("positions", table, persistent=False)
        widths = [emb_dim] + [filter_order] * (inner_layers + 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.freq = nn.Parameter(torch.full((filter_order,), float(w)))
        self.out = nn.Linear(filter_order, channels, bias=False)
        # exp(−|δ| · pct) = target  =>  |δ| = −ln(target) / pct; slowest channel first
        rates = torch.linspace(-math.log(target) / slow_decay_pct, -math.log(target) / fast_decay_pct, channels)
        self.register_buffer("decay_rates", rates, persistent=False)

    def window(self, seq_len: int, dtype, device) -> torch.Tensor:  # -> [channels, L]
        t = torch.arange(seq_len, dtype=dtype, device=device) / max(self.max_seq_len - 1, 1)
        return torch.exp(-self.decay_rates.to(dtype)[:, None] * t) + self.shift

    def forward(self, seq_len: int) -> torch.Tensor:  # -> [channels, L]
        if seq_len > self.max_seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds max_seq_len={self.max_seq_len} of the filter's table")
        z = self.positions[:seq_len]                                          # [L, emb_dim]
        for layer in self.layers:
            z = torch.sin(self.freq * layer(z))
        h = self.out(z).transpose(0, 1)                                       # [C, L]
        return h * self.window(seq_len, h.dtype, h.device)


class ZoologyImplicitFilter(nn.Module):
    """Zoology's implicit long convolution filter for BaseConv (its `ImplicitLongConvolution`):

        h[:, l] = Linear(16, C)(ReLU(Linear(emb_dim, 16)(z_l))),   z_l = `positional_table` row l (fixed)

    no window and no sine: a small ReLU network of the position.
    """

    def __init__(self, channels: int, max_seq_len: int, emb_dim: int = 3, hidden: int = 16):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.register_buffer("positions", positional_table(max_seq_len, emb_dim), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, seq_len: int) -> torch.Tensor:  # -> [channels, L]
        if seq_len > self.max_seq_len:
            raise ValueError(f"seq_len={seq_len} exceeds max_seq_len={self.max_seq_len} of the filter's table")
        return self.mlp(self.positions[:seq_len]).transpose(0, 1)


class BaseConv(Mixer):
    """BaseConv (Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models").

        form="paper"   (the paper's equation):        y = (x W + b) ⊙ (h ∗ x + b')
        form="zoology" (Zoology's code, its figures):  y = (x W + b) ⊙ (h ∗ x + x) + x      long filter
                                                       y = (x W + b) ⊙ (h ∗ x + b') + x     short filter

    a linear projection gated by a causal convolution, per channel. `filter="long"`: h spans the sequence,
    either an explicit [d_model, max_seq_len] parameter or (`implicit=True`) an implicit filter;
    `filter="short"`: h has `kernel_size` taps (the short-conv layer of the Based architecture).

    What form="zoology" changes, all from Zoology's `BaseConv`, `LongConvolution`, `ShortConvolution`:
      - a residual: the mixer adds its input x to its output (on top of the block's own residual);
      - the long convolution's feed-through: its FFT convolution adds x itself (a fixed unit skip), and there
        is no b';
      - the explicit long filter is drawn standard normal, not 0.02 · N(0, 1);
      - the short convolution is a Conv1d with a bias: b' drawn like the taps, U(±1/√kernel_size), not zero;
      - implicit=True is Zoology's `ZoologyImplicitFilter` (ReLU network, no window), not `ImplicitFilter`.
    Zoology's Figure 2 alternates kernel sizes over the layers (3, long, 3, long), and its long convolution is
    implicit: Zoology's BaseConv takes `implicit_long_conv=True` by default and the Figure-2 configs do not set
    it. That is the pattern `baseconv_short,baseconv_implicit` with form="zoology" (`baseconv_implicit`: a
    registered name, since an option of a pattern goes to every layer that takes it, and a short filter refuses
    implicit=True).

    State after L tokens (the past inputs the convolution still reaches):
        long, explicit: d_model·min(L, max_seq_len − 1);  long, implicit: d_model·L;
        short: d_model·min(L, kernel_size − 1).
    """

    formula = "d_model·L (long; explicit filter: L ≤ max_seq_len−1), d_model·(kernel_size−1) (short)"
    projects_input = False  # it convolves the raw input

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 filter: Literal["long", "short"] = "long", kernel_size: int = 3, implicit: bool = False,
                 form: Literal["paper", "zoology"] = "paper"):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        if filter not in ("long", "short"):
            raise ValueError(f"filter={filter!r} must be 'long' or 'short'")
        if kernel_size < 1:
            raise ValueError(f"kernel_size={kernel_size} must be >= 1")
        if implicit and filter != "long":
            raise ValueError(f"implicit={implicit} applies only to filter='long', not filter={filter!r}")
        if form not in ("paper", "zoology"):
            raise ValueError(f"form={form!r} must be 'paper' or 'zoology'")
        self.filter, self.kernel_size, self.implicit, self.form = filter, kernel_size, implicit, form
        zoology = form == "zoology"
        # Zoology's long convolution adds x itself where the paper adds a learnt b'
        self.feed_through = zoology and filter == "long"
        self.projection = nn.Linear(d_model, d_model)     # x W + b
        if not self.feed_through:
            self.conv_bias = nn.Parameter(torch.zeros(d_model))  # b', zero at init: the gate starts as h ∗ x
        if filter == "short":
            # default conv1d initialization: uniform in ±1/sqrt(fan_in)
            bound = 1 / math.sqrt(kernel_size)
            self.h = nn.Parameter(torch.empty(d_model, kernel_size).uniform_(-bound, bound))
            if zoology:
                # Zoology's short convolution is a Conv1d with its own bias, drawn like the taps
                with torch.no_grad():
                    self.conv_bias.uniform_(-bound, bound)
        elif implicit:
            self.implicit_filter = (ZoologyImplicitFilter if zoology else ImplicitFilter)(d_model, max_seq_len)
        else:
            # the paper's models learn a small random filter's shape; Zoology's code draws it standard normal
            self.h = nn.Parameter((1.0 if zoology else 0.02) * torch.randn(d_model, max_seq_len))

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

    def gate(self, x: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:  # x, conv: [..., D] -> [..., D]
        return self.residual(x, self.projection(x) * (conv + (x if self.feed_through else self.conv_bias)))

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + x if self.form == "zoology" else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        if self.filter == "short":
            # (x W + b) ⊙ (h ∗ x + b') in one pass: the projection is the op's gate, b' its bias
            return self.residual(x, short_conv(x, self.h.flip(-1), self.conv_bias, self.projection(x)))
        return self.gate(x, long_conv(x, self.filter_taps(x.shape[1])))

    def state_size(self, seq_len: int) -> int:
        reach = self.reach
        return self.d_model * (seq_len if reach is None else min(seq_len, reach - 1))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"past": torch.zeros(batch_size, self.d_model, 0, device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        past = state["past"]                                            # [B, D, T]
        if self.filter == "short":
            y_t, past = short_conv_step(x_t, past, self.h.flip(-1), self.conv_bias, self.projection(x_t))
            return self.residual(x_t, y_t), {"past": past}
        conv, window = causal_conv_step(x_t, past, self.filter_taps(past.shape[-1] + 1))
        reach = self.reach
        if reach is not None:
            # a filter of Lk taps needs only the last Lk-1 inputs to produce the next token
            window = keep_last(window, reach - 1)
        return self.gate(x_t, conv), {"past": window}


class Hyena(Mixer):
    """Hyena operator (Poli et al. 2023, "Hyena Hierarchy"), as its reference code and Zoology compute it.

        (x_0, x_1, ..., x_{N-1}, v) = ShortConv(x W_in)     N+1 projections of width D, depthwise, 3 taps
        z = v;   z ← h_n ∗ (x_{N-n} ⊙ z) + bias_n ⊙ (x_{N-n} ⊙ z)   for n = 1..N-1
        y = (x_0 ⊙ z) W_out

    Order 2 (the default, Zoology's Hyena) is one long convolution between two gates:
        y = (x_0 ⊙ (h ∗ (x_1 ⊙ v) + bias ⊙ (x_1 ⊙ v))) W_out.
    `order` counts as the code does (N+1 projections, N−1 long convolutions, v gated once before the first);
    the paper's Definition 3.1 of order N has N convolutions and convolves v itself first. h_n are implicit
    long filters (`HyenaFilter`: a sine network of positional features under an exponentially decaying
    window), bias_n the per-channel feed-through of each filter, drawn standard normal.

    State after L tokens: each long convolution keeps all its past inputs (D·L each), and the short convolution
    its last short_filter_order − 1 inputs over (N+1)·D channels:
        (order−1)·d_model·L + (order+1)·d_model·(short_filter_order − 1).
    """

    formula = "(order−1)·d_model·L"
    cache_formula = "(order−1)·d_model·L + (order+1)·d_model·(short_filter_order−1)"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048, order: int = 2,
                 filter_order: int = 64, emb_dim: int = 3, short_filter_order: int = 3,
                 learn_positions: bool = True):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        if order < 2:
            raise ValueError(f"order={order} must be >= 2 (order 2 has one long convolution)")
        if short_filter_order < 1:
            raise ValueError(f"short_filter_order={short_filter_order} must be >= 1")
        self.order, self.short_filter_order = order, short_filter_order
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width)
        # default conv1d initialization: uniform in ±1/sqrt(fan_in)
        bound = 1 / math.sqrt(short_filter_order)
        self.short_filter = nn.Parameter(torch.empty(width, short_filter_order).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        # one filter network for all N−1 convolutions; the decay rates spread over all (N−1)·D channels
        self.implicit_filter = HyenaFilter((order - 1) * d_model, max_seq_len, emb_dim=emb_dim,
                                           filter_order=filter_order, learn_positions=learn_positions)
        self.filter_bias = nn.Parameter(torch.randn(order - 1, d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def long_filters(self, seq_len: int) -> torch.Tensor:  # -> [N-1, D, L]
        return self.implicit_filter(seq_len).view(self.order - 1, self.d_model, seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        u = short_conv(self.in_proj(x), self.short_filter.flip(-1), self.short_bias)   # [B, L, (N+1)·D]
        x0, *gates, z = u.split(self.d_model, dim=-1)                        # N+1 × [B, L, D]
        h = self.long_filters(x.shape[1])                                    # [N-1, D, L]
        # the innermost convolution is gated by the last projection before v, as in the reference
        for n, gate in enumerate(reversed(gates)):
            z = long_conv(gate * z, h[n], self.filter_bias[n])
        return self.out_proj(x0 * z)

    def state_size(self, seq_len: int) -> int:
        return (self.order - 1) * self.d_model * seq_len

    def cache_size(self, seq_len: int) -> int:  # the short convolutions' last taps too
        short = min(seq_len, self.short_filter_order - 1)
        return self.state_size(seq_len) + (self.order + 1) * self.d_model * short

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        def empty(channels):
            return torch.zeros(batch_size, channels, 0, device=device, dtype=dtype)
        state = {"short": empty((self.order + 1) * self.d_model)}
        state.update({f"long{n}": empty(self.d_model) for n in range(self.order - 1)})
        return state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        u_t, short = short_conv_step(self.in_proj(x_t), state["short"], self.short_filter.flip(-1),
                                     self.short_bias)                        # [B, (N+1)·D]
        new = {"short": short}
        x0, *gates, z_t = u_t.split(self.d_model, dim=-1)
        h = self.long_filters(state["long0"].shape[-1] + 1)                  # [N-1, D, t+1]
        for n, gate in enumerate(reversed(gates)):
            w_t = gate * z_t
            conv, new[f"long{n}"] = causal_conv_step(w_t, state[f"long{n}"], h[n])
            z_t = conv + self.filter_bias[n] * w_t
        return self.out_proj(x0 * z_t), new


ARCHS: dict[str, MixerSpec] = {
    "baseconv": MixerSpec(BaseConv, "BaseConv: linear projection gated by a long causal convolution (Zoology)",
                          {"filter": "long"}),
    "baseconv_implicit": MixerSpec(BaseConv, "BaseConv with an implicit long filter (Zoology's default long "
                                   "convolution)", {"filter": "long", "implicit": True}),
    "baseconv_short": MixerSpec(BaseConv, "BaseConv with a short convolution (kernel 3), the Based conv layer",
                                {"filter": "short", "kernel_size": 3}),
    "hyena": MixerSpec(Hyena, "Hyena (order 2): one implicit long convolution between two gates"),
}
