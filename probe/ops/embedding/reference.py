"""Token embedding, the contract: out[..., :] = weight[tokens[...], :].

weight [V, D], tokens [...] integer in [0, V) -> [..., D]; the gradient of weight row v is the sum of the output
gradients at every position holding token v (rows no token names get zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_ref(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.embedding(tokens, weight)
