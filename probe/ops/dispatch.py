"""The one rule that picks an op's implementation: its Triton kernel or its plain PyTorch reference.

    auto (default)  the kernel for CUDA tensors in float32, bfloat16 or float16; the reference otherwise
                    (CPUs; float64 always, which the kernels would compute in float32)
    PROBE_OPS=ref     always the reference (a user's check that a result does not depend on the kernels)
    PROBE_OPS=triton  the kernel on any device for those dtypes (on a CPU through Triton's interpreter,
                      TRITON_INTERPRET=1: how CPU tests reach the kernels)

The variable is read at each call, so a test can switch it with monkeypatch.setenv.
"""
from __future__ import annotations

import os
from typing import Literal

import torch

from ..errors import ProbeError

CHOICES = ("auto", "ref", "triton")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def forced() -> str:
    value = os.environ.get("PROBE_OPS", "auto") or "auto"
    if value not in CHOICES:
        raise ProbeError(f"PROBE_OPS={value!r} must be one of {', '.join(CHOICES)}")
    return value


def backend(x: torch.Tensor) -> Literal["triton", "ref"]:
    """Which implementation an op runs for input x (see the module docstring)."""
    choice = forced()
    if choice == "ref" or x.dtype not in KERNEL_DTYPES:
        return "ref"
    return "triton" if choice == "triton" or x.is_cuda else "ref"


def fold(x: torch.Tensor | None, bdim: int | None, k: int) -> torch.Tensor | None:
    """A vmapped argument (a pack of k models) with its vmap dimension moved first, or broadcast to k where it has
    none, then folded into its first dimension: [k, G, ...] -> [k·G, ...]. The rule every op's vmap uses."""
    if x is None:
        return None
    x = x.movedim(bdim, 0) if bdim is not None else x.expand(k, *x.shape)
    return x.reshape(k * x.shape[1], *x.shape[2:])
