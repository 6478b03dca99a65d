"""The contract every synthetic task keeps.

A task is a frozen dataclass config (every field is also a CLI flag of the same name in kebab case) plus a
`generate(n, seed, device)` that returns an `Examples`. Generation is vectorised torch and a pure function of
(config, n, seed): the same seed gives the same examples on CPU and GPU (see `tasks.rng`).

Conventions shared by all tasks:
- inputs [n, L] int64 token ids; targets [n, L] int64, the token the model must emit *at* that position
  (next-token prediction), IGNORE (-100) where nothing is scored.
- slices: per-example labels, name -> [n] int64 (e.g. "num_kv_pairs", "depth"), used to break accuracy down.
- every task trains at `seq_len` and is evaluated at each of `eval_seq_lens` (train short, test long).
- `decoder` names the output stage the task needs on top of the mixer stack (None: the language model's own
  head reads each position; "compression": MAD's autoencoder decoder reads every output position from the last
  position alone, see tasks/compression.py). probe builds every model for a task with `decoder=task.decoder`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

IGNORE = -100


class TaskConfigError(ValueError):
    """A task config that cannot generate examples; the message names the field and the allowed range."""


@dataclass
class Examples:
    inputs: torch.Tensor  # [n, L] int64
    targets: torch.Tensor  # [n, L] int64, IGNORE where not scored
    slices: dict[str, torch.Tensor]  # name -> [n] int64

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device) -> "Examples":
        return Examples(self.inputs.to(device), self.targets.to(device), {k: v.to(device) for k, v in self.slices.items()})

    def __getitem__(self, idx) -> "Examples":
        return Examples(self.inputs[idx], self.targets[idx], {k: v[idx] for k, v in self.slices.items()})


@dataclass(frozen=True)
class TaskConfig:
    """Fields common to every task. Subclasses add their own and extend `check`."""

    name: ClassVar[str]
    #: accuracy a model that guesses uniformly (among plausible answers) would get; stated per task.
    chance: ClassVar[str]
    #: the model-level decoder the task is scored through, by name (probe.model's DECODERS); None: the target at
    #: position p is read from the model's own hidden state at p. A property of the task, not a CLI flag.
    decoder: ClassVar[str | None] = None

    seq_len: int = 64
    vocab_size: int = 8192
    eval_seq_lens: tuple[int, ...] = ()

    def __post_init__(self):
        self.check()
        # Fail at construction, not hours later at evaluation: every evaluation length must fit the task too.
        for L in self.eval_seq_lens:
            try:
                self.at_length(L)
            except TaskConfigError as e:
                raise TaskConfigError(
                    f"{self.name}: eval_seq_lens={self.eval_seq_lens}: the task does not fit at length {L} ({e})"
                ) from None

    # -- validation ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise TaskConfigError naming the first bad field; subclasses call super().check() first."""
        for f in dataclasses.fields(self):  # NaN and inf pass every range check below (`not nan > 0` is true)
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise TaskConfigError(f"{self.name}: {f.name}={value} must be a finite number")
        positive(self, "seq_len")
        positive(self, "vocab_size")
        for L in self.eval_seq_lens:
            if L < 1:
                raise TaskConfigError(f"{self.name}: eval_seq_lens={L} must be >= 1")

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, n: int, seed: int, device="cpu") -> Examples:
        if n < 1:
            raise TaskConfigError(f"{self.name}: n={n} must be >= 1")
        return self._generate(n, seed, torch.device(device))

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        raise NotImplementedError

    # -- length extrapolation ---------------------------------------------------------------------
    def at_length(self, seq_len: int) -> "TaskConfig":
        """The same task at another sequence length (validated: raises if it no longer fits)."""
        return dataclasses.replace(self, seq_len=seq_len, eval_seq_lens=())

    def eval_configs(self) -> list["TaskConfig"]:
        """The training length first, then every evaluation length (deduplicated, in order)."""
        lengths = list(dict.fromkeys((self.seq_len, *self.eval_seq_lens)))
        return [self.at_length(L) for L in lengths]

    @property
    def max_seq_len(self) -> int:
        return max((self.seq_len, *self.eval_seq_lens))


def positive(cfg: TaskConfig, field: str) -> None:
    value = getattr(cfg, field)
    if value < 1:
        raise TaskConfigError(f"{cfg.name}: {field}={value} must be >= 1")


def at_least(cfg: TaskConfig, field: str, low, why: str = "") -> None:
    value = getattr(cfg, field)
    if value < low:
        raise TaskConfigError(f"{cfg.name}: {field}={value} must be >= {low}{' ' + why if why else ''}")


def check_noise(cfg: TaskConfig) -> None:
    """A task's `frac_noise` in [0, 1) and its `noise_vocab_size` (>= 0, and >= 1 when there is noise)."""
    at_least(cfg, "noise_vocab_size", 0)
    if not 0 <= cfg.frac_noise < 1:
        raise TaskConfigError(f"{cfg.name}: frac_noise={cfg.frac_noise} must be in [0, 1)")
    if cfg.frac_noise > 0 and cfg.noise_vocab_size < 1:
        raise TaskConfigError(f"{cfg.name}: noise_vocab_size={cfg.noise_vocab_size} must be >= 1 when "
                              f"frac_noise={cfg.frac_noise} > 0")


def in_range(cfg: TaskConfig, field: str, low, high) -> None:
    value = getattr(cfg, field)
    if not (low <= value <= high):
        raise TaskConfigError(f"{cfg.name}: {field}={value} must be in [{low}, {high}]")
