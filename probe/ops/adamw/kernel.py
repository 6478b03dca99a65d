"""One AdamW update of a stacked [K, ...] parameter as a single Triton kernel: p, grad, exp_avg and exp_avg_sq
are read once and p, exp_avg, exp_avg_sq written once (torch's per-tensor ops take eight passes and as many
launches per parameter). Element i belongs to member i // (numel / K) and reads that member's decay factor and
step size from `scalars` [K, 2]. float32 throughout. No tl.dot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _adamw(p_ptr, g_ptr, m_ptr, v_ptr, scalars_ptr, c2_ptr, numel, per_member, beta2, one_minus_beta1,
           one_minus_beta2, eps,
           BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    member = offs // per_member
    decay = tl.load(scalars_ptr + 2 * member, mask=mask, other=1.0)
    step = tl.load(scalars_ptr + 2 * member + 1, mask=mask, other=0.0)
    c2 = tl.load(c2_ptr)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    p = p * decay
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    # correctly rounded square root and divisions, as torch's (Triton's defaults are approximate on a GPU)
    p = p - tl.div_rn(m * step, tl.div_rn(tl.sqrt_rn(v), c2) + eps)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)


def adamw_update_kernel(p, grad, exp_avg, exp_avg_sq, scalars, correction2, beta1, beta2, eps) -> None:
    numel = p.numel()
    if numel == 0:
        return
    # 1 - β taken in double precision, then rounded once, as torch's lerp_ and addcmul_ receive them: formed in
    # float32 inside the kernel, 1 - 0.999 loses ~1e-5 of itself to cancellation (seen on the H200, not in the
    # interpreter, which keeps Python floats double)
    _adamw[(triton.cdiv(numel, BLOCK),)](p, grad, exp_avg, exp_avg_sq, scalars, correction2, numel,
                                         numel // p.shape[0], beta2, 1.0 - beta1, 1.0 - beta2, eps, BLOCK=BLOCK)
