"""One AdamW update of a pack's stacked parameter, in plain PyTorch: the contract of the fused kernel.

p, grad, exp_avg, exp_avg_sq [K, ...] (member k's slice is row k); scalars [K, 2] float32, per member: column 0
the decay factor 1 - lr·wd (1 where the parameter is not decayed), column 1 the step size lr / (1 - β1^t);
correction2 a float32 scalar tensor, sqrt(1 - β2^t). Updated in place, as torch.optim.AdamW does it:

    p ← p · decay
    m ← m + (1 - β1)(g - m)          (lerp)
    v ← β2 v + (1 - β2) g²
    p ← p - step · m / (sqrt(v) / correction2 + eps)
"""
from __future__ import annotations

import torch


def adamw_update_ref(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                     scalars: torch.Tensor, correction2: torch.Tensor, beta1: float, beta2: float,
                     eps: float) -> None:
    shape = (-1, *([1] * (p.dim() - 1)))  # [K] -> [K, 1, ...], to broadcast over each member's slice
    decay, step = scalars[:, 0].to(p.dtype).view(shape), scalars[:, 1].to(p.dtype).view(shape)
    p.mul_(decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / correction2.to(p.dtype)).add_(eps)
    p.addcdiv_(exp_avg * step, denom, value=-1.0)
