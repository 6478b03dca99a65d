"""Linear attention: softmax(q·k) replaced by a kernel φ(q)·φ(k), so causal attention becomes a recurrence.

    S_t = a_t · S_{t-1} + φ(k_t) v_tᵀ        S_t: [Dk, Dv], a_t ∈ (0, 1] a per-head scalar decay (1: none)
    o_t = S_tᵀ φ(q_t)                        (Katharopoulos et al. 2020, "Transformers are RNNs", eq. 16-18)
    o_t ← o_t / (φ(q_t)·z_t),  z_t = a_t z_{t-1} + φ(k_t)    only where the paper normalises

The state is the [Dk, Dv] matrix per head (plus the normaliser z where used), whatever the sequence length:
this is what the recall tasks measure against attention's growing KV cache.

One shared core: `linear_attention` (the training form) runs the op `probe.ops.linear_attention` (chunked:
quadratic inside a chunk, recurrent across chunks; a Triton kernel on a GPU, its plain PyTorch reference
elsewhere); `linear_attention_recurrent` is a loop over `linear_attention_step`, which the mixers' `step` also
uses. Both accumulate in float32 or higher with autocast off. Tensors are token-major, [B, L, H, D], as the
projections produce them. The normaliser rides along as an extra value column of ones, so the state is
[Dk, Dv+1] with z in the last column, and one code path serves both.

Registered variants differ only in φ, the decay and the read-out:
  performer  FAVOR+ positive orthogonal random features, normalised          (Choromanski et al. 2021)
  based      2nd-order Taylor features of exp(q·k/√d'), normalised           (Arora et al. 2024)
  retnet     rotated q, k with fixed per-head decays, GroupNorm, swish gate   (Sun et al. 2023)
  gla        data-dependent gates per key dimension, GroupNorm, swish gate    (Yang et al. 2024)
  gla_scalar data-dependent per-head scalar decay (Mamba-2 / SSD form)        (Dao & Gu 2024)

GLA's gate per key dimension, S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, does not factor out of q·k the way a scalar
decay does, so its training form is an op of its own, `probe.ops.gla` (its Triton kernel on a GPU, its exact
chunked reference elsewhere); its oracle and step are the shared ones, which take a [.., Dk] gate as well as a
scalar.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .base import Mixer, MixerSpec, State


# ----------------------------------------------------------------------------------------------------------------
# The shared core
# ----------------------------------------------------------------------------------------------------------------

def _accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: sums over thousands of steps lose too much in bf16."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _full_precision(device: torch.device):
    """Autocast would run the matmuls below in bf16 even on float32 inputs; the core opts out."""
    return torch.autocast(device_type=device.type, enabled=False)


def _append_ones(v: torch.Tensor) -> torch.Tensor:
    """[..., Dv] -> [..., Dv+1]: the extra column of ones accumulates the normaliser z = Σ a·φ(k)."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def _divide_by_normaliser(o: torch.Tensor, eps: float) -> torch.Tensor:
    """[..., Dv+1] -> [..., Dv]: numerator φ(q)ᵀS over denominator φ(q)·z (the last column)."""
    return o[..., :-1] / (o[..., -1:] + eps)


