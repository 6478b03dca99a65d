"""2-simplicial attention as fused Triton kernels, forward and backward: the L·w1·w2 scores live only as tiles in
registers, never in memory (Roy et al. 2025's scheme: the trilinear form is a matmul once q is scaled by k').

    q [B, L, H, D], k1, v1, k2, v2 [B, L, G, D], token-major, read through their batch, position and head strides
    (only the last dimension contiguous); o [B, L, H, D] contiguous; lse [B·G, L·H/G] float32, base 2, per row
    T(a, b, c) = b·(a ∘ c), with a ∘ c = a ⊙ c (trilinear) or the 3-chunk cross product a × c (determinant)
    s_ijk = scale · T(q_i, k1_j, k2_k):  scale = 1/√D, or −1/√D for the determinant (b·(a × c) = −det[a, b, c])
The function is `reference.simplicial_attention_ref`; the host (`simplicial_attention_kernel`) swaps the two
windows where w2 > w1 (the form is symmetric in them, the determinant up to a sign it puts in scale), so the
scalar loop below always runs over the shorter one.

Tiles. A tile's rows are (query position, query head) pairs of one kv head g, position-major: row r is position
r // (H/G), head g·(H/G) + r % (H/G). The query heads sharing k1, v1, k2, v2 are stacked into rows, as the paper
does (its forward shape, 64 query heads per kv head, fills a 64-row tile at one position); with H = G the rows are
BM consecutive positions. One launch axis over (b·g, row tile). The loops keep a block of k1 and v1 loaded while
single k' vectors stream past (the authors' forward runs them the other way round: single positions of the shorter
window outside, blocks of the longer inside); both visit the same (key block, k') steps.

  _forward  for each block of BN keys j (k1ᵀ and v1 loaded once), for each k' position k some row pairs with it
            (one vector of k2 and of v2): s = (q ∘ k2_k) k1ᵀ [BM, BN], masked to both windows; online softmax in
            base 2 over all pairs; o += (p v1) ⊙ v2_k. Stores o and the row's log-sum-exp.
  _grad_q   the same walk, p recomputed from lse: dp = (do ⊙ v2_k) v1ᵀ, ds = p ⊙ (dp − δ),
            dq += ds (k2_k ∘ k1) (trilinear: (ds k1) ⊙ k2_k); δ = rowsum(do ⊙ o) stored for _grad_kv.
  _grad_kv  one program per (b·g, block of BN keys): for each k' position k its keys pair with, for each row tile
            that sees both, the transposed tiles sᵀ = (k2_k ∘ k1) qᵀ, pᵀ, dpᵀ = (v1 ⊙ v2_k) doᵀ directly, then
            u = pᵀ do and x = dsᵀ q:  dv1 += u ⊙ v2_k,  dk1 += x ∘ k2_k  (owned: one writer), and the block's
            share of dv2_k = Σ_j u_j ⊙ v1_j and dk2_k = Σ_j k1_j ∘ x_j, written to a [keys block, k] scratch row;
            the host adds each k's rows (a fixed-order sum: no atomics, results do not depend on timing).
The determinant's a ∘ c = a[π1] ⊙ c[π2] − a[π2] ⊙ c[π1], π1 and π2 rotating the coordinates inside each 3-chunk:
tiles that take part in it are loaded twice more with rotated columns (q, k1, k2), and x's rotations come from two
dots (dsᵀ q[π1], dsᵀ q[π2]) since a computed tile cannot be permuted in registers.

Triton 3.6 on Hopper miscompiles a tl.dot of a tl.trans of a computed tile, so no tile is transposed in registers:
kᵀ, vᵀ, qᵀ and doᵀ are loaded from memory with swapped strides. Dots take the inputs' dtype (bf16 on the GPU) and
accumulate in float32; the elementwise products (q ∘ k2, ds, p) are float32, rounded to the inputs' dtype only as a
dot's operand; with float32 inputs the dots are IEEE float32, never tf32. D is padded to a power of two of at least
16 (what tl.dot needs) by masked loads. Fixed block sizes, no autotuning.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..attention.kernel import _softmax_step
from ..dispatch import fold
# the host's token-major helpers, shared with Taylor attention's kernels: the dots' precision (IEEE float32 for
# float32 tiles), a contiguous last dimension, and each [B, L, heads, D] tensor's batch, position and head strides
from ..taylor_attention.kernel import _precision, _strides, _unit_stride

LOG2E = math.log2(math.e)
#: (rows of a tile at most, keys of a block, warps, pipeline stages) of the forward and of the backward, by head
#: width D ≤ 64 / ≤ 128. Untuned (written without a GPU). A tile also spans at most POSITIONS_PER_TILE positions
#: (`_tiles`: fewer rows where a kv head has few query heads): its steps cover every (key, k') pair some row sees,
#: and with one query head per kv head a 64-position tile would pay for about ten times the pairs each row uses
#: at the mixer's windows (64, 16).
FORWARD = {64: (64, 64, 4, 2), 128: (64, 64, 8, 1)}
BACKWARD = {64: (64, 64, 4, 1), 128: (64, 32, 8, 1)}
POSITIONS_PER_TILE = 16


# --- tiles -----------------------------------------------------------------------------------------------------

@triton.jit
def _rot(offs_d, SHIFT: tl.constexpr):
    """Column d's partner in its 3-chunk, 3·(d // 3) + (d + SHIFT) % 3: π1 (SHIFT 1) and π2 (SHIFT 2)."""
    return offs_d - offs_d % 3 + (offs_d % 3 + SHIFT) % 3


