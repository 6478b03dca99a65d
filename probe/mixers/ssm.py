"""State space models: Mamba, Mamba-2, S4D and H3.

Every mixer here is a linear recurrence h_t = Ā_t h_{t-1} + B̄_t u_t, y_t = C_t h_t (+ D u_t) wrapped in a
block. The time-varying ones (Mamba, Mamba-2) run their core op as a scan; the time-invariant ones (S4D, H3)
materialise the impulse response K_l = C Ā^l B̄ and convolve with it as a long convolution, the skip D·u fused
as its feed-through. All of them carry a state whose size does not grow with the sequence length, which is what
the synthetic tasks probe.

Design choices: Mamba's selective scan and the short convolution of Mamba and Mamba-2 (with its SiLU fused) are
ops of probe.ops (each reference beside its Triton kernel, one dispatch rule), Mamba-2's SSD runs as the op
probe.ops.linear_attention (`ssd`), and S4D's and H3's long convolutions as probe.ops.long_conv, token-major;
`s4d_kernel` is still a module-level function here in plain PyTorch with shapes in its docstring, until it moves
there too; scans accumulate in float32, or float64 when the input is float64; complex parameters and states are
stored as real tensors so that state sizes count complex numbers as two reals.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import selective_scan, selective_scan_step, short_conv, short_conv_step
from .base import Mixer, MixerSpec, State


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision inputs (bf16 autocast), float64 kept for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, i.e. x = y + log(1 - exp(-y))."""
    return y + torch.log(-torch.expm1(-y))


