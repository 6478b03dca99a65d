"""Cross-entropy per row, the contract its kernel is tested against:

    loss_n = logsumexp_v(z_nv) − z_{n,t_n}     (0 where t_n = ignore_index)

logits z [N, V], targets t [N] -> loss [N] in float32 (float64 for float64 logits), as F.cross_entropy with
reduction="none" computes it from logits promoted to float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_ref(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype), targets, ignore_index=ignore_index, reduction="none")