@triton.jit
def _rows3(ptr, at, ok, offs_d, D, DET: tl.constexpr):
    """x at row offsets `at` [N] (int64, every stride but the last folded in) as [N, BD] tiles, zeros where not ok
    or past D: x and, with DET, x[π1] and x[π2] (else x twice more, unloaded)."""
    mask = ok[:, None] & (offs_d[None, :] < D)
    x = tl.load(ptr + at[:, None] + offs_d[None, :], mask=mask, other=0.0)
    x1, x2 = x, x
    if DET:
        x1 = tl.load(ptr + at[:, None] + _rot(offs_d, 1)[None, :], mask=mask, other=0.0)
        x2 = tl.load(ptr + at[:, None] + _rot(offs_d, 2)[None, :], mask=mask, other=0.0)
    return x, x1, x2


@triton.jit
def _cols(ptr, at, ok, offs_d, D):
    """The same tile transposed, [BD, N], read from memory with swapped strides (never tl.trans: see above)."""
    return tl.load(ptr + at[None, :] + offs_d[:, None], mask=ok[None, :] & (offs_d[:, None] < D), other=0.0)


@triton.jit
def _vec3(ptr, at, offs_d, D, DET: tl.constexpr):
    """One row's [1, BD] tiles: x and, with DET, x[π1] and x[π2]."""
    mask = offs_d < D
    x = tl.load(ptr + at + offs_d, mask=mask, other=0.0)
    x1, x2 = x, x
    if DET:
        x1 = tl.load(ptr + at + _rot(offs_d, 1), mask=mask, other=0.0)
        x2 = tl.load(ptr + at + _rot(offs_d, 2), mask=mask, other=0.0)
    return x[None, :], x1[None, :], x2[None, :]


@triton.jit
def _pair(a, a1, a2, c, c1, c2, DET: tl.constexpr):
    """a ∘ c in float32: a ⊙ c, or with DET the 3-chunk cross product a × c = a[π1] ⊙ c[π2] − a[π2] ⊙ c[π1]
    (a1, a2, c1, c2: the rotated copies). Shapes broadcast."""
    if DET:
        return a1.to(tl.float32) * c2.to(tl.float32) - a2.to(tl.float32) * c1.to(tl.float32)
    return a.to(tl.float32) * c.to(tl.float32)


@triton.jit
def _query_rows(r, g, L, GROUP):
    """Row r of kv head g's tile space: (position, query head, whether it is one)."""
    return r // GROUP, g * GROUP + r % GROUP, r < L * GROUP


@triton.jit
def _allowed(i, j, k, w1, w2):
    """Whether query i pairs key j with k' position k (broadcast)."""
    return (j <= i) & (i - j < w1) & (k <= i) & (i - k < w2)