def _log_decay_per_step(log_decay: torch.Tensor | None, B: int, L: int, H: int, like: torch.Tensor) -> torch.Tensor:
    """None (no decay), [H] (fixed per head), [B, L, H] (per step) -> [B, L, H] in like's dtype and device;
    [B, L, H, Dk] (a gate per step and key dimension) is kept as it is."""
    if log_decay is None:
        return like.new_zeros(B, L, H)
    if log_decay.dim() == 1:
        return log_decay.to(like).expand(B, L, H)
    return log_decay.to(like)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    *,
    normalize: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    eps: float = 1e-6,
):
    """Causal (decayed) linear attention through the op `probe.ops.linear_attention` (its Triton kernel on a GPU,
    its exact chunked reference elsewhere), with the normaliser where the variant has one.

    q, k: [B, L, H, Dk] (already feature-mapped), v: [B, L, H, Dv],
    log_decay: None, [H] or [B, L, H], the log of a_t (≤ 0) applied at step t before k_t v_tᵀ is added,
    initial_state: [B, H, Dk, Dv] ([B, H, Dk, Dv+1] with normalize: z in the last column).
    Returns o: [B, L, H, Dv] in v's dtype, and the final state (float32 or wider) if output_final_state.
    With normalize, v gains a column of ones: its output is φ(q_t)·z_t, which the other columns are divided by.
    """
    out = ops.linear_attention(q, k, _append_ones(v) if normalize else v, log_decay, initial_state,
                               output_final_state=output_final_state)
    o, S = out if output_final_state else (out, None)
    if normalize:
        o = _divide_by_normaliser(o.to(_accumulation_dtype(o)), eps).to(v.dtype)
    return (o, S) if output_final_state else o


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: torch.Tensor,
    log_decay_t: torch.Tensor | None = None,
    *,
    normalize: bool = False,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence S_t = a_t S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t.

    q_t, k_t: [B, H, Dk], v_t: [B, H, Dv], state: [B, H, Dk, Dv] ([B, H, Dk, Dv+1] with normalize),
    log_decay_t: None, [H] or [B, H] (a scalar per head), or [B, H, Dk] (GLA: a gate per key dimension, which
    scales the state's rows, S_t = diag(a_t) S_{t-1} + k_t v_tᵀ).
    Returns o_t: [B, H, Dv] in v_t's dtype and the new state (accumulation dtype).
    """
    out_dtype = v_t.dtype
    acc = _accumulation_dtype(q_t, k_t, v_t, state)
    with _full_precision(q_t.device):
        q_t, k_t, v_t, state = q_t.to(acc), k_t.to(acc), v_t.to(acc), state.to(acc)
        if normalize:
            v_t = _append_ones(v_t)
        if log_decay_t is not None:
            a = log_decay_t.to(acc).exp()
            state = (a[..., None] if a.dim() == 3 else a[..., None, None]) * state
        state = state + k_t[..., :, None] * v_t[..., None, :]  # [B, H, Dk, Dv]
        o_t = torch.einsum("bhk,bhkv->bhv", q_t, state)
        if normalize:
            o_t = _divide_by_normaliser(o_t, eps)
    return o_t.to(out_dtype), state


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    *,
    normalize: bool = False,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    eps: float = 1e-6,
):
    """The same map as `linear_attention`, one step at a time (the oracle; same arguments and returns).

    log_decay may also be [B, L, H, Dk], a gate per key dimension: then it is the oracle of `probe.ops.gla`.
    """
    B, L, H, Dk = q.shape
    Dv = v.shape[-1] + (1 if normalize else 0)
    S = q.new_zeros(B, H, Dk, Dv, dtype=_accumulation_dtype(q, k, v)) if initial_state is None else initial_state
    g = _log_decay_per_step(log_decay, B, L, H, S)  # [B, L, H] or [B, L, H, Dk]
    outs = []
    for t in range(L):
        o_t, S = linear_attention_step(q[:, t], k[:, t], v[:, t], S, g[:, t], normalize=normalize, eps=eps)
        outs.append(o_t)
    o = torch.stack(outs, dim=1)
    return (o, S) if output_final_state else o


# ----------------------------------------------------------------------------------------------------------------
# Feature maps
# ----------------------------------------------------------------------------------------------------------------

def orthogonal_gaussian_features(n_features: int, dim: int, generator: torch.Generator | None = None,
                                 device=None, dtype=None) -> torch.Tensor:
    """[n_features, dim] random directions, orthogonal within each block of `dim` rows (FAVOR+ "ORF").

    Each row has the length of an independent Gaussian vector (χ_dim), so every row is marginally N(0, I) and
    the estimator stays unbiased; orthogonality within a block lowers its variance (Choromanski et al. 2021, §4).
    """
    n_blocks = -(-n_features // dim)
    gaussian = torch.randn(n_blocks, dim, dim, generator=generator, device=device, dtype=dtype)
    Q, R = torch.linalg.qr(gaussian)  # [n_blocks, dim, dim]
    # Sign fix so that Q is Haar-distributed (QR alone leaves the column signs to the algorithm).
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]
    directions = Q.transpose(-1, -2).reshape(n_blocks * dim, dim)[:n_features]  # Q's columns, as rows
    lengths = torch.randn(n_features, dim, generator=generator, device=device, dtype=dtype).norm(dim=1, keepdim=True)
    return directions * lengths


def favor_plus_features(x: torch.Tensor, omega: torch.Tensor, is_query: bool) -> torch.Tensor:
    """FAVOR+ positive random features, [..., d] -> [..., m]:

        φ(x) = exp(ωᵢ·x' - |x'|²/2) / √m,   x' = x / d^{1/4},   so E[φ(q)·φ(k)] = exp(q·k / √d).

    For queries the per-token maximum exponent is subtracted: a per-query factor cancels between the numerator
    and the denominator, and it keeps exp from overflowing. Keys get no such shift: theirs would not cancel.
    """
    d, m = x.shape[-1], omega.shape[0]
    with _full_precision(x.device):
        x = x.to(_accumulation_dtype(x)) * d**-0.25
        exponent = x @ omega.to(x.dtype).T - x.square().sum(-1, keepdim=True) / 2  # [..., m]
        if is_query:
            exponent = exponent - exponent.amax(-1, keepdim=True).detach()
        return exponent.exp() / math.sqrt(m)


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Based's 2nd-order Taylor feature map, [..., d'] -> [..., 1 + d' + d'(d'+1)/2]:

        φ(x) = [1,  x / d'^{1/4},  c_ij x_i x_j / √(2d') for i ≤ j],   c_ii = 1, c_ij = √2 (i < j),
        so φ(q)·φ(k) = 1 + s + s²/2,   s = q·k / √d',

    the Taylor expansion of exp(s) to second order; 1 + s + s²/2 ≥ 1/2, so the normaliser is never zero.
    x ⊗ x is symmetric, so only its upper triangle is kept: each off-diagonal pair stands for both x_i x_j and
    x_j x_i, hence its √2, and Σ_{i≤j} c_ij² q_i q_j k_i k_j = (q·k)². This is the count of the Based paper and
    Zoology (153 features at d' = 16, not the 273 of the full outer product).
    """
    d = x.shape[-1]
    i, j = torch.triu_indices(d, d, device=x.device)  # row-major upper triangle, diagonal included
    with _full_precision(x.device):
        x = x.to(_accumulation_dtype(x))
        # built in x's dtype: a float32 √2 would cap float64 features at float32 precision
        pair_weight = torch.full(i.shape, math.sqrt(2), dtype=x.dtype, device=x.device).masked_fill(i == j, 1.0)
        pair_scale = pair_weight / math.sqrt(2 * d)  # [d'(d'+1)/2]
        pairs = x[..., i] * x[..., j] * pair_scale  # [..., d'(d'+1)/2]
        return torch.cat([torch.ones_like(x[..., :1]), x * d**-0.25, pairs], dim=-1)


def taylor_feature_count(feature_dim: int) -> int:
    """Width of `taylor_feature_map`'s output for d' = feature_dim: 1 + d' + d'(d'+1)/2."""
    return 1 + feature_dim + feature_dim * (feature_dim + 1) // 2


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_j, x_{j+d/2}) by angle_j, i.e. multiply z_j = x_j + i·x_{j+d/2} by e^{i·angle_j}.

    x: [B, L, H, d], angle: [L, 1, d/2] (position n times θ_j), or any shape that broadcasts against x's pairs.
    Then rotate(q, nθ)·rotate(k, mθ) depends on n - m only.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def retention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state_re: torch.Tensor,
    state_im: torch.Tensor,
    log_gamma: torch.Tensor,
    theta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RetNet's recurrence with the rotation folded into a complex decay (Sun et al. 2023, eq. 1-3):

        U_n = γ e^{iθ} U_{n-1} + conj(z_k,n) v_nᵀ,     o_n = Re(Σ_j z_q,n,j U_n,j),     z = x_{:d/2} + i·x_{d/2:}

    which equals rotated-q·rotated-k retention without a position counter: e^{i(n-m)θ} accrues in U.
    q_t, k_t: [B, H, Dk] unrotated, v_t: [B, H, Dv], state_re/state_im: [B, H, Dk/2, Dv] (U as two real tensors),
    log_gamma: [H], theta: [Dk/2]. Returns o_t: [B, H, Dv] in v_t's dtype and the new (state_re, state_im).
    """
    out_dtype = v_t.dtype
    acc = _accumulation_dtype(q_t, k_t, v_t, state_re)
    with _full_precision(q_t.device):
        q_t, k_t, v_t = q_t.to(acc), k_t.to(acc), v_t.to(acc)
        U_re, U_im = state_re.to(acc), state_im.to(acc)
        gamma = log_gamma.to(acc).exp()[:, None, None]  # [H, 1, 1]
        cos, sin = theta.to(acc).cos()[:, None], theta.to(acc).sin()[:, None]  # [Dk/2, 1]
        q1, q2 = q_t.chunk(2, dim=-1)  # [B, H, Dk/2] each: real and imaginary parts
        k1, k2 = k_t.chunk(2, dim=-1)
        U_re, U_im = (gamma * (cos * U_re - sin * U_im) + k1[..., None] * v_t[..., None, :],
                      gamma * (sin * U_re + cos * U_im) - k2[..., None] * v_t[..., None, :])
        o_t = torch.einsum("bhj,bhjv->bhv", q1, U_re) - torch.einsum("bhj,bhjv->bhv", q2, U_im)
    return o_t.to(out_dtype), U_re, U_im


# ----------------------------------------------------------------------------------------------------------------
# Mixers
# ----------------------------------------------------------------------------------------------------------------

def _split_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, L, H·d] -> [B, L, H, d] (a view: token-major, as the op takes it)."""
    return t.unflatten(-1, (n_heads, -1))


