"""Softmax attention: MHA / GQA / MQA, sliding windows, eleven position schemes, and MLA.

Design choices: no biases by default; query heads share key/value heads in consecutive groups (GQA);
rotary schemes rotate interleaved pairs (x_{2i}, x_{2i+1}) as in RoFormer; every score is scaled by
1/sqrt(head_dim). The KV cache of the recurrent form holds keys *before* any position transform, and `step`
re-applies the transform to the whole cache: schemes whose positions change with the sequence length
(dynamic NTK) or that need two relative positions per pair (ReRoPE) require exactly this, and it lets a
sliding-window cache forget absolute positions (every scheme except `learned` and `ntk_dynamic` depends on
the distance i - j only, so the window is relabelled 0..n-1).

The core ops are module-level functions on [B, H, L, D] tensors: `attention` (SDPA where SDPA is exact),
`attention_ref` (the explicit reference), `rerope_attention_ref` (two score passes). On CUDA, heads up to 128
wide and every scheme but dynamic NTK and CoCA go instead through probe.ops.causal_attention's Triton kernel
(`Attention._fused`: q, k, v read from the fused projection, the scheme's rotation, decay, far branch, log-n
scale or ALiBi applied inside), without dropout.
"""
from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import causal_attention, causal_attention_serves, rotary, rotary_ref
from .base import Mixer, MixerSpec, State

Position = Literal["none", "learned", "rope", "alibi", "xpos", "pi", "ntk", "ntk_dynamic", "rerope",
                   "leaky_rerope", "coca"]
POSITIONS = Position.__args__
ROTARY = ("rope", "xpos", "pi", "ntk", "ntk_dynamic", "rerope", "leaky_rerope", "coca")
# schemes whose scores depend on absolute positions, so a sliding-window cache must count tokens
ABSOLUTE = ("learned", "ntk_dynamic")
# schemes probe.ops.causal_attention's kernel computes whole (one frequency set per branch; not dynamic NTK's
# per-row bases, not CoCA's query-dependent keys)
FUSED = ("none", "learned", "rope", "pi", "ntk", "alibi", "xpos", "rerope", "leaky_rerope")


# ----------------------------------------------------------------------------------------------- masks, cores
def attention_mask(lq: int, lk: int, *, causal: bool = True, window: int | None = None,
                   device=None) -> torch.Tensor:
    """[Lq, Lk] bool, True where query i may see key j. Query i sits at key position lk - lq + i (a step's
    single query is the newest key), sees keys j <= its position (causal) and, with a window, only the last
    `window` positions including itself."""
    i = torch.arange(lq, device=device)[:, None] + (lk - lq)
    j = torch.arange(lk, device=device)[None, :]
    allowed = (j <= i) if causal else torch.ones(lq, lk, dtype=torch.bool, device=device)
    if window is not None:
        allowed = allowed & (j > i - window)
    return allowed


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, H_kv, L, D] -> [B, H, L, D]: query head h reads kv head h // (H / H_kv) (GQA groups)."""
    if x.shape[1] == n_heads:
        return x  # MHA: repeat_interleave would copy
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


