"""Short causal depthwise convolution, fused with its activation and gate, the contract its kernel is tested
against, in the token-major layout:

    a_{t,c} = Σ_{i<W} weight[c, i] · x_{t−(W−1)+i, c} + bias[c]          (x_{s,c} = 0 for s < 0: causal)
    y_{t,c} = act(a_{t,c}) · gate_{t,c}                                  act: identity or SiLU; no gate: · 1

x [B, L, C], weight [C, W] (W taps, the last one meets the current input: nn.Conv1d's orientation, so a
Conv1d's [C, 1, W] weight is weight[:, 0]), bias [C] or None, gate [B, L, C] or None -> y [B, L, C] in x's
dtype, computed in float32 (float64 for float64 inputs). weight may also be [G, C, W] (and bias [G, C]): the B
rows come in G equal groups, group g convolved with weight[g] (a pack of G models folded into the rows).

`short_conv_step` is the same convolution one token at a time (the mixers' recurrent form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "silu")


def check(x, weight, bias, gate, activation) -> None:
    """Shapes and options, each misfit named (the same checks on either path)."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, L, C]; got {tuple(x.shape)}")
    rows, _, c = x.shape
    if weight.dim() not in (2, 3) or weight.shape[-2] != c or weight.shape[-1] < 1:
        raise ValueError(f"weight must be [C={c}, W] or [G, C={c}, W] with W >= 1; got {tuple(weight.shape)}")
    groups = weight.shape[0] if weight.dim() == 3 else 1
    if rows % groups:
        raise ValueError(f"{rows} rows of x do not split into weight's {groups} groups")
    if bias is not None and bias.shape != weight.shape[:-1]:
        raise ValueError(f"bias must be {list(weight.shape[:-1])} (weight's leading dimensions); got "
                         f"{tuple(bias.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gate must be x's shape {tuple(x.shape)}; got {tuple(gate.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} must be one of {', '.join(ACTIVATIONS)}")


def _activate(a: torch.Tensor, activation: str) -> torch.Tensor:
    return F.silu(a) if activation == "silu" else a


def short_conv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   gate: torch.Tensor | None = None, *, activation: str = "none") -> torch.Tensor:
    check(x, weight, bias, gate, activation)
    dtype = torch.promote_types(x.dtype, torch.float32)
    rows, length, c = x.shape
    groups, taps = (weight.shape[0] if weight.dim() == 3 else 1), weight.shape[-1]
    w = weight.reshape(groups, 1, c, taps).to(dtype).repeat_interleave(rows // groups, 0)  # [B, 1, C, W]
    padded = F.pad(x.to(dtype), (0, 0, taps - 1, 0))                       # [B, W−1+L, C], zeros first
    a = sum(w[..., i] * padded[:, i:i + length] for i in range(taps))      # [B, L, C]
    if bias is not None:
        a = a + bias.reshape(groups, 1, c).to(dtype).repeat_interleave(rows // groups, 0)
    y = _activate(a, activation)
    if gate is not None:
        y = y * gate.to(dtype)
    return y.to(x.dtype)


def short_conv_step(x_t: torch.Tensor, past: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    gate_t: torch.Tensor | None = None, *, activation: str = "none"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of `short_conv_ref`: x_t [B, C], past [B, C, T] (the last T inputs, oldest first; T < W − 1
    at the start of a sequence, the zeros before it left out), weight [C, W], bias [C], gate_t [B, C]
    -> (y_t [B, C] in x_t's dtype, the last min(T + 1, W − 1) inputs [B, C, ·]: what the next token needs)."""
    taps = weight.shape[-1]
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    window = torch.cat([past, x_t.unsqueeze(-1)], dim=-1)                 # [B, C, T+1]
    reach = min(window.shape[-1], taps)
    a = (window[..., window.shape[-1] - reach:].to(dtype) * weight[:, taps - reach:].to(dtype)).sum(-1)
    if bias is not None:
        a = a + bias.to(dtype)
    y = _activate(a, activation)
    if gate_t is not None:
        y = y * gate_t.to(dtype)
    keep = min(window.shape[-1], taps - 1)
    return y.to(x_t.dtype), window[..., window.shape[-1] - keep:]
