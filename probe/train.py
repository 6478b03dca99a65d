"""Lightning training of one model on one task, returning a flat record of what happened.

    record = train(task, "attention", ModelConfig(d_model=64), TrainConfig(lr=1e-3))

Design choices: AdamW (decay on matrices only) with linear warmup and a cosine schedule over `max_steps`;
evaluation every `val_every` steps on every evaluation length; training stops once the accuracy at the training
length reaches `stop_at`; bf16-mixed on CUDA, fp32 on CPU. The loss and the head are computed only at scored
positions. A loss that turns NaN/inf is noticed at the next evaluation (no per-step host sync): the run stops
and the record says `diverged` with the step. The record carries the seed, device and package versions.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from tasks import IGNORE, TaskConfig

from .data import TaskData
from .errors import ProbeError
from .metrics import ExampleCounts, summarise
from .model import ChannelMixer, LanguageModel, build_model


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

    def check(self) -> None:
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

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class ProbeModule(L.LightningModule):
    """Trains a LanguageModel; evaluates token, per-example and per-slice accuracy at every length."""

    def __init__(self, model: LanguageModel, cfg: TrainConfig, *, vocab_size: int, eval_lengths: list[int],
                 eval_slices: list[dict[str, torch.Tensor]], num_test: int):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.eval_lengths, self.eval_slices = eval_lengths, eval_slices
        self.accuracy = torch.nn.ModuleList(
            MulticlassAccuracy(num_classes=vocab_size, ignore_index=IGNORE, average="micro") for _ in eval_lengths)
        self.counts = torch.nn.ModuleList(ExampleCounts(num_test) for _ in eval_lengths)
        self.history: list[dict] = []  # one entry per evaluation: the learning curve
        self.diverged: str | None = None
        self.register_buffer("nonfinite", torch.zeros((), dtype=torch.bool), persistent=False)

    def scored_logits(self, inputs, positions):
        """Logits [B, M, V] at the M scored positions [B, M] of each example (the vocabulary head runs only there)."""
        hidden = self.model.hidden(inputs)  # [B, L, D]
        return self.model.logits(hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])))

    def training_step(self, batch, batch_idx):
        inputs, positions, targets, _ = batch
        logits = self.scored_logits(inputs, positions)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
        self.nonfinite |= ~torch.isfinite(loss.detach())
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        inputs, positions, targets, idx = batch
        preds = self.scored_logits(inputs, positions).argmax(-1)  # [B, M]
        self.accuracy[dataloader_idx].update(preds.flatten(), targets.flatten())
        scored = targets != IGNORE
        self.counts[dataloader_idx].update(idx, ((preds == targets) & scored).sum(1), scored.sum(1))

    def on_validation_epoch_end(self):
        entry = {"step": int(self.global_step), "by_length": {}}
        for i, length in enumerate(self.eval_lengths):
            correct, scored = self.counts[i].compute()
            result = {"accuracy": self.accuracy[i].compute().item(),
                      **summarise(correct, scored, {k: v.to(correct.device) for k, v in self.eval_slices[i].items()})}
            entry["by_length"][length] = result
            self.accuracy[i].reset()
            self.counts[i].reset()
        entry["accuracy"] = entry["by_length"][self.eval_lengths[0]]["accuracy"]
        self.history.append(entry)
        self.log("acc", entry["accuracy"], prog_bar=True)
        if bool(self.nonfinite) and self.diverged is None:
            self.diverged = f"loss became non-finite before step {self.global_step}"
            self.trainer.should_stop = True
        if self.cfg.stop_at is not None and entry["accuracy"] >= self.cfg.stop_at:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg.lr)
        warmup, total = self.cfg.warmup_steps, self.cfg.max_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Throughput(L.Callback):
    """Wall time of training alone (evaluation excluded), measured with the device synchronised."""

    def __init__(self):
        self.start = self.eval_start = None
        self.eval_time = 0.0
        self.train_time = 0.0

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.start = self._now(pl_module)

    def on_validation_start(self, trainer, pl_module):
        self.eval_start = self._now(pl_module)

    def on_validation_end(self, trainer, pl_module):
        if self.eval_start is not None:
            self.eval_time += self._now(pl_module) - self.eval_start
            self.eval_start = None

    def on_train_end(self, trainer, pl_module):
        self.train_time = self._now(pl_module) - self.start - self.eval_time


def versions() -> dict[str, str]:
    import lightning
    import torchmetrics

    from . import __version__
    out = {"probe": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            out["git"] = rev.stdout.strip() + ("-dirty" if dirty else "")  # code that is not the commit
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def quiet_lightning() -> None:
    """Lightning's start-up banners and tips are noise in a harness that runs thousands of models."""
    warnings.filterwarnings("ignore", module=r"lightning\..*")
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec|isinstance\(treespec).*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train(task: TaskConfig, arch: str, model_cfg: ModelConfig = ModelConfig(), cfg: TrainConfig = TrainConfig(),
          mixer_options: dict | None = None, *, progress: bool = False, callbacks: list | None = None) -> dict:
    """Train one model; returns the record (metrics at every evaluation length, sizes, speed, provenance)."""
    cfg.check()
    device = cfg.resolve_device()
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    model = build_model(arch, vocab_size=task.vocab_size, max_seq_len=task.max_seq_len,
                        **dataclasses.asdict(model_cfg), **(mixer_options or {}))
    data = TaskData(task, num_train=cfg.num_train, num_test=cfg.num_test, batch_size=cfg.batch_size,
                    seed=cfg.seed, device=device)
    data.setup()
    module = ProbeModule(model, cfg, vocab_size=task.vocab_size, eval_lengths=data.eval_lengths,
                         eval_slices=[t.slices for t in data.tests], num_test=cfg.num_test)
    throughput = Throughput()
    quiet_lightning()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=cfg.max_steps, val_check_interval=cfg.val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress, callbacks=[throughput, *(callbacks or [])])
    wall_start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    if not module.history or module.history[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)  # the final weights are always evaluated
    wall = time.perf_counter() - wall_start

    final = module.history[-1]
    steps = int(trainer.global_step)
    return {
        "task": task.name, "arch": arch,
        "task_config": dataclasses.asdict(task), "model_config": dataclasses.asdict(model_cfg),
        "mixer_options": dict(mixer_options or {}), "train_config": dataclasses.asdict(cfg),
        "accuracy": final["accuracy"],
        "per_example_accuracy": final["by_length"][task.seq_len]["per_example_accuracy"],
        "exact_match": final["by_length"][task.seq_len]["exact_match"],
        "best_accuracy": max(h["accuracy"] for h in module.history),
        "by_length": final["by_length"],
        "state_size": model.state_size(task.seq_len),
        "state_size_by_length": {L_: model.state_size(L_) for L_ in data.eval_lengths},
        "params": model.num_params(),
        "steps": steps, "train_tokens": steps * cfg.batch_size * task.seq_len,
        "train_tokens_per_s": steps * cfg.batch_size * task.seq_len / max(throughput.train_time, 1e-9),
        "train_time_s": throughput.train_time, "wall_time_s": wall,
        "stopped_at_target": cfg.stop_at is not None and final["accuracy"] >= cfg.stop_at,
        "diverged": module.diverged,
        "history": [{"step": h["step"], "accuracy": h["accuracy"],
                     "by_length": {k: v["accuracy"] for k, v in h["by_length"].items()}} for h in module.history],
        "seed": cfg.seed, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": versions(),
    }
