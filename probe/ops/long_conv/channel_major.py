"""The long convolution's channel-major Triton kernels, one channel a program, 2-D tensor-core products: what
`kernel._LongConv` runs on float32 tiles (BaseConv's convolution of its float32 input under autocast; CPU runs and
float32 training). The function and algorithms are those of `kernel.py` (read its docstring first); what differs
is the layout and the tiles:

Layout: the kernels read and write through (row, position, channel) strides, and the host hands them
channel-major memory (positions contiguous, so each tile row is one coalesced read): a token-major input is
copied once, transposed; a channel-major view goes in as it is. y, dx come back as [R, L, C] views of
channel-major [R, C, L] memory. Tiles [BB rows, BL positions] of one channel, products [BB, BL] @ [BL, BL].

Why two kernel families (measured on an H100, BENCHMARKS.md 2026-12-07 second session, fwd+bwd at a K = 4 pack's
[1024, 256, 128]): on bf16 tiles the token-major kernels are as fast (1.57 vs 1.99 ms) and take the layout copies
and strided elementwise kernels around the convolution away; on float32 tiles, three TF32 products each, their
batched [16, 16, 32] dots were 1.3x slower (3.59 vs 2.72 ms), and BaseConv's pack 6% slower end to end.

Measured on the H200 before (2026-12-03): 230-255 registers a program (spills in the anti-causal product), so two
programs per SM; the product is latency-bound, not bound by its dots; 32 x 32 tiles, the fastest fwd+bwd in bf16
(1.30x, its forward 1.4x slower), moved a K = 4 pack's training by +4% for H3 and by noise for BaseConv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

NUM_WARPS = 4  # 8 measured no faster at [64, 64] tiles (bf16) and slower in float32
MAX_BLOCK = 64  # positions and rows per tile: [64, 64] dots, a [64, 64] float32 accumulator
PROGRAMS = 1024  # _filter_grad's programs: about 8 per H200 SM; each holds one BL² float32 scratch tile


@triton.jit
def _tile(ptr, base, rows, pos, n_rows, L, s_r, s_l):
    """ptr[base + row·s_r + pos·s_l] as a [rows, positions] tile, zeros outside the group's rows and L."""
    mask = (rows < n_rows)[:, None] & (pos < L)[None, :]
    return tl.load(ptr + base + rows.to(tl.int64)[:, None] * s_r + pos.to(tl.int64)[None, :] * s_l, mask=mask,
                   other=0.0)


@triton.jit
def _taps(k_ptr, base, taps, pos_in, pos_out, ANTI: tl.constexpr):
    """The Toeplitz tile [positions in, positions out]: k[out − in] (ANTI: k[in − out]), 0 at lags outside
    [0, taps) (taps = min(L, Lk))."""
    if ANTI:
        lag = pos_in[:, None] - pos_out[None, :]
    else:
        lag = pos_out[None, :] - pos_in[:, None]
    return tl.load(k_ptr + base + lag, mask=(lag >= 0) & (lag < taps), other=0.0)


