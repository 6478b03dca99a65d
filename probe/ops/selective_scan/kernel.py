"""Mamba's selective scan as Triton kernels, forward and backward.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t,     y_t = h_t C_t + D u_t          (per batch row b)

with u, Δ: [B, L, D] (Δ already positive), A: [D, N], B_t, C_t: [B, L, N], D: [D] or None: the function of
`reference.selective_scan_ref`, which the dispatch rule (probe.ops.dispatch) runs wherever this kernel does not.
Everything is computed in float32 whatever the input dtype (bf16 under autocast); y comes back in u's dtype.

One program owns one batch row and a block of BLOCK_D channels (32 at training sizes) and walks the sequence, its
[N, BLOCK_D] state in the registers of one warp: each thread holds 4 adjacent channels × 4 state slots, 16 of the
block's 512 elements. Backward walks the sequence in reverse with the state gradient dh in registers:
    dh_t   = C_t g_t + exp(Δ_{t+1} A) dh_{t+1}                       (g = dy)
    du_t   = Δ_t Σ_n dh_t B_t + D g_t
    dΔ_t   = Σ_n A dh_t exp(Δ_t A) h_{t-1} + u_t Σ_n dh_t B_t
    dA    += Δ_t dh_t exp(Δ_t A) h_{t-1}          dD += g_t u_t
    dB_t   = Σ_d dh_t Δ_t u_t                      dC_t = Σ_d h_t g_t
It needs h_{t-1} at every step, in reverse. The forward, when a gradient is needed, stores the state at the end of
every CHUNK = 8 steps ([B, L/8, N, D] float32). The backward restarts each chunk from its checkpoint and keeps
half a chunk's four states in registers: for the upper half it first advances four steps through the lower half
(states not kept), recomputes the upper half's states, walks them in reverse, then recomputes the lower half's from
the checkpoint and walks those: 2.5 exponentials an element in all (the previous kernels: 2), and no state leaves
the registers. dC is formed while recomputing, the rest in the reverse walk. The sums over channels (dB, dC) and
over rows and steps (dA, dD) cross programs: each program writes its partial sums and the host adds them, so
nothing needs atomics and results do not depend on timing.

Layout, which the code steers because Triton's defaults cost shared-memory round trips (and a barrier) at every
step: a state is [NL, NR, BLOCK_D] (slot n = NR·l + r: l over NL = 4 lanes, r over NR = 4 registers; channels 4 a
thread × 8 lanes), a row of u, Δ or dy [NL, 1, BLOCK_D] (one vector load a thread), a row of B or C [NL, NR, 1] (a
tensor smaller than the warp, which Triton may rematerialise in any layout). Channel offsets are written
`4·(i // 4) + i % 4` (values unchanged) so that every channel-contiguous load and store is seen as runs of 4 and
gets that one layout. dB_t and dC_t (a sum over the channel lanes, the same on all 8 of them) go into a chunk's
[CHUNK, NL, NR] tile whose step axis lies on those 8 lanes, so lane group s keeps step s: one store a chunk and no
layout conversion (storing each step's [NL, NR] sum cost a shared-memory round trip each). The row sums over state
slots cost 2 shuffle rounds, the sums over channels 3. The backward's three passes over a chunk's inputs number
their steps apart by an opaque 0 (program_id(2)), or the compiler would keep each step's addresses from the first
pass to the last. exp(ΔA) is exp2(Δ · A log2 e): one MUFU op (tl.exp adds a range fix-up of 4 instructions).

Compiled for sm_90 (Triton 3.6, ptxas) at Mamba's shapes (N 16, 32 channels a program, bf16): forward 80
registers, ~174 instructions a step (16 MUFU, 8 SHFL, no barrier); backward 255 registers (10 spill reloads a
chunk), ~539 instructions a step (40 MUFU, 40 SHFL, no barrier). The previous kernels, kept to time against
(`KERNELS = "previous"`: `_scan_fwd_previous`, `_scan_bwd_previous`): forward 79 registers, ~269 instructions and 3
barriers a step; backward 230 registers, ~740 instructions and 9 barriers a step (recompute 189 + reverse 551),
each chunk's states written to a per-program float32 scratch in global memory and read back (8 bytes an element
and step: 4.3 GB through L2 at [1024, 256, 256]); on the H200 they took 1.42 ms forward and 5.62 ms backward
there. `scratch/scan_bench.py` times both. No tl.dot anywhere: the work is elementwise and row sums.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..dispatch import fold
from .reference import check

KERNELS = "registers"  # or "previous": the scratch-based kernels these replaced, kept to time against
NUM_WARPS = 1  # a program's state is BLOCK_D x N: 16 registers a thread of one warp
CHUNK = 8  # steps between the forward's checkpoints; the backward walks each as two halves of 4 (written out)
LN2 = tl.constexpr(math.log(2.0))  # globals a kernel reads must be constexpr
LOG2E = tl.constexpr(1.0 / math.log(2.0))


def block_d(rows: int, d: int) -> int:
    """Channels per program: the widest of 32, 16, 8 that still gives >= 1024 programs, else 4 (short batches
    still spread over the SMs). Measured on the H200 for the previous kernels (bf16, N = 16, fwd+bwd): at
    [2048, 256, 256] one warp with 32 channels was fastest; wider blocks load B_t, C_t once for more channels and
    halve the partial sums of dB, dC."""
    for width in (32, 16, 8):
        if rows * triton.cdiv(d, width) >= 1024:
            return width
    return 4


# ---------------------------------------------------------------------------------------------------------------
# kernels. Shapes: a state is [NL, NR, BLOCK_D] (state slot n = NR·l + r: l over NL lanes, r over NR registers), a
# row of u, Δ, dy or an output [NL, 1, BLOCK_D] (the same values on the NL lanes of l), a row of B or C [NL, NR, 1],
# a chunk of partial sums of dB or dC [CHUNK, NL, NR] (step s on the lanes that hold different channels). Few
# helpers a step: under TRITON_INTERPRET each call of a jit function costs as much as a dozen tensor ops.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _block(D, N, sb_n, sc_n, NL: tl.constexpr, NR: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's channel offsets chan [NL, 1, BLOCK_D] and state slots slot = NR·l + r [NL, NR, 1] (B's and C's
    offsets slot·sb_n, slot·sc_n), their bounds masks, zeros of their shapes, and the mask of the lanes that store
    a channel row (those of slot lane l = 0)."""
    lane = tl.arange(0, BLOCK_D)
    d3 = (tl.program_id(1) * BLOCK_D + (lane // 4) * 4 + lane % 4)[None, None, :]  # = the lane; runs of 4 (see above)
    l3 = tl.arange(0, NL)[:, None, None]
    zero_d, slot = l3 * 0 + d3 * 0, l3 * NR + tl.arange(0, NR)[None, :, None]
    chan, zero_n = d3 + zero_d, slot * 0
    return chan, slot, slot * sb_n, slot * sc_n, chan < D, slot < N, zero_d, zero_n, (chan < D) & (l3 == 0)


@triton.jit
def _inputs(t, L, u_row, delta_row, dy_row, b_row, c_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b, slot_c, in_d,
            in_n, zero_d, zero_n, WITH_DY: tl.constexpr, WITH_C: tl.constexpr):
    """Step t's u, Δ, dy [NL, 1, BLOCK_D] and B, C [NL, NR, 1] in float32, zeros past L (dy and C only if asked:
    else u and B stand in). Channels contiguous; B and C any strides (x_proj's column slices are read in place)."""
    live_d = in_d & (zero_d + t < L)  # (t as a tensor: the interpreter takes no scalar mask)
    live_n = in_n & (zero_n + t < L)
    u = tl.load(u_row + t * su_t + chan, mask=live_d, other=0.0).to(tl.float32)
    dt = tl.load(delta_row + t * sd_t + chan, mask=live_d, other=0.0).to(tl.float32)
    b = tl.load(b_row + t * sb_t + slot_b, mask=live_n, other=0.0).to(tl.float32)
    g, c = u, b
    if WITH_DY:
        g = tl.load(dy_row + t * sg_t + chan, mask=live_d, other=0.0).to(tl.float32)
    if WITH_C:
        c = tl.load(c_row + t * sc_t + slot_c, mask=live_n, other=0.0).to(tl.float32)
    return u, dt, g, b, c


@triton.jit
def _scan_fwd(u_ptr, delta_ptr, at_ptr, b_ptr, c_ptr, dskip_ptr, y_ptr, ckpt_ptr, L, D, n_chunks, rows_per_group,
              su_r, su_t, sd_r, sd_t, sb_r, sb_t, sb_n, sc_r, sc_t, sc_n,
              N: tl.constexpr, NL: tl.constexpr, NR: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              HAS_D: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chan, slot, slot_b, slot_c, in_d, in_n, zero_d, zero_n, out_d = _block(D, N, sb_n, sc_n, NL, NR, BLOCK_D)
    state = slot * D + chan  # [NL, NR, BLOCK_D] offsets of a [N, D] state (A^T, a checkpoint)
    in_nd = in_n & in_d
    group = row // rows_per_group  # the rows of one group (one packed model) share A and D
    a2 = tl.load(at_ptr + group * N * D + state, mask=in_nd, other=0.0).to(tl.float32) * LOG2E  # exp(ΔA) = 2^(Δ a2)
    if HAS_D:
        skip = tl.load(dskip_ptr + group * D + chan, mask=in_d, other=0.0).to(tl.float32)
    u_row, delta_row, y_row = u_ptr + row * su_r, delta_ptr + row * sd_r, y_ptr + row * L * D
    b_row, c_row = b_ptr + row * sb_r, c_ptr + row * sc_r
    h = tl.zeros([NL, NR, BLOCK_D], dtype=tl.float32)
    for chunk in range(n_chunks):
        for j in tl.static_range(CHUNK):  # unrolled: later steps' loads go out while earlier steps compute
            t = chunk * CHUNK + j
            u, dt, _, b, c = _inputs(t, L, u_row, delta_row, u_row, b_row, c_row, su_t, sd_t, su_t, sb_t, sc_t, chan,
                                     slot_b, slot_c, in_d, in_n, zero_d, zero_n, False, True)
            h = tl.exp2(dt * a2) * h + (dt * u) * b  # exp(ΔA) in one MUFU op (tl.exp adds a range fix-up)
            y = tl.sum(tl.sum(h * c, axis=1, keep_dims=True), axis=0, keep_dims=True)  # Σ_n: in thread, 2 shuffles
            if HAS_D:
                y = y + skip * u
            else:
                y = tl.broadcast_to(y, [NL, 1, BLOCK_D])
            tl.store(y_row + t * D + chan, y.to(y_ptr.dtype.element_ty), mask=out_d & (zero_d + t < L))
        if STORE_CHECKPOINTS:  # the state at the end of the chunk: where the backward restarts from
            tl.store(ckpt_ptr + (row * n_chunks + chunk) * N * D + state, h, mask=in_nd)


@triton.jit
def _recompute_step(h, dc, j: tl.constexpr, s8, t0, a2, L, u_row, delta_row, dy_row, b_row, su_t, sd_t, sg_t, sb_t,
                    chan, slot_b, in_d, in_n, zero_d, zero_n):
    """h_t from h_{t-1} at t = t0 + j, and dC_t = Σ_d h_t g_t (this program's channels) put in row j of dc: the sum
    is the same on every lane of a channel group, and channel group j's lanes keep it."""
    u, dt, g, b, _ = _inputs(t0 + j, L, u_row, delta_row, dy_row, b_row, b_row, su_t, sd_t, sg_t, sb_t, sb_t, chan,
                             slot_b, slot_b, in_d, in_n, zero_d, zero_n, True, False)
    h = tl.exp2(dt * a2) * h + (dt * u) * b
    return h, tl.where(s8 == j, tl.sum(h * g, axis=2)[None, :, :], dc)


@triton.jit
def _reverse_step(dh, da, dskip, db, h_prev, j: tl.constexpr, s8, t0, a2, skip, L, u_row, delta_row, dy_row, b_row,
                  c_row, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b, slot_c, in_d, in_n, zero_d,
                  zero_n, out_d, D, HAS_D: tl.constexpr):
    """One step of the reverse walk at t = t0 + j, from dh = exp(Δ_{t+1} A) dh_{t+1} (what reaches h_t from later
    steps) to the same for t − 1; stores du_t, dΔ_t, puts dB_t (this program's channels) in row j of db."""
    t = t0 + j
    u, dt, g, b, c = _inputs(t, L, u_row, delta_row, dy_row, b_row, c_row, su_t, sd_t, sg_t, sb_t, sc_t, chan,
                             slot_b, slot_c, in_d, in_n, zero_d, zero_n, True, True)
    dh = dh + g * c  # the whole gradient of h_t
    carry = dh * tl.exp2(dt * a2)  # its part through h_{t-1}
    w = carry * h_prev  # dh_t exp(Δ_t A) h_{t-1}: dA's and dΔ's state term
    s1 = tl.sum(tl.sum(dh * b, axis=1, keep_dims=True), axis=0, keep_dims=True)  # Σ_n dh_t B_t
    s2 = tl.sum(tl.sum(w * a2, axis=1, keep_dims=True), axis=0, keep_dims=True) * LN2  # Σ_n A dh_t exp(Δ_t A) h_{t-1}
    du = dt * s1
    if HAS_D:
        du += skip * g
        dskip += g * u
    live = out_d & (zero_d + t < L)
    tl.store(du_row + t * D + chan, du.to(du_row.dtype.element_ty), mask=live)
    tl.store(ddelta_row + t * D + chan, (s2 + u * s1).to(ddelta_row.dtype.element_ty), mask=live)
    db = tl.where(s8 == j, tl.sum(dh * (dt * u), axis=2)[None, :, :], db)
    return carry, da + dt * w, dskip, db


@triton.jit
def _reverse_half(h0, J: tl.constexpr, s8, t0, dh, da, dskip, db, dc, a2, skip, L, u_row, delta_row, dy_row, b_row,
                  c_row, zero, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b, slot_c, in_d, in_n,
                  zero_d, zero_n, out_d, D, HAS_D: tl.constexpr):
    """Steps t0 + J .. t0 + J + 3 from h0 = h_{t0+J-1}: recompute their states (dC on the way), walk them back (its
    steps numbered t0 + zero + j: see _scan_bwd)."""
    h1, dc = _recompute_step(h0, dc, J, s8, t0, a2, L, u_row, delta_row, dy_row, b_row, su_t, sd_t, sg_t, sb_t, chan,
                             slot_b, in_d, in_n, zero_d, zero_n)
    h2, dc = _recompute_step(h1, dc, J + 1, s8, t0, a2, L, u_row, delta_row, dy_row, b_row, su_t, sd_t, sg_t, sb_t,
                             chan, slot_b, in_d, in_n, zero_d, zero_n)
    h3, dc = _recompute_step(h2, dc, J + 2, s8, t0, a2, L, u_row, delta_row, dy_row, b_row, su_t, sd_t, sg_t, sb_t,
                             chan, slot_b, in_d, in_n, zero_d, zero_n)
    _, dc = _recompute_step(h3, dc, J + 3, s8, t0, a2, L, u_row, delta_row, dy_row, b_row, su_t, sd_t, sg_t, sb_t,
                            chan, slot_b, in_d, in_n, zero_d, zero_n)
    tv = t0 + zero
    dh, da, dskip, db = _reverse_step(dh, da, dskip, db, h3, J + 3, s8, tv, a2, skip, L, u_row, delta_row, dy_row,
                                      b_row, c_row, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b,
                                      slot_c, in_d, in_n, zero_d, zero_n, out_d, D, HAS_D)
    dh, da, dskip, db = _reverse_step(dh, da, dskip, db, h2, J + 2, s8, tv, a2, skip, L, u_row, delta_row, dy_row,
                                      b_row, c_row, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b,
                                      slot_c, in_d, in_n, zero_d, zero_n, out_d, D, HAS_D)
    dh, da, dskip, db = _reverse_step(dh, da, dskip, db, h1, J + 1, s8, tv, a2, skip, L, u_row, delta_row, dy_row,
                                      b_row, c_row, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b,
                                      slot_c, in_d, in_n, zero_d, zero_n, out_d, D, HAS_D)
    dh, da, dskip, db = _reverse_step(dh, da, dskip, db, h0, J, s8, tv, a2, skip, L, u_row, delta_row, dy_row,
                                      b_row, c_row, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b,
                                      slot_c, in_d, in_n, zero_d, zero_n, out_d, D, HAS_D)
    return dh, da, dskip, db, dc


@triton.jit
def _store_chunk(ptr, t0, L, tile, s8, n2, N: tl.constexpr):
    """A chunk's [CHUNK, NL, NR] tile of float32 partial sums into its [L, N] partial-sum row, from step t0."""
    tl.store(ptr + (t0 + s8) * N + n2, tile, mask=(t0 + s8 < L) & (n2 < N))


@triton.jit
def _scan_bwd(u_ptr, delta_ptr, at_ptr, b_ptr, c_ptr, dskip_ptr, ckpt_ptr, dy_ptr, du_ptr, ddelta_ptr,
              db_part_ptr, dc_part_ptr, dat_part_ptr, dskip_part_ptr, B_rows, L, D, n_chunks, rows_per_group,
              su_r, su_t, sd_r, sd_t, sb_r, sb_t, sb_n, sc_r, sc_t, sc_n, sg_r, sg_t,
              N: tl.constexpr, NL: tl.constexpr, NR: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              HAS_D: tl.constexpr):
    tl.static_assert(CHUNK == 8, "the backward walks a chunk as two halves of 4 steps written out")
    row = tl.program_id(0).to(tl.int64)
    chan, slot, slot_b, slot_c, in_d, in_n, zero_d, zero_n, out_d = _block(D, N, sb_n, sc_n, NL, NR, BLOCK_D)
    state = slot * D + chan  # [NL, NR, BLOCK_D] offsets of a [N, D] state (A^T, a checkpoint, dA's partial sums)
    s8 = tl.arange(0, CHUNK)[:, None, None]  # a chunk's steps, and the slots of its dB, dC tiles [CHUNK, NL, NR]
    n2 = tl.sum(slot, axis=2)[None, :, :]
    in_nd = in_n & in_d
    group = row // rows_per_group  # the rows of one group (one packed model) share A and D
    a2 = tl.load(at_ptr + group * N * D + state, mask=in_nd, other=0.0).to(tl.float32) * LOG2E  # exp(ΔA) = 2^(Δ a2)
    skip = tl.zeros([NL, 1, BLOCK_D], dtype=tl.float32)
    if HAS_D:
        skip = tl.load(dskip_ptr + group * D + chan, mask=in_d, other=0.0).to(tl.float32)
    u_row, delta_row, dy_row = u_ptr + row * su_r, delta_ptr + row * sd_r, dy_ptr + row * sg_r
    b_row, c_row = b_ptr + row * sb_r, c_ptr + row * sc_r
    du_row, ddelta_row = du_ptr + row * L * D, ddelta_ptr + row * L * D
    part = (tl.program_id(1).to(tl.int64) * B_rows + row) * L * N  # partial sums over this program's channels
    db_row, dc_row = db_part_ptr + part, dc_part_ptr + part  # [channel blocks, B, L, N]
    # Each step's inputs are read by up to three passes (advance to the upper half, recompute, reverse walk); each
    # pass numbers the step apart, by an offset that is 0 but opaque to the compiler, or it would compute a step's
    # addresses once and keep them in registers from the first pass to the last.
    zero = tl.program_id(2) * 64  # (a multiple of 64: the loads keep their alignment)
    dh = tl.zeros([NL, NR, BLOCK_D], dtype=tl.float32)  # exp(Δ_{t+1} A) dh_{t+1}: what reaches h_t from later
    da = tl.zeros_like(dh)
    dskip = tl.zeros_like(skip)
    for i in range(n_chunks):
        chunk = n_chunks - 1 - i
        t0 = chunk * CHUNK
        ckpt = ckpt_ptr + (row * n_chunks + chunk - 1) * N * D + state  # the state before the chunk
        from_ckpt = in_nd & (zero_n + chunk > 0)  # (0 before the first)
        hm = tl.load(ckpt, mask=from_ckpt, other=0.0)
        for j in tl.static_range(4):  # to the upper half's start, through the lower half (states not kept)
            u, dt, _, b, _ = _inputs(t0 + zero + j, L, u_row, delta_row, dy_row, b_row, c_row, su_t, sd_t, sg_t,
                                     sb_t, sc_t, chan, slot_b, slot_c, in_d, in_n, zero_d, zero_n, False, False)
            hm = tl.exp2(dt * a2) * hm + (dt * u) * b
        db = tl.zeros([CHUNK, NL, NR], dtype=tl.float32)
        dc = tl.zeros_like(db)
        dh, da, dskip, db, dc = _reverse_half(hm, 4, s8, t0, dh, da, dskip, db, dc, a2, skip, L, u_row, delta_row,
                                              dy_row, b_row, c_row, 2 * zero, du_row, ddelta_row, su_t, sd_t, sg_t,
                                              sb_t, sc_t, chan, slot_b, slot_c, in_d, in_n, zero_d, zero_n, out_d, D,
                                              HAS_D)
        # the lower half from the checkpoint again (loaded twice rather than held through the upper half)
        dh, da, dskip, db, dc = _reverse_half(tl.load(ckpt + zero, mask=from_ckpt, other=0.0), 0, s8, t0, dh, da,
                                              dskip, db, dc, a2, skip, L, u_row, delta_row, dy_row, b_row, c_row,
                                              2 * zero, du_row, ddelta_row, su_t, sd_t, sg_t, sb_t, sc_t, chan, slot_b,
                                              slot_c, in_d, in_n, zero_d, zero_n, out_d, D, HAS_D)
        _store_chunk(db_row, t0, L, db, s8, n2, N)
        _store_chunk(dc_row, t0, L, dc, s8, n2, N)
    tl.store(dat_part_ptr + row * N * D + state, da, mask=in_nd)
    if HAS_D:
        tl.store(dskip_part_ptr + row * D + chan, dskip, mask=out_d)


# ---------------------------------------------------------------------------------------------------------------
# the previous kernels (KERNELS = "previous"), unchanged but for their names
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _channel_block_previous(pid_d, D, N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's channels and state slots, and their bounds masks."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < D, offs_n < N
    return offs_d, offs_n, mask_d, mask_n, mask_d[:, None] & mask_n[None, :]


@triton.jit
def _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, t, lo, L, offs_d, offs_n, mask_d, mask_n, D,
                N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """u_t, Δ_t [BLOCK_D] and B_t, C_t [BLOCK_N] in float32; zeros unless lo <= t < L (a zero Δ is a no-op step).
    The kernels call it one step ahead of the step they compute, so its loads overlap that step's arithmetic."""
    tok = row * L + t
    in_d = mask_d & (tl.full([BLOCK_D], t, tl.int32) >= lo) & (tl.full([BLOCK_D], t, tl.int32) < L)
    in_n = mask_n & (tl.full([BLOCK_N], t, tl.int32) >= lo) & (tl.full([BLOCK_N], t, tl.int32) < L)
    u = tl.load(u_ptr + tok * D + offs_d, mask=in_d, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + tok * D + offs_d, mask=in_d, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + tok * N + offs_n, mask=in_n, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + tok * N + offs_n, mask=in_n, other=0.0).to(tl.float32)
    return u, dt, b, c


@triton.jit
def _scan_fwd_previous(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, y_ptr, ckpt_ptr, L, D, n_chunks,
                       rows_per_group,
              N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              HAS_D: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_d, offs_n, mask_d, mask_n, mask_dn = _channel_block_previous(tl.program_id(1), D, N, BLOCK_N, BLOCK_D)
    group = row // rows_per_group  # the rows of one group (one packed model) share A and D
    a = tl.load(a_ptr + (group * D + offs_d[:, None]) * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(dskip_ptr + group * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    u, dt, b, c = _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, 0, 0, L, offs_d, offs_n, mask_d, mask_n, D,
                              N, BLOCK_D, BLOCK_N)
    for t in range(L):
        u_next, dt_next, b_next, c_next = _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, t + 1, 0, L, offs_d,
                                                      offs_n, mask_d, mask_n, D, N, BLOCK_D, BLOCK_N)
        h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1)
        if HAS_D:
            y += skip * u
        tl.store(y_ptr + (row * L + t) * D + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
        if STORE_CHECKPOINTS:  # the state at the end of each chunk: where the backward restarts from
            chunk_end = tl.full([BLOCK_D, BLOCK_N], t % CHUNK, tl.int32) == CHUNK - 1
            tl.store(ckpt_ptr + ((row * n_chunks + t // CHUNK) * D + offs_d[:, None]) * N + offs_n[None, :], h,
                     mask=mask_dn & chunk_end)
        u, dt, b, c = u_next, dt_next, b_next, c_next


@triton.jit
def _scan_bwd_previous(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, ckpt_ptr, scratch_ptr, dy_ptr,
              du_ptr, ddelta_ptr, db_part_ptr, dc_part_ptr, da_part_ptr, dskip_part_ptr, B_rows, L, D, n_chunks,
              rows_per_group, N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              HAS_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    dblock = tl.program_id(1)
    offs_d, offs_n, mask_d, mask_n, mask_dn = _channel_block_previous(dblock, D, N, BLOCK_N, BLOCK_D)
    group = row // rows_per_group  # the rows of one group (one packed model) share A and D
    a = tl.load(a_ptr + (group * D + offs_d[:, None]) * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(dskip_ptr + group * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dh = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    da = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dskip = tl.zeros([BLOCK_D], dtype=tl.float32)
    part = (dblock.to(tl.int64) * B_rows + row) * L  # partial sums over this program's channels: [blocks, B, L, N]
    # this program's scratch: the states of one chunk, [CHUNK, BLOCK_D, BLOCK_N]
    slab = (row * tl.num_programs(1) + dblock) * (CHUNK * BLOCK_D * BLOCK_N)
    local = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    for i in range(n_chunks):
        chunk = n_chunks - 1 - i
        start = chunk * CHUNK
        has_start = tl.full([BLOCK_D, BLOCK_N], chunk, tl.int32) > 0
        h0 = tl.load(ckpt_ptr + ((row * n_chunks + chunk - 1) * D + offs_d[:, None]) * N + offs_n[None, :],
                     mask=mask_dn & has_start, other=0.0)  # the state before the chunk (0 before the first)
        # recompute the chunk's states from its checkpoint; steps past L are no-ops (Δ = 0 keeps h)
        h = h0
        u, dt, b, c = _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, start, start, L, offs_d, offs_n, mask_d,
                                  mask_n, D, N, BLOCK_D, BLOCK_N)
        for j in range(CHUNK):
            u_next, dt_next, b_next, c_next = _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, start + j + 1,
                                                                   start,
                                                          L, offs_d, offs_n, mask_d, mask_n, D, N, BLOCK_D, BLOCK_N)
            h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
            tl.store(scratch_ptr + slab + j * (BLOCK_D * BLOCK_N) + local, h)
            u, dt, b, c = u_next, dt_next, b_next, c_next
        tl.debug_barrier()  # the whole program sees the chunk's states before reading them back
        # walk the chunk in reverse; each step's inputs and dy are loaded one step ahead, and h_{t-1} read for
        # step t is h_t of the next
        t = start + CHUNK - 1
        u, dt, b, c = _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, t, start, L, offs_d, offs_n, mask_d,
                                           mask_n,
                                  D, N, BLOCK_D, BLOCK_N)
        g = tl.load(dy_ptr + (row * L + t) * D + offs_d, mask=mask_d & (tl.full([BLOCK_D], t, tl.int32) < L),
                    other=0.0).to(tl.float32)
        h = tl.load(scratch_ptr + slab + (CHUNK - 1) * (BLOCK_D * BLOCK_N) + local)
        for jj in range(CHUNK):
            j = CHUNK - 1 - jj
            t = start + j
            tok = row * L + t
            in_d = mask_d & (tl.full([BLOCK_D], t, tl.int32) < L)
            in_n = mask_n & (tl.full([BLOCK_N], t, tl.int32) < L)
            u_next, dt_next, b_next, c_next = _step_loads_previous(u_ptr, delta_ptr, b_ptr, c_ptr, row, t - 1, start, L,
                                                          offs_d, offs_n, mask_d, mask_n, D, N, BLOCK_D, BLOCK_N)
            prev_in = (tl.full([BLOCK_D], j, tl.int32) > 0) & (tl.full([BLOCK_D], t - 1, tl.int32) < L)
            g_next = tl.load(dy_ptr + (tok - 1) * D + offs_d, mask=mask_d & prev_in, other=0.0).to(tl.float32)
            has_prev = tl.full([BLOCK_D, BLOCK_N], j, tl.int32) > 0
            h_prev = tl.load(scratch_ptr + slab + (j - 1) * (BLOCK_D * BLOCK_N) + local, mask=has_prev, other=0.0)
            h_prev = tl.where(has_prev, h_prev, h0)
            dh += g[:, None] * c[None, :]  # now the whole gradient of h_t
            tl.store(dc_part_ptr + (part + t) * N + offs_n, tl.sum(h * g[:, None], axis=0), mask=in_n)
            decay = tl.exp(dt[:, None] * a)
            ddt = tl.sum(dh * (a * decay * h_prev + u[:, None] * b[None, :]), axis=1)
            da += dh * dt[:, None] * decay * h_prev
            tl.store(db_part_ptr + (part + t) * N + offs_n, tl.sum(dh * (dt * u)[:, None], axis=0), mask=in_n)
            du = tl.sum(dh * dt[:, None] * b[None, :], axis=1)
            if HAS_D:
                du += skip * g
                dskip += g * u
            tl.store(du_ptr + tok * D + offs_d, du.to(du_ptr.dtype.element_ty), mask=in_d)
            tl.store(ddelta_ptr + tok * D + offs_d, ddt.to(ddelta_ptr.dtype.element_ty), mask=in_d)
            dh = dh * decay  # carried to step t - 1 (unchanged past L, where Δ = 0)
            u, dt, b, c, g, h = u_next, dt_next, b_next, c_next, g_next, h_prev
        tl.debug_barrier()  # every read of this chunk's states is done before the next chunk overwrites them
    tl.store(da_part_ptr + (row * D + offs_d[:, None]) * N + offs_n[None, :], da, mask=mask_dn)
    if HAS_D:
        tl.store(dskip_part_ptr + row * D + offs_d, dskip, mask=mask_d)


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when its channels are contiguous (any row and position strides: read in place), else a copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _slot_split(n: int) -> dict:
    """The state slots as NL lanes × NR registers a thread (NL·NR = N rounded up to a power of two)."""
    block_n = triton.next_power_of_2(n)
    return dict(NL=min(4, block_n), NR=block_n // min(4, block_n))


def _forward(u, delta, A, B, C, D, needs_grad):
    """y [B, L, D] and the checkpoints [B, L/CHUNK, N, D] float32 (none without a gradient)."""
    u, delta = _last_dim_contiguous(u), _last_dim_contiguous(delta)
    D = D.contiguous() if D is not None else None
    rows, L, d = u.shape
    n = A.shape[-1]
    at = A.transpose(1, 2).contiguous()  # [G, N, D]: the channels contiguous, like every step tensor
    y = torch.empty(rows, L, d, device=u.device, dtype=u.dtype)
    n_chunks = triton.cdiv(L, CHUNK)
    ckpt = u.new_empty((rows, n_chunks if needs_grad else 0, n, d), dtype=torch.float32)
    bd = block_d(rows, d)
    _scan_fwd[(rows, triton.cdiv(d, bd))](
        u, delta, at, B, C, D if D is not None else at, y, ckpt, L, d, n_chunks, rows // A.shape[0],
        *u.stride()[:2], *delta.stride()[:2], *B.stride(), *C.stride(), N=n, **_slot_split(n), BLOCK_D=bd,
        CHUNK=CHUNK, HAS_D=D is not None, STORE_CHECKPOINTS=needs_grad, num_warps=NUM_WARPS)
    return y, ckpt


def _backward(u, delta, A, B, C, D, ckpt, dy):
    """(du, dΔ, dA, dB, dC, dD) from the forward's checkpoints."""
    u, delta, dy = (_last_dim_contiguous(t) for t in (u, delta, dy))
    D = D.contiguous() if D is not None else None
    rows, L, d = u.shape
    groups, n = A.shape[0], A.shape[-1]
    at = A.transpose(1, 2).contiguous()
    bd = block_d(rows, d)
    n_blocks = triton.cdiv(d, bd)
    du = torch.empty(rows, L, d, device=u.device, dtype=u.dtype)
    ddelta = torch.empty(rows, L, d, device=u.device, dtype=delta.dtype)
    f32 = dict(device=u.device, dtype=torch.float32)
    db_part = torch.empty(n_blocks, rows, L, n, **f32)
    dc_part = torch.empty(n_blocks, rows, L, n, **f32)
    dat_part = torch.empty(rows, n, d, **f32)
    dskip_part = torch.empty(rows, d, **f32) if D is not None else dat_part
    _scan_bwd[(rows, n_blocks)](
        u, delta, at, B, C, D if D is not None else at, ckpt, dy, du, ddelta, db_part, dc_part, dat_part, dskip_part,
        rows, L, d, triton.cdiv(L, CHUNK), rows // groups, *u.stride()[:2], *delta.stride()[:2], *B.stride(),
        *C.stride(), *dy.stride()[:2], N=n, **_slot_split(n), BLOCK_D=bd, CHUNK=CHUNK, HAS_D=D is not None,
        num_warps=NUM_WARPS)
    # per-row partial sums of dA and dD, added within each group (one packed model's rows)
    dA = dat_part.view(groups, rows // groups, n, d).sum(1).transpose(1, 2).to(A.dtype)
    dD = dskip_part.view(groups, rows // groups, d).sum(1).to(D.dtype) if D is not None else None
    return du, ddelta, dA, db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype), dD


def _forward_previous(u, delta, A, B, C, D, needs_grad):
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D = D.contiguous() if D is not None else None
    rows, L, d = u.shape
    n = A.shape[-1]
    y = torch.empty_like(u)
    n_chunks = triton.cdiv(L, CHUNK)
    ckpt = u.new_empty((rows, n_chunks if needs_grad else 0, d, n), dtype=torch.float32)
    bd = block_d(rows, d)
    _scan_fwd_previous[(rows, triton.cdiv(d, bd))](
        u, delta, A, B, C, D if D is not None else A, y, ckpt, L, d, n_chunks, rows // A.shape[0], N=n,
        BLOCK_N=triton.next_power_of_2(n), BLOCK_D=bd, CHUNK=CHUNK, HAS_D=D is not None,
        STORE_CHECKPOINTS=needs_grad, num_warps=NUM_WARPS)
    return y, ckpt


def _backward_previous(u, delta, A, B, C, D, ckpt, dy):
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    rows, L, d = u.shape
    groups, n = A.shape[0], A.shape[-1]
    dy = dy.contiguous()
    bd, block_n = block_d(rows, d), triton.next_power_of_2(n)
    n_blocks, n_chunks = triton.cdiv(d, bd), triton.cdiv(L, CHUNK)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    f32 = dict(device=u.device, dtype=torch.float32)
    scratch = torch.empty(rows * n_blocks * CHUNK * bd * block_n, **f32)
    db_part = torch.empty(n_blocks, rows, L, n, **f32)
    dc_part = torch.empty(n_blocks, rows, L, n, **f32)
    da_part = torch.empty(rows, d, n, **f32)
    dskip_part = torch.empty(rows, d, **f32) if D is not None else da_part
    _scan_bwd_previous[(rows, n_blocks)](
        u, delta, A, B, C, D.contiguous() if D is not None else A, ckpt, scratch, dy, du, ddelta, db_part, dc_part,
        da_part, dskip_part, rows, L, d, n_chunks, rows // groups, N=n, BLOCK_N=block_n, BLOCK_D=bd, CHUNK=CHUNK,
        HAS_D=D is not None, num_warps=NUM_WARPS)
    dA = da_part.view(groups, rows // groups, d, n).sum(1).to(A.dtype)
    dD = dskip_part.view(groups, rows // groups, d).sum(1).to(D.dtype) if D is not None else None
    return du, ddelta, dA, db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype), dD


_LAUNCHERS = {"registers": (_forward, _backward), "previous": (_forward_previous, _backward_previous)}


# ---------------------------------------------------------------------------------------------------------------
# autograd Function and the public op
# ---------------------------------------------------------------------------------------------------------------


class _SelectiveScan(torch.autograd.Function):
    """y and the backward's checkpoints from the grouped scan: A [G, D, N] and D [G, D], rows in G equal groups.

    torch.func.vmap over it (a pack of K models) folds the vmap dimension into the rows and A's groups, so the
    K models' scans are one launch."""

    @staticmethod
    def forward(u, delta, A, B, C, D):
        needs_grad = any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D))
        return _LAUNCHERS[KERNELS][0](u, delta, A, B, C, D, needs_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, delta, A, B, C, D = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(u, delta, A, B, C, D, output[1])
        ctx.kernels = KERNELS  # the checkpoints' layout is the forward's

    @staticmethod
    def backward(ctx, dy, _dckpt):
        u, delta, A, B, C, D, ckpt = ctx.saved_tensors
        return _LAUNCHERS[ctx.kernels][1](u, delta, A, B, C, D, ckpt, dy)

    @staticmethod
    def vmap(info, in_dims, u, delta, A, B, C, D):
        k = info.batch_size
        rows = u.shape[0] if in_dims[0] is None else u.shape[1 if in_dims[0] == 0 else 0]
        folded = [fold(x, bdim, k) for x, bdim in zip((u, delta, A, B, C, D), in_dims)]
        y, ckpt = _SelectiveScan.apply(*folded)
        return (y.view(k, rows, *y.shape[1:]), ckpt.view(k, rows, *ckpt.shape[1:])), (0, 0)


def selective_scan_kernel(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """y [B, L, D] (u's dtype) from u, delta [B, L, D], A [D, N], B, C [B, L, N], D [D] or None.

    A may also be [G, D, N] (and D [G, D]): the rows come in G equal groups, group g scanning with A[g], D[g]
    (K packed models folded into the rows). Runs under torch.func.vmap (one launch for all K members)."""
    check(u, delta, A, B, C, D)
    if u.shape[1] == 0:
        return torch.empty_like(u)
    if A.dim() == 2:
        A, D = A[None], (D[None] if D is not None else None)
    return _SelectiveScan.apply(u, delta, A, B, C, D)[0]