def _check_heads(d_model: int, n_heads: int) -> None:
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"n_heads={n_heads} must be a positive divisor of d_model={d_model}")


def _expanded_width(d_model: int, expand: float, n_heads: int, name: str) -> int:
    """expand·d_model, which must be a whole number that n_heads divides."""
    width = d_model * expand
    if width != int(width) or int(width) < n_heads or int(width) % n_heads:
        raise ValueError(f"{name}={expand} gives width {width} (d_model={d_model}), not a positive multiple of "
                         f"n_heads={n_heads}")
    return int(width)


class _LinearAttentionMixer(Mixer):
    """What every variant shares: project -> core -> read out, and the step form of the same three.

    A subclass sets d_key (per-head width after φ), d_value, n_heads and implements `_qkv` and `_readout`.
    """

    normalize: ClassVar[bool] = False

    n_heads: int
    d_key: int
    d_value: int

    def _qkv(self, x: torch.Tensor):
        """x: [B, L, D] -> q, k: [B, L, H, Dk], v: [B, L, H, Dv], log_decay: None, [H], [B, L, H] or [B, L, H, Dk]."""
        raise NotImplementedError

    def _readout(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o: [B, L, H, Dv], x: [B, L, D] -> [B, L, D]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        q, k, v, log_decay = self._qkv(x)
        o = linear_attention(q, k, v, log_decay, normalize=self.normalize)
        return self._readout(o.to(x.dtype), x)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.d_key * (self.d_value + (1 if self.normalize else 0))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        acc = torch.promote_types(dtype or torch.float32, torch.float32)
        state = {"S": torch.zeros(batch_size, self.n_heads, self.d_key, self.d_value, device=device, dtype=acc)}
        if self.normalize:
            state["z"] = torch.zeros(batch_size, self.n_heads, self.d_key, device=device, dtype=acc)
        return state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # [B, D] -> [B, D]
        q, k, v, log_decay = self._qkv(x_t[:, None])
        if log_decay is not None and log_decay.dim() >= 3:
            log_decay = log_decay[:, 0]  # [B, H] (scalar decay) or [B, H, Dk] (gate per key dimension)
        S = torch.cat([state["S"], state["z"][..., None]], -1) if self.normalize else state["S"]
        o_t, S = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], S, log_decay, normalize=self.normalize)
        new_state = {"S": S[..., :-1], "z": S[..., -1]} if self.normalize else {"S": S}
        return self._readout(o_t[:, None].to(x_t.dtype), x_t[:, None])[:, 0], new_state