@triton.jit
def _softmax_grad(p, dp, delta, i, w1, w2):
    """ds = p ⊙ (dp − δ) at query positions i (broadcast), exactly 0 where a query has one allowed pair (position
    0, or w1 = w2 = 1): its softmax is constant, and dp − δ would be the rounding of two sums in different orders."""
    return tl.where(tl.minimum(i + 1, w1) * tl.minimum(i + 1, w2) == 1, 0.0, p * (dp - delta))


@triton.jit
def _program(n_rows, BLOCK: tl.constexpr):
    """(b·g, first row of the block): one grid axis, each (b, g)'s blocks launched one after another so that their
    reads of the same keys meet in L2."""
    n_blocks = tl.cdiv(n_rows, BLOCK)
    pid = tl.program_id(0).to(tl.int64)
    return pid // n_blocks, (pid % n_blocks).to(tl.int32) * BLOCK


@triton.jit
def _pairing(j0, i_lo, i_hi, w1, w2, BN: tl.constexpr):
    """The k' positions [lo, hi] that some query of [i_lo, i_hi] pairs with a key of [j0, j0 + BN)."""
    first, last = tl.maximum(i_lo, j0), tl.minimum(i_hi, j0 + BN - 1 + w1 - 1)
    return tl.maximum(first - w2 + 1, 0), last


@triton.jit
def _logits(q, q1, q2, c, c1, c2, k1T, i, j, k, ok, w1, w2, qk_scale, DET: tl.constexpr,
            PRECISION: tl.constexpr):
    """s = (q ∘ c) k1ᵀ in base-2 units for rows at positions i [BM, 1] and keys j [1, BN], k' position k, and
    which of them count."""
    s = tl.dot(_pair(q, q1, q2, c, c1, c2, DET).to(k1T.dtype), k1T, input_precision=PRECISION) * qk_scale
    return s, _allowed(i, j, k, w1, w2) & ok


# --- kernels ---------------------------------------------------------------------------------------------------

@triton.jit
def _forward(q_ptr, k1_ptr, v1_ptr, k2_ptr, v2_ptr, o_ptr, lse_ptr, L, G, GROUP, D, w1, w2, qk_scale,
             sq_b, sq_l, sq_h, sk1_b, sk1_l, sk1_h, sv1_b, sv1_l, sv1_h, sk2_b, sk2_l, sk2_h, sv2_b, sv2_l, sv2_h,
             BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DET: tl.constexpr, PRECISION: tl.constexpr):
    bg, r0 = _program(L * GROUP, BM)
    b, g = bg // G, bg % G
    offs_n, offs_d = tl.arange(0, BN), tl.arange(0, BD)
    i, h, ok = _query_rows(r0 + tl.arange(0, BM), g, L, GROUP)
    q, q1, q2 = _rows3(q_ptr, b * sq_b + i.to(tl.int64) * sq_l + h * sq_h, ok, offs_d, D, DET)  # [BM, BD]
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    i_lo, i_hi = r0 // GROUP, tl.minimum((r0 + BM - 1) // GROUP, L - 1)
    for j0 in range(tl.maximum(i_lo - w1 + 1, 0), i_hi + 1, BN):
        j = j0 + offs_n
        k1T = _cols(k1_ptr, b * sk1_b + j.to(tl.int64) * sk1_l + g * sk1_h, j < L, offs_d, D)  # [BD, BN]
        v1, _, _ = _rows3(v1_ptr, b * sv1_b + j.to(tl.int64) * sv1_l + g * sv1_h, j < L, offs_d, D, False)
        lo, hi = _pairing(j0, i_lo, i_hi, w1, w2, BN)
        for k in range(lo, hi + 1):
            c, c1, c2 = _vec3(k2_ptr, b * sk2_b + tl.cast(k, tl.int64) * sk2_l + g * sk2_h, offs_d, D, DET)  # [1, BD]
            v2, _, _ = _vec3(v2_ptr, b * sv2_b + tl.cast(k, tl.int64) * sv2_l + g * sv2_h, offs_d, D, False)
            s, keep = _logits(q, q1, q2, c, c1, c2, k1T, i[:, None], j[None, :], k, ok[:, None], w1, w2, qk_scale,
                              DET, PRECISION)
            p, alpha, m_i, l_i = _softmax_step(s, keep, m_i, l_i)
            pv = tl.dot(p.to(v1.dtype), v1, input_precision=PRECISION)  # [BM, BD]
            acc = acc * alpha[:, None] + pv * v2.to(tl.float32)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    H = G * GROUP
    o_at = ((b * L + i.to(tl.int64)) * H + h) * D
    tl.store(o_ptr + o_at[:, None] + offs_d[None, :], (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty),
             mask=ok[:, None] & (offs_d[None, :] < D))
    tl.store(lse_ptr + bg * L * GROUP + r0 + tl.arange(0, BM), m_i + tl.log2(l_safe), mask=ok)


