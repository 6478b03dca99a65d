"""The language model around the mixers: tokens [B, L] -> logits [B, L, vocab].

Design choices (Zoology's MQAR setting is the default): token embedding, no absolute positions at the model
level (position schemes belong to the mixers), pre-norm residual blocks `x + mixer(norm(x))` with an optional
channel mixer `x + mlp(norm(x))` (none, "mlp" GELU with 4x expansion, or "swiglu"), LayerNorm, an untied
output head. A hybrid is a comma-separated pattern of registered mixer names, cycled over the layers
(`hyena,hyena,attention` with 6 layers gives two repeats).

The head costs most of a small model's FLOPs (vocab 8192 vs d_model 64-512) while most positions are not
scored, so `hidden(tokens, positions)` and `logits(hidden)` are separate: training applies the head only at scored
positions, and every path (training, evaluation, a pack's members, `forward`) goes through `hidden`.

Each residual add is left pending and done by the norm that reads its sum next (`probe.ops.add_layer_norm`: one
kernel pass writes both the new residual stream and its norm, and one backward pass both addends' gradients):
block i's mixer output is added inside block i's norm2 (with an MLP) or block i+1's norm1, the last block's inside
the final norm, after the gather of the scored positions (gathering x and y and adding them there is the same
sum, at fewer positions). `Block.residual` hands its output on as such a pending pair; `Block.forward` adds it.
The model runs its blocks through `residual`, not as module calls, so a block's forward hooks fire only where
`features` calls the last block (a decoder's path, and `features` itself).

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
from .ops.layer_norm import add_layer_norm

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

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        device = x.device.type
        cast = self.autocast_output and torch.is_autocast_enabled(device)
        return torch.get_autocast_dtype(device) if cast else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype=self._out_dtype(x))

    def add_norm(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + y, this norm of it) in one pass: x the residual stream [..., D], y the pending addend (a mixer's
        or MLP's output) or None (nothing to add: (x, norm(x)))."""
        if y is None:
            return x, self(x)
        if y.shape != x.shape or torch.promote_types(x.dtype, y.dtype) != x.dtype:
            s = x + y  # a sum that would broadcast or leave x's dtype: unfused, as torch computes it
            return s, self(s)
        return add_layer_norm(x, y, self.weight, self.bias, self.eps, out_dtype=self._out_dtype(x))


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

    def forward(self, x: torch.Tensor, pending: torch.Tensor | None = None) -> torch.Tensor:  # [B, L, D] -> [B, L, D]
        """x + mixer(norm1(x)), then + mlp(norm2(·)) with a channel mixer; the block's input is x + pending when
        a previous block's output add is pending (see `residual`)."""
        x, y = self.residual(x, pending)
        return x + y

    def residual(self, x: torch.Tensor, pending: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output as a pending add (x', y'), output = x' + y' ([B, L, D] each; y' the mixer's or the
        MLP's output, bf16 under autocast): whichever norm reads the output next adds it in its own kernel pass.
        The block's input is x + pending (pending None: x), added here by norm1."""
        x, h = self.norm1.add_norm(x, pending)
        y = self.mixer(h)
        if self.mlp is not None:
            x, h = self.norm2.add_norm(x, y)
            y = self.mlp(h)
        return x, y


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

    def _stream(self, tokens: torch.Tensor, blocks) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The residual stream after `blocks` as a pending add (x, y), each [B, L, D]: x + y (y None: x)."""
        x, y = self.embed(tokens), None
        for block in blocks:
            x, y = block.residual(x, y)
        return x, y

    def features(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, D], before the final norm
        if not len(self.blocks):
            return self.embed(tokens)
        x, y = self._stream(tokens, self.blocks[:-1])
        return self.blocks[-1](x, y)  # the last block called as a module: its forward hooks see the features

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised hidden states the head reads: tokens [B, L], output positions [B, M] -> [B, M, D]
        (every position, M = L, when positions is None). Without a decoder, the features at those positions;
        with one, the decoder's output at those positions, read from the last position's features (`features`).
        Without a decoder the features are never formed whole: the last block's output add is done by the final
        norm at the gathered positions (so a forward hook on the last block fires only with a decoder)."""
        if self.decoder is not None:
            x = self.features(tokens)  # [B, L, D]
            if positions is None:
                positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            return self.norm(self.decoder(x[:, -1], positions))
        x, y = self._stream(tokens, self.blocks)  # features x + y, [B, L, D] each
        if positions is not None:  # the final norm acts per position, so it (and the add) runs after the gather
            index = positions[..., None].expand(-1, -1, x.shape[-1])
            x, y = x.gather(1, index), (y.gather(1, index) if y is not None else None)
        return self.norm.add_norm(x, y)[1]

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
