"""Long causal depthwise convolution as Triton kernels, forward and backward, on tensor cores.

    y[b, t] = Σ_{s ≤ t} x[b, s] · k[t − s]  (+ bias · x[b, t])         (per channel c; k[τ] = 0 for τ ≥ Lk)

x [R, L, C] (R = G groups of rows, a pack's models), k [G, C, Lk] in filter order, bias [G, C] or None: the
function of `reference.long_conv_ref`. Per channel the convolution is a product with a lower-triangular Toeplitz
matrix, Y_c = X_c T_c with X_c [rows, L] and T_c[s, t] = k[c, t − s], so a tile of it is a dot of an x tile
[BB rows, BL positions] with a T tile [BL, BL] gathered from the filter (k_ptr + t − s, masked): B·L²·C FLOPs,
cheap on tensor cores at L ≤ 1024 next to an FFT's casts, complex [B, C, 2L] tensors and copies, and x and y
each move once.

Layout: token-major, as the mixers hold their activations. A program works on a block of BC channels at once, its
tiles [BC, BB rows, BL positions] read and written with the channels innermost (BC channels of one position are
one coalesced read), and its products are batched dots over the BC channels ([BC, BB, BL] @ [BC, BL, BL]). Only
the channels need be contiguous: a column slice of a projection (Hyena's gates, H3's k and kv) goes in as it is,
and y, dx come back token-major, so the gates and projections around the convolution run on contiguous memory.
Float32 tiles (BaseConv's convolution of its float32 input under autocast, CPU and float32 runs) take
`channel_major.py`'s kernels instead, one channel a program on channel-major copies: its 2-D products were 1.3x
faster there than these batched ones, three TF32 products each (`FLOAT32_KERNELS`). Until 2026-12-07 every dtype
ran those: every input was copied to [R, C, L] and every output met token-major tensors in strided elementwise
kernels; at a K = 16 Hyena or H3 pack on an H100 those copies and strided products took ~17 ms of a 55 ms step
(BENCHMARKS.md, 2026-12-07 second session, with what the change measured).

  _toeplitz     one program per (channel block, row block, output block of BL positions): walks the input blocks
                the filter reaches, the output block's own (diagonal) block last, whose x tile also gives the bias
                term, and stores the float32 accumulator once. ANTI=True is the transposed (anti-causal)
                product, the backward's dx[b, s] = Σ_{t ≥ s} dy[b, t] k[t − s] (+ bias · dy[b, s]).
  _filter_grad  dk[τ] = Σ_b Σ_t dy[b, t] x[b, t − τ]: for the lag block j, A_j[c, i, l] = Σ_{b, tb}
                dy[b, tb·BL + i, c] x[b, (tb − j)·BL + l, c] is a batched dot contracted over rows (dyᵀ loaded
                transposed from memory), accumulated over every output block tb; τ = j·BL + i − l, so dk is A_j
                summed along its diagonals: the program stores A_j to its own float32 scratch, and after
                tl.debug_barrier reads it back skewed ([c, l, i − l]) and sums over l. Diagonals i ≥ l are lags of
                block j, i < l of block j − 1: the host adds the two halves (no atomics: deterministic). A fixed
                number of programs walks the (channel block, j) items, so the scratch stays PROGRAMS·BC·BL²
                floats. dbias = Σ_{b,t} dy·x is dk's lag 0, so it costs nothing more.

Where it departs from the FFT reference: float32 inputs are float32-accurate dot products (input_precision
"tf32x3": each operand split into TF32 high and low parts, three tensor-core products; never plain tf32), a
different order of summation and rounding at float32's level; bf16/fp16 inputs multiply in their dtype, the
filter tile cast to it inside the kernel (a float32 filter beside bf16 activations, as the mixers pass them under
autocast, is rounded to bf16), and accumulate in float32, where the reference computes everything in float32.
Triton 3.6 on Hopper miscompiles tl.dot of a tl.trans of a computed tile: no tile is transposed or permuted,
every operand is loaded from memory in the order its dot takes (dyᵀ with swapped strides). Fixed block sizes (the
interpreter cannot autotune).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..dispatch import fold
from . import channel_major
from .channel_major import _input_blocks, _precision

#: tile shapes, (channels, rows, positions) per program, and warps, by the tiles' element size, 2 (bf16, fp16) or
#: 4 (float32, with FLOAT32_KERNELS = "token": its operands take twice the shared memory, and (16, 32, 32) does not
#: fit an H100's 227 KiB); the products are [BC, BB, BL] @ [BC, BL, BL]. Timed on an H100 at [1024, 256, 128] bf16
#: (fwd+bwd): these, 1.57 ms; (16, 16, 32) with (8, 32, 32), 4 warps each, 1.84 ms; the channel-major kernels 1.99
#: ms; (8, 32, 64), (16, 16, 64) and (32, 16, 32) ran out of shared memory
CONV_BLOCKS = {2: (16, 32, 32), 4: (16, 16, 32)}
CONV_WARPS = {2: 4, 4: 4}
#: _filter_grad's (channels, rows, positions) and warps: its accumulator is [BC, BL, BL] float32
GRAD_BLOCKS = {2: (8, 32, 32), 4: (8, 32, 32)}
GRAD_WARPS = {2: 8, 4: 4}
PROGRAMS = 1024  # _filter_grad's programs: about 8 per SM; each holds one BC·BL² float32 scratch tile


@triton.jit
def _tile(ptr, base, cs, rows, pos, C, n_rows, L, s_r, s_l, s_c):
    """ptr[base + c·s_c + row·s_r + pos·s_l] as a [channels, rows, positions] tile, zeros outside C, the group's
    rows and L."""
    mask = (cs < C)[:, None, None] & (rows < n_rows)[None, :, None] & (pos < L)[None, None, :]
    offs = (cs.to(tl.int64)[:, None, None] * s_c + rows.to(tl.int64)[None, :, None] * s_r
            + pos.to(tl.int64)[None, None, :] * s_l)
    return tl.load(ptr + base + offs, mask=mask, other=0.0)


@triton.jit
def _taps(k_ptr, k_rows, in_c, taps, k_stride, pos_in, pos_out, ANTI: tl.constexpr):
    """The Toeplitz tiles [channels, positions in, positions out]: k[c, out − in] (ANTI: k[c, in − out]), 0 at
    lags outside [0, taps) (taps = min(L, Lk)); k_rows: each channel's row of k."""
    if ANTI:
        lag = pos_in[:, None] - pos_out[None, :]
    else:
        lag = pos_out[None, :] - pos_in[:, None]
    mask = in_c[:, None, None] & ((lag >= 0) & (lag < taps))[None, :, :]
    return tl.load(k_ptr + k_rows[:, None, None] * k_stride + lag[None, :, :], mask=mask, other=0.0)