@triton.jit
def _grad_q(q_ptr, k1_ptr, v1_ptr, k2_ptr, v2_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, L, G, GROUP, D, w1,
            w2, qk_scale, scale,
            sq_b, sq_l, sq_h, sk1_b, sk1_l, sk1_h, sv1_b, sv1_l, sv1_h, sk2_b, sk2_l, sk2_h, sv2_b, sv2_l, sv2_h,
            BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DET: tl.constexpr, PRECISION: tl.constexpr):
    bg, r0 = _program(L * GROUP, BM)
    b, g = bg // G, bg % G
    offs_n, offs_d = tl.arange(0, BN), tl.arange(0, BD)
    rows = r0 + tl.arange(0, BM)
    i, h, ok = _query_rows(rows, g, L, GROUP)
    q, q1, q2 = _rows3(q_ptr, b * sq_b + i.to(tl.int64) * sq_l + h * sq_h, ok, offs_d, D, DET)
    H = G * GROUP
    o_at = ((b * L + i.to(tl.int64)) * H + h) * D  # o, do and dq are contiguous [B, L, H, D]
    do, _, _ = _rows3(do_ptr, o_at, ok, offs_d, D, False)
    o, _, _ = _rows3(o_ptr, o_at, ok, offs_d, D, False)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + bg * L * GROUP + rows, delta, mask=ok)
    lse = tl.load(lse_ptr + bg * L * GROUP + rows, mask=ok, other=0.0)
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    i_lo, i_hi = r0 // GROUP, tl.minimum((r0 + BM - 1) // GROUP, L - 1)
    for j0 in range(tl.maximum(i_lo - w1 + 1, 0), i_hi + 1, BN):
        j = j0 + offs_n
        k1_at = b * sk1_b + j.to(tl.int64) * sk1_l + g * sk1_h
        k1T = _cols(k1_ptr, k1_at, j < L, offs_d, D)  # [BD, BN]
        k1, k11, k12 = _rows3(k1_ptr, k1_at, j < L, offs_d, D, DET)  # [BN, BD]
        v1T = _cols(v1_ptr, b * sv1_b + j.to(tl.int64) * sv1_l + g * sv1_h, j < L, offs_d, D)
        lo, hi = _pairing(j0, i_lo, i_hi, w1, w2, BN)
        for k in range(lo, hi + 1):
            c, c1, c2 = _vec3(k2_ptr, b * sk2_b + tl.cast(k, tl.int64) * sk2_l + g * sk2_h, offs_d, D, DET)
            v2, _, _ = _vec3(v2_ptr, b * sv2_b + tl.cast(k, tl.int64) * sv2_l + g * sv2_h, offs_d, D, False)
            s, keep = _logits(q, q1, q2, c, c1, c2, k1T, i[:, None], j[None, :], k, ok[:, None], w1, w2, qk_scale,
                              DET, PRECISION)
            p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot((do.to(tl.float32) * v2.to(tl.float32)).to(v1T.dtype), v1T, input_precision=PRECISION)
            ds = _softmax_grad(p, dp, delta[:, None], i[:, None], w1, w2).to(k1.dtype)
            if DET:  # dq += ds (k2_k × k1)
                dq = tl.dot(ds, _pair(c, c1, c2, k1, k11, k12, DET).to(k1.dtype), dq, input_precision=PRECISION)
            else:  # (ds k1) ⊙ k2_k
                dq += tl.dot(ds, k1, input_precision=PRECISION) * c.to(tl.float32)
    tl.store(dq_ptr + o_at[:, None] + offs_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _grad_kv(q_ptr, k1_ptr, v1_ptr, k2_ptr, v2_ptr, do_ptr, lse_ptr, delta_ptr, dk1_ptr, dv1_ptr, part_ptr, L, G,
             GROUP, D, w1, w2, qk_scale, scale, KR,
             sq_b, sq_l, sq_h, sk1_b, sk1_l, sk1_h, sv1_b, sv1_l, sv1_h, sk2_b, sk2_l, sk2_h, sv2_b, sv2_l, sv2_h,
             BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DET: tl.constexpr, PRECISION: tl.constexpr):
    """dk1 and dv1 of one block of keys; its shares of dk2 and dv2 into part [B·G, key blocks, KR, 2, D] float32,
    slot t of block jb holding k' position jb·BN + t − (w2 − 1)."""
    bg, j0 = _program(L, BN)
    b, g = bg // G, bg % G
    offs_m, offs_d = tl.arange(0, BM), tl.arange(0, BD)
    j = j0 + tl.arange(0, BN)
    k1, k11, k12 = _rows3(k1_ptr, b * sk1_b + j.to(tl.int64) * sk1_l + g * sk1_h, j < L, offs_d, D, DET)
    v1, _, _ = _rows3(v1_ptr, b * sv1_b + j.to(tl.int64) * sv1_l + g * sv1_h, j < L, offs_d, D, False)
    dk1 = tl.zeros([BN, BD], dtype=tl.float32)
    dv1 = tl.zeros([BN, BD], dtype=tl.float32)
    H = G * GROUP
    part = part_ptr + (bg * tl.cdiv(L, BN) + j0 // BN) * KR * 2 * D
    i_last = tl.minimum(j0 + BN - 1 + w1 - 1, L - 1)  # the last query any of these keys reaches
    for k in range(tl.maximum(j0 - w2 + 1, 0), i_last + 1):
        c, c1, c2 = _vec3(k2_ptr, b * sk2_b + tl.cast(k, tl.int64) * sk2_l + g * sk2_h, offs_d, D, DET)
        v2, _, _ = _vec3(v2_ptr, b * sv2_b + tl.cast(k, tl.int64) * sv2_l + g * sv2_h, offs_d, D, False)
        y = _pair(c, c1, c2, k1, k11, k12, DET).to(k1.dtype)  # [BN, BD]: sᵀ = y qᵀ
        vy = (v1.to(tl.float32) * v2.to(tl.float32)).to(v1.dtype)  # dpᵀ = vy doᵀ
        dk2 = tl.zeros([BD], dtype=tl.float32)
        dv2 = tl.zeros([BD], dtype=tl.float32)
        # the rows (position, query head) of the queries that pair these keys with k
        r_end = (tl.minimum(i_last, k + w2 - 1) + 1) * GROUP
        for r0 in range(tl.maximum(j0, k) * GROUP, r_end, BM):
            i, h, ok = _query_rows(r0 + offs_m, g, L, GROUP)
            ok = ok & (r0 + offs_m < r_end)
            q_at = b * sq_b + i.to(tl.int64) * sq_l + h * sq_h
            qT = _cols(q_ptr, q_at, ok, offs_d, D)  # [BD, BM]
            q, q1, q2 = _rows3(q_ptr, q_at, ok, offs_d, D, DET)  # [BM, BD]
            o_at = ((b * L + i.to(tl.int64)) * H + h) * D
            doT = _cols(do_ptr, o_at, ok, offs_d, D)
            do, _, _ = _rows3(do_ptr, o_at, ok, offs_d, D, False)
            lse = tl.load(lse_ptr + bg * L * GROUP + r0 + offs_m, mask=ok, other=0.0)
            delta = tl.load(delta_ptr + bg * L * GROUP + r0 + offs_m, mask=ok, other=0.0)
            sT = tl.dot(y, qT, input_precision=PRECISION) * qk_scale  # [BN, BM]
            keep = _allowed(i[None, :], j[:, None], k, w1, w2) & ok[None, :]
            pT = tl.where(keep, tl.exp2(sT - lse[None, :]), 0.0)
            dpT = tl.dot(vy, doT, input_precision=PRECISION)
            dsT = _softmax_grad(pT, dpT, delta[None, :], i[None, :], w1, w2).to(q.dtype)
            u = tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)  # [BN, BD]: Σ_r p do_r
            dv1 += u * v2.to(tl.float32)
            dv2 += tl.sum(u * v1.to(tl.float32), 0)
            x = tl.dot(dsT, q, input_precision=PRECISION)  # [BN, BD]: Σ_r ds q_r
            x1, x2 = x, x
            if DET:
                x1 = tl.dot(dsT, q1, input_precision=PRECISION)
                x2 = tl.dot(dsT, q2, input_precision=PRECISION)
            dk1 += _pair(x, x1, x2, c, c1, c2, DET)
            dk2 += tl.sum(_pair(k1, k11, k12, x, x1, x2, DET), 0)
        slot = part + (k - j0 + w2 - 1) * 2 * D
        tl.store(slot + offs_d, dk2 * scale, mask=offs_d < D)
        tl.store(slot + D + offs_d, dv2, mask=offs_d < D)
    at = ((b * L + j.to(tl.int64)) * G + g) * D  # dk1 and dv1 are contiguous [B, L, G, D]
    mask = (j[:, None] < L) & (offs_d[None, :] < D)
    tl.store(dk1_ptr + at[:, None] + offs_d[None, :], (dk1 * scale).to(dk1_ptr.dtype.element_ty), mask=mask)
    tl.store(dv1_ptr + at[:, None] + offs_d[None, :], dv1.to(dv1_ptr.dtype.element_ty), mask=mask)


# --- host ------------------------------------------------------------------------------------------------------

def _tiles(table: dict, group: int, D: int, L: int, dtype: torch.dtype) -> tuple[int, int, int, dict]:
    """(rows of a tile, keys of a block, D padded, launch options): a tile of about POSITIONS_PER_TILE positions
    of a kv head's query heads, no block much longer than the sequence."""
    bm, bn, warps, stages = table[64 if D <= 64 else 128]
    bm = min(bm, max(16, triton.next_power_of_2(group * min(L, POSITIONS_PER_TILE))))
    bn = min(bn, max(16, triton.next_power_of_2(L)))
    warps = warps if bm >= 64 else min(warps, 4)  # a tile of 16 or 32 rows leaves eight warps little to share
    launch = dict(num_warps=warps, num_stages=1 if dtype == torch.float32 else stages)
    return bm, bn, max(16, triton.next_power_of_2(D)), launch


def _window_sums(part: torch.Tensor, bn: int, w2: int, L: int) -> torch.Tensor:
    """part [B·G, key blocks, KR, 2, D] (slot t of block jb: k' position jb·BN + t − (w2 − 1)) summed per k'
    position, in a fixed order: [B·G, L, 2, D]."""
    bgs, blocks, kr, _, D = part.shape
    part = part.view(bgs, blocks, kr // bn, bn, 2, D)
    total = part.new_zeros(bgs, blocks + kr // bn - 1, bn, 2, D)
    for shift in range(kr // bn):  # block jb's slots [shift·BN, (shift + 1)·BN) are block jb + shift of positions
        total[:, shift: shift + blocks] += part[:, :, shift]
    return total.flatten(1, 2)[:, w2 - 1: w2 - 1 + L]


class _SimplicialAttention(torch.autograd.Function):
    """(o [B, L, H, D], lse [B·G, L·H/G] float32: kept for the backward, not differentiable) from q [B, L, H, D]
    and k1, v1, k2, v2 [B, L, G, D] of one dtype; w1, w2 ≤ L; scale signed (see the module docstring); det: the
    determinant's form. torch.func.vmap over it folds the vmap dimension into B: one launch per pack."""

    @staticmethod
    def forward(q, k1, v1, k2, v2, w1, w2, scale, det):
        q, k1, v1, k2, v2 = (_unit_stride(t) for t in (q, k1, v1, k2, v2))
        B, L, H, D = q.shape
        G = k1.shape[2]
        bm, bn, bd, launch = _tiles(FORWARD, H // G, D, L, q.dtype)
        o = torch.empty(B, L, H, D, dtype=q.dtype, device=q.device)
        lse = torch.empty(B * G, L * (H // G), dtype=torch.float32, device=q.device)
        _forward[(B * G * triton.cdiv(L * (H // G), bm),)](
            q, k1, v1, k2, v2, o, lse, L, G, H // G, D, w1, w2, scale * LOG2E, *_strides(q, k1, v1, k2, v2),
            BM=bm, BN=bn, BD=bd, DET=det, PRECISION=_precision(q), **launch)
        return o, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k1, v1, k2, v2, w1, w2, scale, det = inputs
        o, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k1, v1, k2, v2, o, lse)
        ctx.windows, ctx.scale, ctx.det = (w1, w2), scale, det

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k1, v1, k2, v2, o, lse = ctx.saved_tensors
        q, k1, v1, k2, v2 = (_unit_stride(t) for t in (q, k1, v1, k2, v2))
        (w1, w2), scale = ctx.windows, ctx.scale
        do = do.to(o.dtype).contiguous()  # the kernels read do with o's (contiguous) strides
        B, L, H, D = q.shape
        G = k1.shape[2]
        bm, bn, bd, launch = _tiles(BACKWARD, H // G, D, L, q.dtype)
        kr = triton.cdiv(bn + w1 + w2 - 2, bn) * bn  # k' slots a key block pairs with
        delta = torch.empty(B * G, L * (H // G), dtype=torch.float32, device=q.device)
        dq = torch.empty(B, L, H, D, dtype=q.dtype, device=q.device)
        dk1, dv1 = (torch.empty(B, L, G, D, dtype=q.dtype, device=q.device) for _ in range(2))
        part = torch.zeros(B * G, triton.cdiv(L, bn), kr, 2, D, dtype=torch.float32, device=q.device)
        common = dict(BM=bm, BN=bn, BD=bd, DET=ctx.det, PRECISION=_precision(q), **launch)
        strides = _strides(q, k1, v1, k2, v2)
        _grad_q[(B * G * triton.cdiv(L * (H // G), bm),)](
            q, k1, v1, k2, v2, o, do, lse, delta, dq, L, G, H // G, D, w1, w2, scale * LOG2E, scale, *strides,
            **common)
        _grad_kv[(B * G * triton.cdiv(L, bn),)](
            q, k1, v1, k2, v2, do, lse, delta, dk1, dv1, part, L, G, H // G, D, w1, w2, scale * LOG2E, scale, kr,
            *strides, **common)
        dk2, dv2 = _window_sums(part, bn, w2, L).view(B, G, L, 2, D).permute(3, 0, 2, 1, 4).to(q.dtype).unbind(0)
        return dq, dk1, dv1, dk2, dv2, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, q, k1, v1, k2, v2, w1, w2, scale, det):
        size = info.batch_size
        q, k1, v1, k2, v2 = (fold(x, bdim, size) for x, bdim in zip((q, k1, v1, k2, v2), in_dims[:5]))
        o, lse = _SimplicialAttention.apply(q, k1, v1, k2, v2, w1, w2, scale, det)
        return (o.view(size, -1, *o.shape[1:]), lse.view(size, -1, lse.shape[-1])), (0, 0)


def simplicial_attention_kernel(q, k1, v1, k2, v2, w1: int, w2: int, determinant: bool) -> torch.Tensor:
    """o [B, L, H, D] (q's dtype) from q [B, L, H, D] and k1, v1, k2, v2 [B, L, G, D] of one dtype, L ≥ 1 (shapes
    checked by the caller). Runs under torch.func.vmap (one launch for all K members)."""
    L, D = q.shape[1], q.shape[3]
    w1, w2 = min(w1, L), min(w2, L)
    swap = w2 > w1  # the scalar loops walk k' positions: make them the shorter window
    if swap:
        k1, v1, k2, v2, w1, w2 = k2, v2, k1, v1, w2, w1
    # T(q, k1, k2) = k1·(q × k2) = −det[q, k1, k2], and swapping k1 and k2 flips it back
    sign = -1.0 if determinant and not swap else 1.0
    return _SimplicialAttention.apply(q, k1, v1, k2, v2, w1, w2, sign * D ** -0.5, determinant)[0]