class Performer(_LinearAttentionMixer):
    """Performer, FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers").

    softmax attention's exp(q·k/√d) estimated by positive orthogonal random features φ (`favor_plus_features`):
        o_t = Σ_{s≤t} φ(q_t)·φ(k_s) v_s / Σ_{s≤t} φ(q_t)·φ(k_s)
    The m = n_features directions ω are drawn once at init and kept as a buffer, so a model is a deterministic
    function saved with its checkpoint. With redraw_features, every forward pass in training mode draws a fresh
    ω from torch's RNG instead (the paper's feature redrawing; performer-pytorch's feature_redraw_interval
    of 1), so that the weights learn not to lean on one draw. Departure: the reference implementations keep the
    last draw for evaluation; here a forward pass caches nothing on the module (packed training vmaps it), so
    eval mode and `step` use the ω drawn at init. Under a pack's vmap (randomness="different") every member
    draws its own.

    State per layer: S [n_features, head_dim] and z [n_features] per head: n_heads·n_features·(head_dim+1).
    """

    formula = "n_heads·n_features·(head_dim+1)"
    normalize = True

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 n_heads: int = 4, n_features: int = 64, redraw_features: bool = False):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_heads(d_model, n_heads)
        if n_features < 1:
            raise ValueError(f"n_features={n_features} must be ≥ 1")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.d_key, self.d_value = n_features, self.head_dim
        self.redraw_features = redraw_features
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        # Drawn from the global RNG once: seeding the model seeds its features.
        self.register_buffer("omega", orthogonal_gaussian_features(n_features, self.head_dim))  # [m, head_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        if not (self.redraw_features and self.training):
            return super().forward(x)
        omega = orthogonal_gaussian_features(self.d_key, self.head_dim, device=self.omega.device,
                                             dtype=self.omega.dtype)  # [m, head_dim], this pass only
        q, k, v, _ = self._qkv(x, omega)
        o = linear_attention(q, k, v, None, normalize=True)
        return self._readout(o.to(x.dtype), x)

    def _qkv(self, x, omega: torch.Tensor | None = None):
        # `step` always reads with the buffer: a state summed under changing ω would mix different kernels
        omega = self.omega if omega is None else omega  # one ω for q and k: the estimate needs both on it
        q = favor_plus_features(_split_heads(self.q_proj(x), self.n_heads), omega, is_query=True)
        k = favor_plus_features(_split_heads(self.k_proj(x), self.n_heads), omega, is_query=False)
        return q, k, _split_heads(self.v_proj(x), self.n_heads), None

    def _readout(self, o, x):
        return self.out_proj(o.flatten(-2))


