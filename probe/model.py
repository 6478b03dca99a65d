"""The language model around the mixers: tokens [B, L] -> logits [B, L, vocab].

Design choices (Zoology's MQAR setting is the default): token embedding, no absolute positions at the model
level (position schemes belong to the mixers), pre-norm residual blocks `x + mixer(norm(x))` with an optional
channel mixer `x + mlp(norm(x))` (none, "mlp" GELU with 4x expansion, or "swiglu"), LayerNorm, an untied
output head. A hybrid is a comma-separated pattern of registered mixer names, cycled over the layers
(`hyena,hyena,attention` with 6 layers gives two repeats).

The head costs most of a small model's FLOPs (vocab 8192 vs d_model 64-512) while most positions are not
scored, so `hidden(tokens, positions)` and `logits(hidden)` are separate: training applies the head only at scored
positions, and every path (training, evaluation, a pack's members, `forward`) goes through `hidden`.

A task may need a model-level decoder between the mixer stack and the final norm (`TaskConfig.decoder`, built by
`build_model(..., decoder=task.decoder)`): "compression" is MAD's autoencoder decoder (CompressionDecoder), which
reads every output position from the last position's features. Without one, output position p is position p.
"""
from __future__ import annotations

import inspect
import math
import typing
from typing import Literal

import torch
from torch import nn

from .errors import ProbeError
from .mixers import MIXERS, Mixer
from .ops import embedding, layer_norm

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
    per member adds separate, broadcasting multiply and add passes, forward and backward).

    One departure from torch's LayerNorm under autocast: the output is in autocast's dtype (bf16), not float32.
    Every norm in the model feeds projections (a mixer's first op, the MLP, the head), which autocast would cast
    to bf16 anyway, so their inputs are the same values; what goes is one float32 write and a cast per
    projection (q, k and v each re-cast the same float32 tensor), forward and backward: at a K = 32 attention
    pack, 16 copies of a 1 GiB tensor per step. The residual stream itself stays float32. A mixer that computes on
    its input other than through projections (`Mixer.projects_input` False: BaseConv's convolution of the raw
    input, S4D's, attention's added learned positions) gets a norm with `autocast_output=False`, torch's float32.
    """

    def __init__(self, normalized_shape, *args, autocast_output: bool = True, **kwargs):
        super().__init__(normalized_shape, *args, **kwargs)
        self.autocast_output = autocast_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        cast = self.autocast_output and torch.is_autocast_enabled(device)
        out_dtype = torch.get_autocast_dtype(device) if cast else None
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype=out_dtype)


class Embedding(nn.Embedding):
    """nn.Embedding (same parameter, initialisation and state dict) through probe.ops.embedding: on CUDA a pack's K
    tables read the shared batch in one gather and sum their gradients in one deterministic pass over tokens
    sorted once (vmap's rule for torch's own sorts K copies of the indices and sums each token's rows serially)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return embedding(self.weight, tokens)


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, channel_mixer: ChannelMixer):
        super().__init__()
        self.norm1 = LayerNorm(d_model, autocast_output=mixer.projects_input)
        self.mixer = mixer
        self.norm2 = LayerNorm(d_model) if channel_mixer != "none" else None
        self.mlp = MLP(d_model, channel_mixer) if channel_mixer != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        x = x + self.mixer(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


def sinusoidal_embedding(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Fixed position embeddings [..., D] (float32) of integer positions [...]: sines of D//2 geometrically spaced
    frequencies (from 1 down to 1/10000) in the first half, their cosines in the second, a zero channel when D is
    odd (the fairseq layout MAD's decoder uses). Computed, not stored: any position has one, at any length."""
    half = d_model // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device)
                      * (-math.log(10000.0) / max(half - 1, 1)))  # [D//2]
    angles = positions[..., None].float() * freqs  # [..., D//2]
    return nn.functional.pad(torch.cat([angles.sin(), angles.cos()], dim=-1), (0, d_model % 2))


class CompressionDecoder(nn.Module):
    """MAD's compression decoder (Poli et al. 2024; mad-lab's `AutoEncoder` with global_pool "last"): output
    position p is decoded from the sequence's encoding, the last position's features, plus a fixed sinusoidal
    embedding of p, through a non-expanding MLP:

        y_p = GELU(W2 · norm(GELU(W1 · norm(e + pos(p)) + b1)) + b2),   e = features[:, -1]

    then, as in MAD's unembedding, a norm and the vocabulary projection (the model's own final norm and head).
    So every logit depends on the input only through e: a sequence is scored by how much of it the mixers packed
    into one position's state.

    Departures from MAD's model: its norms are RMSNorm, probe's LayerNorm (as everywhere in probe); its
    unembedding has a bias, probe's head none; its linear layers start from N(0, 0.02), probe's from torch's
    default (as the channel mixers do). Only the positions asked for are decoded (training: the scored ones),
    with the logits MAD's decoding of all positions would give there.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.norm1 = LayerNorm(d_model)
        self.proj1 = nn.Linear(d_model, d_model)
        self.norm2 = LayerNorm(d_model)
        self.proj2 = nn.Linear(d_model, d_model)

    def forward(self, encoding: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """encoding [B, D], output positions [B, M] -> [B, M, D], before the final norm."""
        x = encoding[:, None, :] + sinusoidal_embedding(positions, encoding.shape[-1]).to(encoding.dtype)
        x = nn.functional.gelu(self.proj1(self.norm1(x)))
        return nn.functional.gelu(self.proj2(self.norm2(x)))


#: the model-level decoders a task can ask for (`TaskConfig.decoder`), by name
DECODERS: dict[str, type[nn.Module]] = {"compression": CompressionDecoder}


class LanguageModel(nn.Module):
    def __init__(self, mixers: list[Mixer], *, vocab_size: int, d_model: int, channel_mixer: ChannelMixer,
                 decoder: str | None = None):
        super().__init__()
        self.embed = Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(m, d_model, channel_mixer) for m in mixers)
        self.decoder = DECODERS[decoder](d_model) if decoder is not None else None
        self.norm = LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, D], before the final norm
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return x

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised hidden states the head reads: tokens [B, L], output positions [B, M] -> [B, M, D]
        (every position, M = L, when positions is None). Without a decoder, the features at those positions;
        with one, the decoder's output at those positions, read from the last position's features."""
        x = self.features(tokens)  # [B, L, D]
        if self.decoder is not None:
            if positions is None:
                positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            x = self.decoder(x[:, -1], positions)
        elif positions is not None:  # the final norm acts per position, so it runs after the gather
            x = x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))
        return self.norm(x)

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
                channel_mixer: ChannelMixer = "none", decoder: str | None = None, **options) -> LanguageModel:
    """A model of `n_layers` blocks whose mixers follow `arch` (a registered name or a comma pattern), with the
    model-level decoder `decoder` (a name in DECODERS; pass the task's `decoder`) or none.

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
    if decoder is not None and (not isinstance(decoder, str) or decoder not in DECODERS):
        raise ProbeError(f"decoder={decoder!r} must be None or one of {tuple(DECODERS)}")
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
    return LanguageModel(mixers, vocab_size=vocab_size, d_model=d_model, channel_mixer=channel_mixer,
                         decoder=decoder)


def list_archs() -> list[str]:
    return sorted(MIXERS)
