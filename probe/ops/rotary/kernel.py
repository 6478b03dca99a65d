"""Rotary embedding as one Triton kernel, forward and backward (the backward is the rotation by −angle).

x is read through its strides as [A, H, L, D] (attention's q and k are transposed views of a projection, so
no copy is made first), y is written contiguous. Each program rotates a block of positions of one (a, h) row;
cos and sin [L, D/2] are shared by every row. The arithmetic is float32. Against the reference's slices, casts,
four products and stack (about ten passes over x), it reads x once and writes y once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold
from .reference import rotary_ref


@triton.jit
def _rotate(x_ptr, cos_ptr, sin_ptr, y_ptr, H, L, HALF, sx0, sx1, sx2, sx3, sign,
            BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    a, h = row // H, row % H
    ls = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    ps = tl.arange(0, BLOCK_P)
    mask = (ls < L)[:, None] & (ps < HALF)[None, :]
    off = a * sx0 + h * sx1 + ls[:, None] * sx2 + (2 * ps)[None, :] * sx3
    x1 = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + off + sx3, mask=mask, other=0.0).to(tl.float32)
    cs = ls[:, None] * HALF + ps[None, :]
    c = tl.load(cos_ptr + cs, mask=mask, other=0.0)
    s = tl.load(sin_ptr + cs, mask=mask, other=0.0) * sign
    out = (row * L + ls[:, None]) * (2 * HALF) + (2 * ps)[None, :]
    tl.store(y_ptr + out, (x1 * c - x2 * s).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + out + 1, (x1 * s + x2 * c).to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    *lead, length, d = x.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x4 = x.reshape(-1, *x.shape[-3:]) if x.dim() > 4 else x[(None,) * (4 - x.dim())]
    half = d // 2
    block_p = triton.next_power_of_2(half)
    block_l = max(1, min(64, 2048 // block_p))
    _rotate[(x4.shape[0] * x4.shape[1], triton.cdiv(length, block_l))](
        x4, cos, sin, y, x4.shape[1], length, half, *x4.stride(), sign, BLOCK_L=block_l, BLOCK_P=block_p,
        num_warps=4)
    return y


class _Rotary(torch.autograd.Function):
    """y = R(angles) x; torch.func.vmap over it folds the vmap dimension into x's first dimension (one launch
    for a pack) when the angles are shared, as positions are."""

    @staticmethod
    def forward(x, cos, sin):
        return _launch(x, cos.float().contiguous(), sin.float().contiguous(), 1.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, cos, sin = inputs
        ctx.save_for_backward(cos, sin)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos.float().contiguous(), sin.float().contiguous(), -1.0), None, None

    @staticmethod
    def vmap(info, in_dims, x, cos, sin):
        k = info.batch_size
        if in_dims[1] is not None or in_dims[2] is not None:  # angles of their own per member: the reference
            x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(k, *x.shape)
            per = [t.movedim(b, 0) if b is not None else t.expand(k, *t.shape) for t, b in ((cos, in_dims[1]),
                                                                                          (sin, in_dims[2]))]
            shape = (k,) + (1,) * (x.dim() - 3) + per[0].shape[1:]
            return rotary_ref(x, per[0].reshape(shape), per[1].reshape(shape)), 0
        lead = x.shape[0] if in_dims[0] is None else x.shape[1 if in_dims[0] == 0 else 0]
        y = _Rotary.apply(fold(x, in_dims[0], k), cos, sin)
        return y.view(k, lead, *y.shape[1:]), 0


def rotary_kernel(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _Rotary.apply(x, cos, sin)
