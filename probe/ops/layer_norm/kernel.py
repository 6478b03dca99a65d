"""LayerNorm as Triton kernels, forward and backward, for G groups of rows with a weight and bias per group.

x [G, R, D] (a pack of G models' activations, R rows each), weight and bias [G, D]. Each program normalises a
block of rows of one group (several rows per program: D is small here, 32-1024, and one row per program leaves
most of a GPU's lanes idle). With H segments per row (GroupNorm over each row's channels, H groups of S = D/H:
RetNet's and GLA's norm per head), the kernels see x as [G, R·H, S], each segment a row of its own with its own
mean and variance, segment h of a row taking weight[h·S:(h+1)·S]; the backward's programs each walk the rows of
one segment, so their partial sums of dweight stay per segment. Statistics and arithmetic in float32. The
backward writes dx and, per program, partial sums of dweight and dbias over its rows; the partials are added on
the host (no atomics: the result is deterministic). No tl.dot anywhere, so Triton 3.6's Hopper tl.trans
miscompile cannot apply.

The same two kernels fuse a pre-norm block's residual add into the norm that follows it (`add_layer_norm_grouped`:
s = x + y, h = LayerNorm(s)). Unfused, a block boundary under bf16 autocast costs an add pass (read x float32 and
y bf16, write s), the norm's pass (read s again), and in the backward two more: the residual gradient ds plus
the norm's dx (a float32 pass), then that sum cast to bf16 for y. Fused, the forward reads x and y once and
writes s and h; the backward adds ds to dx in registers and writes the sum twice, in x's dtype and in y's (dy),
so no pass over the residual stream is left outside the kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold

@triton.jit
def _fwd(x_ptr, y_ptr, w_ptr, b_ptr, s_ptr, out_ptr, mean_ptr, rstd_ptr, R, D, H, eps,
         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SEGMENTS: tl.constexpr, ADD: tl.constexpr):
    # with H segments per input row, R counts a group's segments (input rows · H) and D is a segment's width S;
    # weight and bias [G, H·S]. ADD: normalise s = x + y (written to s_ptr) instead of x
    g = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    in_r, in_d = rows < R, cols < D
    mask = in_r[:, None] & in_d[None, :]
    offs = (g * R + rows)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ADD:  # rounded to s's dtype before it is normalised, as the unfused add would store it
        s = (x + tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + offs, s, mask=mask)
        x = s.to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    if SEGMENTS:  # row q is segment q % H of its row of the input
        seg = g * H * D + (rows % H)[:, None] * D + cols[None, :]
        w = tl.load(w_ptr + seg, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + seg, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.load(w_ptr + g * D + cols, mask=in_d, other=0.0).to(tl.float32)[None, :]
        b = tl.load(b_ptr + g * D + cols, mask=in_d, other=0.0).to(tl.float32)[None, :]
    out = xc * rstd[:, None] * w + b
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + g * R + rows, mean, mask=in_r)
    tl.store(rstd_ptr + g * R + rows, rstd, mask=in_r)


@triton.jit
def _bwd(x_ptr, w_ptr, dy_ptr, ds_ptr, mean_ptr, rstd_ptr, dx_ptr, dx2_ptr, dw_part_ptr, db_part_ptr, R, D, H,
         rows_per_program, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HAS_DS: tl.constexpr,
         HAS_DX2: tl.constexpr):
    # program (g·H + h, p) walks rows p·rows_per_program .. of segment h (H = 1: plain rows); R: rows of H·D.
    # HAS_DS: ds, the gradient that reached the norm's input along the residual stream, is added to dx;
    # HAS_DX2: dx is written a second time, in dx2's dtype (the other addend's gradient)
    gh = tl.program_id(0).to(tl.int64)
    g, h = gh // H, gh % H
    p = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    in_d = cols < D
    w = tl.load(w_ptr + gh * D + cols, mask=in_d, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, rows_per_program, BLOCK_R):
        rows = p * rows_per_program + start + tl.arange(0, BLOCK_R)
        in_r = (rows < R) & (start + tl.arange(0, BLOCK_R) < rows_per_program)
        mask = in_r[:, None] & in_d[None, :]
        seg = (g * R + rows) * H + h  # this segment's row among the kernel's rows
        offs = seg[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + seg, mask=in_r, other=0.0)
        rstd = tl.load(rstd_ptr + seg, mask=in_r, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / D
        c2 = tl.sum(wdy, axis=1) / D
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            dx += tl.load(ds_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_DX2:
            tl.store(dx2_ptr + offs, dx.to(dx2_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    n_programs = tl.num_programs(1)
    tl.store(dw_part_ptr + (gh * n_programs + p) * D + cols, dw, mask=in_d)
    tl.store(db_part_ptr + (gh * n_programs + p) * D + cols, db, mask=in_d)


def _blocks(d: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(d)
    return max(1, min(64, 4096 // block_d)), block_d  # about 4096 elements per program's tile


def _forward(x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float,
             out_dtype: torch.dtype, heads: int):
    """Launch _fwd on contiguous x [G, R, D] (and y, to normalise s = x + y): (s or None, out, mean, rstd)."""
    g, r, d = x.shape
    seg = d // heads
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    s = torch.empty_like(x) if y is not None else None
    mean = torch.empty(g, r * heads, dtype=torch.float32, device=x.device)
    rstd = torch.empty(g, r * heads, dtype=torch.float32, device=x.device)
    block_r, block_d = _blocks(seg)
    if r:
        add = y is not None
        _fwd[(g, triton.cdiv(r * heads, block_r))](x, y if add else x, weight, bias, s if add else out, out, mean,
                                                   rstd, r * heads, seg, heads, eps, BLOCK_R=block_r,
                                                   BLOCK_D=block_d, SEGMENTS=heads > 1, ADD=add, num_warps=4)
    return s, out, mean, rstd


def _backward(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
              heads: int, ds: torch.Tensor | None = None, dx2_dtype: torch.dtype | None = None):
    """Launch _bwd on contiguous x (the norm's input), weight and dy: (dx [+ ds] in x's dtype, the same in
    dx2_dtype or None, dweight [G, D] and dbias [G, D] in float32)."""
    g, r, d = x.shape
    seg = d // heads
    block_r, block_d = _blocks(seg)
    # enough programs to fill a GPU (~1k), each walking a run of rows, so the partials stay few
    per_group = max(1, min(triton.cdiv(r, block_r), triton.cdiv(1024, g * heads)))
    rows_per_program = block_r * triton.cdiv(triton.cdiv(r, block_r), per_group) if r else block_r
    n_programs = max(1, triton.cdiv(r, rows_per_program))
    dx = torch.empty_like(x)
    dx2 = torch.empty(x.shape, dtype=dx2_dtype, device=x.device) if dx2_dtype is not None else None
    dw_part = torch.empty(g, heads, n_programs, seg, dtype=torch.float32, device=x.device)
    db_part = torch.empty(g, heads, n_programs, seg, dtype=torch.float32, device=x.device)
    if r:
        _bwd[(g * heads, n_programs)](x, weight, dy, ds if ds is not None else dy, mean, rstd, dx,
                                      dx2 if dx2 is not None else dx, dw_part, db_part, r, seg, heads,
                                      rows_per_program, BLOCK_R=block_r, BLOCK_D=block_d, HAS_DS=ds is not None,
                                      HAS_DX2=dx2 is not None, num_warps=4)
    else:
        dw_part.zero_(), db_part.zero_()
    dw, db = (part.sum(2).view(g, d) for part in (dw_part, db_part))
    return dx, dx2, dw, db


class _LayerNorm(torch.autograd.Function):
    """(y, mean, rstd) for x [G, R, D], weight and bias [G, D], each row normalised in `heads` equal segments
    (1: LayerNorm); torch.func.vmap over it folds the vmap dimension into G, so a pack of K models normalises in
    one launch. mean and rstd: [G, R·heads]."""

    @staticmethod
    def forward(x, weight, bias, eps, out_dtype, heads=1):
        _, y, mean, rstd = _forward(x.contiguous(), None, weight.contiguous(), bias.contiguous(), eps, out_dtype,
                                    heads)
        return y, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, eps, out_dtype, *rest = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(x, weight, output[1], output[2])
        ctx.bias_dtype, ctx.heads = bias.dtype, rest[0] if rest else 1

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, _, dw, db = _backward(x.contiguous(), weight.contiguous(), dy.contiguous(), mean, rstd, ctx.heads)
        return dx, dw.to(weight.dtype), db.to(ctx.bias_dtype), None, None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, eps, out_dtype, heads=1):
        k = info.batch_size
        groups = x.shape[0] if in_dims[0] is None else x.shape[1 if in_dims[0] == 0 else 0]
        y, mean, rstd = _LayerNorm.apply(fold(x, in_dims[0], k), fold(weight, in_dims[1], k),
                                         fold(bias, in_dims[2], k), eps, out_dtype, heads)
        return (y.view(k, groups, *y.shape[1:]), mean.view(k, groups, -1), rstd.view(k, groups, -1)), (0, 0, 0)


class _AddLayerNorm(torch.autograd.Function):
    """(s, h, mean, rstd) for x and y [G, R, D], weight and bias [G, D]: s = x + y in x's dtype, h = LayerNorm(s)
    in out_dtype; mean and rstd [G, R]. The backward takes (ds, dh), ds None where s has no other use, and returns
    dx = ds + LayerNorm's backward of dh in x's dtype and the same sum in y's dtype for y, both from the kernel.
    Under torch.func.vmap the vmap dimension folds into G: one launch for a pack."""

    @staticmethod
    def forward(x, y, weight, bias, eps, out_dtype):
        return _forward(x.contiguous(), y.contiguous(), weight.contiguous(), bias.contiguous(), eps, out_dtype, 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, weight, bias, _eps, _out_dtype = inputs
        s, _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)  # an unused s brings None, not a tensor of zeros to read
        ctx.save_for_backward(s, weight, mean, rstd)  # s, not x and y: the norm's input, already written
        ctx.y_dtype, ctx.bias_dtype = y.dtype, bias.dtype

    @staticmethod
    def backward(ctx, ds, dh, _dmean, _drstd):
        s, weight, mean, rstd = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[:2]
        if dh is None:  # h unused: only the add's own backward
            dy = ds.to(ctx.y_dtype) if ds is not None and need_y else None
            return ds if need_x else None, dy, None, None, None, None
        own = need_y and ctx.y_dtype != s.dtype  # y's gradient needs a second write in its own dtype
        dx, dy, dw, db = _backward(s, weight.contiguous(), dh.contiguous(), mean, rstd, 1,
                                   ds.contiguous() if ds is not None else None, ctx.y_dtype if own else None)
        if need_y and not own:
            dy = dx  # the same values in the same dtype: one tensor for both, as torch's add hands back
        return (dx if need_x else None, dy if need_y else None, dw.to(weight.dtype), db.to(ctx.bias_dtype), None,
                None)

    @staticmethod
    def vmap(info, in_dims, x, y, weight, bias, eps, out_dtype):
        k = info.batch_size
        groups = x.shape[0] if in_dims[0] is None else x.shape[1 if in_dims[0] == 0 else 0]
        s, h, mean, rstd = _AddLayerNorm.apply(*(fold(t, b, k) for t, b in zip((x, y, weight, bias), in_dims)),
                                               eps, out_dtype)
        return ((s.view(k, groups, *s.shape[1:]), h.view(k, groups, *h.shape[1:]), mean.view(k, groups, -1),
                 rstd.view(k, groups, -1)), (0, 0, 0, 0))


def layer_norm_grouped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       out_dtype: torch.dtype, heads: int = 1) -> torch.Tensor:
    """x [G, R, D], weight and bias [G, D] -> y [G, R, D] in out_dtype (the kernel's own layout); each row
    normalised in `heads` equal segments of D (1: LayerNorm; more: GroupNorm with per-row statistics)."""
    return _LayerNorm.apply(x, weight, bias, eps, out_dtype, heads)[0]


def add_layer_norm_grouped(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                           out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y [G, R, D], weight and bias [G, D] -> (s = x + y in x's dtype, h = LayerNorm(s) in out_dtype)."""
    s, h, _, _ = _AddLayerNorm.apply(x, y, weight, bias, eps, out_dtype)
    return s, h
