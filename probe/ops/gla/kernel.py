"""Chunked gated linear attention (a gate per key dimension) as Triton kernels, forward and backward.

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t          (per batch row b and head h)

q, k [B, L, H, Dk], v [B, L, H, Dv] (token-major, as the projections produce them), log α [B, L, H, Dk], initial
state [B, H, Dk, Dv] or none: the function of `reference.gla_ref`, which the dispatch rule (probe.ops.dispatch)
runs wherever this kernel does not.

Algorithm (the two-level chunking of Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training", §4). The sequence is cut into chunks of C = 64
positions (16 or 32 for short sequences) and each chunk into sub-chunks of BC = 16. With b_i the cumulative
log-gate from the chunk start (per key dimension; computed on the host, [B·H, n·C, Dk] float32, padded steps
keeping the last value), position i of a chunk reads
    o_i = (q_i ⊙ e^{b_i})ᵀ S_{c-1} + Σ_{j≤i} A_ij v_j,     A_ij = Σ_d q_id k_jd e^{b_id - b_jd},
    S_c = diag(e^{b_C}) S_{c-1} + Σ_j (k_j ⊙ e^{b_C - b_j}) v_jᵀ.
The gate does not factor out of A the way a scalar decay does: e^{b_i - b_j} = e^{b_i - r} e^{r - b_j} holds for
any r, but only with r between the two (b_j ≥ r ≥ b_i, b falling along the chunk) are both factors ≤ 1. So the
rows of a sub-chunk I take the columns of the earlier sub-chunks as one matmul about r = b at I's first row,
(q_I ⊙ e^{b_I - r}) (k ⊙ e^{r - b})ᵀ with the keys from I on zeroed by the exponent's mask, and the diagonal
[BC, BC] block as a pairwise sum over d, [BC, BC, Dk] elementwise with the mask applied before exp. No exponent is
ever positive, so log-gates of any size (-20 a step, -1000 a chunk) never overflow. Kernels:
  _state_pass     probe.ops.linear_attention's (PER_KEY): one program per (b·h, Dk block, Dv block) walks the
                  chunks with its block of S in float32 registers and writes the state entering each chunk,
                  [B·H, n, Dk, Dv] float32 (and the final state);
  _intra_scores   one program per (b·h, sub-chunk): its rows of A, [B·H, n·C, C] float32, zeros after the diagonal;
  _read_states    one program per (b·h, chunk, Dv block): o = (q ⊙ e^{b}) S over Dk blocks plus A v.
Backward, with dS_c the gradient of the state leaving chunk c (dS of the final state, or 0, after the last) and
dA_ij = do_i·v_j (j ≤ i, _dscores):
    dS_{c-1} = diag(e^{b_C}) dS_c + Σ_i (q_i ⊙ e^{b_i}) do_iᵀ                    (_state_pass in reverse)
    dv_j = Σ_{i≥j} A_ij do_i + dS_cᵀ (k_j ⊙ e^{b_C - b_j})                      (_read_states, GRAD)
    dq_i = e^{b_i} ⊙ (S_{c-1} do_i) + Σ_{j≤i} dA_ij k_j ⊙ e^{b_i - b_j}
    dk_j = e^{b_C - b_j} ⊙ (dS_c v_j) + Σ_{i≥j} dA_ij q_i ⊙ e^{b_i - b_j}      (_grad_dqk)
_grad_dqk runs one program per (b·h, sub-chunk, Dk block), with the same split about a point between sub-chunks
(the sub-chunk's first row for the keys before it, its last row for the queries after it) and the same pairwise
diagonal. For the gate, with B_t = Σ_{s≤t} log α_s over the whole sequence, o and the final state depend on B
only through q̃ = q ⊙ e^{B}, k̃ = k ⊙ e^{-B} and the final state's own factor
(S_{L-1} = diag(e^{B_{L-1}})(S_{-1} + Σ_j k̃_j v_jᵀ)), so per key dimension
    dB_t = q_t ⊙ dq_t − k_t ⊙ dk_t  (+ Σ_v dS_final ⊙ S_final at t = L-1),     d log α_t = Σ_{s≥t} dB_s,
q ⊙ dq − k ⊙ dk written by _grad_dqk in float32, the reverse cumulative sum done on the host. No atomics anywhere.
Recomputed, not stored: the forward keeps only its inputs; the backward reruns the state pass and A.

Dtypes: every tl.dot takes operands of the inputs' dtype (float32 tiles built in the kernel, such as gated q and
k, states and scores, are rounded to it first: to bf16 under autocast) and accumulates in float32; states, gates
and every sum are float32. With float32 inputs the dots are IEEE float32, never tf32. Triton 3.6 on Hopper
miscompiles tl.dot of a tl.trans of a computed tile, so a transposed operand is always loaded from memory with
swapped strides (kᵀ, vᵀ, Sᵀ, dSᵀ, Aᵀ, dAᵀ, and bᵀ to gate them). Left out: a recurrent (decode) kernel,
autotuning (fixed block sizes: the interpreter cannot autotune).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..linear_attention.kernel import (_backward_inputs, _cols, _contiguous, _dot, _packed, _precision, _row_head,
                                       _rows, _SavesInputs, _sizes, _state_tile, _states, block_size)

NUM_WARPS = 4  # untuned
SUB_CHUNK = 16  # BC: rows of a sub-chunk, the smallest tl.dot operand
DIAGONAL_BLOCK = 32  # Dk block of the [BC, BC, Dk] pairwise products of the diagonal blocks: bounds their registers


def diagonal_block(d: int) -> int:
    return min(DIAGONAL_BLOCK, block_size(d))


# --- tiles -----------------------------------------------------------------------------------------------------

@triton.jit
def _gate_row(b_ptr, b_base, t, Dk, offs_k):
    """b at row t, [BK]."""
    return tl.load(b_ptr + b_base + t * Dk + offs_k, mask=offs_k < Dk, other=0.0)


@triton.jit
def _pair_decay(b, offs_c):
    """[BC(i), BC(j), BK]: e^{b_i - b_j} where j ≤ i, else 0, within one sub-chunk of b [BC, BK]. The mask comes
    before exp, so the exponent is never positive."""
    keep = (offs_c[:, None] >= offs_c[None, :])[:, :, None]
    return tl.exp(tl.where(keep, b[:, None, :] - b[None, :, :], float("-inf")))


@triton.jit
def _pairwise(w, x, b, offs_c, ROWS: tl.constexpr):
    """A diagonal block's gradient sum from w [BC(i), BC(j)] and x, b [BC, BK]: ROWS,
    Σ_{j≤i} w_ij x_j ⊙ e^{b_i - b_j} [BC(i), BK]; else Σ_{i≥j} w_ij x_i ⊙ e^{b_i - b_j} [BC(j), BK]."""
    if ROWS:
        return tl.sum(w[:, :, None] * x.to(tl.float32)[None, :, :] * _pair_decay(b, offs_c), 1)
    else:
        return tl.sum(w[:, :, None] * x.to(tl.float32)[:, None, :] * _pair_decay(b, offs_c), 0)


@triton.jit
def _store_rows(ptr, x, base, t0, L, row_stride, D, offs_c, offs_d):
    """x [R, BD] into rows t0 + offs_c of one (batch row, head), in ptr's dtype, inside L and D (`_rows` backwards)."""
    t = t0 + offs_c
    tl.store(ptr + base + t.to(tl.int64)[:, None] * row_stride + offs_d[None, :], x.to(ptr.dtype.element_ty),
             mask=(t[:, None] < L) & (offs_d[None, :] < D))


