"""AdamW's update of a pack's stacked parameter [K, ...] with a decay factor and step size per member:
`adamw_update(p, grad, exp_avg, exp_avg_sq, scalars, correction2, beta1, beta2, eps)`, in place.

Reference: `reference.adamw_update_ref` (its equations). Kernel: `kernel.py`, one launch and one pass over the
four tensors, for contiguous float32 tensors (what a pack's parameters, gradients and moments are); anything
else goes to the reference. Picked by `probe.ops.dispatch.backend`. Not a differentiable op: PackedAdamW calls
it under no_grad, once per stacked parameter.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import adamw_update_ref


def adamw_update(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 scalars: torch.Tensor, correction2: torch.Tensor, beta1: float, beta2: float, eps: float) -> None:
    if p.dim() == 0 or any(t.shape != p.shape for t in (grad, exp_avg, exp_avg_sq)):
        raise ValueError(f"p, grad and the moments must share one [K, ...] shape; got "
                         f"{[tuple(t.shape) for t in (p, grad, exp_avg, exp_avg_sq)]}")
    if scalars.shape != (p.shape[0], 2):
        raise ValueError(f"scalars must be [K, 2] = [{p.shape[0]}, 2]; got {tuple(scalars.shape)}")
    tensors = (p, grad, exp_avg, exp_avg_sq)
    fused = (backend(p) == "triton" and all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
             and scalars.dtype == torch.float32 and scalars.is_contiguous() and correction2.dtype == torch.float32)
    if not fused:
        return adamw_update_ref(p, grad, exp_avg, exp_avg_sq, scalars, correction2, beta1, beta2, eps)
    from .kernel import adamw_update_kernel
    adamw_update_kernel(p, grad, exp_avg, exp_avg_sq, scalars, correction2, beta1, beta2, eps)


__all__ = ["adamw_update", "adamw_update_ref"]
