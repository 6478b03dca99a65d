"""The contract every sequence mixer keeps.

    mixer = SomeMixer(d_model, *, layer_idx=0, max_seq_len=2048, **typed_kwargs)
    y = mixer(x)                       # x: [B, L, D] -> y: [B, L, D], causal
    mixer.state_size(seq_len) -> int   # the recurrent state per example and layer after seq_len tokens, as the
                                       # papers count it (what the report plots; a KV cache for attention)
    mixer.cache_size(seq_len) -> int   # everything `step` carries: the state plus buffers the papers leave out
                                       # (short-convolution taps, H3's shift SSM); equal where nothing is left out
    state = mixer.init_state(batch_size, device, dtype)     # only where a recurrent form exists
    y_t, state = mixer.step(x_t, state)                     # x_t: [B, D] -> y_t: [B, D]

`step` run over a sequence equals `forward` on it, and after seq_len steps the tensors in `state` hold exactly
`cache_size(seq_len)` elements per example (tests/test_mixers.py checks both for every registered arch).

Typed keyword arguments (int, float, bool, str, Literal[...], optionally `| None`) with defaults from the paper
become CLI flags of `probe train` automatically: the annotation is the flag's type.

Forward passes avoid in-place updates of activations and `.item()`, so that a stack of same-shape models can be
trained together with torch.func (packed training). The core op of a mixer (attention, a scan, a long
convolution) is a standalone function with documented shapes, so that a Triton kernel can stand in for it on
CUDA while the plain PyTorch reference serves everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

State = dict[str, torch.Tensor]


class Mixer(nn.Module):
    #: state-size formula in the paper's symbols, shown by `probe list archs`, e.g. "2·d_model·L"
    formula: ClassVar[str] = "?"
    #: the full inference cache's formula, where it holds more than the state the papers count
    cache_formula: ClassVar[str | None] = None
    #: whether every use of the (normalised) input is a projection, so that under autocast it may arrive in bf16
    #: (autocast would cast it there anyway; `probe.model.LayerNorm`); False where the mixer computes on it
    #: directly (a convolution of the raw input, a skip term, an added position embedding)
    projects_input: bool = True

    def __init__(self, d_model: int, *, layer_idx: int = 0, max_seq_len: int = 2048):
        super().__init__()
        self.d_model = d_model
        self.layer_idx = layer_idx
        self.max_seq_len = max_seq_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int:
        raise NotImplementedError

    def cache_size(self, seq_len: int) -> int:
        return self.state_size(seq_len)

    @property
    def has_recurrent_form(self) -> bool:
        return type(self).step is not Mixer.step

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent form")

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent form")


@dataclass(frozen=True)
class MixerSpec:
    """A registry entry: the class, the keyword arguments that make this named variant, one line on it."""

    cls: type[Mixer]
    summary: str
    kwargs: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The mixer family: the registry module that defines its class ("attention", "linear_attention", "ssm",
        "conv", "monarch", "simplicial"); the report colours by it."""
        return self.cls.__module__.rsplit(".", 1)[-1]

    def build(self, d_model: int, **kwargs) -> Mixer:
        return self.cls(d_model, **{**self.kwargs, **kwargs})


def state_numel(state: State, batch_size: int) -> int:
    """Elements per example in a recurrent state (every tensor's leading dimension is the batch)."""
    return sum(t.numel() for t in state.values()) // batch_size
