"""Causal softmax attention as fused Triton kernels, forward and backward, flash-attention style (Dao et al. 2022):
the L×L scores live only as tiles in registers; q, k and v are read straight from the fused projection, ALiBi,
windows and ReRoPE's two branches are applied inside the kernels, and the gradient comes back as one tensor in the
projection's layout.

    qkv [B, L, (H + 2·G)·D], any batch and position strides, columns contiguous: no split, transpose or copy first
    o   [B, L, H·D] contiguous (what the output projection reads); lse [B·H, L] float32, base-2 log-sum-exp per row
    dqkv [B, L, (H + 2·G)·D] contiguous: dq, dk and dv written by the kernels into their own columns (no cat)

The function is `reference.causal_attention_ref`, which the dispatch rule (probe.ops.dispatch) runs wherever this
kernel does not. A score is one dot over the head's whole width; dq and dk accumulate as two halves of D/2 columns
(the half-split rotary pairs (x_p, x_{p+D/2})), so that each program turns its gradient back before writing it.

  _turn_heads  with rotary tables only: one pass writes qkv with q and k turned in float32 (queries and keys by
             their own tables; values copied beside them), and with ReRoPE a second copy turned by the far tables.
             The kernels below read these (a tile is read by many programs: turning it once costs one pass over q
             and k, turning it on every load cost as much as the attention itself); the backward reads the copy
             kept from the forward and turns dq and dk back (Rᵀ) once, as each program writes them.
  _forward   one program per (b·h, query block): walks the key blocks the block's rows may see (from the window's
             start, or 0, to the diagonal) with the online softmax in base 2; stores o and lse.
  _grad_q    one program per (b·h, query block): δ = rowsum(do ⊙ o) for its rows (stored for _grad_kv), then the
             same key blocks, recomputing p from lse: dq = scale · Σ p ⊙ (do vᵀ − δ) k, turned back.
  _grad_kv   one program per (b·g, key block): for each query head of its group, the query blocks that see it,
             forming the transposed tiles sᵀ = k qᵀ, pᵀ, dpᵀ = v doᵀ directly: dv = Σ pᵀ do,
             dk = scale · Σ pᵀ ⊙ (dpᵀ − δ) q, turned back.
With ReRoPE a tile whose pairs are all within the window forms only the near products, one whose pairs are all
beyond it only the far ones; only tiles across the boundary form both.
Each gradient has one writer (no atomics: results do not depend on timing). Triton 3.6 on Hopper miscompiles a
tl.dot of a tl.trans of a computed tile, so no tile is transposed in registers: a transposed operand (kᵀ, vᵀ, qᵀ,
doᵀ) is loaded from memory with swapped strides. Dots take the inputs' dtype (bf16 on the GPU) and accumulate in
float32; with float32 inputs they are IEEE float32, never tf32. Head halves are padded to a power of two of at
least 16 (what tl.dot needs) by masked loads. Fixed block sizes, no autotuning.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..dispatch import fold

LOG2E = math.log2(math.e)
#: (query block, key block, warps, pipeline stages) of the forward and of the two backward kernels, by head width
#: D ≤ 64 / ≤ 128. The backward loads four operand tiles a step (q and do, each both ways round): at D = 128 more
#: than one stage of them overflows a Hopper SM's 227 KiB of shared memory. Float32 tiles take one stage. Picked
#: from `scratch/attn_bench.py`'s tables on an H100 (2026-12-07, bf16, [4096, 256] rows): D 64 forward 409 µs at
#: BM 128 against 473 at 64; D 128 backward 2.8 ms at 4 warps against 3.65 at 8 (BENCHMARKS.md).
FORWARD = {64: (128, 64, 4, 3), 128: (64, 64, 4, 2)}
BACKWARD = {64: (64, 64, 4, 2), 128: (64, 64, 4, 1)}
TURN_BLOCK = 32  # positions a program of the turning pass


# --- tiles -----------------------------------------------------------------------------------------------------

@triton.jit
def _rows(ptr, base, t, L, s_l, col, offs, width):
    """x[t, col + offs] as a [len(t), len(offs)] tile, zeros outside L and the width."""
    mask = (t[:, None] < L) & (offs[None, :] < width)
    return tl.load(ptr + base + t.to(tl.int64)[:, None] * s_l + col + offs[None, :], mask=mask, other=0.0)


@triton.jit
def _cols(ptr, base, t, L, s_l, col, offs, width):
    """The same tile transposed, [len(offs), len(t)], read from memory with swapped strides."""
    mask = (t[None, :] < L) & (offs[:, None] < width)
    return tl.load(ptr + base + t.to(tl.int64)[None, :] * s_l + col + offs[:, None], mask=mask, other=0.0)


@triton.jit
def _turn(a, b, rot_ptr, table, t, L, offs_p, P, sign, ROWS: tl.constexpr):
    """Halves a and b turned by table `table` of rot_ptr (its cos at table·L·P, its sin the next table) at
    positions t: (a·c − b·s, a·s + b·c), sign −1 the transpose (a gradient carried back); in a's and b's dtypes.
    ROWS: the halves are [len(t), BP] tiles, else transposed [BP, len(t)]."""
    if ROWS:
        mask = (t[:, None] < L) & (offs_p[None, :] < P)
        at = t.to(tl.int64)[:, None] * P + offs_p[None, :]
    else:
        mask = (t[None, :] < L) & (offs_p[:, None] < P)
        at = t.to(tl.int64)[None, :] * P + offs_p[:, None]
    c = tl.load(rot_ptr + table * L * P + at, mask=mask, other=0.0)
    s = tl.load(rot_ptr + (table + 1) * L * P + at, mask=mask, other=0.0) * sign
    af, bf = a.to(tl.float32), b.to(tl.float32)
    return (af * c - bf * s).to(a.dtype), (af * s + bf * c).to(b.dtype)


@triton.jit
def _pair(ptr, base, t, L, s_l, col, offs_p, P, ROWS: tl.constexpr):
    """A head's two halves (columns col + p and col + P + p) at positions t, as [len(t), BP] tiles (ROWS) or
    transposed."""
    if ROWS:
        return _rows(ptr, base, t, L, s_l, col, offs_p, P), _rows(ptr, base, t, L, s_l, col + P, offs_p, P)
    return _cols(ptr, base, t, L, s_l, col, offs_p, P), _cols(ptr, base, t, L, s_l, col + P, offs_p, P)


@triton.jit
def _halves(ptr, base, t, L, s_l, col, offs_p, P, far_ptr, FAR: tl.constexpr, ROWS: tl.constexpr):
    """The head's halves as the first pass turned them (`_turn_heads`; qkv's own without tables): the near pair
    from ptr and, with FAR, the far pair from far_ptr (same layout; else the near pair again)."""
    a, b = _pair(ptr, base, t, L, s_l, col, offs_p, P, ROWS)
    fa, fb = a, b
    if FAR:
        fa, fb = _pair(far_ptr, base, t, L, s_l, col, offs_p, P, ROWS)
    return a, b, fa, fb


@triton.jit
def _back(ga, gb, fa, fb, t, L, offs_p, P, rot_ptr, near, far, ROTARY: tl.constexpr, FAR: tl.constexpr):
    """The gradients of the turned halves (near: ga, gb; far: fa, fb), float32 [len(t), BP], carried back to the
    unturned ones and summed."""
    if ROTARY:
        ga, gb = _turn(ga, gb, rot_ptr, near, t, L, offs_p, P, -1.0, True)
    if FAR:
        fa, fb = _turn(fa, fb, rot_ptr, far, t, L, offs_p, P, -1.0, True)
        ga, gb = ga + fa, gb + fb
    return ga, gb


@triton.jit
def _store_rows(ptr, base, t, L, s_l, col, offs, width, x):
    mask = (t[:, None] < L) & (offs[None, :] < width)
    tl.store(ptr + base + t.to(tl.int64)[:, None] * s_l + col + offs[None, :], x.to(ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _whole(ptr, base, t, L, s_l, col, offs_d, D, far_ptr, FAR: tl.constexpr, ROWS: tl.constexpr):
    """A head's D columns at positions t as one [len(t), 2·BP] tile (ROWS) or transposed, for the scores: the near
    tile from ptr and, with FAR, the far one from far_ptr (else the near one again)."""
    if ROWS:
        x = _rows(ptr, base, t, L, s_l, col, offs_d, D)
    else:
        x = _cols(ptr, base, t, L, s_l, col, offs_d, D)
    xf = x
    if FAR:
        if ROWS:
            xf = _rows(far_ptr, base, t, L, s_l, col, offs_d, D)
        else:
            xf = _cols(far_ptr, base, t, L, s_l, col, offs_d, D)
    return x, xf


@triton.jit
def _scores(q, qf, k, kf, i, j, near_all, far_all, rerope_window, PRECISION: tl.constexpr, FAR: tl.constexpr):
    """q·k, [len(i), len(j)] (or its transpose, with the operands swapped by the caller), one dot over the head's
    whole width; with FAR, pairs at distance i − j ≥ rerope_window score the far-turned tiles instead. near_all /
    far_all: whether every pair of the tile is near / far (then only that branch's product is formed)."""
    if FAR:
        if far_all:
            s = tl.dot(qf, kf, input_precision=PRECISION)
        elif near_all:
            s = tl.dot(q, k, input_precision=PRECISION)
        else:
            s = tl.where(i - j < rerope_window, tl.dot(q, k, input_precision=PRECISION),
                         tl.dot(qf, kf, input_precision=PRECISION))
    else:
        s = tl.dot(q, k, input_precision=PRECISION)
    return s


@triton.jit
def _accumulate(ds, a, b, fa, fb, ga, gb, gfa, gfb, i, j, near_all, far_all, rerope_window,
                PRECISION: tl.constexpr, FAR: tl.constexpr):
    """A backward step's products: (ga, gb) += ds·(a, b), the near-turned halves; with FAR, the pairs at distance
    i − j ≥ rerope_window go to (gfa, gfb) += ds·(fa, fb) instead (ds and the positions broadcast as in _scores;
    a tile of near pairs only, or of far ones only, forms only its own products)."""
    if FAR:
        if far_all:
            gfa = tl.dot(ds.to(a.dtype), fa, gfa, input_precision=PRECISION)
            gfb = tl.dot(ds.to(a.dtype), fb, gfb, input_precision=PRECISION)
        elif near_all:
            ga = tl.dot(ds.to(a.dtype), a, ga, input_precision=PRECISION)
            gb = tl.dot(ds.to(a.dtype), b, gb, input_precision=PRECISION)
        else:
            near = i - j < rerope_window
            far = tl.where(near, 0.0, ds).to(a.dtype)
            ds = tl.where(near, ds, 0.0).to(a.dtype)
            gfa = tl.dot(far, fa, gfa, input_precision=PRECISION)
            gfb = tl.dot(far, fb, gfb, input_precision=PRECISION)
            ga = tl.dot(ds, a, ga, input_precision=PRECISION)
            gb = tl.dot(ds, b, gb, input_precision=PRECISION)
    else:
        ga = tl.dot(ds.to(a.dtype), a, ga, input_precision=PRECISION)
        gb = tl.dot(ds.to(a.dtype), b, gb, input_precision=PRECISION)
    return ga, gb, gfa, gfb


@triton.jit
def _logits(s, i, j, L, qk_scale, slope2, window, ALIBI: tl.constexpr, WINDOW: tl.constexpr):
    """Scores in base-2 units and which of them count, for query positions i and key positions j (broadcast
    against each other: [BM, 1] and [1, BN], or transposed)."""
    s = s * qk_scale
    if ALIBI:
        s = s - slope2 * (i - j).to(tl.float32)
    keep = (j <= i) & (i < L) & (j < L)
    if WINDOW:
        keep = keep & (i - j < window)
    return s, keep


@triton.jit
def _softmax_step(s, keep, m_i, l_i):
    """One step of the online softmax in base 2 over the rows of s [BM, BN] (entries where keep is False left
    out): (p, alpha, m_new, l_new), the new running max and sum, p = 2^(s − m_new), alpha = 2^(m_i − m_new) to
    rescale what was summed so far. A row that has seen nothing yet (max still −inf) adds nothing."""
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _program(L, BLOCK: tl.constexpr):
    """(batch row · head, first position of the block) of this program: one grid axis (a second holds at most
    65535, fewer than a large pack's batch rows · heads), each head's blocks launched one after another so that
    their reads of the same k and v meet in L2."""
    n_blocks = tl.cdiv(L, BLOCK)
    pid = tl.program_id(0).to(tl.int64)
    return pid // n_blocks, (pid % n_blocks).to(tl.int32) * BLOCK


@triton.jit
def _slope(slopes_ptr, b, s_sb, h, ALIBI: tl.constexpr):
    """Head h's ALiBi slope in base-2 units (as the scores), 0 without ALiBi."""
    slope2 = 0.0
    if ALIBI:
        slope2 = tl.load(slopes_ptr + b * s_sb + h).to(tl.float32) * 1.4426950408889634
    return slope2


# --- kernels ---------------------------------------------------------------------------------------------------
# rot_ptr: the turn tables [8, L, P] float32, (cos, sin) of: queries near, keys near, queries far, keys far;
# qkv_ptr in the kernels: the turned copy when there are tables (far_ptr its far twin), else qkv itself

@triton.jit
def _forward(qkv_ptr, far_ptr, slopes_ptr, o_ptr, lse_ptr, L, H, G, P, s_b, s_l, s_sb, qk_scale, window,
             rerope_window, BM: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr, FAR: tl.constexpr,
             ALIBI: tl.constexpr, WINDOW: tl.constexpr, PRECISION: tl.constexpr):
    bh, m0 = _program(L, BM)
    b, h = bh // H, bh % H
    g = h // (H // G)
    D = 2 * P
    base = b * s_b
    offs_m, offs_n, offs_p, offs_d = m0 + tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BP), tl.arange(0, 2 * BP)
    q, qf = _whole(qkv_ptr, base, offs_m, L, s_l, h * D, offs_d, D, far_ptr, FAR, True)
    slope2 = _slope(slopes_ptr, b, s_sb, h, ALIBI)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, 2 * BP], dtype=tl.float32)
    lo = 0
    if WINDOW:
        lo = tl.maximum(m0 - window + 1, 0) // BN * BN
    hi = tl.minimum(m0 + BM, L)
    for n0 in range(lo, hi, BN):
        t = n0 + offs_n
        kT, kfT = _whole(qkv_ptr, base, t, L, s_l, (H + g) * D, offs_d, D, far_ptr, FAR, False)
        v = _rows(qkv_ptr, base, t, L, s_l, (H + G + g) * D, offs_d, D)  # [BN, 2·BP]
        s = _scores(q, qf, kT, kfT, offs_m[:, None], t[None, :],
                    m0 + BM - 1 - n0 < rerope_window, m0 - n0 - BN + 1 >= rerope_window, rerope_window, PRECISION,
                    FAR)
        s, keep = _logits(s, offs_m[:, None], t[None, :], L, qk_scale, slope2, window, ALIBI, WINDOW)
        p, alpha, m_i, l_i = _softmax_step(s, keep, m_i, l_i)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    _store_rows(o_ptr, b * L * H * D, offs_m, L, H * D, h * D, offs_d, D, o)
    tl.store(lse_ptr + bh * L + offs_m, m_i + tl.log2(l_safe), mask=offs_m < L)