def softmax_attend(scores: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """scores: [B, H, Lq, Lk] (float32 or wider), v: [B, H, Lk, Dv], allowed: [Lq, Lk] -> [B, H, Lq, Dv].

    dropout_p > 0 zeroes each attention weight with that probability and scales the rest by 1/(1 - p), after
    the softmax, as SDPA's dropout_p does (the caller passes 0 outside training).
    """
    p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p, training=True)
    return (p @ v.to(p.dtype)).to(v.dtype)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                  window: int | None = None, bias: torch.Tensor | None = None,
                  scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention, explicit reference: dropout(softmax(q k^T · scale + bias + mask)) v.

    q: [B, H, Lq, Dk], k: [B, H_kv, Lk, Dk], v: [B, H_kv, Lk, Dv] with H_kv dividing H;
    bias: additive score bias broadcastable to [B, H, Lq, Lk] (ALiBi). Returns [B, H, Lq, Dv].
    Scores are accumulated in float32 or wider (bf16 inputs are upcast). dropout_p drops attention weights
    (always, when > 0: pass 0 outside training).
    """
    ct = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    scores = (q.to(ct) @ k.to(ct).transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    if bias is not None:
        scores = scores + bias.to(ct)
    return softmax_attend(scores, v, attention_mask(q.shape[2], k.shape[2], causal=causal, window=window,
                                                    device=q.device), dropout_p)


def _sdpa(q, k, v, allowed, scale):
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


class _FoldedSDPA(torch.autograd.Function):
    """torch's SDPA for packs: under torch.func.vmap the K members are folded into SDPA's batch and it runs once
    on plain tensors, with its own backward. vmap's built-in batching rule for the fused CUDA kernels gave
    gradients 10⁵ times too large in a pack of four (H200, torch 2.11, bf16; the forward was right).

    q, k, v: [B, H, L, D] (k, v already repeated to H heads); allowed: [Lq, Lk] bool or None (causal)."""

    @staticmethod
    def forward(q, k, v, allowed, scale):
        return _sdpa(q, k, v, allowed, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, allowed, scale = inputs
        ctx.save_for_backward(q, k, v, allowed)
        ctx.scale = scale

    @staticmethod
    def backward(ctx, dout):  # only outside vmap (attention() does not call this there): recompute and differentiate
        q, k, v, allowed = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in (q, k, v)]
            grads = torch.autograd.grad(_sdpa(*inputs, allowed, ctx.scale), inputs, dout)
        return (*grads, None, None)

    @staticmethod
    def vmap(info, in_dims, q, k, v, allowed, scale):
        n = info.batch_size

        def fold(t, bdim):  # [.., B, H, L, D] with the vmap dim anywhere -> [n·B, H, L, D]
            t = t.movedim(bdim, 0) if bdim is not None else t.expand(n, *t.shape)
            return t.reshape(n * t.shape[1], *t.shape[2:])
        if in_dims[3] is not None:
            raise NotImplementedError("a per-member attention mask")
        batch = q.shape[1 if in_dims[0] == 0 else 0] if in_dims[0] is not None else q.shape[0]
        out = _sdpa(fold(q, in_dims[0]), fold(k, in_dims[1]), fold(v, in_dims[2]), allowed, scale)
        return out.view(n, batch, *out.shape[1:]), 0


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              window: int | None = None, bias: torch.Tensor | None = None,
              scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Same contract as `attention_ref`, through torch's scaled_dot_product_attention (exact in float64 on
    CPU, fused kernels on CUDA). The plain causal case uses is_causal so fused kernels stay eligible.

    dropout_p > 0 takes the explicit path instead: under torch.func.vmap (packed training) SDPA's fused CUDA
    kernels with dropout gave non-finite gradients in 11 of 16 packed runs (H200, torch 2.11, bf16 autocast),
    the explicit softmax + F.dropout in none. Zoology's attention is explicit in the same way.
    """
    lq, lk = q.shape[2], k.shape[2]
    if dropout_p > 0 or (q.is_cuda and (bias is not None or lq != lk)):
        # on CUDA in packs (vmap) SDPA failed with an additive bias ("attn_bias is not correctly aligned": ALiBi)
        # and gave non-finite gradients for a query block against a longer key prefix (dynamic NTK's rows),
        # H200, torch 2.11: those go the explicit way
        return attention_ref(q, k, v, causal=causal, window=window, bias=bias, scale=scale, dropout_p=dropout_p)
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    plain_causal = causal and window is None and bias is None and lq == lk
    allowed = None if plain_causal else attention_mask(lq, lk, causal=causal, window=window, device=q.device)
    if bias is None and q.is_cuda and torch._C._functorch.is_batchedtensor(q):
        return _FoldedSDPA.apply(q, k, v, allowed, scale)  # a pack: one SDPA call over K·B, never vmap's rule
    if plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))  # [.., Lq, Lk] additive float mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def rerope_attention_ref(q: torch.Tensor, k: torch.Tensor, q_far: torch.Tensor, k_far: torch.Tensor,
                         v: torch.Tensor, *, rerope_window: int, window: int | None = None,
                         scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """ReRoPE attention (Su 2023), two score passes: pairs closer than `rerope_window` score q·k (ordinary
    RoPE, relative position i - j), farther pairs score q_far·k_far (the clipped or leaky relative position).

    q, q_far: [B, H, Lq, Dk]; k, k_far: [B, H_kv, Lk, Dk]; v: [B, H_kv, Lk, Dv] -> [B, H, Lq, Dv]. Causal.
    """
    ct = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    h, lq, lk = q.shape[1], q.shape[2], k.shape[2]
    near = q.to(ct) @ repeat_kv(k, h).to(ct).transpose(-1, -2)  # [B, H, Lq, Lk]
    far = q_far.to(ct) @ repeat_kv(k_far, h).to(ct).transpose(-1, -2)
    distance = torch.arange(lq, device=q.device)[:, None] + (lk - lq) - torch.arange(lk, device=q.device)
    scores = torch.where(distance < rerope_window, near, far) * scale
    return softmax_attend(scores, repeat_kv(v, h), attention_mask(lq, lk, window=window, device=q.device),
                          dropout_p)


# --------------------------------------------------------------------------------------- position schemes
def rope_inv_freq(head_dim: int, base: float | torch.Tensor, device=None) -> torch.Tensor:
    """θ_i = base^(-2i/d), i < d/2 (RoFormer eq. 15). float64 [d/2] (or [..., d/2] for a tensor base)."""
    exponent = torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim
    if not isinstance(base, torch.Tensor):  # a number: no host-to-device copy (a captured step allows none)
        return base ** -exponent
    return base.to(device=device, dtype=torch.float64)[..., None] ** -exponent


