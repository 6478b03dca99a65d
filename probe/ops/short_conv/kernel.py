"""Short causal depthwise convolution fused with its activation and gate, as Triton kernels, forward and backward.

    a_t = Σ_{i<W} w_i · x_{t−(W−1)+i} + b,    y_t = act(a_t) · gate_t          (per row and channel)

x [R, L, C] token-major (R = G groups of rows, a pack's models), weight [G, C, W], bias [G, C] or None, gate
[R, L, C] or None: the function of `reference.short_conv_ref`. Each program computes a tile of BLOCK_L positions ×
BLOCK_C channels of one row: W loads of the x tile shifted by 0..W−1 positions (its W−1 left-halo rows; the
overlaps hit in cache), so x is read from memory about once and y written once, the bias, activation and gate
applied in registers instead of three more passes over [R, L, C]. Only the channels must be contiguous: x and
gate are read through their row and position strides (Mamba's x is a column slice of a projection).

Backward, with da = dy · gate · act'(a):
    dx_t = Σ_{j<W} w_{W−1−j} · da_{t+j}      dw_i = Σ_{rows, t} da_t · x_{t−(W−1)+i}      db = Σ da
    dgate_t = dy_t · act(a_t)
in one kernel, `_bwd`, that walks positions backwards: the recurrent form of the convolution and its
transpose. A program takes BLOCK_R rows × BLOCK_C channels of one group over a segment of positions; at each step
t it loads the x entering the window (x_{t−(W−1)}), dy_t and gate_t, and keeps the W−1 later inputs and the W−1
later da in registers (the two windows), so a and da are formed once per element and x, dy, gate are read once,
dx and dgate written once. dw and db gather elementwise in registers and are summed over the program's rows once,
at its end: one partial per program, added by the host (no atomics: deterministic). A segment's walk starts W−1
positions past its end, to form the da its last positions need; the loads of each block of UNROLL steps go out
while the block before it computes. Compiled for sm_90 (ptxas, Triton 3.6): ~44 instructions an element at
Mamba's 4 taps with SiLU, ~25 at Hyena's 3 taps, ~32 gated, no barriers, 106-167 registers.

The previous backward, kept to time against (`BACKWARD = "previous"`: `_bwd_previous` then `_dx_previous`), tiled
positions × channels: the first kernel wrote da to a float32 scratch and summed dw and db per tile (a reduction
over positions across warps, through shared memory, for each tap and the bias), the second read da W times
shifted for dx. On the H200 it took ~1.1 ms at Mamba's [1024, 256, 256] against 116 µs for the forward: per
16 × 128 tile ~1370 instructions a thread (85 an element) with ~37 barriers (the reductions, layout conversions
of da and of the weights it reloaded each tile), 3 programs an SM, and 8 bytes an element more traffic for the
scratch. Everything in float32 whatever the input dtype. No tl.dot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold

NUM_WARPS = 4  # with _blocks' tiles: timed on the H200 against 2 and 8 warps and 6 tile shapes (BENCHMARKS.md)
PROGRAMS = 2048  # the previous backward's: enough to fill an H200's 132 SMs, few enough that partials stay small
BACKWARD = "scan"  # or "previous": the two-kernel backward the scan replaced, kept to time against
BWD_WARPS = 2  # the scan's: 4 elements a thread (_scan_blocks), 106-167 registers (sm_90), 6-9 programs an SM
BWD_PROGRAMS = 4096  # the scan's programs, about: several waves of them, so the last one leaves few SMs idle
UNROLL = 4  # the scan's steps a loop iteration: each block's loads fly while the block before it computes
SEGMENT = 64  # the shortest run of positions a scan program walks (its W−1 extra steps stay a few %)


@triton.jit
def _preactivation(x_ptr, w_ptr, b_ptr, row, grp, ts, cs, in_c, L, C, sx_r, sx_l,
                   W: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """a [BLOCK_L, BLOCK_C] float32 at positions ts, channels cs of one row (zero padding before position 0)."""
    a = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(W):
        src = ts - (W - 1) + i
        mask = ((src >= 0) & (src < L))[:, None] & in_c[None, :]
        x = tl.load(x_ptr + row * sx_r + src[:, None] * sx_l + cs[None, :], mask=mask, other=0.0)
        w = tl.load(w_ptr + (grp * C + cs) * W + i, mask=in_c, other=0.0)
        a += w.to(tl.float32)[None, :] * x.to(tl.float32)
    if HAS_BIAS:
        a += tl.load(b_ptr + grp * C + cs, mask=in_c, other=0.0).to(tl.float32)[None, :]
    return a


@triton.jit
def _tile(n_lt, rows_per_group, C, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile of a (row × position block, channel block) program: row, its group, positions, channels."""
    pid = tl.program_id(0).to(tl.int64)
    row, lt = pid // n_lt, pid % n_lt
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return row, row // rows_per_group, lt * BLOCK_L + tl.arange(0, BLOCK_L), cs, cs < C