@triton.jit
def _grad_q(qkv_ptr, far_ptr, rot_ptr, slopes_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, L, H, G, P,
            s_b, s_l, s_sb, qk_scale, scale, window, rerope_window, BM: tl.constexpr, BN: tl.constexpr,
            BP: tl.constexpr, ROTARY: tl.constexpr, FAR: tl.constexpr, ALIBI: tl.constexpr, WINDOW: tl.constexpr,
            PRECISION: tl.constexpr):
    bh, m0 = _program(L, BM)
    b, h = bh // H, bh % H
    g = h // (H // G)
    D = 2 * P
    base = b * s_b
    o_base = b * L * H * D
    offs_m, offs_n, offs_p, offs_d = m0 + tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BP), tl.arange(0, 2 * BP)
    q, qf = _whole(qkv_ptr, base, offs_m, L, s_l, h * D, offs_d, D, far_ptr, FAR, True)
    do = _rows(do_ptr, o_base, offs_m, L, H * D, h * D, offs_d, D)  # [BM, 2·BP]
    o = _rows(o_ptr, o_base, offs_m, L, H * D, h * D, offs_d, D)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(delta_ptr + bh * L + offs_m, delta, mask=offs_m < L)
    lse = tl.load(lse_ptr + bh * L + offs_m, mask=offs_m < L, other=0.0)
    slope2 = _slope(slopes_ptr, b, s_sb, h, ALIBI)
    dqa = tl.zeros([BM, BP], dtype=tl.float32)
    dqb = tl.zeros([BM, BP], dtype=tl.float32)
    dqfa = tl.zeros([BM, BP], dtype=tl.float32)
    dqfb = tl.zeros([BM, BP], dtype=tl.float32)
    lo = 0
    if WINDOW:
        lo = tl.maximum(m0 - window + 1, 0) // BN * BN
    hi = tl.minimum(m0 + BM, L)
    for n0 in range(lo, hi, BN):
        t = n0 + offs_n
        kT, kfT = _whole(qkv_ptr, base, t, L, s_l, (H + g) * D, offs_d, D, far_ptr, FAR, False)
        ka, kb, kfa, kfb = _halves(qkv_ptr, base, t, L, s_l, (H + g) * D, offs_p, P, far_ptr, FAR, True)
        vT = _cols(qkv_ptr, base, t, L, s_l, (H + G + g) * D, offs_d, D)  # [2·BP, BN]
        near_all = m0 + BM - 1 - n0 < rerope_window
        far_all = m0 - n0 - BN + 1 >= rerope_window
        s = _scores(q, qf, kT, kfT, offs_m[:, None], t[None, :], near_all, far_all, rerope_window, PRECISION,
                    FAR)
        s, keep = _logits(s, offs_m[:, None], t[None, :], L, qk_scale, slope2, window, ALIBI, WINDOW)
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        dqa, dqb, dqfa, dqfb = _accumulate(p * (dp - delta[:, None]), ka, kb, kfa, kfb, dqa, dqb, dqfa, dqfb,
                                           offs_m[:, None], t[None, :], near_all, far_all, rerope_window, PRECISION,
                                           FAR)
    dqa, dqb = _back(dqa * scale, dqb * scale, dqfa * scale, dqfb * scale, offs_m, L, offs_p, P, rot_ptr, 0, 4,
                     ROTARY, FAR)
    d_base = b * L * (H + 2 * G) * D
    _store_rows(dqkv_ptr, d_base, offs_m, L, (H + 2 * G) * D, h * D, offs_p, P, dqa)
    _store_rows(dqkv_ptr, d_base, offs_m, L, (H + 2 * G) * D, h * D + P, offs_p, P, dqb)


