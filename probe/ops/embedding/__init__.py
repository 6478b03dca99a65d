"""Token embedding: `embedding(weight, tokens)`, weight [V, D], tokens [...] -> [..., D].

Reference: `reference.embedding_ref` (its equation). Kernel: `kernel.py` (a gather forward; a deterministic,
capturable segmented-sum backward in Triton), picked by `probe.ops.dispatch.backend`. Under torch.func.vmap a
pack's K tables read the members' shared tokens in one gather, and the backward sorts the tokens once for all K.
Tokens must lie in [0, V): the kernel does not check them (a check would wait for the host), where torch's
embedding raises on a CPU and asserts on a GPU.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import embedding_ref


def embedding(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"weight must be [V, D] and tokens integers; got {tuple(weight.shape)} and {tokens.dtype}")
    if backend(weight) == "ref":
        return embedding_ref(weight, tokens)
    from .kernel import embedding_kernel
    return embedding_kernel(weight, tokens.long())


__all__ = ["embedding", "embedding_ref"]