# --- kernels ---------------------------------------------------------------------------------------------------

@triton.jit
def _intra_scores(q_ptr, k_ptr, b_ptr, a_ptr, L, Lp, H, Dk,
                  C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    """A[i, j] = Σ_d q_id k_jd e^{b_id - b_jd} for the rows i of sub-chunk s (program 1) and every column j of its
    chunk: the earlier sub-chunks' columns as one matmul about r = b at the sub-chunk's first row, the diagonal
    block as a pairwise sum, zeros after it."""
    bh, k_base = _row_head(L, H, Dk)
    b_base = bh * Lp * Dk
    t0 = tl.program_id(1) * BC
    j0 = t0 % C  # the sub-chunk's first column within its chunk
    tc = t0 - j0  # the chunk's first row
    offs_i = tl.arange(0, BC)
    offs_j = tl.arange(0, C)
    below = tl.zeros([BC, C], dtype=tl.float32)  # columns before j0
    diagonal = tl.zeros([BC, BC], dtype=tl.float32)
    for k0 in range(0, Dk, BK):
        offs_k = k0 + tl.arange(0, BK)
        q = _rows(q_ptr, k_base, t0, L, H * Dk, Dk, offs_i, offs_k)  # [BC, BK]
        k = _rows(k_ptr, k_base, t0, L, H * Dk, Dk, offs_i, offs_k)
        b = _rows(b_ptr, b_base, t0, Lp, Dk, Dk, offs_i, offs_k)
        r = _gate_row(b_ptr, b_base, t0, Dk, offs_k)  # [BK]
        kT = _cols(k_ptr, k_base, tc, L, H * Dk, Dk, offs_j, offs_k)  # [BK, C]: the whole chunk
        bT = _cols(b_ptr, b_base, tc, Lp, Dk, Dk, offs_j, offs_k)
        kT = kT.to(tl.float32) * tl.exp(tl.where(offs_j[None, :] < j0, r[:, None] - bT, float("-inf")))
        below = _dot(q.to(tl.float32) * tl.exp(b - r[None, :]), kT.to(q.dtype), below, PRECISION)
        pairs = q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :]  # [i, j, BK]
        diagonal += tl.sum(pairs * _pair_decay(b, offs_i), 2)
    t = t0 + offs_i
    rows = a_ptr + (bh * Lp + t.to(tl.int64))[:, None] * C
    off_diagonal = (offs_j[None, :] < j0) | (offs_j[None, :] >= j0 + BC)
    tl.store(rows + offs_j[None, :], below, mask=off_diagonal)  # two stores to disjoint columns
    tl.store(rows + j0 + offs_i[None, :], diagonal)


