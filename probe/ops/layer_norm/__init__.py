"""LayerNorm over the last dimension: `layer_norm(x, weight, bias, eps)`, x [..., D], weight and bias [D]; and
GroupNorm of each position's channels: `group_norm(x, weight, bias, groups, eps)`, each of `groups` equal slices of
D normalised on its own (torch's GroupNorm of x viewed as [N, D]: RetNet's and GLA's norm per head); and the residual
add fused into the LayerNorm after it: `add_layer_norm(x, y, weight, bias, eps)` -> (s = x + y, LayerNorm(s)), a
pre-norm block boundary in one pass (probe.model threads each block's output add into the next norm).

References: `reference.layer_norm_ref`, `reference.add_layer_norm_ref` (their equations). Kernel: `kernel.py`
(Triton, forward and backward), picked by `probe.ops.dispatch.backend`. Under torch.func.vmap (a pack of K models,
each with its own weight and bias) the kernel normalises all K members in one launch. As torch's autocast does for
LayerNorm, the result is float32 while autocast is on, else x's dtype.
"""
from __future__ import annotations

import torch

from ..dispatch import backend
from .reference import add_layer_norm_ref, group_norm_ref, layer_norm_ref

MAX_D = 16384  # wider rows go to the reference (a row must fit one program's registers)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5, *,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    d = x.shape[-1]
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"weight and bias must be [{d}] (x's last dimension); got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if out_dtype is None:
        out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    if backend(x) == "ref" or d > MAX_D:
        return layer_norm_ref(x, weight, bias, eps, out_dtype)
    from .kernel import layer_norm_grouped
    y = layer_norm_grouped(x.reshape(1, -1, d), weight[None], bias[None], eps, out_dtype)
    return y.view(x.shape)


def add_layer_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5, *,
                   out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y [..., D] (y in any dtype, e.g. a bf16 mixer output added to the float32 residual stream), weight
    and bias [D] -> (s = x + y [..., D] in x's dtype, h = LayerNorm(s) [..., D] in out_dtype, chosen as
    `layer_norm` chooses it). With the kernel, one pass reads x and y and writes s and h, and the backward writes
    x's and y's gradient (the same sum, ds + the norm's backward, in each one's dtype) from the kernel."""
    d = x.shape[-1]
    if y.shape != x.shape:
        raise ValueError(f"y must be x's shape {tuple(x.shape)}; got {tuple(y.shape)}")
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"weight and bias must be [{d}] (x's last dimension); got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if out_dtype is None:
        out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    if backend(x) == "ref" or backend(y) == "ref" or d > MAX_D:
        return add_layer_norm_ref(x, y, weight, bias, eps, out_dtype)
    from .kernel import add_layer_norm_grouped
    s, h = add_layer_norm_grouped(x.reshape(1, -1, d), y.reshape(1, -1, d), weight[None], bias[None], eps,
                                  out_dtype)
    return s.view(x.shape), h.view(x.shape)


def group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float = 1e-5, *,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    d = x.shape[-1]
    if not isinstance(groups, int) or groups < 1 or d % groups:
        raise ValueError(f"groups={groups!r} must be a positive divisor of x's last dimension {d}")
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"weight and bias must be [{d}] (x's last dimension); got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if out_dtype is None:  # torch's autocast runs GroupNorm in float32, as it does LayerNorm
        out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    if backend(x) == "ref" or d // groups > MAX_D:
        return group_norm_ref(x, weight, bias, groups, eps, out_dtype)
    from .kernel import layer_norm_grouped
    y = layer_norm_grouped(x.reshape(1, -1, d), weight[None], bias[None], eps, out_dtype, groups)
    return y.view(x.shape)


__all__ = ["add_layer_norm", "add_layer_norm_ref", "group_norm", "group_norm_ref", "layer_norm", "layer_norm_ref"]
