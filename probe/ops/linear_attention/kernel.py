"""Chunked causal linear attention with a scalar decay as Triton kernels, forward and backward.

    S_t = a_t S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t          (per batch row b and head h)

q, k [B, L, H, Dk], v [B, L, H, Dv] (token-major, as the projections produce them), log a [B, L, H] or none,
initial state [B, H, Dk, Dv] or none: the function of `reference.linear_attention_ref`, which the dispatch rule
(probe.ops.dispatch) runs wherever this kernel does not.

Algorithm. The sequence is cut into chunks of C positions (C = 64, fewer for short sequences, never below the
16 that tl.dot needs). Inside a chunk, with b_i the cumulative log decay from the chunk start,
    o_i = e^{b_i} q_iᵀ S_{c-1} + Σ_{j≤i} e^{b_i - b_j} (q_i·k_j) v_j          (masked matmuls, tl.dot)
    S_c = e^{b_C} S_{c-1} + Σ_j e^{b_C - b_j} k_j v_jᵀ                       (the state entering the next chunk)
The mask is applied to b_i - b_j before exp, so every exponent is ≤ 0 and nothing overflows. Two kernels:
  _state_pass   one program per (b·h, Dk block, Dv block) walks the chunks in order with its [BK, BV] block of
                S in float32 registers and writes the state entering each chunk, [B·H, n_chunks, Dk, Dv] float32
                (and the final state);
  _output       one program per (b·h, chunk, Dv block): q S over Dk blocks plus the masked intra-chunk product.
Backward, with dS_c the gradient of the state leaving chunk c (dS of the final state, or 0, after the last):
    dS_{c-1} = e^{b_C} dS_c + Σ_i e^{b_i} q_i do_iᵀ                          (_state_pass again, in reverse)
    dq_i = e^{b_i} S_{c-1} do_i + Σ_{j≤i} e^{b_i-b_j} (do_i·v_j) k_j
    dk_j = e^{b_C-b_j} dS_c v_j + Σ_{i≥j} e^{b_i-b_j} (do_i·v_j) q_i          (_grad_dqk, per Dk block)
    dv_j = e^{b_C-b_j} dS_cᵀ k_j + Σ_{i≥j} e^{b_i-b_j} (q_i·k_j) do_i         (_grad_dv, per Dv block)
and for the decay, with B_t = Σ_{s≤t} log a_s over the whole sequence, o depends on B only through
q̃ = e^{B} q and k̃ = e^{-B} k (and the final state S_{L-1} = e^{B_{L-1}}(S_{-1} + Σ_j k̃_j v_jᵀ)), so
    dB_t = q_t·dq_t − k_t·dk_t  (+ ⟨dS_final, S_final⟩ at t = L-1),     d log a_t = Σ_{s≥t} dB_s,
a reverse cumulative sum done on the host over [B, L, H] float32. Each Dk block's program writes its part of
q·dq − k·dk and the host adds the parts: no atomics anywhere, so results do not depend on timing.
Recomputed, not stored: the forward keeps only its inputs; the backward reruns the forward state pass
(L/C states per row, float32) rather than holding them between the passes.

Dtypes: every tl.dot takes operands of the inputs' dtype (float32 tiles built in the kernel, such as states
and decay-weighted scores, are rounded to it first: to bf16 under autocast) and accumulates in float32;
states, decays and every sum are float32. With float32 inputs the dots are IEEE float32, never tf32. Triton
3.6 on Hopper miscompiles tl.dot of a tl.trans of a computed tile, so a transposed operand is always loaded
from memory with swapped strides (kᵀ, qᵀ, vᵀ, doᵀ, Sᵀ, dSᵀ), and a transposed product such as (q kᵀ)ᵀ is
formed as k qᵀ. A gate per key dimension (GLA's) is probe.ops.gla, which shares _state_pass (PER_KEY) and the
host helpers. Left out: a separate recurrent (decode) kernel, fusing the normaliser or output norm, and
autotuning (fixed block sizes: the interpreter cannot autotune).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold

NUM_WARPS = 4  # untuned (no GPU to hand when written)
NUM_WARPS_DQK = 8  # _grad_dqk holds four [C, C] or [C, BK] float32 accumulators
MAX_CHUNK = 64  # positions per chunk: the intra-chunk scores are C x C float32 per program
MAX_BLOCK = 64  # feature block (of Dk or Dv) per program and per loop step


def chunk_size(length: int) -> int:
    return max(16, min(MAX_CHUNK, triton.next_power_of_2(length)))


def block_size(d: int) -> int:
    return max(16, min(MAX_BLOCK, triton.next_power_of_2(d)))


# --- tiles -----------------------------------------------------------------------------------------------------

@triton.jit
def _rows(ptr, base, t0, L, row_stride, D, offs_c, offs_d):
    """x[t0 + c, d] as a [C, BD] tile of one (batch row, head), zeros outside L and D."""
    t = t0 + offs_c
    mask = (t[:, None] < L) & (offs_d[None, :] < D)
    return tl.load(ptr + base + t.to(tl.int64)[:, None] * row_stride + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _cols(ptr, base, t0, L, row_stride, D, offs_c, offs_d):
    """The same tile transposed, [BD, C], read from memory with swapped strides (never tl.trans: see above)."""
    t = t0 + offs_c
    mask = (t[None, :] < L) & (offs_d[:, None] < D)
    return tl.load(ptr + base + t.to(tl.int64)[None, :] * row_stride + offs_d[:, None], mask=mask, other=0.0)


@triton.jit
def _state_tile(ptr, base, offs_k, offs_v, Dk, Dv, TRANSPOSED: tl.constexpr):
    """A [BK, BV] block of a [Dk, Dv] float32 state (or its transpose, [BV, BK]), zeros outside."""
    if TRANSPOSED:
        mask = (offs_v[:, None] < Dv) & (offs_k[None, :] < Dk)
        return tl.load(ptr + base + offs_k[None, :] * Dv + offs_v[:, None], mask=mask, other=0.0)
    else:
        mask = (offs_k[:, None] < Dk) & (offs_v[None, :] < Dv)
        return tl.load(ptr + base + offs_k[:, None] * Dv + offs_v[None, :], mask=mask, other=0.0)


@triton.jit
def _chunk_decay(g_ptr, base, t0, L, H, offs_c, C: tl.constexpr, HAS_DECAY: tl.constexpr):
    """b [C]: the log decay summed from the chunk start through each position (0 past L), and b_C, its last."""
    if HAS_DECAY:
        t = t0 + offs_c
        b = tl.cumsum(tl.load(g_ptr + base + t * H, mask=t < L, other=0.0).to(tl.float32), 0)
    else:
        b = tl.zeros([C], dtype=tl.float32)
    return b, tl.sum(tl.where(offs_c == C - 1, b, 0.0), 0)


@triton.jit
def _causal_decay(b, offs_c, TRANSPOSED: tl.constexpr):
    """[C, C]: e^{b_i - b_j} where j ≤ i, else 0 (rows i, columns j; TRANSPOSED: rows j, columns i). The mask
    comes before exp, so the exponent is never positive."""
    if TRANSPOSED:
        keep = offs_c[None, :] >= offs_c[:, None]
        return tl.exp(tl.where(keep, b[None, :] - b[:, None], float("-inf")))
    else:
        keep = offs_c[:, None] >= offs_c[None, :]
        return tl.exp(tl.where(keep, b[:, None] - b[None, :], float("-inf")))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b, both operands in b's dtype (the inputs' dtype), accumulated in float32."""
    return tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)