@triton.jit
def _fwd(x_ptr, w_ptr, b_ptr, gate_ptr, y_ptr, L, C, n_lt, rows_per_group, sx_r, sx_l, sg_r, sg_l,
         W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, SILU: tl.constexpr,
         BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    row, grp, ts, cs, in_c = _tile(n_lt, rows_per_group, C, BLOCK_L, BLOCK_C)
    mask = (ts < L)[:, None] & in_c[None, :]
    y = _preactivation(x_ptr, w_ptr, b_ptr, row, grp, ts, cs, in_c, L, C, sx_r, sx_l,
                       W, HAS_BIAS, BLOCK_L, BLOCK_C)
    if SILU:
        y = y * tl.sigmoid(y)
    if HAS_GATE:
        y *= tl.load(gate_ptr + row * sg_r + ts[:, None] * sg_l + cs[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + (row * L + ts)[:, None] * C + cs[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _at(ptr, rows, t, cs, ok, L, s_r, s_l):
    """[BLOCK_R, BLOCK_C] of a [R, L, C] tensor at one position t of `rows`, in its own dtype (0 where t is outside
    0 ≤ t < L: the causal zeros before the sequence and nothing after it)."""
    inside = tl.where((t >= 0) & (t < L), ok, False)  # (`ok & scalar` comes out int32 in Triton 3.9's interpreter)
    return tl.load(ptr + rows[:, None] * s_r + t * s_l + cs[None, :], mask=inside, other=0.0)


@triton.jit
def _step_inputs(x_ptr, gate_ptr, dy_ptr, rows, top, t0, cs, ok, L, C, sx_r, sx_l, sg_r, sg_l,
                 W: tl.constexpr, HAS_GATE: tl.constexpr, UNROLL: tl.constexpr):
    """What steps t = top, top − 1, …, top − UNROLL + 1 read: the x entering the window (x_{t−(W−1)}), dy_t and
    gate_t, each a tuple over the steps (dy and gate 0 below the segment's first position t0: no gradient)."""
    xs, dys, gates = (), (), ()
    for u in tl.static_range(UNROLL):
        t = top - u
        xs = xs + (_at(x_ptr, rows, t - (W - 1), cs, ok, L, sx_r, sx_l),)
        t_grad = tl.where(t >= t0, t, -1)
        dys = dys + (_at(dy_ptr, rows, t_grad, cs, ok, L, L * C, C),)
        if HAS_GATE:
            gates = gates + (_at(gate_ptr, rows, t_grad, cs, ok, L, sg_r, sg_l),)
    return xs, dys, gates


@triton.jit
def _bwd(x_ptr, w_ptr, b_ptr, gate_ptr, dy_ptr, dx_ptr, dgate_ptr, dw_part_ptr, db_part_ptr,
         L, C, rows_per_group, n_rb, n_seg, seg_len, sx_r, sx_l, sg_r, sg_l,
         W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, SILU: tl.constexpr,
         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    """dx, dgate, and the partial sums of dw and db of BLOCK_R rows × BLOCK_C channels over one segment of
    positions [t0, t1), walking t from t1 + W − 2 down to t0 (the first W − 1 steps only form da past t1)."""
    pid = tl.program_id(0).to(tl.int64)
    grp, part = pid // (n_rb * n_seg), pid % (n_rb * n_seg)
    local = (part // n_seg) * BLOCK_R + tl.arange(0, BLOCK_R)  # the rows within the group
    rows = grp * rows_per_group + local
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_c = cs < C
    ok = (local < rows_per_group)[:, None] & in_c[None, :]
    w = ()  # w[i]: tap i [1, BLOCK_C]
    for i in tl.static_range(W):
        w = w + (tl.load(w_ptr + (grp * C + cs) * W + i, mask=in_c, other=0.0).to(tl.float32)[None, :],)
    b = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + grp * C + cs, mask=in_c, other=0.0).to(tl.float32)[None, :]
    t0 = ((part % n_seg) * seg_len).to(tl.int32)
    t1 = tl.minimum(t0 + seg_len, L)
    top = t1 + W - 2
    xw, daw = (), ()  # before step t: x_{t−W+2} … x_t (oldest first) and da_{t+1} … da_{t+W−1} (nearest first)
    for i in tl.static_range(W - 1):
        xw = xw + (_at(x_ptr, rows, top - (W - 2) + i, cs, ok, L, sx_r, sx_l).to(tl.float32),)
        daw = daw + (tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32),)
    dw = ()  # dw[i]: Σ da_t · x_{t−(W−1)+i} over the steps so far, per row and channel
    for i in tl.static_range(W):
        dw = dw + (tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32),)
    db = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    ahead = _step_inputs(x_ptr, gate_ptr, dy_ptr, rows, top, t0, cs, ok, L, C, sx_r, sx_l, sg_r, sg_l,
                         W, HAS_GATE, UNROLL)
    for q in range(0, tl.cdiv(top + 1 - t0, UNROLL)):
        xs, dys, gates = ahead
        ahead = _step_inputs(x_ptr, gate_ptr, dy_ptr, rows, top - (q + 1) * UNROLL, t0, cs, ok, L, C,
                             sx_r, sx_l, sg_r, sg_l, W, HAS_GATE, UNROLL)
        for u in tl.static_range(UNROLL):
            t = top - q * UNROLL - u
            window = (xs[u].to(tl.float32),) + xw  # x_{t−(W−1)} … x_t
            dy = dys[u].to(tl.float32)
            da = dy
            if HAS_GATE:
                da = dy * gates[u].to(tl.float32)
            if SILU or HAS_GATE:
                a = b
                for i in tl.static_range(W):
                    a += w[i] * window[i]
                act = a
                if SILU:
                    sig = tl.sigmoid(a)
                    act = a * sig
                    da = da * sig * (1.0 + a * (1.0 - sig))
            dx = w[W - 1] * da
            for j in tl.static_range(1, W):
                dx += w[W - 1 - j] * daw[j - 1]
            own = tl.where((t >= t0) & (t < t1), ok, False)
            at = (rows[:, None] * L + t) * C + cs[None, :]
            tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=own)
            if HAS_GATE:
                tl.store(dgate_ptr + at, (dy * act).to(dgate_ptr.dtype.element_ty), mask=own)
            da_own = tl.where(t < t1, da, 0.0)  # past t1 the next segment's (or nothing: zero past L)
            if HAS_BIAS:
                db += da_own
            grown = ()
            for i in tl.static_range(W):
                grown = grown + (dw[i] + da_own * window[i],)
            dw = grown
            if W > 1:  # both windows move one position back
                moved_x, moved_da = (), (da,)
                for i in tl.static_range(W - 1):
                    moved_x = moved_x + (window[i],)
                for i in tl.static_range(W - 2):
                    moved_da = moved_da + (daw[i],)
                xw, daw = moved_x, moved_da
    own_part = pid * C + cs  # this program's partial: [groups, n_rb · n_seg, C] flat
    for i in tl.static_range(W):
        tl.store(dw_part_ptr + own_part * W + i, tl.sum(dw[i], axis=0), mask=in_c)
    if HAS_BIAS:
        tl.store(db_part_ptr + own_part, tl.sum(db, axis=0), mask=in_c)


@triton.jit
def _grad_preactivation(x_ptr, w_ptr, b_ptr, gate_ptr, dy_ptr, row, grp, ts, cs, in_c, L, C, sx_r, sx_l, sg_r, sg_l,
                        W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, SILU: tl.constexpr,
                        BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """(da, act(a), dy) at positions ts (0 where ts ≥ L: the right halo past the sequence's end)."""
    mask = (ts < L)[:, None] & in_c[None, :]
    a = _preactivation(x_ptr, w_ptr, b_ptr, row, grp, ts, cs, in_c, L, C, sx_r, sx_l,
                       W, HAS_BIAS, BLOCK_L, BLOCK_C)
    dy = tl.load(dy_ptr + (row * L + ts)[:, None] * C + cs[None, :], mask=mask, other=0.0).to(tl.float32)
    ds = dy
    if HAS_GATE:
        ds = dy * tl.load(gate_ptr + row * sg_r + ts[:, None] * sg_l + cs[None, :], mask=mask,
                          other=0.0).to(tl.float32)
    s = a
    da = ds
    if SILU:
        sig = tl.sigmoid(a)
        s = a * sig
        da = ds * sig * (1.0 + a * (1.0 - sig))
    return da, s, dy


@triton.jit
def _bwd_previous(x_ptr, w_ptr, b_ptr, gate_ptr, dy_ptr, da_ptr, dgate_ptr, dw_part_ptr, db_part_ptr,
         L, C, n_lt, rows_per_group, tiles_per_program, programs_per_group, sx_r, sx_l, sg_r, sg_l,
         W: tl.constexpr, W_POW2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr,
         SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """da (to scratch, float32), dgate, and the partial sums of dw and db over a run of one group's tiles."""
    pid = tl.program_id(0).to(tl.int64)
    grp, p = pid // programs_per_group, pid % programs_per_group
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_c = cs < C
    taps = tl.arange(0, W_POW2)
    dw = tl.zeros([BLOCK_C, W_POW2], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = p * tiles_per_program  # this program's run of the group's rows_per_group · n_lt tiles
    n_tiles = tl.minimum(tiles_per_program, rows_per_group * n_lt - first)
    for k in range(0, n_tiles):
        tile = first + k
        row = grp * rows_per_group + tile // n_lt
        ts = (tile % n_lt) * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = (ts < L)[:, None] & in_c[None, :]
        da, s, dy = _grad_preactivation(x_ptr, w_ptr, b_ptr, gate_ptr, dy_ptr, row, grp, ts, cs, in_c,
                                        L, C, sx_r, sx_l, sg_r, sg_l, W, HAS_BIAS, HAS_GATE, SILU,
                                        BLOCK_L, BLOCK_C)
        tl.store(da_ptr + (row * L + ts)[:, None] * C + cs[None, :], da, mask=mask)
        db += tl.sum(da, axis=0)
        for i in tl.static_range(W):
            src = ts - (W - 1) + i
            m = ((src >= 0) & (src < L))[:, None] & in_c[None, :]
            x = tl.load(x_ptr + row * sx_r + src[:, None] * sx_l + cs[None, :], mask=m, other=0.0)
            dw_i = tl.sum(da * x.to(tl.float32), axis=0)  # [BLOCK_C]
            dw += tl.where(taps[None, :] == i, dw_i[:, None], 0.0)
        if HAS_GATE:
            tl.store(dgate_ptr + (row * L + ts)[:, None] * C + cs[None, :],
                     (dy * s).to(dgate_ptr.dtype.element_ty), mask=mask)
    part = grp * programs_per_group + p
    tl.store(dw_part_ptr + (part * C + cs)[:, None] * W + taps[None, :], dw,
             mask=in_c[:, None] & (taps < W)[None, :])
    if HAS_BIAS:
        tl.store(db_part_ptr + part * C + cs, db, mask=in_c)


@triton.jit
def _dx_previous(da_ptr, w_ptr, dx_ptr, L, C, n_lt, rows_per_group, W: tl.constexpr, BLOCK_L: tl.constexpr,
        BLOCK_C: tl.constexpr):
    """dx_t = Σ_{j<W} w_{W−1−j} · da_{t+j}: the transposed convolution of da, read W times shifted (cached)."""
    row, grp, ts, cs, in_c = _tile(n_lt, rows_per_group, C, BLOCK_L, BLOCK_C)
    dx = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)
    for j in tl.static_range(W):
        src = ts + j
        m = (src < L)[:, None] & in_c[None, :]
        da = tl.load(da_ptr + (row * L + src)[:, None] * C + cs[None, :], mask=m, other=0.0)
        w = tl.load(w_ptr + (grp * C + cs) * W + (W - 1 - j), mask=in_c, other=0.0).to(tl.float32)
        dx += w[None, :] * da
    tl.store(dx_ptr + (row * L + ts)[:, None] * C + cs[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(ts < L)[:, None] & in_c[None, :])


def _blocks(c: int) -> tuple[int, int]:
    block_c = min(128, triton.next_power_of_2(c))
    return max(16, min(64, 2048 // block_c)), block_c  # about 2048 elements per tile (several live in backward)


def _scan_blocks(c: int, taps: int) -> tuple[int, int]:
    """The scan's (BLOCK_R, BLOCK_C): 4 elements a thread at BWD_WARPS, 2 past 4 taps (a thread keeps ~4W values
    an element: its windows, its dw sums and the taps)."""
    block_c = min(64, triton.next_power_of_2(max(c, 1)))
    return max(1, 32 * BWD_WARPS * (4 if taps <= 4 else 2) // block_c), block_c


def _segments(length: int, programs_across: int) -> tuple[int, int]:
    """(segments a row's positions split into, positions in each): about BWD_PROGRAMS programs, none shorter
    than SEGMENT, each a whole number of UNROLL steps."""
    n_seg = max(1, min(triton.cdiv(length, SEGMENT), triton.cdiv(BWD_PROGRAMS, max(1, programs_across))))
    seg_len = max(1, triton.cdiv(triton.cdiv(length, n_seg), UNROLL)) * UNROLL
    return triton.cdiv(length, seg_len), seg_len


def _backward(x, weight, bias, gate, dy, silu):
    """(dx, dweight, dbias, dgate) for x [R, L, C], weight [G, C, W], bias [G, C] or None, gate [R, L, C] or
    None, dy [R, L, C] (channels contiguous, dy all of it): `_bwd`, then the host adds the partials."""
    rows, length, c = x.shape
    groups, taps = weight.shape[0], weight.shape[-1]
    block_r, block_c = _scan_blocks(c, taps)
    n_rb, n_cb = triton.cdiv(rows // groups, block_r), triton.cdiv(c, block_c)
    n_seg, seg_len = _segments(length, groups * n_rb * n_cb)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=x.device) if gate is not None else None
    f32 = dict(dtype=torch.float32, device=x.device)
    dw_part = torch.empty(groups, n_rb * n_seg, c, taps, **f32)  # one partial per program (none if x is empty)
    db_part = torch.empty(groups, n_rb * n_seg, c, **f32) if bias is not None else None
    if x.numel():
        g_strides = gate.stride()[:2] if gate is not None else (0, 0)
        _bwd[(groups * n_rb * n_seg, n_cb)](
            x, weight, bias if bias is not None else weight, gate if gate is not None else x, dy, dx,
            dgate if gate is not None else dx, dw_part, db_part if bias is not None else dw_part, length, c,
            rows // groups, n_rb, n_seg, seg_len, *x.stride()[:2], *g_strides, W=taps, HAS_BIAS=bias is not None,
            HAS_GATE=gate is not None, SILU=silu, BLOCK_R=block_r, BLOCK_C=block_c, UNROLL=UNROLL,
            num_warps=BWD_WARPS)
    dbias = db_part.sum(1).to(bias.dtype) if bias is not None else None
    return dx, dw_part.sum(1).to(weight.dtype), dbias, dgate


def _backward_previous(x, weight, bias, gate, dy, silu):
    """`_backward` by the previous kernels (`BACKWARD = "previous"`): `_bwd_previous` (da to a float32 scratch,
    dgate, partials of dw and db per run of tiles), then `_dx_previous` (dx from da)."""
    rows, length, c = x.shape
    groups, taps = weight.shape[0], weight.shape[-1]
    block_l, block_c = _blocks(c)
    n_lt, n_cb = triton.cdiv(length, block_l), triton.cdiv(c, block_c)
    tiles_per_group = (rows // groups) * n_lt
    per_group = max(1, min(tiles_per_group, triton.cdiv(PROGRAMS, groups * n_cb)))
    tiles_per_program = triton.cdiv(tiles_per_group, per_group) if tiles_per_group else 1
    per_group = max(1, triton.cdiv(tiles_per_group, tiles_per_program))
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=x.device) if gate is not None else None
    f32 = dict(dtype=torch.float32, device=x.device)
    dw_part = torch.empty(groups, per_group, c, taps, **f32)
    db_part = torch.empty(groups, per_group, c, **f32) if bias is not None else None
    if tiles_per_group:
        g_strides = gate.stride()[:2] if gate is not None else (0, 0)
        da = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        _bwd_previous[(groups * per_group, n_cb)](
            x, weight, bias if bias is not None else weight, gate if gate is not None else x, dy, da,
            dgate if gate is not None else dx, dw_part, db_part if bias is not None else dw_part, length, c,
            n_lt, rows // groups, tiles_per_program, per_group, *x.stride()[:2], *g_strides, W=taps,
            W_POW2=triton.next_power_of_2(taps), HAS_BIAS=bias is not None, HAS_GATE=gate is not None,
            SILU=silu, BLOCK_L=block_l, BLOCK_C=block_c, num_warps=NUM_WARPS)
        _dx_previous[(rows * n_lt, n_cb)](da, weight, dx, length, c, n_lt, rows // groups, W=taps,
                                          BLOCK_L=block_l, BLOCK_C=block_c, num_warps=NUM_WARPS)
    else:  # nothing to convolve: no gradient anywhere
        for t in (dx, dgate, dw_part, db_part):
            if t is not None:
                t.zero_()
    dbias = db_part.sum(1).to(bias.dtype) if bias is not None else None
    return dx, dw_part.sum(1).to(weight.dtype), dbias, dgate


def _rows_strides(t: torch.Tensor) -> torch.Tensor:
    """t [R, L, C] with contiguous channels (a copy only where they are not)."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _ShortConv(torch.autograd.Function):
    """y for x [R, L, C], weight [G, C, W], bias [G, C] or None, gate [R, L, C] or None, the R rows in G equal
    groups; torch.func.vmap over it folds the vmap dimension into the rows and the groups, so a pack of K
    models, each with its own filter, is one launch."""

    @staticmethod
    def forward(x, weight, bias, gate, activation):
        x, weight = _rows_strides(x), weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        gate = _rows_strides(gate) if gate is not None else None
        rows, length, c = x.shape
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if y.numel() == 0:
            return y
        block_l, block_c = _blocks(c)
        n_lt = triton.cdiv(length, block_l)
        g_strides = gate.stride()[:2] if gate is not None else (0, 0)
        _fwd[(rows * n_lt, triton.cdiv(c, block_c))](
            x, weight, bias if bias is not None else weight, gate if gate is not None else x, y, length, c, n_lt,
            rows // weight.shape[0], *x.stride()[:2], *g_strides, W=weight.shape[-1], HAS_BIAS=bias is not None,
            HAS_GATE=gate is not None, SILU=activation == "silu", BLOCK_L=block_l, BLOCK_C=block_c,
            num_warps=NUM_WARPS)
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, gate, activation = inputs
        ctx.save_for_backward(x, weight, bias, gate)
        ctx.activation = activation

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, gate = ctx.saved_tensors
        x, weight, dy = _rows_strides(x), weight.contiguous(), dy.contiguous()
        bias = bias.contiguous() if bias is not None else None
        gate = _rows_strides(gate) if gate is not None else None
        backward = {"scan": _backward, "previous": _backward_previous}[BACKWARD]
        dx, dweight, dbias, dgate = backward(x, weight, bias, gate, dy, ctx.activation == "silu")
        return dx, dweight, dbias, dgate, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, gate, activation):
        k = info.batch_size
        rows = x.shape[0] if in_dims[0] is None else x.shape[1 if in_dims[0] == 0 else 0]
        y = _ShortConv.apply(fold(x, in_dims[0], k), fold(weight, in_dims[1], k), fold(bias, in_dims[2], k),
                             fold(gate, in_dims[3], k), activation)
        return y.view(k, rows, *y.shape[1:]), 0


def short_conv_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      gate: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """y [B, L, C] (x's dtype) from x [B, L, C], weight [C, W] or [G, C, W], bias [C] or [G, C] or None, gate
    [B, L, C] or None (shapes checked by the caller). Runs under torch.func.vmap (one launch for all K members)."""
    if weight.dim() == 2:
        weight, bias = weight[None], (bias[None] if bias is not None else None)
    return _ShortConv.apply(x, weight, bias, gate, activation)