def ntk_base(base: float | torch.Tensor, scale: float | torch.Tensor, head_dim: int):
    """NTK-aware base b' = b · s^(d/(d-2)): the lowest frequency is interpolated by s, the highest kept."""
    return base * scale ** (head_dim / (head_dim - 2))


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs: x: [..., L, D], angles: [L, D/2] -> [..., L, D], pair i of row l by angles[l, i].
    Done in float32 or wider and cast back (bf16 loses large angles)."""
    ct = torch.promote_types(x.dtype, torch.float32)
    cos, sin = angles.cos().to(ct), angles.sin().to(ct)
    if x.dim() >= 2 and cos.shape == (x.shape[-2], x.shape[-1] // 2):
        return rotary(x, cos, sin)  # probe.ops: one kernel pass on CUDA
    return rotary_ref(x, cos, sin)  # angles that broadcast some other way


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022): 2^(-8/n), 2^(-16/n), ..., 2^(-8) for n a power of two; otherwise
    the 2^floor(log2 n) slopes followed by every other slope of the next power of two. [n_heads] float64."""
    def geometric(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    p = 2 ** int(math.floor(math.log2(n_heads)))
    return torch.tensor(geometric(p) + geometric(2 * p)[0::2][: n_heads - p], dtype=torch.float64)


def xpos_zeta(head_dim: int, device=None) -> torch.Tensor:
    """xPos per-pair decay ζ_i = (2i/d + 0.4) / 1.4 (Sun et al. 2022, γ = 0.4). float64 [d/2]."""
    return (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim + 0.4) / 1.4


def coca_features(q: torch.Tensor, t: torch.Tensor, q_angles: torch.Tensor, k_angles: torch.Tensor):
    """Collinear constrained attention (Zhu et al. 2023) as an ordinary dot product.

    CoCA makes key j, seen from query i, collinear with the query in every rotary pair: k_ij = q_i ∘ t_j with
    t_j >= 0 shared by a pair. Then (R_i q_i)·R_j(q_i ∘ t_j) = Σ_p t_jp |q_ip|² cos((i - j)θ_p), which equals
    q'_i·k'_j with q'_ip = |q_ip|²·(cos iθ_p, sin iθ_p) and k'_jp = t_jp·(cos jθ_p, sin jθ_p).

    q: [B, H, Lq, D]; t: [B, H_kv, Lk, D/2] (non-negative); angles: [Lq, D/2], [Lk, D/2] -> q', k'.
    """
    def as_pairs(r):  # [..., D/2] -> [..., D] pairs (r, 0)
        return torch.stack((r, torch.zeros_like(r)), -1).flatten(-2)
    q_sq = q[..., 0::2].square() + q[..., 1::2].square()  # [B, H, Lq, D/2]
    q_out, k_out = rotate(as_pairs(q_sq), q_angles), rotate(as_pairs(t), k_angles)
    common = torch.promote_types(q_out.dtype, k_out.dtype)  # autocast can leave q and t in different dtypes
    return q_out.to(common), k_out.to(common)


# ------------------------------------------------------------------------------------------------ Attention
class Attention(Mixer):
    """Multi-head softmax attention (Vaswani et al. 2017, "Attention Is All You Need") with grouped KV heads
    (Ainslie et al. 2023, GQA; Shazeer 2019, MQA at n_kv_heads=1), an optional sliding window, and a choice
    of position scheme.

        y_i = W_o concat_h softmax_j( s_h(i, j) / sqrt(d) + b_h(i - j) ) v_{g(h), j},   j <= i (j > i - window)

    with s_h(i, j) = q_hi·k_{g(h)j} transformed by `pos`:
      none          NoPE: no position information beyond the causal mask.
      learned       x_i + p_i with learned absolute p (max_seq_len rows) before the q/k/v projections.
      rope          RoPE (Su et al. 2021, RoFormer): rotate pair p of q_i, k_j by iθ_p, jθ_p, θ_p = base^(-2p/d).
      alibi         ALiBi (Press et al. 2022): b_h(i - j) = -m_h (i - j), slopes m_h = 2^(-8h/H).
      xpos          xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer"): RoPE with q scaled by
                    ζ_p^(i/γ) and k by ζ_p^(-j/γ), so scores decay as ζ_p^((i-j)/γ); γ = xpos_scale_base.
      pi            Position interpolation (Chen et al. 2023): RoPE at positions i/s, s = max_seq_len/train_len
                    when train_len is given (it takes precedence), else s = rope_scale.
      ntk           NTK-aware scaled RoPE (bloc97 2023): base b·s^(d/(d-2)), same s as pi.
      ntk_dynamic   Dynamic NTK (as described in Peng et al. 2023, YaRN §3.3): s = max(1, l/train_len) with l
                    the current sequence length. Causal-consistent variant: query i uses l = i + 1 (the
                    length it has seen) for itself *and* every key it reads, which is what generation with a
                    pre-RoPE cache computes; the common whole-sequence variant (l = L for all rows) would
                    make a prefix's outputs depend on how long the sequence later becomes.
                    train_len defaults to max_seq_len.
      rerope        ReRoPE (Su 2023): relative position min(i - j, w), w = rerope_window.
      leaky_rerope  Leaky ReRoPE (Su 2023): i - j below w, else w + (i - j - w)/k, k = rerope_k.
      coca          CoCA (Zhu et al. 2023): keys collinear with the query in every rotary pair; a key
                    projection t (pair-averaged, ReLU) replaces k: s(i, j) = Σ_p t_jp |q_ip|² cos((i - j)θ_p).

    dropout: probability of zeroing each attention weight softmax_j(...) (the rest scaled by 1/(1 - p)), in
    training mode only, on the explicit softmax probabilities (`attention_ref`; SDPA's own dropout_p breaks
    packed training on CUDA, see `attention`). Zoology's MHA applies 0.1 this way; the default 0.0 keeps the
    layer deterministic and on SDPA. Zoology's
    Figure-2 attention (1 head, learned positions, dropout 0.1) is arch `attention_learned` (n_heads=1 by
    default) with dropout=0.1, with two differences left: Zoology adds its learned positions once, to the token
    embeddings, where `learned` adds them to each attention layer's input; and its projections carry biases
    (bias=True here).

    CoCA follows the paper's equation 17, not the released code (codefuse-ai/Collinear-Constrained-Attention,
    model/llama and model/gpt_neox). Both compute t the same way: the key projection averaged over the two
    components of each rotary pair (the code's half-split pairs (d, d + D/2), probe's interleaved (2p, 2p + 1)),
    then ReLU, one t per pair, t̃_j = (t_jp, t_jp) pair by pair. The paper rotates the collinear key as a whole,
    R_j (q_i ∘ t̃_j), so the score is (R_i q_i)·R_j(q_i ∘ t̃_j) = Σ_p t_jp |q_ip|² cos((i - j)θ_p), a function of
    i - j. The code instead rotates t̃_j alone, multiplies it elementwise with the *unrotated* q_i and takes the
    dot product with R_i q_i (an einsum of q, R_j t̃_j, R_i q_i): s(i, j) = Σ_d q_id (R_j t̃_j)_d (R_i q_i)_d, which
    per pair (a, b) of q_i is t_jp[(a² + b²) cos iθ cos jθ + (b² - a²) cos iθ sin jθ + 2ab sin iθ sin jθ] and
    depends on i and j separately, not on i - j alone (rotation and the elementwise product do not commute).

    State (KV cache, per example and layer, after L tokens):
        2·n_kv_heads·head_dim·min(L, window)      (window=None: min(L, window) = L)
        coca caches t (head_dim/2 per pair-key) instead of k: 1.5·n_kv_heads·head_dim·min(L, window);
        learned/ntk_dynamic with a window add 1: a token counter, since a full window cache no longer
        tells the absolute position (everywhere else the position is the cache length or irrelevant).
    """

    formula = "2·n_kv_heads·head_dim·min(L, window) (coca 1.5·…)"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048, n_heads: int = 1,
                 n_kv_heads: int | None = None, head_dim: int | None = None, pos: Position = "rope",
                 rope_base: float = 10000.0, rope_scale: float = 1.0, train_len: int | None = None,
                 xpos_scale_base: float = 512.0, rerope_window: int = 16, rerope_k: float = 16.0,
                 window: int | None = None, bias: bool = False, dropout: float = 0.0,
                 log_n_scale: bool = False):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _check_heads(d_model, n_heads, head_dim)
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        head_dim = d_model // n_heads if head_dim is None else head_dim
        if pos not in POSITIONS:
            raise ValueError(f"pos={pos!r} must be one of {', '.join(POSITIONS)}")
        if pos in ROTARY and head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for pos={pos!r} (rotary pairs)")
        if pos in ("ntk", "ntk_dynamic") and head_dim < 4:
            raise ValueError(f"head_dim={head_dim} must be >= 4 for pos={pos!r} (base exponent d/(d-2))")
        if window is not None and window < 1:
            raise ValueError(f"window={window} must be >= 1 or None")
        _check_positive(rope_base=rope_base, rope_scale=rope_scale, xpos_scale_base=xpos_scale_base)
        if train_len is not None and train_len < 1:
            raise ValueError(f"train_len={train_len} must be >= 1 or None")
        if rerope_window < 1:
            raise ValueError(f"rerope_window={rerope_window} must be >= 1")
        if rerope_k < 1:
            raise ValueError(f"rerope_k={rerope_k} must be >= 1 (1 is plain RoPE)")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len={max_seq_len} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")

        self.dropout = dropout
        self.projects_input = pos != "learned"  # learned positions are added to the input first
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.pos, self.window = pos, window
        self.rope_base, self.xpos_scale_base = rope_base, xpos_scale_base
        self.rerope_window, self.rerope_k = rerope_window, rerope_k
        # ReRoPE's reference scales query i by max(1, log(i+1)/log(train_len)) past the training length
        self.log_n_scale = log_n_scale
        self.train_len = max_seq_len if train_len is None else train_len
        # interpolation factor s of pi/ntk: the extended over the trained context, or given directly
        s = max_seq_len / train_len if train_len is not None else rope_scale
        self.position_scale = 1.0 / s if pos == "pi" else 1.0
        self.base = ntk_base(rope_base, s, head_dim) if pos == "ntk" else rope_base

        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        # coca's t replaces k; same shape, so weights move between schemes
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        if pos == "learned":
            self.pos_emb = nn.Parameter(0.02 * torch.randn(max_seq_len, d_model))  # GPT-2 scale
        if pos == "alibi":
            self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    # ------------------------------------------------------------------------------------------ projections
    def _project(self, x: torch.Tensor):
        """x: [B, L, D] -> q [B, H, L, hd], k [B, H_kv, L, hd or hd/2 (coca t)], v [B, H_kv, L, hd]."""
        b, l, _ = x.shape
        # one matmul for the three projections (their weights concatenated; the parameters stay separate): x is
        # read once, and its gradient is one product, not a sum of three (in bf16 under autocast)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections]) if self.q_proj.bias is not None else None
        q, k, v = F.linear(x, weight, bias).split([p.out_features for p in projections], dim=-1)
        q = q.view(b, l, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.pos == "coca":
            k = F.relu((k[..., 0::2] + k[..., 1::2]) / 2)  # one non-negative t per rotary pair
        return q, k, v

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] -> attention output [B, L, H·hd] through probe.ops.causal_attention's kernel, which reads q,
        k and v from the one projection's output and applies the position scheme itself (`_turn_tables`). Its
        rotary pairs are half-split, (x_p, x_{p+hd/2}), where this mixer's are interleaved, (x_2p, x_2p+1): the q and
        k rows of the projection weight are taken in half-split order (evens, then odds, per head), which permutes
        q and k alike and so leaves every score as the interleaved scheme gives it. The parameters keep their
        layout."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weights = [p.weight for p in projections]
        biases = [p.bias for p in projections] if self.q_proj.bias is not None else None
        if self.pos in ROTARY:
            def half_split(t):  # [heads·hd, ...] rows -> per head: even rows, then odd rows
                return t.unflatten(0, (-1, self.head_dim // 2, 2)).transpose(1, 2).flatten(0, 2)
            weights[:2] = [half_split(w) for w in weights[:2]]
            if biases is not None:
                biases[:2] = [half_split(b_) for b_ in biases[:2]]
        qkv = F.linear(x, torch.cat(weights), torch.cat(biases) if biases is not None else None)
        return causal_attention(qkv, self.n_heads, self.n_kv_heads, window=self.window,
                                slopes=self.slopes if self.pos == "alibi" else None,
                                **self._turn_tables(x.shape[1], x.device))

    def _turn_tables(self, l: int, device) -> dict:
        """The kernel's tables [L, hd/2] for this scheme at positions 0..L-1, as `_attend` would transform q and k:
        RoPE's rotation (pi's and ntk's positions and base), xPos's per-pair decay folded in (ζ^(i/scale) on the
        queries, ζ^(-j/scale) on the keys), ReRoPE's far branch, the log-n query scale (scaling tables: sin 0)."""
        pos = torch.arange(l, device=device)
        tables: dict = {}
        if self.pos in ROTARY:
            inv_freq = rope_inv_freq(self.head_dim, self.base, device)
            angles = self._angles(pos, inv_freq)
            tables.update(cos=angles.cos(), sin=angles.sin())
            if self.pos == "xpos":
                zeta = xpos_zeta(self.head_dim, device)
                up = zeta ** (pos.to(torch.float64)[:, None] / self.xpos_scale_base)  # [L, hd/2]
                down = zeta ** (-pos.to(torch.float64)[:, None] / self.xpos_scale_base)
                tables = dict(cos=tables["cos"] * up, sin=tables["sin"] * up, k_cos=tables["cos"] * down,
                              k_sin=tables["sin"] * down)
            if self.pos in ("rerope", "leaky_rerope"):
                w, kk = self.rerope_window, (math.inf if self.pos == "rerope" else self.rerope_k)
                q_far = self._angles(pos / kk + w * (1 - 1 / kk), inv_freq)
                k_far = self._angles(pos / kk, inv_freq)
                tables["far"] = (w, q_far.cos(), q_far.sin(), k_far.cos(), k_far.sin())
        if self.log_n_scale and self.train_len > 1:
            scale = torch.clamp(torch.log(pos.to(torch.float64) + 1) / math.log(self.train_len), min=1.0)[:, None]
            if "cos" not in tables:  # no rotation: scaling tables, the keys unscaled
                ones = torch.ones(l, self.head_dim // 2, dtype=torch.float64, device=device)
                tables = dict(cos=ones, sin=torch.zeros_like(ones), k_cos=ones, k_sin=torch.zeros_like(ones))
            tables.setdefault("k_cos", tables["cos"])
            tables.setdefault("k_sin", tables["sin"])
            tables["cos"], tables["sin"] = tables["cos"] * scale, tables["sin"] * scale
            if "far" in tables:
                w, qc, qs, kc, ks = tables["far"]
                tables["far"] = (w, qc * scale, qs * scale, kc, ks)
        return tables

    # --------------------------------------------------------------------------------- position schemes
    def _angles(self, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:  # [L], [d/2] -> [L, d/2]
        return (pos.to(torch.float64) * self.position_scale)[:, None] * inv_freq

    def _dropout_p(self) -> float:
        """The attention-weight dropout probability for this call: `dropout` in training mode, else 0."""
        return self.dropout if self.training else 0.0

    def _rotary(self, q, k, v, q_pos, k_pos, inv_freq):
        """RoPE-family attention with one frequency set: rope, pi, ntk, xpos, coca, rerope, leaky_rerope."""
        qa, ka = self._angles(q_pos, inv_freq), self._angles(k_pos, inv_freq)
        p = self._dropout_p()
        if self.pos == "coca":
            q, k = coca_features(q, k, qa, ka)
            return attention(q, k, v, window=self.window, scale=self.head_dim ** -0.5, dropout_p=p)
        if self.pos in ("rerope", "leaky_rerope"):
            w, kk = self.rerope_window, (math.inf if self.pos == "rerope" else self.rerope_k)
            # far pairs: relative position w + (i - j - w)/k = (i/k + w(1 - 1/k)) - j/k; rerope is k = ∞
            q_far = rotate(q, self._angles(q_pos / kk + w * (1 - 1 / kk), inv_freq))
            k_far = rotate(k, self._angles(k_pos / kk, inv_freq))
            return rerope_attention_ref(rotate(q, qa), rotate(k, ka), q_far, k_far, v, rerope_window=w,
                                        window=self.window, dropout_p=p)
        q, k = rotate(q, qa), rotate(k, ka)
        if self.pos == "xpos":
            zeta = xpos_zeta(self.head_dim, q.device)
            up = zeta ** (q_pos.to(torch.float64)[:, None] / self.xpos_scale_base)  # [Lq, d/2]
            down = zeta ** (-k_pos.to(torch.float64)[:, None] / self.xpos_scale_base)
            q = q * up.repeat_interleave(2, -1).to(q.dtype)
            k = k * down.repeat_interleave(2, -1).to(k.dtype)
        return attention(q, k, v, window=self.window, dropout_p=p)

    def _ntk_dynamic(self, q, k, v, q_pos, k_pos, n_shared: int):
        """Dynamic NTK: query row r uses base b·s^(d/(d-2)), s = max(1, (q_pos[r] + 1)/train_len), for itself
        and its keys. The first n_shared rows (known to lie within train_len) share the trained base; later
        rows each get their own frequencies, one attention call per row."""
        lq, lk = q.shape[2], k.shape[2]
        outs = []
        if n_shared > 0:
            end = lk - lq + n_shared
            outs.append(self._rotary(q[:, :, :n_shared], k[:, :, :end], v[:, :, :end], q_pos[:n_shared],
                                     k_pos[:end], rope_inv_freq(self.head_dim, self.rope_base, q.device)))
        for r in range(n_shared, lq):
            end = lk - lq + r + 1
            s = torch.clamp((q_pos[r].to(torch.float64) + 1) / self.train_len, min=1.0)
            inv_freq = rope_inv_freq(self.head_dim, ntk_base(self.rope_base, s, self.head_dim), q.device)
            outs.append(self._rotary(q[:, :, r:r + 1], k[:, :, :end], v[:, :, :end], q_pos[r:r + 1],
                                     k_pos[:end], inv_freq))
        return torch.cat(outs, 2)

    def _attend(self, q, k, v, q_pos, k_pos, n_shared: int = 0):
        """q: [B, H, Lq, hd], k/v: [B, H_kv, Lk, *] (pre-position), q_pos: [Lq], k_pos: [Lk] -> [B, H, Lq, hd]."""
        if self.log_n_scale and self.train_len > 1:
            scale = torch.clamp(torch.log(q_pos.to(torch.float64) + 1) / math.log(self.train_len), min=1.0)
            q = q * scale[:, None].to(q.dtype)  # [Lq, 1]: 1 within the training length
        if self.pos in ("none", "learned"):
            return attention(q, k, v, window=self.window, dropout_p=self._dropout_p())
        if self.pos == "alibi":
            distance = (q_pos[:, None] - k_pos[None, :]).to(torch.float64)  # [Lq, Lk]
            return attention(q, k, v, window=self.window, bias=-self.slopes[:, None, None] * distance,
                             dropout_p=self._dropout_p())
        if self.pos == "ntk_dynamic":
            return self._ntk_dynamic(q, k, v, q_pos, k_pos, n_shared)
        return self._rotary(q, k, v, q_pos, k_pos, rope_inv_freq(self.head_dim, self.base, q.device))

    # ------------------------------------------------------------------------------------- parallel form
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        b, l, _ = x.shape
        if self.pos == "learned":
            if l > self.max_seq_len:
                raise ValueError(f"sequence length {l} exceeds max_seq_len={self.max_seq_len} (pos='learned')")
            x = x + self.pos_emb[:l].to(x.dtype)
        if self.pos in FUSED and self._dropout_p() == 0 and causal_attention_serves(x, self.head_dim):
            return self.o_proj(self._fused(x))
        q, k, v = self._project(x)
        positions = torch.arange(l, device=x.device)
        o = self._attend(q, k, v, positions, positions, n_shared=min(l, self.train_len))
        return self.o_proj(o.transpose(1, 2).reshape(b, l, -1))

    # ------------------------------------------------------------------------------------ recurrent form
    def _counts_tokens(self) -> bool:
        return self.window is not None and self.pos in ABSOLUTE

    def state_size(self, seq_len: int) -> int:
        cached = seq_len if self.window is None else min(seq_len, self.window)
        k_width = self.head_dim // 2 if self.pos == "coca" else self.head_dim
        return self.n_kv_heads * (k_width + self.head_dim) * cached + int(self._counts_tokens())

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        k_width = self.head_dim // 2 if self.pos == "coca" else self.head_dim
        state = {"k": torch.zeros(batch_size, self.n_kv_heads, 0, k_width, device=device, dtype=dtype),
                 "v": torch.zeros(batch_size, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)}
        if self._counts_tokens():
            state["position"] = torch.zeros(batch_size, dtype=torch.long, device=device)
        return state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # x_t: [B, D]
        n = state["k"].shape[2] + 1  # cache length after this token
        n = n if self.window is None else min(n, self.window)
        # position t of this token: the counter where kept (all examples step together), else n - 1, which is
        # absolute for a full cache and a relabelling of the window for schemes that see only i - j
        t = state["position"][0] if "position" in state else torch.tensor(n - 1, device=x_t.device)
        x = x_t[:, None]
        if self.pos == "learned":
            x = x + self.pos_emb[t].to(x.dtype)
        q, k, v = self._project(x)
        keep = slice(-self.window, None) if self.window is not None else slice(None)
        k_cache = torch.cat([state["k"], k], 2)[:, :, keep]  # [B, H_kv, n, *]
        v_cache = torch.cat([state["v"], v], 2)[:, :, keep]
        k_pos = t - (n - 1) + torch.arange(n, device=x_t.device)
        o = self._attend(q, k_cache, v_cache, t[None], k_pos)  # [B, H, 1, hd]
        new_state = {"k": k_cache, "v": v_cache}
        if "position" in state:
            new_state["position"] = state["position"] + 1
        return self.o_proj(o.reshape(x_t.shape[0], -1)), new_state


# ---------------------------------------------------------------------------------------------------- MLA
class MLA(Mixer):
    """Multi-head latent attention (DeepSeek-AI 2024, "DeepSeek-V2: A Strong, Economical, and Efficient
    Mixture-of-Experts Language Model", §2.1, eqs. 9-19).

        c^KV_t = RMSNorm(W^DKV h_t)                    latent, kv_lora_rank = d_c
        k^C_t,i = W^UK_i c^KV_t,   v^C_t,i = W^UV_i c^KV_t
        k^R_t = RoPE(W^KR h_t)                         one decoupled rotary key shared by all heads
        q_t = W^Q h_t  or, with q_lora_rank = d'_c,  W^UQ RMSNorm(W^DQ h_t);  q_t,i = [q^C_t,i; RoPE(q^R_t,i)]
        o_t,i = Σ_j softmax_j( q_t,i · [k^C_j,i; k^R_j] / sqrt(d_h + d^R_h) ) v^C_j,i,    u_t = W^O [o_t,1; ...]

    The recurrent form caches only c^KV and k^R and absorbs W^UK into the query and W^UV into the output
    (q^C·W^UK c = (W^UK^T q^C)·c), so it never rebuilds per-head keys.
    State: (kv_lora_rank + qk_rope_head_dim)·L. Defaults follow the paper's ratios: d_c = 4·d_h,
    d^R_h = d_h/2, query without compression (as in DeepSeek-V2-Lite).
    """

    formula = "(kv_lora_rank + qk_rope_head_dim)·L"

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048, n_heads: int = 4,
                 head_dim: int | None = None, kv_lora_rank: int | None = None, q_lora_rank: int | None = None,
                 qk_rope_head_dim: int | None = None, rope_base: float = 10000.0):
        super().__init__(d_model, layer_idx=layer_idx, max_seq_len=max_seq_len)
        _check_heads(d_model, n_heads, head_dim)
        head_dim = d_model // n_heads if head_dim is None else head_dim
        kv_lora_rank = 4 * head_dim if kv_lora_rank is None else kv_lora_rank
        qk_rope_head_dim = head_dim // 2 if qk_rope_head_dim is None else qk_rope_head_dim
        if kv_lora_rank < 1:
            raise ValueError(f"kv_lora_rank={kv_lora_rank} must be >= 1")
        if q_lora_rank is not None and q_lora_rank < 1:
            raise ValueError(f"q_lora_rank={q_lora_rank} must be >= 1 or None")
        if qk_rope_head_dim < 2 or qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim={qk_rope_head_dim} must be even and >= 2")
        _check_positive(rope_base=rope_base)
        self.n_heads, self.head_dim, self.rope_base = n_heads, head_dim, rope_base
        self.kv_lora_rank, self.q_lora_rank, self.qk_rope_head_dim = kv_lora_rank, q_lora_rank, qk_rope_head_dim
        self.scale = (head_dim + qk_rope_head_dim) ** -0.5

        q_out = n_heads * (head_dim + qk_rope_head_dim)
        if q_lora_rank is None:
            self.q_proj = nn.Linear(d_model, q_out, bias=False)
        else:
            self.q_down = nn.Linear(d_model, q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(q_lora_rank)  # RMSNorm after each compressed latent, as DeepSeek-V2 is trained
            self.q_up = nn.Linear(q_lora_rank, q_out, bias=False)
        self.kv_down = nn.Linear(d_model, kv_lora_rank, bias=False)
        self.kv_norm = nn.RMSNorm(kv_lora_rank)
        self.k_up = nn.Linear(kv_lora_rank, n_heads * head_dim, bias=False)
        self.v_up = nn.Linear(kv_lora_rank, n_heads * head_dim, bias=False)
        self.k_rope_proj = nn.Linear(d_model, qk_rope_head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def _queries(self, x: torch.Tensor, positions: torch.Tensor):
        """x: [B, L, D] -> q^C [B, H, L, d_h], rotated q^R [B, H, L, d^R_h]."""
        b, l, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_up(self.q_norm(self.q_down(x)))
        q = q.view(b, l, self.n_heads, self.head_dim + self.qk_rope_head_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.head_dim, self.qk_rope_head_dim], -1)
        return q_nope, rotate(q_rope, self._angles(positions))

    def _latents(self, x: torch.Tensor, positions: torch.Tensor):
        """x: [B, L, D] -> c^KV [B, L, d_c], rotated k^R [B, L, d^R_h] (exactly what the cache holds)."""
        return self.kv_norm(self.kv_down(x)), rotate(self.k_rope_proj(x), self._angles(positions))

    def _angles(self, positions: torch.Tensor) -> torch.Tensor:
        inv_freq = rope_inv_freq(self.qk_rope_head_dim, self.rope_base, positions.device)
        return positions.to(torch.float64)[:, None] * inv_freq  # [L, d^R_h/2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        b, l, _ = x.shape
        positions = torch.arange(l, device=x.device)
        q_nope, q_rope = self._queries(x, positions)
        c_kv, k_rope = self._latents(x, positions)
        k_nope = self.k_up(c_kv).view(b, l, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d_h]
        v = self.v_up(c_kv).view(b, l, self.n_heads, self.head_dim).transpose(1, 2)
        k = torch.cat([k_nope, k_rope[:, None].expand(b, self.n_heads, l, -1)], -1)
        o = attention(torch.cat([q_nope, q_rope], -1), k, v, scale=self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(b, l, -1))

    def state_size(self, seq_len: int) -> int:
        return (self.kv_lora_rank + self.qk_rope_head_dim) * seq_len

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"c_kv": torch.zeros(batch_size, 0, self.kv_lora_rank, device=device, dtype=dtype),
                "k_rope": torch.zeros(batch_size, 0, self.qk_rope_head_dim, device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # x_t: [B, D]
        position = torch.arange(state["c_kv"].shape[1], state["c_kv"].shape[1] + 1, device=x_t.device)
        q_nope, q_rope = self._queries(x_t[:, None], position)  # [B, H, 1, *]
        c_new, k_rope_new = self._latents(x_t[:, None], position)
        c_kv = torch.cat([state["c_kv"], c_new], 1)  # [B, n, d_c]
        k_rope = torch.cat([state["k_rope"], k_rope_new], 1)  # [B, n, d^R_h]
        w_uk = self.k_up.weight.view(self.n_heads, self.head_dim, self.kv_lora_rank)
        w_uv = self.v_up.weight.view(self.n_heads, self.head_dim, self.kv_lora_rank)
        o = mla_decode_ref(q_nope[:, :, 0], q_rope[:, :, 0], c_kv, k_rope, w_uk, w_uv, scale=self.scale)
        return self.o_proj(o.reshape(x_t.shape[0], -1)), {"c_kv": c_kv, "k_rope": k_rope}


def mla_decode_ref(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, *, scale: float) -> torch.Tensor:
    """One MLA decoding step on the latent cache, with W^UK and W^UV absorbed.

    q_nope: [B, H, d_h], q_rope: [B, H, d^R_h], c_kv: [B, n, d_c], k_rope: [B, n, d^R_h],
    w_uk, w_uv: [H, d_h, d_c] -> o: [B, H, d_h].
    """
    ct = torch.promote_types(q_nope.dtype, torch.float32)
    q_latent = torch.einsum("bhd,hdc->bhc", q_nope.to(ct), w_uk.to(ct))  # W^UK^T q^C: [B, H, d_c]
    scores = (torch.einsum("bhc,bnc->bhn", q_latent, c_kv.to(ct))
              + torch.einsum("bhr,bnr->bhn", q_rope.to(ct), k_rope.to(ct))) * scale  # [B, H, n]
    o_latent = torch.einsum("bhn,bnc->bhc", scores.softmax(-1), c_kv.to(ct))  # [B, H, d_c]
    return torch.einsum("bhc,hdc->bhd", o_latent, w_uv.to(ct)).to(q_nope.dtype)


# ------------------------------------------------------------------------------------------------- checks
def _check_heads(d_model: int, n_heads: int, head_dim: int | None):
    if n_heads < 1:
        raise ValueError(f"n_heads={n_heads} must be >= 1")
    if head_dim is None and d_model % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide d_model={d_model} (or set head_dim)")
    if head_dim is not None and head_dim < 1:
        raise ValueError(f"head_dim={head_dim} must be >= 1 or None")


def _check_positive(**values: float):
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}={value} must be > 0")


ARCHS: dict[str, MixerSpec] = {
    "attention": MixerSpec(Attention, "multi-head softmax attention with RoPE"),
    "gqa": MixerSpec(Attention, "grouped-query attention, 4 query heads over 2 KV heads, RoPE",
                     dict(n_heads=4, n_kv_heads=2)),
    "mqa": MixerSpec(Attention, "multi-query attention, 4 query heads over 1 KV head, RoPE",
                     dict(n_heads=4, n_kv_heads=1)),
    "mla": MixerSpec(MLA, "multi-head latent attention (DeepSeek-V2): low-rank latent KV cache + decoupled RoPE"),
    "sliding_window": MixerSpec(Attention, "RoPE attention over the last 64 positions", dict(window=64)),
    "attention_nope": MixerSpec(Attention, "attention without position encoding (NoPE)", dict(pos="none")),
    "attention_learned": MixerSpec(Attention, "attention with learned absolute positions", dict(pos="learned")),
    "attention_alibi": MixerSpec(Attention, "attention with ALiBi linear distance biases", dict(pos="alibi")),
    "attention_xpos": MixerSpec(Attention, "attention with xPos (decaying RoPE)", dict(pos="xpos")),
    "attention_pi": MixerSpec(Attention, "RoPE with positions interpolated 4x (rope_scale=4)",
                              dict(pos="pi", rope_scale=4.0)),
    "attention_ntk": MixerSpec(Attention, "RoPE with NTK-aware base scaled for 4x context (rope_scale=4)",
                               dict(pos="ntk", rope_scale=4.0)),
    "attention_ntk_dynamic": MixerSpec(Attention, "RoPE with dynamic NTK scaling past train_len",
                                       dict(pos="ntk_dynamic")),
    "attention_rerope": MixerSpec(Attention, "ReRoPE: relative positions clipped at rerope_window; log-n query "
                                  "scale past train_len", dict(pos="rerope", log_n_scale=True)),
    "attention_leaky_rerope": MixerSpec(Attention, "leaky ReRoPE: positions past rerope_window shrunk by rerope_k; "
                                        "log-n query scale past train_len", dict(pos="leaky_rerope", log_n_scale=True)),
    "attention_coca": MixerSpec(Attention, "CoCA: collinear constrained attention with RoPE", dict(pos="coca")),
}


# ------------------------------------------------------------------- training-free extrapolation at evaluation
#: schemes a model trained with plain RoPE can be evaluated under, with the same weights (Su's and the NTK
#: authors' protocol: the scheme is applied at inference only)
EVAL_SCHEMES = ("rope", "pi", "ntk", "ntk_dynamic", "rerope", "leaky_rerope")


@contextlib.contextmanager
def evaluated_with(model: nn.Module, scheme: str, *, seq_len: int, train_len: int):
    """Within the block, every RoPE attention layer of `model` reads positions as `scheme` would at sequence
    length `seq_len` for a model trained at `train_len`; the weights are untouched and everything is restored.

    pi: positions × train_len/seq_len (past the training length); ntk: base b·s^(d/(d−2)), s = seq_len/train_len;
    ntk_dynamic: that s per query position; rerope / leaky_rerope: the two-branch score, with the reference's
    log-n query scale. Layers trained with another scheme are left alone.
    """
    if scheme not in EVAL_SCHEMES:
        raise ValueError(f"evaluation scheme {scheme!r} must be one of {', '.join(EVAL_SCHEMES)}")
    layers = [m for m in model.modules() if isinstance(m, Attention) and m.pos == "rope"]
    saved = [(m, {k: getattr(m, k) for k in ("pos", "position_scale", "base", "train_len", "log_n_scale")})
             for m in layers]
    s = max(1.0, seq_len / train_len)
    try:
        for m in layers:
            m.train_len = train_len
            if scheme == "pi":
                m.position_scale = 1.0 / s
            elif scheme == "ntk":
                m.base = ntk_base(m.rope_base, s, m.head_dim)
            elif scheme != "rope":
                m.pos, m.log_n_scale = scheme, scheme in ("rerope", "leaky_rerope")
        yield
    finally:
        for m, attrs in saved:
            for k, v in attrs.items():
                setattr(m, k, v)
