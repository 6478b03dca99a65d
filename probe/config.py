"""The configs of a training run, ModelConfig and TrainConfig, and the Logger names: plain dataclasses, importable
without Lightning (the command line, sweep files and the report read them; probe.train re-exports them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import ProbeError
from .mixers.attention import EVAL_SCHEMES
from .model import ChannelMixer


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    channel_mixer: ChannelMixer = "none"


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    batch_size: int = 64
    max_steps: int = 1000
    warmup_steps: int = 50
    num_train: int = 10_000
    num_test: int = 1_000
    val_every: int = 100
    #: stop once accuracy at the training length reaches this; None trains for max_steps
    stop_at: float | None = 0.99
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: also evaluate the same weights at every evaluation length under these training-free position schemes
    #: (rope, pi, ntk, ntk_dynamic, rerope, leaky_rerope), for attention layers trained with plain RoPE
    eval_position_schemes: tuple[str, ...] = ()
    #: CUDA: capture each training step (forward, backward, update) as a CUDA graph after two eager steps and
    #: replay it, so a step costs one launch from the host (the same arithmetic as eager steps); ignored on the CPU
    cuda_graphs: bool = True

    def check(self) -> None:
        import typing

        from .flags import describe, matches, short_repr  # a sweep file sets these from Python, untyped
        for f in dataclasses.fields(self):
            tp = typing.get_type_hints(TrainConfig)[f.name]
            if not matches(getattr(self, f.name), tp):
                raise ProbeError(f"{f.name}={short_repr(getattr(self, f.name))} must be {describe(tp)}")
        if not 0 <= self.seed < 2**32:  # what numpy's and Lightning's seeding take
            raise ProbeError(f"seed={self.seed} must be in [0, 2**32)")
        for name in ("batch_size", "max_steps", "num_train", "num_test", "val_every"):
            if getattr(self, name) < 1:
                raise ProbeError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ProbeError(f"lr={self.lr} must be > 0")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ProbeError("weight_decay and warmup_steps must be >= 0")
        if self.stop_at is not None and not 0 < self.stop_at <= 1:
            raise ProbeError(f"stop_at={self.stop_at} must be in (0, 1]")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ProbeError("device=cuda but no CUDA device is available")
        for scheme in self.eval_position_schemes:
            if scheme not in EVAL_SCHEMES:
                raise ProbeError(f"eval_position_schemes: {scheme!r} is not one of {', '.join(EVAL_SCHEMES)}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


#: the Lightning loggers fit() can write learning curves with (`--logger`)
Logger = Literal["csv", "tensorboard"]