@triton.jit
def _read_states(x_ptr, y_ptr, b_ptr, states_ptr, a_ptr, out_ptr, L, Lp, H, Dk, Dv, n_chunks,
                 C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GRAD: tl.constexpr, PRECISION: tl.constexpr):
    """For one chunk and one block of Dv: o = (q ⊙ e^{b}) S_{c-1} + A v (x = q, y = v, states S), or GRAD:
    dv = (k ⊙ e^{b_C - b}) dS_c + Aᵀ do (x = k, y = do, states dS; Aᵀ read transposed from memory)."""
    bh, k_base = _row_head(L, H, Dk)
    _, v_base = _row_head(L, H, Dv)
    b_base = bh * Lp * Dk
    c = tl.program_id(1)
    t0 = c * C
    offs_c = tl.arange(0, C)
    offs_v = tl.program_id(2) * BV + tl.arange(0, BV)
    state_base = (bh * n_chunks + c) * Dk * Dv
    out = tl.zeros([C, BV], dtype=tl.float32)
    for k0 in range(0, Dk, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = _rows(x_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [C, BK]
        b = _rows(b_ptr, b_base, t0, Lp, Dk, Dk, offs_c, offs_k)
        if GRAD:  # k written gated to the chunk's end
            gate = tl.exp(_gate_row(b_ptr, b_base, t0 + C - 1, Dk, offs_k)[None, :] - b)
        else:  # q reading S gated from the chunk's start
            gate = tl.exp(b)
        S = _state_tile(states_ptr, state_base, offs_k, offs_v, Dk, Dv, False)  # [BK, BV]
        out = _dot(x.to(tl.float32) * gate, S.to(x.dtype), out, PRECISION)
    if GRAD:
        A = _cols(a_ptr, bh * Lp * C, t0, Lp, C, C, offs_c, offs_c)  # [j, i] = A[i, j]
    else:
        A = _rows(a_ptr, bh * Lp * C, t0, Lp, C, C, offs_c, offs_c)  # [C, C]
    y = _rows(y_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
    out = _dot(A, y, out, PRECISION)
    _store_rows(out_ptr, out, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)


@triton.jit
def _dscores(do_ptr, v_ptr, da_ptr, L, Lp, H, Dv,
             C: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dA[i, j] = do_i·v_j where j ≤ i, else 0, for one chunk."""
    bh, v_base = _row_head(L, H, Dv)
    t0 = tl.program_id(1) * C
    offs_c = tl.arange(0, C)
    dA = tl.zeros([C, C], dtype=tl.float32)
    for v0 in range(0, Dv, BV):
        offs_v = v0 + tl.arange(0, BV)
        do = _rows(do_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [C, BV]
        vT = _cols(v_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [BV, C]
        dA = _dot(do, vT, dA, PRECISION)
    dA = tl.where(offs_c[:, None] >= offs_c[None, :], dA, 0.0)
    _store_rows(da_ptr, dA, bh * Lp * C, t0, Lp, C, C, offs_c, offs_c)


@triton.jit
def _grad_dqk(q_ptr, k_ptr, v_ptr, do_ptr, b_ptr, states_ptr, dstates_ptr, da_ptr, dq_ptr, dk_ptr, db_ptr,
              L, Lp, H, Dk, Dv, n_chunks,
              C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dq and dk for the rows of sub-chunk s (program 1) and one block of Dk (program 2), and q ⊙ dq − k ⊙ dk
    there (the gate's gradient, before its reverse sum)."""
    bh, k_base = _row_head(L, H, Dk)
    _, v_base = _row_head(L, H, Dv)
    b_base = bh * Lp * Dk
    s = tl.program_id(1)
    c = s // (C // BC)
    I = s % (C // BC)
    t0 = s * BC
    tc = c * C
    offs_c = tl.arange(0, BC)
    offs_k = tl.program_id(2) * BK + tl.arange(0, BK)
    state_base = (bh * n_chunks + c) * Dk * Dv
    dq_inter = tl.zeros([BC, BK], dtype=tl.float32)  # S_{c-1} do_i
    dk_inter = tl.zeros([BC, BK], dtype=tl.float32)  # dS_c v_j
    for v0 in range(0, Dv, BV):
        offs_v = v0 + tl.arange(0, BV)
        do = _rows(do_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)  # [BC, BV]
        v = _rows(v_ptr, v_base, t0, L, H * Dv, Dv, offs_c, offs_v)
        ST = _state_tile(states_ptr, state_base, offs_k, offs_v, Dk, Dv, True)  # [BV, BK]
        dST = _state_tile(dstates_ptr, state_base, offs_k, offs_v, Dk, Dv, True)
        dq_inter = _dot(do, ST.to(do.dtype), dq_inter, PRECISION)
        dk_inter = _dot(v, dST.to(v.dtype), dk_inter, PRECISION)
    q = _rows(q_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)  # [BC, BK]
    k = _rows(k_ptr, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)
    b = _rows(b_ptr, b_base, t0, Lp, Dk, Dk, offs_c, offs_k)
    b_last = _gate_row(b_ptr, b_base, tc + C - 1, Dk, offs_k)
    # the other sub-chunks of the chunk as one matmul each: keys before this one about r_first = b at its first
    # row, queries after it about r_last = b at its last; the exponent's mask zeroes every other row
    da_base = bh * Lp * C
    offs_j = tl.arange(0, C)
    b_chunk = _rows(b_ptr, b_base, tc, Lp, Dk, Dk, offs_j, offs_k)  # [C, BK]
    r_first = _gate_row(b_ptr, b_base, t0, Dk, offs_k)
    r_last = _gate_row(b_ptr, b_base, t0 + BC - 1, Dk, offs_k)
    before = tl.exp(tl.where(offs_j[:, None] < I * BC, r_first[None, :] - b_chunk, float("-inf")))
    after = tl.exp(tl.where(offs_j[:, None] >= (I + 1) * BC, b_chunk - r_last[None, :], float("-inf")))
    dA = _rows(da_ptr, da_base, t0, Lp, C, C, offs_c, offs_j)  # [BC(i), C(j)]
    dAT = _cols(da_ptr, da_base, tc, Lp, C, C, offs_j, I * BC + offs_c)  # [BC(j), C(i)] = dA[i, j]
    k_chunk = _rows(k_ptr, k_base, tc, L, H * Dk, Dk, offs_j, offs_k)  # [C, BK]
    q_chunk = _rows(q_ptr, k_base, tc, L, H * Dk, Dk, offs_j, offs_k)
    dq_below = _dot(dA, (k_chunk.to(tl.float32) * before).to(k.dtype), tl.zeros([BC, BK], dtype=tl.float32),
                    PRECISION)
    dk_above = _dot(dAT, (q_chunk.to(tl.float32) * after).to(q.dtype), tl.zeros([BC, BK], dtype=tl.float32),
                    PRECISION)
    dA = _rows(da_ptr, da_base, t0, Lp, C, C, offs_c, I * BC + offs_c)  # the diagonal block, [BC(i), BC(j)]
    dq = (dq_inter * tl.exp(b) + dq_below * tl.exp(b - r_first[None, :])
          + _pairwise(dA, k, b, offs_c, True))
    dk = (dk_inter * tl.exp(b_last[None, :] - b) + dk_above * tl.exp(r_last[None, :] - b)
          + _pairwise(dA, q, b, offs_c, False))
    _store_rows(dq_ptr, dq, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)
    _store_rows(dk_ptr, dk, k_base, t0, L, H * Dk, Dk, offs_c, offs_k)
    _store_rows(db_ptr, q.to(tl.float32) * dq - k.to(tl.float32) * dk, b_base, t0, Lp, Dk, Dk, offs_c, offs_k)


# --- host ------------------------------------------------------------------------------------------------------

def _chunk_gates(log_gate, C):
    """[B, L, H, Dk] -> b [B·H, n·C, Dk] float32, the log-gates summed from each chunk's start; padded steps add 0."""
    B, L, H, Dk = log_gate.shape
    n = triton.cdiv(L, C)
    b = F.pad(log_gate.float(), (0, 0, 0, 0, 0, n * C - L)).view(B, n, C, H, Dk).cumsum(2)
    return b.permute(0, 3, 1, 2, 4).reshape(B * H, n * C, Dk).contiguous()  # a view where n = 1


def _scores(q, k, b, C):
    """A [B·H, n·C, C] float32: the intra-chunk scores, zero above the diagonal."""
    B, L, H, Dk = q.shape
    A = torch.empty(B * H, b.shape[1], C, device=q.device, dtype=torch.float32)
    _intra_scores[(B * H, b.shape[1] // SUB_CHUNK)](
        q, k, b, A, L, b.shape[1], H, Dk, C=C, BC=SUB_CHUNK, BK=diagonal_block(Dk), PRECISION=_precision(q),
        num_warps=NUM_WARPS)
    return A


class _GLA(_SavesInputs):
    """(o, final state) from q, k [B, L, H, Dk], v [B, L, H, Dv] (one dtype), log α [B, L, H, Dk], initial state
    [B, H, Dk, Dv] or None. torch.func.vmap over it folds the vmap dimension into B: one launch per pack."""

    @staticmethod
    def forward(q, k, v, log_gate, initial_state):
        q, k, v, s0 = _contiguous(q, k, v, initial_state)
        B, L, H, Dk, Dv, C, BK, BV, n = _sizes(q, v)
        b = _chunk_gates(log_gate, C)
        states, final = _states(k, v, b, s0, per_key=True)
        o = torch.empty_like(v)
        _read_states[(B * H, n, triton.cdiv(Dv, BV))](
            q, v, b, states, _scores(q, k, b, C), o, L, b.shape[1], H, Dk, Dv, n, C=C, BK=BK, BV=BV, GRAD=False,
            PRECISION=_precision(q), num_warps=NUM_WARPS)
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, log_gate, s0, do, dfinal = _backward_inputs(ctx, do, dfinal)
        B, L, H, Dk, Dv, C, BK, BV, n = _sizes(q, v)
        b = _chunk_gates(log_gate, C)
        Lp, precision = b.shape[1], _precision(q)
        states, final = _states(k, v, b, s0, per_key=True)  # recomputed: the forward kept none of them
        dstates, ds0 = _states(q, do, b, dfinal, reverse=True, per_key=True)
        dv = torch.empty_like(v)
        _read_states[(B * H, n, triton.cdiv(Dv, BV))](
            k, do, b, dstates, _scores(q, k, b, C), dv, L, Lp, H, Dk, Dv, n, C=C, BK=BK, BV=BV, GRAD=True,
            PRECISION=precision, num_warps=NUM_WARPS)
        dA = torch.empty(B * H, Lp, C, device=q.device, dtype=torch.float32)
        _dscores[(B * H, n)](do, v, dA, L, Lp, H, Dv, C=C, BV=BV, PRECISION=precision, num_warps=NUM_WARPS)
        dq, dk, db = torch.empty_like(q), torch.empty_like(k), torch.empty_like(b)
        BKD = diagonal_block(Dk)
        _grad_dqk[(B * H, Lp // SUB_CHUNK, triton.cdiv(Dk, BKD))](
            q, k, v, do, b, states, dstates, dA, dq, dk, db, L, Lp, H, Dk, Dv, n, C=C, BC=SUB_CHUNK, BK=BKD,
            BV=BV, PRECISION=precision, num_warps=NUM_WARPS)
        db = db.view(B, H, Lp, Dk)
        if dfinal is not None:  # the final state is diag(e^{B_{L-1}}) times what it would be ungated
            db[:, :, L - 1] += (dfinal * final).sum(-1)
        dg = db.flip(2).cumsum(2).flip(2)[:, :, :L].transpose(1, 2)  # d log α_t = Σ_{s≥t} dB_s, [B, L, H, Dk]
        return dq, dk, dv, dg.to(log_gate.dtype), ds0.to(s0.dtype) if s0 is not None else None

    @staticmethod
    def vmap(info, in_dims, q, k, v, log_gate, initial_state):
        return _packed(_GLA, info, in_dims, q, k, v, log_gate, initial_state)


def gla_kernel(q, k, v, log_gate, initial_state=None):
    """(o [B, L, H, Dv], final state [B, H, Dk, Dv] float32) from q, k [B, L, H, Dk], v [B, L, H, Dv] of one dtype,
    log α [B, L, H, Dk], initial state [B, H, Dk, Dv] or None. Runs under torch.func.vmap (one launch)."""
    return _GLA.apply(q, k, v, log_gate, initial_state)