@triton.jit
def _row_head(L, H, D):
    """This program's batch row and head, and the offset of its (row, head) in a [B, L, H, D] tensor."""
    bh = tl.program_id(0).to(tl.int64)
    return bh, (bh // H * L * H + bh % H) * D


# --- kernels ---------------------------------------------------------------------------------------------------

@triton.jit
def _state_pass(x_ptr, y_ptr, g_ptr, s0_ptr, states_ptr, s_end_ptr, L, H, Dk, Dv, n_chunks,
                C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr,
                HAS_S0: tl.constexpr, REVERSE: tl.constexpr, PRECISION: tl.constexpr, PER_KEY: tl.constexpr):
    """Forward (x = k, y = v): S_c = e^{b_C} S_{c-1} + Σ_j e^{b_C - b_j} k_j v_jᵀ, storing the state entering each
    chunk. REVERSE (x = q, y = do): dS_{c-1} = e^{b_C} dS_c + Σ_i e^{b_i} q_i do_iᵀ, storing the gradient of the
    state leaving each chunk. Starts from s0 (or 0) and stores the last value in s_end. PER_KEY (probe.ops.gla's
    gate per key dimension): g holds b itself, [B·H, n_chunks·C, Dk] summed from each chunk's start, and e^{b} scales
    the rows of S and of xᵀ."""
    bh, x_base = _row_head(L, H, Dk)
    _, y_base = _row_head(L, H, Dv)
    g_base = (bh // H) * L * H + bh % H
    offs_c = tl.arange(0, C)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    offs_v = tl.program_id(2) * BV + tl.arange(0, BV)
    in_state = (offs_k[:, None] < Dk) & (offs_v[None, :] < Dv)
    s_offs = offs_k[:, None] * Dv + offs_v[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + bh * Dk * Dv + s_offs, mask=in_state, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i if REVERSE else i
        t0 = c * C
        tl.store(states_ptr + (bh * n_chunks + c) * Dk * Dv + s_offs, S, mask=in_state)
        if PER_KEY:
            b_base = bh * n_chunks * C * Dk
            b = _cols(g_ptr, b_base, t0, n_chunks * C, Dk, Dk, offs_c, offs_k)  # [BK, C]
            b_last = tl.load(g_ptr + b_base + (t0 + C - 1) * Dk + offs_k, mask=offs_k < Dk, other=0.0)[:, None]
        else:
            b, b_last = _chunk_decay(g_ptr, g_base, t0, L, H, offs_c, C, HAS_DECAY)
            b = b[None, :]  # [1, C], b_last a scalar
        xT = _cols(x_ptr, x_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [BK, C]
        y = _rows(y_ptr, y_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
        weight = tl.exp(b) if REVERSE else tl.exp(b_last - b)  # q read from the chunk start, k to its end
        S = _dot(xT.to(tl.float32) * weight, y, S * tl.exp(b_last), PRECISION)
    tl.store(s_end_ptr + bh * Dk * Dv + s_offs, S, mask=in_state)


@triton.jit
def _output(q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, o_ptr, L, H, Dk, Dv, n_chunks,
            C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr,
            PRECISION: tl.constexpr):
    """o = e^{b} ⊙ (q S_{c-1}) + (q kᵀ ⊙ decay) v for one chunk and one block of Dv."""
    bh, k_base = _row_head(L, H, Dk)
    _, v_base = _row_head(L, H, Dv)
    c = tl.program_id(1)
    t0 = c * C
    offs_c = tl.arange(0, C)
    offs_v = tl.program_id(2) * BV + tl.arange(0, BV)
    state_base = (bh * n_chunks + c) * Dk * Dv
    inter = tl.zeros([C, BV], dtype=tl.float32)
    scores = tl.zeros([C, C], dtype=tl.float32)
    for k0 in range(0, Dk, BK):
        offs_k = k0 + tl.arange(0, BK)
        q = _rows(q_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [C, BK]
        kT = _cols(k_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [BK, C]
        S = _state_tile(states_ptr, state_base, offs_k, offs_v, Dk, Dv, False)  # [BK, BV]
        inter = _dot(q, S.to(q.dtype), inter, PRECISION)
        scores = _dot(q, kT, scores, PRECISION)
    b, _ = _chunk_decay(g_ptr, (bh // H) * L * H + bh % H, t0, L, H, offs_c, C, HAS_DECAY)
    v = _rows(v_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
    o = _dot(scores * _causal_decay(b, offs_c, False), v, inter * tl.exp(b)[:, None], PRECISION)
    t = t0 + offs_c
    tl.store(o_ptr + v_base + t[:, None] * (H * Dv) + offs_v[None, :], o.to(o_ptr.dtype.element_ty),
             mask=(t[:, None] < L) & (offs_v[None, :] < Dv))


@triton.jit
def _grad_dv(q_ptr, k_ptr, do_ptr, g_ptr, dstates_ptr, dv_ptr, L, H, Dk, Dv, n_chunks,
             C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr,
             PRECISION: tl.constexpr):
    """dv = e^{b_C - b} ⊙ (k dS_c) + ((q kᵀ)ᵀ ⊙ decayᵀ) do for one chunk and one block of Dv; (q kᵀ)ᵀ is k qᵀ."""
    bh, k_base = _row_head(L, H, Dk)
    _, v_base = _row_head(L, H, Dv)
    c = tl.program_id(1)
    t0 = c * C
    offs_c = tl.arange(0, C)
    offs_v = tl.program_id(2) * BV + tl.arange(0, BV)
    state_base = (bh * n_chunks + c) * Dk * Dv
    inter = tl.zeros([C, BV], dtype=tl.float32)
    scores_t = tl.zeros([C, C], dtype=tl.float32)  # [j, i] = k_j·q_i
    for k0 in range(0, Dk, BK):
        offs_k = k0 + tl.arange(0, BK)
        k = _rows(k_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [C, BK]
        qT = _cols(q_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [BK, C]
        dS = _state_tile(dstates_ptr, state_base, offs_k, offs_v, Dk, Dv, False)  # [BK, BV]
        inter = _dot(k, dS.to(k.dtype), inter, PRECISION)
        scores_t = _dot(k, qT, scores_t, PRECISION)
    b, b_last = _chunk_decay(g_ptr, (bh // H) * L * H + bh % H, t0, L, H, offs_c, C, HAS_DECAY)
    do = _rows(do_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
    dv = _dot(scores_t * _causal_decay(b, offs_c, True), do, inter * tl.exp(b_last - b)[:, None], PRECISION)
    t = t0 + offs_c
    tl.store(dv_ptr + v_base + t[:, None] * (H * Dv) + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=(t[:, None] < L) & (offs_v[None, :] < Dv))


@triton.jit
def _grad_dqk(q_ptr, k_ptr, v_ptr, do_ptr, g_ptr, states_ptr, dstates_ptr, dq_ptr, dk_ptr, db_part_ptr,
              B, L, H, Dk, Dv, n_chunks,
              C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr,
              PRECISION: tl.constexpr):
    """dq = e^{b} ⊙ (do S_{c-1}ᵀ) + (do vᵀ ⊙ decay) k and dk = e^{b_C - b} ⊙ (v dS_cᵀ) + (v doᵀ ⊙ decayᵀ) q for one
    chunk and one block of Dk, and this block's part of q·dq − k·dk (the decay's gradient, before its sum)."""
    bh, k_base = _row_head(L, H, Dk)
    _, v_base = _row_head(L, H, Dv)
    c = tl.program_id(1)
    t0 = c * C
    offs_c = tl.arange(0, C)
    offs_k = tl.program_id(2) * BK + tl.arange(0, BK)
    state_base = (bh * n_chunks + c) * Dk * Dv
    dq_inter = tl.zeros([C, BK], dtype=tl.float32)
    dk_inter = tl.zeros([C, BK], dtype=tl.float32)
    dscores = tl.zeros([C, C], dtype=tl.float32)  # [i, j] = do_i·v_j
    dscores_t = tl.zeros([C, C], dtype=tl.float32)  # [j, i] = v_j·do_i
    for v0 in range(0, Dv, BV):
        offs_v = v0 + tl.arange(0, BV)
        do = _rows(do_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
        doT = _cols(do_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [BV, C]
        v = _rows(v_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
        vT = _cols(v_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [BV, C]
        ST = _state_tile(states_ptr, state_base, offs_k, offs_v, Dk, Dv, True)  # [BV, BK]
        dST = _state_tile(dstates_ptr, state_base, offs_k, offs_v, Dk, Dv, True)  # [BV, BK]
        dq_inter = _dot(do, ST.to(do.dtype), dq_inter, PRECISION)
        dk_inter = _dot(v, dST.to(v.dtype), dk_inter, PRECISION)
        dscores = _dot(do, vT, dscores, PRECISION)
        dscores_t = _dot(v, doT, dscores_t, PRECISION)
    b, b_last = _chunk_decay(g_ptr, (bh // H) * L * H + bh % H, t0, L, H, offs_c, C, HAS_DECAY)
    q = _rows(q_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [C, BK]
    k = _rows(k_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)
    dq = _dot(dscores * _causal_decay(b, offs_c, False), k, dq_inter * tl.exp(b)[:, None], PRECISION)
    dk = _dot(dscores_t * _causal_decay(b, offs_c, True), q, dk_inter * tl.exp(b_last - b)[:, None], PRECISION)
    t = t0 + offs_c
    mask = (t[:, None] < L) & (offs_k[None, :] < Dk)
    offs = k_base + t[:, None] * (H * Dk) + offs_k[None, :]
    tl.store(dq_ptr + offs, dq.to(dq_ptr.dtype.element_ty), mask=mask)
    tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    if HAS_DECAY:  # db_part [n_k_blocks, B, L, H]
        db = tl.sum(q.to(tl.float32) * dq - k.to(tl.float32) * dk, 1)
        part = (tl.program_id(2) * B + bh // H) * L * H + bh % H
        tl.store(db_part_ptr + part + t * H, db, mask=t < L)


# --- host ------------------------------------------------------------------------------------------------------

def _sizes(q, v):
    B, L, H, Dk = q.shape
    Dv = v.shape[-1]
    C, BK, BV = chunk_size(L), block_size(Dk), block_size(Dv)
    return B, L, H, Dk, Dv, C, BK, BV, triton.cdiv(L, C)


def _precision(q) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 dots in full precision; tf32 means bf16/fp16 here


def _states(x, y, g, s0, reverse: bool = False, per_key: bool = False):
    """The state pass over x, y [B, L, H, ·] (forward: k, v; reverse: q, do) with log-decays g (None, [B, L, H], or
    per_key the summed gates b [B·H, n_chunks·C, Dk]) from s0 (or 0): [B·H, n_chunks, Dk, Dv], the state entering
    each chunk (reverse: the gradient of the state leaving it), and the last value [B, H, Dk, Dv], float32."""
    B, L, H, Dk, Dv, C, BK, BV, n_chunks = _sizes(x, y)
    f32 = dict(device=x.device, dtype=torch.float32)
    states, last = torch.empty(B * H, n_chunks, Dk, Dv, **f32), torch.empty(B, H, Dk, Dv, **f32)
    _state_pass[(B * H, triton.cdiv(Dk, BK), triton.cdiv(Dv, BV))](
        x, y, g if g is not None else x, s0 if s0 is not None else last, states, last, L, H, Dk, Dv, n_chunks,
        C=C, BK=BK, BV=BV, HAS_DECAY=g is not None, HAS_S0=s0 is not None, REVERSE=reverse,
        PRECISION=_precision(x), PER_KEY=per_key, num_warps=NUM_WARPS)
    return states, last


def _contiguous(*tensors):
    return [t.contiguous() if t is not None else None for t in tensors]


def _backward_inputs(ctx, do, dfinal):
    """The saved (q, k, v, decay, initial state) and the incoming (do, dfinal), contiguous, do in v's dtype."""
    q, k, v, decay, s0 = _contiguous(*ctx.saved_tensors)
    return q, k, v, decay, s0, do.to(v.dtype).contiguous(), _contiguous(dfinal)[0]


def _packed(function, info, in_dims, *args):
    """The vmap rule of a Function from [B, ...] inputs to (o, final state): the pack folded into B, one launch."""
    size = info.batch_size
    folded = [fold(x, bdim, size) for x, bdim in zip(args, in_dims)]
    rows = folded[0].shape[0] // size
    o, final = function.apply(*folded)
    return (o.view(size, rows, *o.shape[1:]), final.view(size, rows, *final.shape[1:])), (0, 0)


class _SavesInputs(torch.autograd.Function):
    """A Function that keeps only its inputs: its backward recomputes what it needs from them."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)


class _LinearAttention(_SavesInputs):
    """(o, final state) from q, k [B, L, H, Dk], v [B, L, H, Dv] (one dtype), log a [B, L, H] or None, initial
    state [B, H, Dk, Dv] or None. torch.func.vmap over it folds the vmap dimension into B: one launch per pack."""

    @staticmethod
    def forward(q, k, v, log_decay, initial_state):
        q, k, v, log_decay, initial_state = _contiguous(q, k, v, log_decay, initial_state)
        B, L, H, Dk, Dv, C, BK, BV, n_chunks = _sizes(q, v)
        states, final = _states(k, v, log_decay, initial_state)
        o = torch.empty_like(v)
        _output[(B * H, n_chunks, triton.cdiv(Dv, BV))](
            q, k, v, log_decay if log_decay is not None else q, states, o, L, H, Dk, Dv, n_chunks, C=C, BK=BK,
            BV=BV, HAS_DECAY=log_decay is not None, PRECISION=_precision(q), num_warps=NUM_WARPS)
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, g, s0, do, dfinal = _backward_inputs(ctx, do, dfinal)
        B, L, H, Dk, Dv, C, BK, BV, n_chunks = _sizes(q, v)
        states, final = _states(k, v, g, s0)  # recomputed: the forward kept none of them
        dstates, ds0 = _states(q, do, g, dfinal, reverse=True)
        has_decay, precision = g is not None, _precision(q)
        dv = torch.empty_like(v)
        _grad_dv[(B * H, n_chunks, triton.cdiv(Dv, BV))](
            q, k, do, g if has_decay else q, dstates, dv, L, H, Dk, Dv, n_chunks, C=C, BK=BK, BV=BV,
            HAS_DECAY=has_decay, PRECISION=precision, num_warps=NUM_WARPS)
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        n_k = triton.cdiv(Dk, BK)
        db_part = torch.empty(n_k if has_decay else 0, B, L, H, device=q.device, dtype=torch.float32)
        _grad_dqk[(B * H, n_chunks, n_k)](
            q, k, v, do, g if has_decay else q, states, dstates, dq, dk, db_part, B, L, H, Dk, Dv, n_chunks,
            C=C, BK=BK, BV=BV, HAS_DECAY=has_decay, PRECISION=precision, num_warps=NUM_WARPS_DQK)
        dg = None
        if has_decay:
            db = db_part.sum(0)  # [B, L, H]: dB_t = q_t·dq_t − k_t·dk_t
            if dfinal is not None:  # the final state is e^{B_{L-1}} times what it would be undecayed
                db[:, -1] += (dfinal * final).sum((-2, -1))
            dg = db.flip(1).cumsum(1).flip(1).to(g.dtype)  # d log a_t = Σ_{s≥t} dB_s
        return dq, dk, dv, dg, ds0.to(s0.dtype) if s0 is not None else None

    @staticmethod
    def vmap(info, in_dims, q, k, v, log_decay, initial_state):
        return _packed(_LinearAttention, info, in_dims, q, k, v, log_decay, initial_state)


def linear_attention_kernel(q, k, v, log_decay=None, initial_state=None):
    """(o [B, L, H, Dv], final state [B, H, Dk, Dv] float32) from q, k [B, L, H, Dk], v [B, L, H, Dv] of one dtype,
    log a [B, L, H] or None, initial state [B, H, Dk, Dv] or None. Runs under torch.func.vmap (one launch)."""
    return _LinearAttention.apply(q, k, v, log_decay, initial_state)
