"""Mamba's selective scan: `selective_scan(u, delta, A, B, C, D)`, token-major (u, Δ [B, L, D], B, C [B, L, N]).

Reference: `reference.selective_scan_ref` (its equation, sequential). Kernel: `kernel.py` (Triton, forward and
backward with checkpointed states), picked by `probe.ops.dispatch.backend`. A [G, D, N] scans G groups of rows
with their own A and D; under torch.func.vmap a pack of K models is one launch.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import check, selective_scan_ref, selective_scan_step


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None) -> torch.Tensor:
    check(u, delta, A, B, C, D)
    if backend(u) == "ref":
        return selective_scan_ref(u, delta, A, B, C, D)
    from .kernel import selective_scan_kernel
    return selective_scan_kernel(u, delta, A, B, C, D)


__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_step"]