@triton.jit
def _grad_kv(qkv_ptr, far_ptr, rot_ptr, slopes_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, L, H, G, P,
             s_b, s_l, s_sb, qk_scale, scale, window, rerope_window, BM: tl.constexpr, BN: tl.constexpr,
             BP: tl.constexpr, ROTARY: tl.constexpr, FAR: tl.constexpr, ALIBI: tl.constexpr, WINDOW: tl.constexpr,
             PRECISION: tl.constexpr):
    bg, n0 = _program(L, BN)
    b, g = bg // G, bg % G
    D = 2 * P
    base = b * s_b
    o_base = b * L * H * D
    offs_m, offs_n, offs_p, offs_d = tl.arange(0, BM), n0 + tl.arange(0, BN), tl.arange(0, BP), tl.arange(0, 2 * BP)
    k, kf = _whole(qkv_ptr, base, offs_n, L, s_l, (H + g) * D, offs_d, D, far_ptr, FAR, True)
    v = _rows(qkv_ptr, base, offs_n, L, s_l, (H + G + g) * D, offs_d, D)  # [BN, 2·BP]
    dka = tl.zeros([BN, BP], dtype=tl.float32)
    dkb = tl.zeros([BN, BP], dtype=tl.float32)
    dkfa = tl.zeros([BN, BP], dtype=tl.float32)
    dkfb = tl.zeros([BN, BP], dtype=tl.float32)
    dv = tl.zeros([BN, 2 * BP], dtype=tl.float32)
    lo = n0 // BM * BM
    hi = L
    if WINDOW:
        hi = tl.minimum(n0 + BN + window - 1, L)
    group = H // G
    for hh in range(0, group):
        h = g * group + hh
        slope2 = _slope(slopes_ptr, b, s_sb, h, ALIBI)
        for m0 in range(lo, hi, BM):
            t = m0 + offs_m
            qT, qfT = _whole(qkv_ptr, base, t, L, s_l, h * D, offs_d, D, far_ptr, FAR, False)
            qa, qb, qfa, qfb = _halves(qkv_ptr, base, t, L, s_l, h * D, offs_p, P, far_ptr, FAR, True)
            do = _rows(do_ptr, o_base, t, L, H * D, h * D, offs_d, D)  # [BM, 2·BP]
            doT = _cols(do_ptr, o_base, t, L, H * D, h * D, offs_d, D)  # [2·BP, BM]
            row = (b * H + h) * L + t
            lse = tl.load(lse_ptr + row, mask=t < L, other=0.0)
            delta = tl.load(delta_ptr + row, mask=t < L, other=0.0)
            near_all = m0 + BM - 1 - n0 < rerope_window
            far_all = m0 - n0 - BN + 1 >= rerope_window
            # sᵀ [BN (j), BM (i)]: the keys' halves first
            sT = _scores(k, kf, qT, qfT, t[None, :], offs_n[:, None], near_all, far_all, rerope_window, PRECISION,
                         FAR)
            sT, keep = _logits(sT, t[None, :], offs_n[:, None], L, qk_scale, slope2, window, ALIBI, WINDOW)
            pT = tl.where(keep, tl.exp2(sT - lse[None, :]), 0.0)
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
            dpT = tl.dot(v, doT, input_precision=PRECISION)
            dka, dkb, dkfa, dkfb = _accumulate(pT * (dpT - delta[None, :]), qa, qb, qfa, qfb, dka, dkb, dkfa, dkfb,
                                               t[None, :], offs_n[:, None], near_all, far_all, rerope_window,
                                               PRECISION, FAR)
    dka, dkb = _back(dka * scale, dkb * scale, dkfa * scale, dkfb * scale, offs_n, L, offs_p, P, rot_ptr, 2, 6,
                     ROTARY, FAR)
    d_base = b * L * (H + 2 * G) * D
    width = (H + 2 * G) * D
    _store_rows(dqkv_ptr, d_base, offs_n, L, width, (H + g) * D, offs_p, P, dka)
    _store_rows(dqkv_ptr, d_base, offs_n, L, width, (H + g) * D + P, offs_p, P, dkb)
    _store_rows(dqkv_ptr, d_base, offs_n, L, width, (H + G + g) * D, offs_d, D, dv)


