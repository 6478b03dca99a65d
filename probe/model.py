"""The language model around the mixers: tokens [B, L] -> logits [B, L, vocab].

Design choices (Zoology's MQAR setting is the default): token embedding, no absolute positions at the model
level (position schemes belong to the mixers), pre-norm residual blocks `x + mixer(norm(x))` with an optional
channel mixer `x + mlp(norm(x))` (none, "mlp" GELU with 4x expansion, or "swiglu"), LayerNorm, an untied
output head. A hybrid is a comma-separated pattern of registered mixer names, cycled over the layers
(`hyena,hyena,attention` with 6 layers gives two repeats).

The head costs most of a small model's FLOPs (vocab 8192 vs d_model 64-512) while most positions are not
scored, so `hidden()` and `logits(hidden)` are separate: training applies the head only at scored positions.
"""
from __future__ import annotations

import inspect
import typing
from typing import Literal

import torch
from torch import nn

from .errors import ProbeError
from .mixers import MIXERS, Mixer
from .ops import layer_norm

ChannelMixer = Literal["none", "mlp", "swiglu"]


class MLP(nn.Module):
    def __init__(self, d_model: int, kind: ChannelMixer, expand: int = 4):
        super().__init__()
        self.kind = kind
        hidden = expand * d_model
        if kind == "swiglu":
            hidden = int(2 * hidden / 3)  # keeps parameters equal to the GELU MLP (Shazeer 2020)
            self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=kind == "mlp")
        self.down = nn.Linear(hidden, d_model, bias=kind == "mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(nn.functional.silu(self.gate(x)) * self.up(x))
        return self.down(nn.functional.gelu(self.up(x)))


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, initialisation and state dict) through probe.ops.layer_norm: its Triton
    kernel on CUDA, one launch for a whole pack under vmap (vmap's rule for torch's own LayerNorm with a weight
    per member adds separate, broadcasting multiply and add passes, forward and backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, channel_mixer: ChannelMixer):
        super().__init__()
        self.norm1 = LayerNorm(d_model)
        self.mixer = mixer
        self.norm2 = LayerNorm(d_model) if channel_mixer != "none" else None
        self.mlp = MLP(d_model, channel_mixer) if channel_mixer != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        x = x + self.mixer(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class LanguageModel(nn.Module):
    def __init__(self, mixers: list[Mixer], *, vocab_size: int, d_model: int, channel_mixer: ChannelMixer):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(m, d_model, channel_mixer) for m in mixers)
        self.norm = LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, D], before the final norm
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return x

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, D]
        return self.norm(self.features(tokens))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., V]
        return self.head(hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, V]
        return self.logits(self.hidden(tokens))

    def state_size(self, seq_len: int) -> int:
        """Recurrent state per example over all layers after seq_len tokens, as the papers count it."""
        return sum(block.mixer.state_size(seq_len) for block in self.blocks)

    def cache_size(self, seq_len: int) -> int:
        """Elements one example's inference cache holds after seq_len tokens (state plus convolution taps)."""
        return sum(block.mixer.cache_size(seq_len) for block in self.blocks)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def parse_pattern(arch: str) -> list[str]:
    names = [a.strip() for a in arch.split(",")]
    unknown = [a for a in names if a not in MIXERS]
    if not arch.strip() or unknown:
        raise ProbeError(f"unknown arch {unknown[0] if unknown else arch!r} (known: {', '.join(sorted(MIXERS))})")
    return names


def mixer_options(name: str) -> dict[str, tuple[type, object]]:
    """The typed keyword arguments of a registered mixer: option -> (annotation, default for this arch)."""
    spec = MIXERS[name]
    hints = typing.get_type_hints(spec.cls.__init__)
    options = {}
    for p in inspect.signature(spec.cls.__init__).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name not in ("layer_idx", "max_seq_len"):
            options[p.name] = (hints.get(p.name, type(p.default)), spec.kwargs.get(p.name, p.default))
    return options


def build_model(arch: str, *, vocab_size: int, d_model: int, n_layers: int, max_seq_len: int,
                channel_mixer: ChannelMixer = "none", **options) -> LanguageModel:
    """A model of `n_layers` blocks whose mixers follow `arch` (a registered name or a comma pattern).

    Each option goes to every layer whose mixer takes it; an option no layer takes is an error.
    """
    names = parse_pattern(arch)
    for field, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                         ("max_seq_len", max_seq_len)):
        if value < 1:
            raise ProbeError(f"{field}={value} must be >= 1")
    if n_layers < len(names):
        raise ProbeError(f"arch pattern {arch!r} has {len(names)} layers but n_layers={n_layers}")
    if channel_mixer not in typing.get_args(ChannelMixer):
        raise ProbeError(f"channel_mixer={channel_mixer!r} must be one of {typing.get_args(ChannelMixer)}")
    accepted = {n: mixer_options(n) for n in set(names)}
    stray = [k for k in options if not any(k in acc for acc in accepted.values())]
    if stray:
        raise ProbeError(f"option {stray[0]!r} is not taken by arch {arch!r}")
    mixers = []
    for i in range(n_layers):
        name = names[i % len(names)]
        own = {k: v for k, v in options.items() if k in accepted[name]}
        try:
            mixers.append(MIXERS[name].build(d_model, layer_idx=i, max_seq_len=max_seq_len, **own))
        except (ValueError, TypeError) as e:
            raise ProbeError(f"{name}: {e}") from None
    return LanguageModel(mixers, vocab_size=vocab_size, d_model=d_model, channel_mixer=channel_mixer)


def list_archs() -> list[str]:
    return sorted(MIXERS)
