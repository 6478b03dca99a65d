"""Per-row cross-entropy over a vocabulary: `cross_entropy(logits, targets, ignore_index)`, logits [N, V] in any
float dtype, targets [N] -> loss [N] float32 (0 where the target is ignore_index).

Reference: `reference.cross_entropy_ref` (F.cross_entropy on float32 logits). Kernel: `kernel.py` (Triton,
forward and backward), picked by `probe.ops.dispatch.backend`; it reads bf16 logits as they are, so a pack's
[K·B·M, 8192] training logits are never copied to float32.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import cross_entropy_ref


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, V] and targets [N]; got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if backend(logits) == "ref":
        return cross_entropy_ref(logits, targets, ignore_index)
    from .kernel import cross_entropy_kernel
    return cross_entropy_kernel(logits, targets, ignore_index)


__all__ = ["cross_entropy", "cross_entropy_ref"]