@triton.jit
def _turn_heads(qkv_ptr, rot_ptr, out_ptr, L, H, G, P, s_b, s_l, s_ob, s_ol, q_table, BT: tl.constexpr,
                BP: tl.constexpr, COPY_V: tl.constexpr):
    """The op's first pass when it rotates: one program per (batch row · block of BT positions, head) writes the
    head's halves turned by its table (q_table for the H query heads, q_table + 2 for the G key heads) into out,
    in qkv's layout; with COPY_V the value heads (program axis 1 ≥ H + G) are copied as they are, so that out
    serves the kernels alone."""
    n_blocks = tl.cdiv(L, BT)
    pid = tl.program_id(0).to(tl.int64)
    b, t = pid // n_blocks, (pid % n_blocks).to(tl.int32) * BT + tl.arange(0, BT)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BP)
    col = head * 2 * P
    if head < H + G:
        a = _rows(qkv_ptr, b * s_b, t, L, s_l, col, offs_p, P)
        c = _rows(qkv_ptr, b * s_b, t, L, s_l, col + P, offs_p, P)
        a, c = _turn(a, c, rot_ptr, tl.where(head < H, q_table, q_table + 2), t, L, offs_p, P, 1.0, True)
        _store_rows(out_ptr, b * s_ob, t, L, s_ol, col, offs_p, P, a)
        _store_rows(out_ptr, b * s_ob, t, L, s_ol, col + P, offs_p, P, c)
    elif COPY_V:
        offs_d = tl.arange(0, 2 * BP)
        _store_rows(out_ptr, b * s_ob, t, L, s_ol, col, offs_d, 2 * P,
                    _rows(qkv_ptr, b * s_b, t, L, s_l, col, offs_d, 2 * P))