class Based(_LinearAttentionMixer):
    """Based's linear attention layer (Arora et al. 2024, "Simple linear attention language models balance the
    recall-throughput tradeoff").

    q, k projected to feature_dim = d' per head and lifted by the 2nd-order Taylor map (`taylor_feature_map`):
        o_t = Σ_{s≤t} φ(q_t)·φ(k_s) v_s / Σ_{s≤t} φ(q_t)·φ(k_s)
        φ(q)·φ(k) = 1 + s + s²/2 ≈ exp(s),   s = q·k/√d'
    The paper's full architecture also has sliding-window attention and short gated convolutions; in probe those
    are other registered layers combined in a hybrid pattern (e.g. "baseconv_short,based,sliding_window"), so
    this is the Taylor linear-attention layer alone. d' dials the state size (the paper's recall/memory knob).

    State per layer, with F = 1 + d' + d'(d'+1)/2 (153 at d' = 16) and head_dim = d_model / n_heads: S [F, head_dim]
    and the normaliser z [F] per head, n_heads·F·(head_dim+1). The paper counts the keys-values state alone,
    F·head_dim per head; z is the extra head_dim+1-th column that the normalised read-out needs.
    """

    formula = "n_heads·(1+feature_dim+feature_dim(feature_dim+1)/2)·(head_dim+1)"
    normalize = True
    # up to this length the forward pass takes the quadratic form (the op `probe.ops.taylor_attention`), beyond
    # it the chunked one: the same function, whichever is cheaper; not a model choice, so not a flag
    quadratic_max_len: ClassVar[int] = 512

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 n_heads: int = 4, feature_dim: int = 16):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_heads(d_model, n_heads)
        if feature_dim < 1:
            raise ValueError(f"feature_dim={feature_dim} must be ≥ 1")
        self.n_heads, self.feature_dim, self.head_dim = n_heads, feature_dim, d_model // n_heads
        self.d_key, self.d_value = taylor_feature_count(feature_dim), self.head_dim
        self.q_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _project(self, x):
        """x: [B, L, D] -> q, k: [B, L, H, d'] (before the feature map), v: [B, L, H, head_dim]."""
        return tuple(_split_heads(proj(x), self.n_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))

    def _qkv(self, x):
        q, k, v = self._project(x)
        return taylor_feature_map(q), taylor_feature_map(k), v, None  # q, k: [B, L, H, 1+d'+d'(d'+1)/2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.quadratic_max_len:
            return super().forward(x)
        q, k, v = self._project(x)
        return self._readout(ops.taylor_attention(q, k, v).to(x.dtype), x)

    def _readout(self, o, x):
        return self.out_proj(o.flatten(-2))


