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
in two kernels: the first recomputes a once per tile, writes da (float32 scratch) and dgate, and sums dw and db;
the second reads da W times shifted (from cache) for dx. (Recomputing da at every shift instead, so it never
went to memory, took W² shifted loads of x and W activations per element: ~1.1 ms a call in Mamba's K = 4 pack
at L 256 on the H200.) dw and db sum over rows and positions: each program walks a run of one group's tiles, keeps
their partial sums in registers and writes them once; the host adds the partials (no atomics: deterministic).
Everything in float32 whatever the input dtype. No tl.dot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold

NUM_WARPS = 4  # with _blocks' tiles: timed on the H200 against 2 and 8 warps and 6 tile shapes (BENCHMARKS.md)
PROGRAMS = 2048  # the backward's programs: enough to fill an H200's 132 SMs, few enough that partials stay small


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
def _bwd(x_ptr, w_ptr, b_ptr, gate_ptr, dy_ptr, da_ptr, dgate_ptr, dw_part_ptr, db_part_ptr,
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
def _dx(da_ptr, w_ptr, dx_ptr, L, C, n_lt, rows_per_group, W: tl.constexpr, BLOCK_L: tl.constexpr,
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
            _bwd[(groups * per_group, n_cb)](
                x, weight, bias if bias is not None else weight, gate if gate is not None else x, dy, da,
                dgate if gate is not None else dx, dw_part, db_part if bias is not None else dw_part, length, c,
                n_lt, rows // groups, tiles_per_program, per_group, *x.stride()[:2], *g_strides, W=taps,
                W_POW2=triton.next_power_of_2(taps), HAS_BIAS=bias is not None, HAS_GATE=gate is not None,
                SILU=ctx.activation == "silu", BLOCK_L=block_l, BLOCK_C=block_c, num_warps=NUM_WARPS)
            _dx[(rows * n_lt, n_cb)](da, weight, dx, length, c, n_lt, rows // groups, W=taps, BLOCK_L=block_l,
                                     BLOCK_C=block_c, num_warps=NUM_WARPS)
        else:  # nothing to convolve: no gradient anywhere
            for t in (dx, dgate, dw_part, db_part):
                if t is not None:
                    t.zero_()
        dweight = dw_part.sum(1).to(weight.dtype)
        dbias = db_part.sum(1).to(bias.dtype) if bias is not None else None
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
