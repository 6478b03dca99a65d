"""Cross-entropy over a large vocabulary as Triton kernels: logits are read in their own dtype (bf16 in training)
and never copied to float32.

Forward: one program per row walks the vocabulary in blocks with an online log-sum-exp (a running maximum and
sum per lane, merged at the end), and stores the row's loss and log-sum-exp. Backward: one program per row
writes dlogits = (softmax − onehot(target)) · dloss in the logits' dtype from the saved log-sum-exp. Against
`logits.float()` + F.cross_entropy this reads the logits twice and writes them once, instead of about six
float32 passes. Non-finite logits give a non-finite loss (training's divergence check relies on it). Targets
must lie in [0, V) or equal ignore_index (ignored rows: loss 0, gradient 0); they are not checked on the device.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG = tl.constexpr(-1.0e30)  # a finite "minus infinity": exp(NEG - m) is exactly 0, and NEG - NEG is 0, never NaN


@triton.jit
def _fwd(z_ptr, t_ptr, loss_ptr, lse_ptr, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * V
    m = tl.full([BLOCK_V], NEG, tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(base + cols, mask=cols < V, other=NEG).to(tl.float32)
        m_new = tl.maximum(m, z)
        s = s * tl.exp(m - m_new) + tl.exp(z - m_new)
        m = m_new
    top = tl.max(m, axis=0)
    lse = top + tl.log(tl.sum(s * tl.exp(m - top), axis=0))
    t = tl.load(t_ptr + row).to(tl.int64)
    valid = t != ignore_index
    zt = tl.load(base + tl.where(valid, t, 0)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - zt, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def _bwd(z_ptr, t_ptr, lse_ptr, g_ptr, dz_ptr, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(t_ptr + row).to(tl.int64)
    valid = t != ignore_index
    g = tl.where(valid, tl.load(g_ptr + row).to(tl.float32), 0.0)
    lse = tl.load(lse_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(z_ptr + row * V + cols, mask=mask, other=0.0).to(tl.float32)
        dz = (tl.exp(z - lse) - tl.where(cols == t, 1.0, 0.0)) * g
        tl.store(dz_ptr + row * V + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)


def _block(v: int) -> int:
    return min(2048, triton.next_power_of_2(v))


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        logits, targets = logits.contiguous(), targets.contiguous()
        n, v = logits.shape
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        if n:
            _fwd[(n,)](logits, targets, loss, lse, v, ignore_index, BLOCK_V=_block(v), num_warps=8)
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    def backward(ctx, dloss):
        logits, targets, lse = ctx.saved_tensors
        n, v = logits.shape
        dlogits = torch.empty_like(logits)
        if n:
            _bwd[(n,)](logits, targets, lse, dloss.contiguous(), dlogits, v, ctx.ignore_index,
                       BLOCK_V=_block(v), num_warps=8)
        return dlogits, None, None


def cross_entropy_kernel(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return _CrossEntropy.apply(logits, targets, ignore_index)