def _norm_heads(norm: nn.GroupNorm, o: torch.Tensor) -> torch.Tensor:
    """norm (one group per head) of each position's heads, o [B, L, H, Dv] -> [B, L, H·Dv], through
    probe.ops.group_norm (torch's GroupNorm of the [B·L, H·Dv] view took ~10x its bytes' time on the H200,
    BENCHMARKS.md); kept in float32 or wider, as x may be bf16."""
    B, L, H, Dv = o.shape
    acc = torch.promote_types(o.dtype, norm.weight.dtype)
    return ops.group_norm(o.reshape(B, L, H * Dv), norm.weight, norm.bias, norm.num_groups, norm.eps, out_dtype=acc)


class RetNet(_LinearAttentionMixer):
    """Multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for LLMs").

        Retention(X)_n = Σ_{m≤n} γ_h^{n-m} (Q_n e^{inθ})·(K_m e^{imθ})* V_m,    γ_h = 1 - 2^{-5-h}, h = 0..H-1
        MSR(X) = (swish(X W_G) ⊙ GroupNorm_h(Retention_h(X))) W_O
    Q, K: [d_model] split into heads of head_dim (K scaled by 1/√head_dim); V and the gate are expand_v·d_model
    wide (the paper's W_V ∈ R^{d×2d}). The e^{inθ} is an xPos-like rotation (`rotate`, θ_j = 10000^{-2j/head_dim}).
    The paper's retention-score normalisations only rescale each (position, head) row by a positive number, which
    GroupNorm undoes, so they are left out. `forward` rotates q, k by position and uses the scalar-decay core;
    `step` folds the rotation into a complex decay γe^{iθ} (`retention_step`), so no position counter is carried.

    State per layer: U [head_dim/2, expand_v·head_dim] complex per head = n_heads·head_dim·expand_v·head_dim reals.
    """

    formula = "n_heads·head_dim·expand_v·head_dim"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 n_heads: int = 4, expand_v: int = 2):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_heads(d_model, n_heads)
        if (d_model // n_heads) % 2:
            raise ValueError(f"n_heads={n_heads} must leave an even head_dim (d_model={d_model}) for the rotation")
        if expand_v < 1:
            raise ValueError(f"expand_v={expand_v} must be ≥ 1")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.d_key, self.d_value = self.head_dim, expand_v * self.head_dim
        value_dim = n_heads * self.d_value
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)
        self.group_norm = nn.GroupNorm(n_heads, value_dim)
        # Multi-scale decays γ_h = 1 - 2^{-5-h}: head 0 forgets fastest (γ = 0.969), each next head twice as slowly.
        self.register_buffer("log_gamma", torch.log1p(-(2.0 ** (-5.0 - torch.arange(n_heads)))))
        # Rotation frequencies θ_j = 10000^{-2j/head_dim}, as in rotary embeddings.
        self.register_buffer("theta", 10000.0 ** (-torch.arange(self.head_dim // 2) * 2 / self.head_dim))

    def _project(self, x):
        """x: [B, L, D] -> unrotated q, k: [B, L, H, head_dim], v: [B, L, H, expand_v·head_dim]."""
        q = _split_heads(self.q_proj(x), self.n_heads)
        k = _split_heads(self.k_proj(x), self.n_heads) * self.head_dim**-0.5
        return q, k, _split_heads(self.v_proj(x), self.n_heads)

    def _qkv(self, x):
        q, k, v = self._project(x)
        positions = torch.arange(x.shape[1], device=x.device, dtype=self.theta.dtype)
        angle = (positions[:, None] * self.theta)[:, None]  # [L, 1, head_dim/2]: the same for every head
        return rotate(q, angle), rotate(k, angle), v, self.log_gamma

    def _readout(self, o, x):
        y = _norm_heads(self.group_norm, o)
        return self.out_proj(F.silu(self.g_proj(x)) * y)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        acc = torch.promote_types(dtype or torch.float32, torch.float32)
        shape = (batch_size, self.n_heads, self.d_key // 2, self.d_value)
        return {"U_re": torch.zeros(shape, device=device, dtype=acc),
                "U_im": torch.zeros(shape, device=device, dtype=acc)}

    def step(self, x_t, state):
        q, k, v = self._project(x_t[:, None])
        o_t, U_re, U_im = retention_step(q[:, 0], k[:, 0], v[:, 0], state["U_re"], state["U_im"],
                                         self.log_gamma, self.theta)
        return self._readout(o_t[:, None].to(x_t.dtype), x_t[:, None])[:, 0], {"U_re": U_re, "U_im": U_im}


class ScalarGatedLinearAttention(_LinearAttentionMixer):
    """Gated linear attention with a per-head scalar, data-dependent decay, in the Mamba-2 / SSD form
    (Dao & Gu 2024, "Transformers are SSMs": the SSD recurrence and its gated output norm, without Mamba-2's
    short convolution; equivalently GLA of Yang et al. 2024 with its gate tied across key dimensions).
    `GatedLinearAttention` (registered as gla) is the GLA paper's own layer, with a gate per key dimension.

        a_t = exp(-softplus(W_dt x_t + dt_bias)_h · exp(A_log_h)),   S_t = a_t S_{t-1} + k_t v_tᵀ,   o_t = S_tᵀ q_t
        y_t = W_O (RMSNorm_h(o_t) ⊙ swish(W_G x_t))     (the gate only with output_gate)
    No denominator: the per-head RMSNorm keeps the output scale independent of how much the state has summed,
    as in Mamba-2 (GLA normalises per head too). q, k are d_state wide per head (q scaled by 1/√d_state),
    v is head_dim = d_model/n_heads.

    State per layer: S [d_state, head_dim] per head: n_heads·d_state·head_dim.
    """

    formula = "n_heads·d_state·head_dim"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 n_heads: int = 4, d_state: int | None = None, output_gate: bool = True,
                 dt_min: float = 0.001, dt_max: float = 0.1):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_heads(d_model, n_heads)
        d_state = d_model // n_heads if d_state is None else d_state
        if d_state < 1:
            raise ValueError(f"d_state={d_state} must be ≥ 1 (or None for d_model/n_heads)")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min}, dt_max={dt_max} must satisfy 0 < dt_min ≤ dt_max")
        self.n_heads, self.d_state, self.head_dim, self.output_gate = n_heads, d_state, d_model // n_heads, output_gate
        self.d_key, self.d_value = d_state, self.head_dim
        self.q_proj = nn.Linear(d_model, n_heads * d_state, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * d_state, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.dt_proj = nn.Linear(d_model, n_heads, bias=False)
        self.g_proj = nn.Linear(d_model, d_model, bias=False) if output_gate else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        # Mamba-2 initialization: A uniform in [1, 16], stored as its log so that A stays positive.
        self.A_log = nn.Parameter(torch.empty(n_heads).uniform_(1, 16).log())
        # dt log-uniform in [dt_min, dt_max]; dt_bias is its inverse of softplus, so softplus(dt_bias) = dt at init.
        dt = torch.exp(torch.empty(n_heads).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))

    def _qkv(self, x):
        q = _split_heads(self.q_proj(x), self.n_heads) * self.d_state**-0.5
        k = _split_heads(self.k_proj(x), self.n_heads)
        acc = _accumulation_dtype(x)  # the decay compounds over many steps: compute it in float32 or higher
        dt = F.softplus(self.dt_proj(x).to(acc) + self.dt_bias.to(acc))  # [B, L, H]
        log_decay = -(dt * self.A_log.to(dt.dtype).exp())  # [B, L, H], log a_t ≤ 0
        return q, k, _split_heads(self.v_proj(x), self.n_heads), log_decay

    def _readout(self, o, x):
        B, L, H, Dv = o.shape
        acc = torch.promote_types(o.dtype, torch.float32)
        o = o.to(acc)
        y = (o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-6)).reshape(B, L, H * Dv)  # RMSNorm per head
        y = y * self.norm_weight.to(acc)  # kept in acc: x may be bf16 (autocast)
        if self.output_gate:
            y = y * F.silu(self.g_proj(x))
        return self.out_proj(y)


class GatedLinearAttention(_LinearAttentionMixer):
    """Gated linear attention (Yang, Wang, Shen, Panda & Kim 2024, "Gated Linear Attention Transformers with
    Hardware-Efficient Training", the GLA Transformer's token mixer); reference implementation fla's
    `fla.layers.gla.GatedLinearAttention`.

        α_t = σ(x_t W_α1 W_α2 + b_α)^{1/τ} ∈ (0, 1)^{d_k}       W_α1: [d, 16], W_α2: [16, H·d_k], τ = 16
        S_t = diag(α_t) S_{t-1} + k_tᵀ v_t,   o_t = q_t S_t       per head, S_t: [d_k, d_v]
        y_t = (swish(x_t W_r + b_r) ⊙ LN_h(o_t)) W_O              (the swish gate only with output_gate)
    The gate is low-rank (gate_low_rank_dim = 16) and per key dimension: each row of S forgets at its own,
    input-dependent rate. log α_t = logsigmoid(·)/τ is computed as such, never as σ(·) raised to a power; τ = 16
    keeps α near 1 at init (σ(0)^{1/16} ≈ 0.958) so that memories last. Widths as in the paper: d/2 key and
    d value channels in all (expand_k = 0.5, expand_v = 1), split over H = 4 heads, so d_k = expand_k·d/H and
    d_v = expand_v·d/H per head. q is scaled by 1/√d_k, as fla does. LN_h is LayerNorm over each head's d_v
    channels (GroupNorm with one group per head), as in the paper; fla uses an RMSNorm per head.
    Departures: torch's default init, not fla's; no short convolution (fla's use_short_conv, off by default
    there too); no clamp on the log-gate (fla's clamp_min, unset by default). `forward` runs the op `probe.ops.gla`
    (its chunked Triton kernel on a GPU, its exact chunked reference, chunks of 16, elsewhere), `step` the shared
    recurrence with a [B, H, d_k] gate.

    State per layer: S [d_k, d_v] per head: n_heads·head_k_dim·head_v_dim (= d_model²/(2·n_heads) by default).
    """

    formula = "n_heads·head_k_dim·head_v_dim"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048,
                 n_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0, gate_low_rank_dim: int = 16,
                 gate_logit_normalizer: float = 16.0, output_gate: bool = True):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_heads(d_model, n_heads)
        key_dim = _expanded_width(d_model, expand_k, n_heads, "expand_k")
        value_dim = _expanded_width(d_model, expand_v, n_heads, "expand_v")
        if gate_low_rank_dim < 1:
            raise ValueError(f"gate_low_rank_dim={gate_low_rank_dim} must be ≥ 1")
        if gate_logit_normalizer <= 0:
            raise ValueError(f"gate_logit_normalizer={gate_logit_normalizer} must be > 0 (the paper's τ = 16)")
        self.n_heads, self.output_gate, self.gate_logit_normalizer = n_heads, output_gate, gate_logit_normalizer
        self.d_key, self.d_value = key_dim // n_heads, value_dim // n_heads
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        # α's logits through a rank-16 bottleneck, x W_α1 W_α2 + b_α: the gate costs O(16·d), not O(d·d_k)
        self.gate_down = nn.Linear(d_model, gate_low_rank_dim, bias=False)
        self.gate_up = nn.Linear(gate_low_rank_dim, key_dim, bias=True)
        self.g_proj = nn.Linear(d_model, value_dim, bias=True) if output_gate else None
        self.group_norm = nn.GroupNorm(n_heads, value_dim)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)

    def _qkv(self, x):
        q = _split_heads(self.q_proj(x), self.n_heads) * self.d_key**-0.5
        k = _split_heads(self.k_proj(x), self.n_heads)
        acc = _accumulation_dtype(x)  # the gates compound over many steps: compute them in float32 or higher
        logits = self.gate_up(self.gate_down(x)).to(acc)  # [B, L, H·d_k]
        log_gate = _split_heads(F.logsigmoid(logits) / self.gate_logit_normalizer, self.n_heads)  # [B, L, H, d_k]
        return q, k, _split_heads(self.v_proj(x), self.n_heads), log_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        q, k, v, log_gate = self._qkv(x)
        o = ops.gla(q, k, v, log_gate)
        return self._readout(o.to(x.dtype), x)

    def _readout(self, o, x):
        y = _norm_heads(self.group_norm, o)
        if self.output_gate:
            y = F.silu(self.g_proj(x)) * y
        return self.out_proj(y)


ARCHS: dict[str, MixerSpec] = {
    "performer": MixerSpec(Performer, "Performer FAVOR+: positive orthogonal random features, normalised"),
    "based": MixerSpec(Based, "Based: 2nd-order Taylor linear attention (the layer; pair with windows/convs)"),
    "retnet": MixerSpec(RetNet, "RetNet multi-scale retention: rotated q,k, fixed per-head decays, gated"),
    "gla": MixerSpec(GatedLinearAttention, "GLA: data-dependent low-rank gates per key dimension, LN, swish gate"),
    "gla_scalar": MixerSpec(ScalarGatedLinearAttention,
                            "gated linear attention with one data-dependent decay per head (the SSD form of gla)"),
}