@triton.jit
def _input_blocks(jb, taps, n_blocks, ANTI: tl.constexpr, BL: tl.constexpr):
    """The input blocks [lo, hi) that reach output block jb, before its own (diagonal) block."""
    if ANTI:  # inputs at out .. out + taps − 1: the blocks after this one
        lo = jb + 1
        hi = tl.minimum(n_blocks, (jb * BL + BL + taps - 2) // BL + 1)
    else:  # inputs at out − taps + 1 .. out: the blocks before this one
        lo = tl.maximum(jb * BL - taps + 1, 0) // BL
        hi = jb
    return lo, hi


@triton.jit
def _toeplitz(src_ptr, k_ptr, bias_ptr, dst_ptr, L, C, rows_per_group, taps, k_stride, n_blocks, n_row_blocks,
              s_r, s_l, s_c, d_r, d_l, d_c, ANTI: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
              BB: tl.constexpr, BL: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    jb = pid % n_blocks  # output blocks of one channel run side by side: they reread the same input blocks
    rb = (pid // n_blocks) % n_row_blocks
    gc = pid // (n_blocks * n_row_blocks)  # group · C + channel
    grp, c = gc // C, gc % C
    rows = rb * BB + tl.arange(0, BB)
    offs = tl.arange(0, BL)
    out = jb * BL + offs
    src = grp * rows_per_group * s_r + c * s_c
    k_base = gc * k_stride
    lo, hi = _input_blocks(jb, taps, n_blocks, ANTI, BL)
    acc = tl.zeros([BB, BL], dtype=tl.float32)
    for ib in range(lo, hi):
        pos = ib * BL + offs
        a = _tile(src_ptr, src, rows, pos, rows_per_group, L, s_r, s_l)              # [BB, BL]
        acc = tl.dot(a, _taps(k_ptr, k_base, taps, pos, out, ANTI).to(a.dtype), acc, input_precision=PRECISION)
    a = _tile(src_ptr, src, rows, out, rows_per_group, L, s_r, s_l)                  # the diagonal block
    acc = tl.dot(a, _taps(k_ptr, k_base, taps, out, out, ANTI).to(a.dtype), acc, input_precision=PRECISION)
    if HAS_BIAS:  # the feed-through, in float32 (not rounded into the bf16 tap k[0])
        acc += tl.load(bias_ptr + gc).to(tl.float32) * a.to(tl.float32)
    mask = (rows < rows_per_group)[:, None] & (out < L)[None, :]
    dst = dst_ptr + grp * rows_per_group * d_r + c * d_c
    tl.store(dst + rows.to(tl.int64)[:, None] * d_r + out.to(tl.int64)[None, :] * d_l,
             acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _filter_grad(x_ptr, dy_ptr, scratch_ptr, parts_ptr, L, C, channels, rows_per_group, n_blocks, n_row_blocks,
                 n_lag_blocks, s_r, s_l, s_c, g_r, g_l, g_c, PRECISION: tl.constexpr, BB: tl.constexpr,
                 BL: tl.constexpr):
    pid = tl.program_id(0)
    offs = tl.arange(0, BL)
    row_offs = tl.arange(0, BB)
    skew = tl.arange(0, 2 * BL)
    scratch = scratch_ptr + pid.to(tl.int64) * BL * BL
    for item in range(pid, channels * n_lag_blocks, tl.num_programs(0)):
        j = item // channels  # lag block j first: the items of most work (every tb ≥ j) are spread over programs
        gc = (item % channels).to(tl.int64)
        grp, c = gc // C, gc % C
        x_base = grp * rows_per_group * s_r + c * s_c
        dy_base = grp * rows_per_group * g_r + c * g_c
        acc = tl.zeros([BL, BL], dtype=tl.float32)  # A_j[i, l]
        for tb in range(j, n_blocks):
            t = tb * BL + offs
            s = (tb - j) * BL + offs
            for rb in range(0, n_row_blocks):
                rows = rb * BB + row_offs
                mask = (t < L)[:, None] & (rows < rows_per_group)[None, :]
                dy_t = tl.load(dy_ptr + dy_base + t.to(tl.int64)[:, None] * g_l + rows.to(tl.int64)[None, :] * g_r,
                               mask=mask, other=0.0)                                 # [BL (t), BB], dyᵀ
                xs = _tile(x_ptr, x_base, rows, s, rows_per_group, L, s_r, s_l)     # [BB, BL (s)]
                acc = tl.dot(dy_t, xs, acc, input_precision=PRECISION)
        tl.store(scratch + offs[:, None] * BL + offs[None, :], acc)
        tl.debug_barrier()  # the whole tile is in scratch before any thread reads it back skewed
        i = offs[:, None] + skew[None, :] - BL  # row i of A_j on diagonal i − l = skew − BL, for each column l
        diag = tl.load(scratch + i * BL + offs[:, None], mask=(i >= 0) & (i < BL), other=0.0)  # [BL (l), 2BL]
        # column d: lag (j − 1)·BL + d
        tl.store(parts_ptr + (gc * n_lag_blocks + j) * 2 * BL + skew, tl.sum(diag, axis=0))
        tl.debug_barrier()  # every read is done before the next item overwrites the scratch


def _blocks(rows_per_group: int, length: int) -> tuple[int, int]:
    """(BB rows, BL positions) per tile; tl.dot needs 16 or more of each."""
    return (max(16, min(MAX_BLOCK, triton.next_power_of_2(rows_per_group))),
            max(16, min(MAX_BLOCK, triton.next_power_of_2(length))))


#: float32 tiles' dot products: "tf32x3" (three TF32 tensor-core products of each operand's high and low parts)
#: or "ieee" (CUDA-core FMAs). Measured on the H200 (BENCHMARKS.md, 2026-12-03 third session): the same accuracy
#: against float64 (1.2e-7 vs 1.4e-7 relative) and 1.04-1.09x faster forward and backward at L 64-512
FLOAT32_PRECISION = "tf32x3"


def _precision(x: torch.Tensor) -> str:
    return FLOAT32_PRECISION if x.dtype == torch.float32 else "tf32"  # ignored for bf16/fp16 tiles


def _channel_major(t: torch.Tensor) -> torch.Tensor:
    """t [R, L, C] with its positions contiguous in memory (a transposed copy only where they are not)."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


def _convolve(src: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, anti: bool) -> torch.Tensor:
    """The causal (anti=False: y from x) or anti-causal (anti=True: dx from dy) product, [R, L, C] in src's dtype,
    as a view of channel-major memory. src channel-major, k [G, C, Lk] contiguous, bias [G, C] or None."""
    rows, length, c = src.shape
    groups = k.shape[0]
    dst = torch.empty(rows, c, length, dtype=src.dtype, device=src.device).transpose(1, 2)
    if dst.numel() == 0:
        return dst
    block_b, block_l = _blocks(rows // groups, length)
    n_blocks, n_row_blocks = triton.cdiv(length, block_l), triton.cdiv(rows // groups, block_b)
    _toeplitz[(groups * c * n_row_blocks * n_blocks,)](
        src, k, bias if bias is not None else k, dst, length, c, rows // groups, min(length, k.shape[-1]),
        k.shape[-1], n_blocks, n_row_blocks, *src.stride(), *dst.stride(), ANTI=anti, HAS_BIAS=bias is not None,
        PRECISION=_precision(src), BB=block_b, BL=block_l, num_warps=NUM_WARPS)
    return dst


def _filter_grad_lags(x: torch.Tensor, dy: torch.Tensor, groups: int, taps: int) -> torch.Tensor:
    """dk[g·C + c, τ] = Σ_b Σ_t dy[b, t, c] x[b, t − τ, c] for τ < taps: [G·C, taps] float32 (the rows b of group
    g; x, dy [R, L, C] channel-major)."""
    rows, length, c = x.shape
    block_b, block_l = _blocks(rows // groups, length)
    n_blocks = triton.cdiv(length, block_l)
    # A_j gives lags (j − 1)·BL .. (j + 1)·BL: the last lag block needs the next j's negative diagonals
    n_lag_blocks = min(triton.cdiv(taps, block_l) + 1, n_blocks)
    channels = groups * c
    programs = min(channels * n_lag_blocks, PROGRAMS)
    f32 = dict(dtype=torch.float32, device=x.device)
    scratch = torch.empty(programs, block_l, block_l, **f32)
    parts = torch.empty(channels, n_lag_blocks, 2 * block_l, **f32)
    _filter_grad[(programs,)](
        x, dy, scratch, parts, length, c, channels, rows // groups, n_blocks, triton.cdiv(rows // groups, block_b),
        n_lag_blocks, *x.stride(), *dy.stride(), PRECISION=_precision(x), BB=block_b, BL=block_l,
        num_warps=NUM_WARPS)
    lags = parts[..., block_l:].clone()     # block j from A_j's diagonals i ≥ l
    lags[:, :-1] += parts[:, 1:, :block_l]  # and from A_{j+1}'s diagonals i < l
    return lags.reshape(channels, n_lag_blocks * block_l)[:, :taps]