def _sample_dt(n: int, dt_min: float, dt_max: float, dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Step sizes log-uniform in [dt_min, dt_max] (the Mamba dt initialisation)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt.clamp(min=dt_init_floor)


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be a positive integer")


def _check_dt_range(dt_min: float, dt_max: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_min={dt_min}, dt_max={dt_max} must satisfy 0 < dt_min <= dt_max")


# ---------------------------------------------------------------------------------------------------------------
# Mamba (selective SSM)
# ---------------------------------------------------------------------------------------------------------------


class Mamba(Mixer):
    """Mamba block: Gu & Dao (2023), "Mamba: Linear-Time Sequence Modeling with Selective State Spaces".

        (x, z) = in_proj(u);   x = SiLU(conv1d(x))                        x, z: [B, L, d_inner]
        (Δ, B, C) = x_proj(x);  Δ = softplus(dt_proj(Δ))                 Δ: [B, L, d_inner], B, C: [B, L, N]
        h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,  y_t = C_t h_t + D x_t   A = −exp(A_log): [d_inner, N]
        out = out_proj(y ⊙ SiLU(z))

    State: the conv's last d_conv − 1 inputs plus the SSM state, per layer
        d_inner·(d_conv − 1) + d_inner·d_state = d_inner·(d_state + d_conv − 1),  d_inner = expand·d_model.
    """

    formula = "d_inner·d_state"  # Zoology's 2·d_model·d_state at expand 2
    cache_formula = "d_inner·(d_state + d_conv − 1)"

    def __init__(
        self,
        d_model: int,
        *,
        layer_idx: int = 0,
        max_seq_len: int = 2048,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_positive(d_state=d_state, d_conv=d_conv, expand=expand)
        if dt_rank is not None and dt_rank < 1:
            raise ValueError(f"dt_rank={dt_rank} must be a positive integer or None (= ceil(d_model/16))")
        _check_dt_range(dt_min, dt_max)
        self.d_state, self.d_conv = d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # dt_proj weight keeps the variance of its input: uniform(±dt_rank^-1/2)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        with torch.no_grad():
            # inverse of softplus: softplus(bias) starts log-uniform in [dt_min, dt_max]
            self.dt_proj.bias.copy_(_inverse_softplus(_sample_dt(self.d_inner, dt_min, dt_max)))
        # S4D-real initialization: A[n] = −(n + 1)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # [d_inner, N]
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _ssm_inputs(self, x: torch.Tensor):
        """x: [..., d_inner] -> (delta [..., d_inner], B [..., N], C [..., N])."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        x, z = self.in_proj(u).chunk(2, dim=-1)  # [B, L, d_inner] each
        # the Conv1d's [d_inner, 1, d_conv] weight in the op's tap order, SiLU fused
        x = short_conv(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")  # [B, L, d_inner]
        delta, B, C = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.to(_compute_dtype(x.dtype)))  # [d_inner, N]
        y = selective_scan(x, delta, A, B, C, self.D)  # [B, L, d_inner]
        return self.out_proj(y * F.silu(z))

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state

    def cache_size(self, seq_len: int) -> int:  # the convolution's last d_conv − 1 inputs too
        return self.d_inner * (self.d_state + self.d_conv - 1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.get_default_dtype()
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=_compute_dtype(dtype)),
        }

    def step(self, u_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        x, z = self.in_proj(u_t).chunk(2, dim=-1)  # [B, d_inner] each
        x, conv = short_conv_step(x, state["conv"], self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        delta, B, C = self._ssm_inputs(x)
        dtype = state["ssm"].dtype
        A = -torch.exp(self.A_log.to(dtype))
        y, h = selective_scan_step(state["ssm"], x.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype))
        y = (y + self.D.to(dtype) * x.to(dtype)).to(x.dtype)
        return self.out_proj(y * F.silu(z)), {"conv": conv, "ssm": h}


# ---------------------------------------------------------------------------------------------------------------
# Mamba-2 (state space duality)
# ---------------------------------------------------------------------------------------------------------------


def ssd_step(h, x_t, dt_t, A, B_t, C_t):
    """One step of the SSD recurrence (scalar decay per head).

    h: [B, H, P, N], x_t: [B, H, P], dt_t: [B, H], A: [H], B_t, C_t: [B, G, N]  ->  (y_t: [B, H, P], h)
        h_t = exp(Δ_t a) h_{t-1} + Δ_t x_t B_tᵀ,   y_t = h_t C_t
    """
    heads_per_group = h.shape[1] // B_t.shape[1]
    B_t = B_t.repeat_interleave(heads_per_group, dim=1)  # [B, H, N]
    C_t = C_t.repeat_interleave(heads_per_group, dim=1)
    decay = torch.exp(dt_t * A)[..., None, None]  # [B, H, 1, 1]
    h = decay * h + (dt_t.unsqueeze(-1) * x_t).unsqueeze(-1) * B_t.unsqueeze(2)
    return (h * C_t.unsqueeze(2)).sum(-1), h


def ssd_recurrent(x, dt, A, B, C):
    """SSD as a sequential scan, the reference for `ssd`.

    x: [B, L, H, P], dt: [B, L, H] (positive), A: [H] (negative), B, C: [B, L, G, N]  ->  y: [B, L, H, P]
    """
    dtype = _compute_dtype(x.dtype)
    x_, dt_, A_, B_, C_ = (t.to(dtype) for t in (x, dt, A, B, C))
    h = x_.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])  # [B, H, P, N]
    ys = []
    for t in range(x.shape[1]):
        y_t, h = ssd_step(h, x_[:, t], dt_[:, t], A_, B_[:, t], C_[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=1).to(x.dtype)


def ssd(x, dt, A, B, C):
    """SSD through the op `probe.ops.linear_attention` (its Triton kernel on a GPU, its exact chunked reference
    elsewhere): the state space duality of Dao & Gu (2024), read as scalar-decay linear attention.

    x: [B, L, H, P], dt: [B, L, H] (positive), A: [H] (negative), B, C: [B, L, G, N]  ->  y: [B, L, H, P]
        h_t = exp(Δ_t a) h_{t-1} + Δ_t x_t B_tᵀ,  y_t = h_t C_t    is    S_t = a_t S_{t-1} + k_t v_tᵀ,  o_t = S_tᵀ q_t
    with q = C, k = B (each group's, repeated over its heads), v = Δ·x, log a_t = Δ_t·a, and S = hᵀ: [N, P].
    """
    heads_per_group = x.shape[2] // B.shape[2]
    q, k = (t.repeat_interleave(heads_per_group, dim=2) for t in (C, B))  # [B, L, H, N]
    v = (x * dt.unsqueeze(-1)).to(x.dtype)  # [B, L, H, P], in x's dtype: the op's dots read it as they read x
    return ops.linear_attention(q, k, v, dt * A.to(dt.dtype))  # log a [B, L, H] in dt's dtype (float32+)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, ngroups: int = 1,
                   eps: float = 1e-5) -> torch.Tensor:
    """Mamba-2's output norm: RMSNorm(y ⊙ SiLU(z)) · weight, computed in float32+.

    y, z: [..., d_inner], weight: [d_inner] -> [..., d_inner]. The mean square is taken within each of ngroups
    contiguous groups of d_inner/ngroups channels (the reference's RMSNormGated with group_size =
    d_inner/ngroups, norm_before_gate=False), so a group's scale does not depend on the other groups' B, C.
    """
    dtype = _compute_dtype(y.dtype)
    g = y.to(dtype) * F.silu(z.to(dtype))
    g = g.unflatten(-1, (ngroups, -1))  # [..., G, d_inner/G]
    g = (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)).flatten(-2)
    return (g * weight.to(dtype)).to(y.dtype)


class Mamba2(Mixer):
    """Mamba-2 block: Dao & Gu (2024), "Transformers are SSMs: Generalized Models and Efficient Algorithms
    Through Structured State Space Duality".

        (z, x, B, C, Δ) = in_proj(u);  (x, B, C) = SiLU(conv1d(x, B, C))   x: [B, L, H, P], B, C: [B, L, G, N]
        Δ = softplus(Δ + dt_bias);  a = −exp(A_log): one scalar per head   Δ: [B, L, H]
        h_t = exp(Δ_t a) h_{t-1} + Δ_t x_t B_tᵀ,  y_t = h_t C_t + D x_t     h: [H, P, N] per example
        out = out_proj(RMSNorm_g(y ⊙ SiLU(z)))                            RMS within each group g

    With H = d_inner / head_dim heads of size P = head_dim, G = ngroups groups sharing B, C, N = d_state. The
    gated RMSNorm normalises each group's d_inner/G channels (the heads that share one B, C) separately, as the
    reference (state-spaces/mamba, mamba_ssm/modules/mamba2.py: RMSNormGated, group_size = d_inner/ngroups).
    State: SSM state plus the conv's last d_conv − 1 inputs of (x, B, C)
        d_inner·d_state + (d_inner + 2·ngroups·d_state)·(d_conv − 1),  d_inner = expand·d_model.
    """

    formula = "d_inner·d_state"
    cache_formula = "d_inner·d_state + (d_inner + 2·ngroups·d_state)·(d_conv − 1)"

    def __init__(
        self,
        d_model: int,
        *,
        layer_idx: int = 0,
        max_seq_len: int = 2048,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        head_dim: int = 16,
        ngroups: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_positive(d_state=d_state, d_conv=d_conv, expand=expand, head_dim=head_dim, ngroups=ngroups)
        _check_dt_range(dt_min, dt_max)
        self.d_inner = expand * d_model
        if self.d_inner % head_dim:
            raise ValueError(f"head_dim={head_dim} must divide d_inner=expand·d_model={self.d_inner}")
        self.n_heads = self.d_inner // head_dim
        if self.n_heads % ngroups:
            raise ValueError(f"ngroups={ngroups} must divide the number of heads d_inner/head_dim={self.n_heads}")
        self.d_state, self.d_conv, self.head_dim, self.ngroups = d_state, d_conv, head_dim, ngroups
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.n_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=True)
        # inverse of softplus: softplus(dt_bias) starts log-uniform in [dt_min, dt_max]
        self.dt_bias = nn.Parameter(_inverse_softplus(_sample_dt(self.n_heads, dt_min, dt_max)))
        # decay rates a = −exp(A_log) start uniform in [−16, −1], one per head
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _split(self, xBC: torch.Tensor):
        """xBC: [..., conv_dim] -> x [..., H, P], B [..., G, N], C [..., G, N]."""
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        lead = x.shape[:-1]
        return (x.reshape(*lead, self.n_heads, self.head_dim), B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        batch, length, _ = u.shape
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC = short_conv(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")  # [B, L, conv_dim]
        x, B, C = self._split(xBC)  # [B, L, H, P], [B, L, G, N] x2
        dt = F.softplus(dt + self.dt_bias)  # [B, L, H]
        A = -torch.exp(self.A_log.to(_compute_dtype(x.dtype)))  # [H]
        y = ssd(x, dt, A, B, C)  # [B, L, H, P]
        y = y + self.D.unsqueeze(-1) * x
        y = gated_rms_norm(y.reshape(batch, length, self.d_inner), z, self.norm_weight, self.ngroups)
        return self.out_proj(y)

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * self.d_state

    def cache_size(self, seq_len: int) -> int:  # the convolution's last d_conv − 1 inputs of x, B, C too
        return self.d_inner * self.d_state + self.conv_dim * (self.d_conv - 1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.get_default_dtype()
        shape = (batch_size, self.n_heads, self.head_dim, self.d_state)
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(shape, device=device, dtype=_compute_dtype(dtype)),
        }

    def step(self, u_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        z, xBC, dt = self.in_proj(u_t).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC, conv = short_conv_step(xBC, state["conv"], self.conv1d.weight[:, 0], self.conv1d.bias,
                                    activation="silu")
        x, B, C = self._split(xBC)  # [B, H, P], [B, G, N] x2
        dt = F.softplus(dt + self.dt_bias)  # [B, H]
        dtype = state["ssm"].dtype
        A = -torch.exp(self.A_log.to(dtype))
        y, h = ssd_step(state["ssm"], x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype))
        y = (y + self.D.to(dtype).unsqueeze(-1) * x.to(dtype)).to(x.dtype)
        y = gated_rms_norm(y.reshape(-1, self.d_inner), z, self.norm_weight, self.ngroups)
        return self.out_proj(y), {"conv": conv, "ssm": h}


# ---------------------------------------------------------------------------------------------------------------
# S4D (time-invariant diagonal SSM, convolutional form)
# ---------------------------------------------------------------------------------------------------------------


def s4d_kernel(dtA: torch.Tensor, CB: torch.Tensor, length: int) -> torch.Tensor:
    """Convolution kernel of a diagonal SSM by its Vandermonde product, over conjugate pairs.

    dtA: [H, M] complex (Δ·A), CB: [H, M] complex (C ⊙ B̄)  ->  K: [H, L] real,
        K_l = 2·Re( Σ_m CB_m · exp(Δ A_m)^l ),   l = 0 .. L−1
    (each of the M modes stands for itself and its conjugate, whence the factor 2).
    """
    positions = torch.arange(length, device=dtA.device, dtype=dtA.real.dtype)
    vandermonde = torch.exp(dtA.unsqueeze(-1) * positions)  # [H, M, L]
    return 2 * torch.einsum("hm,hml->hl", CB, vandermonde).real


def _to_complex(t: torch.Tensor) -> torch.Tensor:
    """[..., 2] real -> [...] complex."""
    return torch.complex(t[..., 0], t[..., 1])


def _to_real(t: torch.Tensor) -> torch.Tensor:
    """[...] complex -> [..., 2] real."""
    return torch.stack([t.real, t.imag], dim=-1)


class DiagonalSSM(nn.Module):
    """S4D's per-channel diagonal SSM with S4D-Lin initialisation and ZOH discretisation (shared by S4D and H3).

    Channels H, each with M = d_state/2 complex modes A_m (conjugate pairs implied), step size Δ, and C ⊙ B
    folded into one complex vector (B = 1 at init, C ~ CN(0, 1)): for a time-invariant diagonal SSM only the
    product C_m·B_m matters. ZOH: Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A · B.
    """

    def __init__(self, channels: int, d_state: int, dt_min: float, dt_max: float):
        super().__init__()
        modes = d_state // 2
        # learnable log Δ, log-uniform in [dt_min, dt_max]
        self.log_dt = nn.Parameter(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        # S4D-Lin initialization: A_m = −1/2 + iπm (the real part kept negative through exp)
        self.log_A_real = nn.Parameter(torch.full((channels, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(channels, 1))
        # C ~ CN(0, 1): real and imaginary parts each N(0, 1/2)
        self.C = nn.Parameter(torch.randn(channels, modes, 2) * 0.5**0.5)

    def discretize(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ΔA: [H, M] complex, C ⊙ B̄: [H, M] complex) in the complex type matching float32+ of dtype."""
        real = _compute_dtype(dtype)
        A = torch.complex(-torch.exp(self.log_A_real.to(real)), self.A_imag.to(real))  # [H, M]
        dtA = torch.exp(self.log_dt.to(real)).unsqueeze(-1) * A
        return dtA, _to_complex(self.C.to(real)) * torch.expm1(dtA) / A

    def kernel(self, length: int, dtype: torch.dtype) -> torch.Tensor:  # -> [H, L]
        return s4d_kernel(*self.discretize(dtype), length)

    def step(self, h: torch.Tensor, u_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h: [B, H, ..., M, 2] real-stored complex state, u_t: [B, H, ...] -> (y_t: [B, H, ...], h).

        With C ⊙ B̄ folded into the input, the state is C ⊙ h:
            h_t = Ā h_{t−1} + (C B̄) u_t,   y_t = 2·Re Σ_m h_t.
        """
        dtA, CB = self.discretize(u_t.dtype)
        extra = u_t.dim() - 2  # broadcast the per-channel modes over trailing channel dims (H3's heads)
        dA = torch.exp(dtA).reshape(dtA.shape[0], *(1,) * extra, -1)  # [H, 1.., M]
        CB = CB.reshape(CB.shape[0], *(1,) * extra, -1)
        h = dA * _to_complex(h) + CB * u_t.to(h.dtype).unsqueeze(-1)
        return 2 * h.real.sum(-1), _to_real(h)


def _check_d_state_even(d_state: int) -> None:
    if d_state < 2 or d_state % 2:
        raise ValueError(f"d_state={d_state} must be a positive even number (d_state/2 complex conjugate pairs)")


class S4D(Mixer):
    """S4D block: Gu, Gupta, Goel & Ré (2022), "On the Parameterization and Initialization of Diagonal State
    Space Models".

        per channel:  h_t = exp(ΔA) h_{t−1} + B̄ u_t,  y_t = 2·Re(C h_t) + D u_t    A = −1/2 + iπn (S4D-Lin)
        i.e.  y = K * u + D u  with  K_l = 2·Re(C exp(ΔA)^l B̄)  (Vandermonde, then a long convolution)
        out = GLU(W · GELU(y))

    The output linear is the paper's block: a position-wise linear to 2·d_model followed by a GLU.
    State: d_model channels × d_state/2 complex modes, each 2 reals:  d_model·d_state.
    """

    formula = "d_model·d_state"
    projects_input = False  # its skip term D·u and long convolution act on the raw input

    def __init__(
        self,
        d_model: int,
        *,
        layer_idx: int = 0,
        max_seq_len: int = 2048,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_d_state_even(d_state)
        _check_dt_range(dt_min, dt_max)
        self.d_state = d_state
        self.ssm = DiagonalSSM(d_model, d_state, dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(d_model))
        self.output_linear = nn.Linear(d_model, 2 * d_model)

    def _output(self, y: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        return F.glu(self.output_linear(F.gelu(y)), dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        K = self.ssm.kernel(u.shape[1], u.dtype)  # [D, L]
        y = ops.long_conv(u, K, self.D)  # K ∗ u + D u: [B, L, D]
        return self._output(y)

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.d_state

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = _compute_dtype(dtype or torch.get_default_dtype())
        return {"ssm": torch.zeros(batch_size, self.d_model, self.d_state // 2, 2, device=device, dtype=dtype)}

    def step(self, u_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        y, h = self.ssm.step(state["ssm"], u_t)
        return self._output(y.to(u_t.dtype) + self.D * u_t), {"ssm": h}


# ---------------------------------------------------------------------------------------------------------------
# H3 (shift SSM + diagonal SSM with multiplicative interactions)
# ---------------------------------------------------------------------------------------------------------------


class H3(Mixer):
    """H3 layer: Fu, Dao, Saab, Thomas, Rudra & Ré (2023), "Hungry Hungry Hippos: Towards Language Modeling
    with State Space Models".

        Q, K, V = u W_Q, u W_K, u W_V                                          [B, L, d_model]
        K̄ = SSM_shift(K):  K̄_t = Σ_{i<N} c_i K_{t−i} + D_shift K_t  (A = shift matrix, B = e_1, learned C)
        per head h (head_dim = d_model/n_heads):  KV_t = SSM_diag(K̄_t V_tᵀ)     [head_dim, head_dim] per step
        O_t = Q_tᵀ KV_t  (per head),   out = O W_O

    SSM_diag is S4D (S4D-Lin, ZOH) with one kernel per head shared by that head's head_dim² channels; the
    parallel form runs both SSMs as long convolutions (probe.ops.long_conv). n_heads=None means head_dim = 1
    (elementwise Q ⊙ SSM_diag(K̄ ⊙ V), the paper's default layer).
    State: the shift register (N = d_state past keys per channel) and the diagonal SSM
        (head_dim² channels per head, d_state/2 complex modes each, 2 reals per mode):
        d_model·d_state + d_model·head_dim·d_state = d_model·d_state·(1 + head_dim).
    """

    formula = "d_model·d_state·head_dim"  # the diagonal SSM's state: Zoology's d·N at head_dim 1
    cache_formula = "d_model·d_state·(1 + head_dim)"

    def __init__(
        self,
        d_model: int,
        *,
        layer_idx: int = 0,
        max_seq_len: int = 2048,
        d_state: int = 64,
        n_heads: int | None = None,
        head_dim: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_d_state_even(d_state)
        _check_dt_range(dt_min, dt_max)
        if head_dim is not None:  # Zoology's way of saying it (head_dim 2 in its Figure 2)
            if n_heads is not None:
                raise ValueError("give n_heads or head_dim, not both")
            if head_dim < 1 or d_model % head_dim:
                raise ValueError(f"head_dim={head_dim} must divide d_model={d_model}")
            n_heads = d_model // head_dim
        n_heads = d_model if n_heads is None else n_heads
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} (or be None for head_dim 1)")
        self.d_state, self.n_heads, self.head_dim = d_state, n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        # shift SSM taps c_0 .. c_{N−1}: N(0, 1/N) keeps K̄'s variance near K's
        self.shift_C = nn.Parameter(torch.randn(d_model, d_state) / d_state**0.5)
        self.shift_D = nn.Parameter(torch.randn(d_model))
        self.diag_ssm = DiagonalSSM(n_heads, d_state, dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(n_heads))
        self.out_proj = nn.Linear(d_model, d_model)

    def _shift_kernel(self, length: int) -> torch.Tensor:
        """The shift SSM's impulse response C A^l e_1 = c_l for l < min(L, N), zero after. -> [d_model, min(L, N)]
        (long_conv takes a filter shorter than L as zeros past its end, and walks only the taps it has)."""
        return self.shift_C[:, :length]

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        batch, length, _ = u.shape
        heads, p = self.n_heads, self.head_dim
        q, k, v = (proj(u) for proj in (self.q_proj, self.k_proj, self.v_proj))  # [B, L, D]
        k = ops.long_conv(k, self._shift_kernel(length), self.shift_D)  # c ∗ K + D_shift K
        kv = k.reshape(batch, length, heads, p, 1) * v.reshape(batch, length, heads, 1, p)  # [B, L, H, P, P]
        # one diagonal SSM kernel per head, shared by the head's P·P channels (key, value)
        K = self.diag_ssm.kernel(length, u.dtype).repeat_interleave(p * p, 0)  # [H·P·P, L]
        y = ops.long_conv(kv.reshape(batch, length, heads * p * p), K, self.D.repeat_interleave(p * p))
        o = (q.reshape(batch, length, heads, p, 1) * y.reshape(batch, length, heads, p, p)).sum(3)  # [B, L, H, P]
        return self.out_proj(o.reshape(batch, length, self.d_model))

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.d_state * self.head_dim

    def cache_size(self, seq_len: int) -> int:  # the shift SSM's d_model·d_state taps too
        return self.d_model * self.d_state * (1 + self.head_dim)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.get_default_dtype()
        p, modes = self.head_dim, self.d_state // 2
        return {
            # shift register, newest key first: [B, D, N]
            "shift": torch.zeros(batch_size, self.d_model, self.d_state, device=device, dtype=dtype),
            "diag": torch.zeros(batch_size, self.n_heads, p, p, modes, 2, device=device,
                                dtype=_compute_dtype(dtype)),
        }

    def step(self, u_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        batch, heads, p = u_t.shape[0], self.n_heads, self.head_dim
        q, k, v = self.q_proj(u_t), self.k_proj(u_t), self.v_proj(u_t)  # [B, D]
        shift = torch.cat([k.unsqueeze(-1), state["shift"][..., :-1]], dim=-1)  # x_t = S x_{t−1} + e_1 k_t
        k = (shift * self.shift_C).sum(-1) + self.shift_D * k
        kv = k.reshape(batch, heads, p, 1) * v.reshape(batch, heads, 1, p)  # [B, H, P, P]
        y, diag = self.diag_ssm.step(state["diag"], kv)
        y = y.to(u_t.dtype) + self.D.reshape(heads, 1, 1) * kv
        o = (q.reshape(batch, heads, p, 1) * y).sum(2)  # [B, H, P]
        return self.out_proj(o.reshape(batch, self.d_model)), {"shift": shift, "diag": diag}


ARCHS: dict[str, MixerSpec] = {
    "mamba": MixerSpec(Mamba, "Mamba selective SSM block (input-dependent Δ, B, C; diagonal A)"),
    "mamba2": MixerSpec(Mamba2, "Mamba-2 SSD block (scalar decay per head, chunked scan, gated RMSNorm)"),
    "s4d": MixerSpec(S4D, "S4D diagonal time-invariant SSM (S4D-Lin, ZOH), long convolution, GELU + GLU"),
    "h3": MixerSpec(H3, "H3: shift SSM on K, diagonal SSM over K ⊙ V, gated by Q"),
}