@triton.jit
def _toeplitz(src_ptr, k_ptr, bias_ptr, dst_ptr, L, C, rows_per_group, taps, k_stride, n_blocks, n_row_blocks,
              n_channel_blocks, s_r, s_l, s_c, d_r, d_l, d_c, ANTI: tl.constexpr, HAS_BIAS: tl.constexpr,
              PRECISION: tl.constexpr, BC: tl.constexpr, BB: tl.constexpr, BL: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    jb = pid % n_blocks  # output blocks of one channel block run side by side: they reread the same input blocks
    rb = (pid // n_blocks) % n_row_blocks
    gcb = pid // (n_blocks * n_row_blocks)  # group · n_channel_blocks + channel block
    grp, cb = gcb // n_channel_blocks, gcb % n_channel_blocks
    cs = cb * BC + tl.arange(0, BC)
    in_c = cs < C
    k_rows = grp * C + cs.to(tl.int64)
    rows = rb * BB + tl.arange(0, BB)
    offs = tl.arange(0, BL)
    out = jb * BL + offs
    src = grp * rows_per_group * s_r
    lo, hi = _input_blocks(jb, taps, n_blocks, ANTI, BL)
    acc = tl.zeros([BC, BB, BL], dtype=tl.float32)
    for ib in range(lo, hi):
        pos = ib * BL + offs
        a = _tile(src_ptr, src, cs, rows, pos, C, rows_per_group, L, s_r, s_l, s_c)            # [BC, BB, BL]
        t = _taps(k_ptr, k_rows, in_c, taps, k_stride, pos, out, ANTI)                        # [BC, BL, BL]
        acc = tl.dot(a, t.to(a.dtype), acc, input_precision=PRECISION)
    a = _tile(src_ptr, src, cs, rows, out, C, rows_per_group, L, s_r, s_l, s_c)               # the diagonal block
    acc = tl.dot(a, _taps(k_ptr, k_rows, in_c, taps, k_stride, out, out, ANTI).to(a.dtype), acc,
                 input_precision=PRECISION)
    if HAS_BIAS:  # the feed-through, in float32 (not rounded into the bf16 tap k[0])
        acc += tl.load(bias_ptr + k_rows, mask=in_c, other=0.0).to(tl.float32)[:, None, None] * a.to(tl.float32)
    mask = in_c[:, None, None] & (rows < rows_per_group)[None, :, None] & (out < L)[None, None, :]
    dst = dst_ptr + grp * rows_per_group * d_r
    offs3 = (cs.to(tl.int64)[:, None, None] * d_c + rows.to(tl.int64)[None, :, None] * d_r
             + out.to(tl.int64)[None, None, :] * d_l)
    tl.store(dst + offs3, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _filter_grad(x_ptr, dy_ptr, scratch_ptr, parts_ptr, L, C, n_items, rows_per_group, n_blocks, n_row_blocks,
                 n_lag_blocks, n_channel_blocks, s_r, s_l, s_c, g_r, g_l, g_c, PRECISION: tl.constexpr,
                 BC: tl.constexpr, BB: tl.constexpr, BL: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.arange(0, BL)
    row_offs = tl.arange(0, BB)
    chans = tl.arange(0, BC)
    skew = tl.arange(0, 2 * BL)
    scratch = scratch_ptr + pid.to(tl.int64) * BC * BL * BL
    tile = chans[:, None, None] * BL * BL + offs[None, :, None] * BL + offs[None, None, :]
    for item in range(pid, n_items, tl.num_programs(0)):
        # lag block j first: the items of most work (every tb ≥ j) are spread over programs
        n_cb = n_items // n_lag_blocks
        j = item // n_cb
        gcb = (item % n_cb).to(tl.int64)
        grp, cb = gcb // n_channel_blocks, gcb % n_channel_blocks
        cs = cb * BC + chans
        in_c = cs < C
        x_base = grp * rows_per_group * s_r
        dy_base = grp * rows_per_group * g_r
        acc = tl.zeros([BC, BL, BL], dtype=tl.float32)  # A_j[c, i, l]
        for tb in range(j, n_blocks):
            t = tb * BL + offs
            s = (tb - j) * BL + offs
            for rb in range(0, n_row_blocks):
                rows = rb * BB + row_offs
                mask = in_c[:, None, None] & (t < L)[None, :, None] & (rows < rows_per_group)[None, None, :]
                dy_t = tl.load(dy_ptr + dy_base + cs.to(tl.int64)[:, None, None] * g_c
                               + t.to(tl.int64)[None, :, None] * g_l + rows.to(tl.int64)[None, None, :] * g_r,
                               mask=mask, other=0.0)                                   # [BC, BL (t), BB], dyᵀ
                xs = _tile(x_ptr, x_base, cs, rows, s, C, rows_per_group, L, s_r, s_l, s_c)  # [BC, BB, BL (s)]
                acc = tl.dot(dy_t, xs, acc, input_precision=PRECISION)
        tl.store(scratch + tile, acc)
        tl.debug_barrier()  # the whole tile is in scratch before any thread reads it back skewed
        i = offs[:, None] + skew[None, :] - BL  # row i of A_j on diagonal i − l = skew − BL, for each column l
        diag = tl.load(scratch + chans[:, None, None] * BL * BL + (i * BL + offs[:, None])[None, :, :],
                       mask=((i >= 0) & (i < BL))[None, :, :], other=0.0)              # [BC, BL (l), 2BL]
        # column d: lag (j − 1)·BL + d
        dst = parts_ptr + ((grp * C + cs.to(tl.int64)) * n_lag_blocks + j)[:, None] * 2 * BL + skew[None, :]
        tl.store(dst, tl.sum(diag, axis=1), mask=in_c[:, None])
        tl.debug_barrier()  # every read is done before the next item overwrites the scratch


def _blocks(blocks: tuple[int, int, int], channels: int, rows_per_group: int, length: int) -> tuple[int, int, int]:
    """(BC channels, BB rows, BL positions) per tile, no larger than the problem; dots need 16 or more rows and
    positions."""
    bc, bb, bl = blocks
    return (min(bc, triton.next_power_of_2(channels)), max(16, min(bb, triton.next_power_of_2(rows_per_group))),
            max(16, min(bl, triton.next_power_of_2(length))))


#: which kernels float32 tiles run on: "channel" (channel_major.py's, faster there, see its docstring) or "token"
#: (this module's, which 16-bit tiles always take; the tests run both on float32, the only dtype the CPU
#: interpreter's dots compute correctly)
FLOAT32_KERNELS = "channel"


def _channel_major_tiles(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and FLOAT32_KERNELS == "channel"


def _channels_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t [R, L, C] with its channels contiguous (a copy only where they are not)."""
    return t if t.stride(2) == 1 or t.shape[2] == 1 else t.contiguous()


def _convolve(src: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, anti: bool) -> torch.Tensor:
    """The causal (anti=False: y from x) or anti-causal (anti=True: dx from dy) product, [R, L, C] contiguous in
    src's dtype. src with contiguous channels, k [G, C, Lk] contiguous, bias [G, C] or None."""
    rows, length, c = src.shape
    groups = k.shape[0]
    dst = torch.empty(rows, length, c, dtype=src.dtype, device=src.device)
    if dst.numel() == 0:
        return dst
    size = src.element_size()
    bc, bb, bl = _blocks(CONV_BLOCKS[size], c, rows // groups, length)
    n_blocks, n_row_blocks, n_cb = triton.cdiv(length, bl), triton.cdiv(rows // groups, bb), triton.cdiv(c, bc)
    _toeplitz[(groups * n_cb * n_row_blocks * n_blocks,)](
        src, k, bias if bias is not None else k, dst, length, c, rows // groups, min(length, k.shape[-1]),
        k.shape[-1], n_blocks, n_row_blocks, n_cb, *src.stride(), *dst.stride(), ANTI=anti,
        HAS_BIAS=bias is not None, PRECISION=_precision(src), BC=bc, BB=bb, BL=bl, num_warps=CONV_WARPS[size])
    return dst


def _filter_grad_lags(x: torch.Tensor, dy: torch.Tensor, groups: int, taps: int) -> torch.Tensor:
    """dk[g·C + c, τ] = Σ_b Σ_t dy[b, t, c] x[b, t − τ, c] for τ < taps: [G·C, taps] float32 (the rows b of group
    g; x, dy [R, L, C] with contiguous channels)."""
    rows, length, c = x.shape
    size = x.element_size()
    bc, bb, bl = _blocks(GRAD_BLOCKS[size], c, rows // groups, length)
    n_blocks, n_cb = triton.cdiv(length, bl), triton.cdiv(c, bc)
    # A_j gives lags (j − 1)·BL .. (j + 1)·BL: the last lag block needs the next j's negative diagonals
    n_lag_blocks = min(triton.cdiv(taps, bl) + 1, n_blocks)
    n_items = groups * n_cb * n_lag_blocks
    programs = min(n_items, PROGRAMS)
    f32 = dict(dtype=torch.float32, device=x.device)
    scratch = torch.empty(programs, bc, bl, bl, **f32)
    parts = torch.empty(groups * c, n_lag_blocks, 2 * bl, **f32)
    _filter_grad[(programs,)](
        x, dy, scratch, parts, length, c, n_items, rows // groups, n_blocks, triton.cdiv(rows // groups, bb),
        n_lag_blocks, n_cb, *x.stride(), *dy.stride(), PRECISION=_precision(x), BC=bc, BB=bb, BL=bl,
        num_warps=GRAD_WARPS[size])
    lags = parts[..., bl:].clone()          # block j from A_j's diagonals i ≥ l
    lags[:, :-1] += parts[:, 1:, :bl]       # and from A_{j+1}'s diagonals i < l
    return lags.reshape(groups * c, n_lag_blocks * bl)[:, :taps]


class _LongConv(torch.autograd.Function):
    """y for x [R, L, C], k [G, C, Lk], bias [G, C] or None, the R rows in G equal groups; torch.func.vmap over it
    folds the vmap dimension into the rows and the groups, so a pack of K models, each with its own filter, is
    one launch."""

    @staticmethod
    def forward(x, k, bias):
        bias = bias.contiguous() if bias is not None else None
        if _channel_major_tiles(x):
            return channel_major._convolve(channel_major._channel_major(x), k.contiguous(), bias, False)
        return _convolve(_channels_contiguous(x), k.contiguous(), bias, False)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, k, bias = inputs
        ctx.save_for_backward(x, k, bias)

    @staticmethod
    def backward(ctx, dy):
        x, k, bias = ctx.saved_tensors
        rows, length, c = x.shape
        groups, lk = k.shape[0], k.shape[-1]
        taps = min(length, lk)
        cm = _channel_major_tiles(x)
        layout = channel_major._channel_major if cm else _channels_contiguous
        convolve, filter_grad_lags = ((channel_major._convolve, channel_major._filter_grad_lags) if cm else
                                      (_convolve, _filter_grad_lags))
        k, dy = k.contiguous(), layout(dy.to(x.dtype))
        bias = bias.contiguous() if bias is not None else None
        dx = dk = dbias = None
        if ctx.needs_input_grad[0]:
            dx = convolve(dy, k, bias, True)
        if ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2]):
            if x.numel():
                lags = filter_grad_lags(layout(x), dy, groups, taps)  # [G·C, taps] float32
            else:  # nothing to convolve: no gradient
                lags = torch.zeros(groups * c, max(taps, 1), dtype=torch.float32, device=x.device)
            dk = F.pad(lags, (0, lk - lags.shape[1])).view(groups, c, lk).to(k.dtype)  # taps past L: zeros
            if bias is not None:
                dbias = lags[:, 0].view(groups, c).to(bias.dtype)  # Σ dy·x is lag 0
        return dx, dk, dbias

    @staticmethod
    def vmap(info, in_dims, x, k, bias):
        size = info.batch_size
        x, k, bias = (fold(t, bdim, size) for t, bdim in zip((x, k, bias), in_dims))
        y = _LongConv.apply(x, k, bias)
        return y.view(size, y.shape[0] // size, *y.shape[1:]), 0


def long_conv_kernel(x: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [B, L, C] (x's dtype, contiguous) from x [B, L, C], k [C, Lk] or [G, C, Lk], bias [C] or [G, C] or None
    (shapes checked by the caller). Runs under torch.func.vmap (one launch for all K members)."""
    if k.dim() == 2:
        k, bias = k[None], (bias[None] if bias is not None else None)
    return _LongConv.apply(x, k, bias)