# --- host ------------------------------------------------------------------------------------------------------

def _blocks(table: dict, d: int, length: int, dtype: torch.dtype) -> tuple[int, int, dict]:
    bm, bn, warps, stages = table[64 if d <= 64 else 128]
    fit = max(16, triton.next_power_of_2(length))  # short sequences: no block much longer than the sequence
    return min(bm, fit), min(bn, fit), dict(num_warps=warps, num_stages=1 if dtype == torch.float32 else stages)


def _flags(q, rot, slopes, window):
    """The kernels' constexpr switches (ROTARY: gradients turned back on the way out; the forward reads turned
    inputs and needs no tables)."""
    return dict(ROTARY=rot is not None, FAR=rot is not None and rot.shape[0] == 8, ALIBI=slopes is not None,
                WINDOW=window is not None,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")  # tf32 means the native bf16 dot here


def _slope_stride(slopes) -> int:
    """ALiBi's slopes are [H] (shared by every batch row) or [B, H] (a pack's members' own, one row per example)."""
    return slopes.shape[-1] if slopes is not None and slopes.dim() == 2 else 0


class _CausalAttention(torch.autograd.Function):
    """(o [B, L, H·D], lse [B·H, L] float32, turned: both kept for the backward, not differentiable) from qkv
    [B, L, (H + 2G)·D]. rot: the turn tables, float32 [4, L, D/2] (cos, sin of the queries, then of the keys) or
    [8, L, D/2] (then the far ones, used at distances ≥ rerope_window), or None; slopes [H] float32 or None; window
    an int or None. turned: qkv with q and k turned by the near tables ([0], values copied) and by the far ones
    ([1], ReRoPE's), written by the first pass and read by every kernel after it (an empty tensor without tables).
    torch.func.vmap over it folds the vmap dimension into B: one launch per pack (the tables shared by the
    members; slopes may be each member's own, as a pack's stacked buffers are)."""

    @staticmethod
    def forward(qkv, rot, slopes, n_heads, n_kv_heads, window, rerope_window, scale):
        qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
        B, L, W = qkv.shape
        H, G = n_heads, n_kv_heads
        D = W // (H + 2 * G)
        P = D // 2
        BP = max(16, triton.next_power_of_2(P))
        turned = qkv.new_empty(0, B, 0, 0)
        if rot is not None:
            turned = torch.empty(rot.shape[0] // 4, B, L, W, dtype=qkv.dtype, device=qkv.device)
            for i, out in enumerate(turned):  # near (the values copied beside them), then far
                _turn_heads[(B * triton.cdiv(L, TURN_BLOCK), H + G + (G if i == 0 else 0))](
                    qkv, rot, out, L, H, G, P, qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1), 4 * i,
                    BT=TURN_BLOCK, BP=BP, COPY_V=i == 0, num_warps=4)
        src = turned[0] if rot is not None else qkv
        bm, bn, launch = _blocks(FORWARD, D, L, qkv.dtype)
        o = torch.empty(B, L, H * D, dtype=qkv.dtype, device=qkv.device)
        lse = torch.empty(B * H, L, dtype=torch.float32, device=qkv.device)
        _forward[(triton.cdiv(L, bm) * B * H,)](
            src, turned[-1] if rot is not None else src, slopes if slopes is not None else qkv, o, lse, L, H, G, P,
            src.stride(0), src.stride(1), _slope_stride(slopes), scale * LOG2E, window or 0, rerope_window or 0,
            BM=bm, BN=bn, BP=BP, **{k: v for k, v in _flags(qkv, rot, slopes, window).items() if k != "ROTARY"},
            **launch)
        return o, lse, turned

    @staticmethod
    def setup_context(ctx, inputs, output):
        qkv, rot, slopes, n_heads, n_kv_heads, window, rerope_window, scale = inputs
        o, lse, turned = output
        ctx.mark_non_differentiable(lse, turned)
        ctx.save_for_backward(qkv if rot is None else turned, rot, slopes, o, lse)
        ctx.heads, ctx.windows, ctx.scale = (n_heads, n_kv_heads), (window, rerope_window), scale

    @staticmethod
    def backward(ctx, do, _dlse, _dturned):
        src, rot, slopes, o, lse = ctx.saved_tensors
        near, far = (src, src) if rot is None else (src[0], src[-1])
        near = near if near.stride(-1) == 1 else near.contiguous()
        (H, G), (window, rerope_window), scale = ctx.heads, ctx.windows, ctx.scale
        do = do.to(o.dtype).contiguous()  # the kernels read do with o's (contiguous) strides
        B, L, W = near.shape
        D = W // (H + 2 * G)
        P = D // 2
        bm, bn, launch = _blocks(BACKWARD, D, L, near.dtype)
        delta = torch.empty(B * H, L, dtype=torch.float32, device=near.device)
        dqkv = torch.empty(B, L, W, dtype=near.dtype, device=near.device)
        tables = (far if rot is not None else near, rot if rot is not None else near,
                  slopes if slopes is not None else near)
        common = dict(BM=bm, BN=bn, BP=max(16, triton.next_power_of_2(P)), **_flags(near, rot, slopes, window),
                      **launch)
        scalars = (L, H, G, P, near.stride(0), near.stride(1), _slope_stride(slopes), scale * LOG2E, scale,
                   window or 0, rerope_window or 0)
        _grad_q[(triton.cdiv(L, bm) * B * H,)](near, *tables, o, do, lse, delta, dqkv, *scalars, **common)
        _grad_kv[(triton.cdiv(L, bn) * B * G,)](near, *tables, do, lse, delta, dqkv, *scalars, **common)
        return dqkv, None, None, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, qkv, rot, slopes, n_heads, n_kv_heads, window, rerope_window, scale):
        if in_dims[1] is not None:
            raise NotImplementedError("turn tables of their own per pack member")
        size = info.batch_size
        qkv = fold(qkv, in_dims[0], size)
        if in_dims[2] is not None:  # [K, H] -> one row per example of the folded batch, [K·B, H]
            if slopes.dim() != 2:
                raise NotImplementedError("ALiBi slopes batched other than per pack member")
            slopes = slopes.movedim(in_dims[2], 0).repeat_interleave(qkv.shape[0] // size, 0).contiguous()
        o, lse, turned = _CausalAttention.apply(qkv, rot, slopes, n_heads, n_kv_heads, window, rerope_window, scale)
        return (o.view(size, -1, *o.shape[1:]), lse.view(size, -1, lse.shape[-1]),
                turned.view(turned.shape[0], size, turned.shape[1] // size, *turned.shape[2:])), (0, 0, 1)


def causal_attention_kernel(qkv, n_heads, n_kv_heads, tables, far, window, slopes, scale) -> torch.Tensor:
    """o [B, L, H·D] (qkv's dtype) from qkv [B, L, (H + 2G)·D], D even (shapes checked by the caller). tables: None
    or (q_cos, q_sin, k_cos, k_sin), each [L, D/2]; far: None or (rerope_window, its four tables). Tables and
    slopes [H] go to float32 here (one [4 or 8, L, D/2] tensor). Runs under torch.func.vmap (one launch for all K
    members)."""
    rot = None
    if tables is not None:
        rot = torch.stack([t.to(device=qkv.device, dtype=torch.float32)
                           for t in (*tables, *(far[1:] if far is not None else ()))])
    if slopes is not None:
        slopes = slopes.to(device=qkv.device, dtype=torch.float32).contiguous()
    return _CausalAttention.apply(qkv, rot, slopes, n_heads, n_kv_heads, window,
                                  far[0] if far is not None else None, float(scale))[0]
