"""Lightning training of packs of runs: a list of run specs in, one typed record per run out.

    records = fit([RunSpec(task, "attention", ModelConfig(d_model=64), TrainConfig(lr=lr)) for lr in lrs])
    record = train(task, "attention", ModelConfig(d_model=64), TrainConfig(lr=1e-3))   # one run, as a dict

Runs that differ only in learning rate, weight decay and stop-at train together as one pack (probe.pack): one
step trains every member, each with its own optimiser state, learning curve, stop-at and divergence; a member
that is done leaves the pack without disturbing the others. A single run is a pack of one.

Design choices: AdamW (decay on matrices only) with linear warmup and a cosine schedule over `max_steps`;
evaluation every `val_every` steps on every evaluation length; training stops once the accuracy at the training
length reaches `stop_at`; bf16-mixed on CUDA, fp32 on CPU. The loss and the head are computed only at scored
positions. A loss that turns NaN/inf is noticed at the next evaluation (no per-step host sync): the run stops
and the record says `diverged` with the step. On CUDA each training step (forward, backward and the update)
is captured once as a CUDA graph and replayed (`TrainConfig.cuda_graphs`): at a sweep's pack sizes a step is
otherwise bound by the host's launches, not the GPU. The record carries the seed, device and package versions.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from tasks import IGNORE, TaskConfig

from .config import Logger, ModelConfig, TrainConfig
from .data import TaskData
from .errors import ProbeError
from .metrics import ExampleCounts, summarise
from .mixers.attention import evaluated_with
from .model import build_model
from .ops import cross_entropy
from .pack import PackedAdamW, PackedModel, StepGraph, release_memory


@dataclass(frozen=True)
class RunSpec:
    """One training run: a task, an arch (or hybrid pattern), the model and training configs, mixer options.

    Runs that differ only in `train.lr`, `train.weight_decay` and `train.stop_at` can share a pack (`fit`).
    """

    task: TaskConfig
    arch: str
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mixer_options: dict = field(default_factory=dict)

    def pack_key(self) -> tuple:
        shared = dataclasses.replace(self.train, lr=1.0, weight_decay=0.0, stop_at=None)
        return (self.task, self.arch, self.model, tuple(sorted(self.mixer_options.items())), shared)


@dataclass(frozen=True)
class RunRecord:
    """What one run produced: metrics at every evaluation length and slice, sizes, speed, provenance.

    `as_dict()` is its JSON form (what `probe train --json` writes and a sweep stores on its Optuna trial).
    """

    task: str
    arch: str
    task_config: dict
    model_config: dict
    mixer_options: dict
    train_config: dict
    accuracy: float  # token accuracy at the training length, final weights
    per_example_accuracy: float
    exact_match: float
    best_accuracy: float
    by_length: dict  # eval length -> accuracy, per-example accuracy, exact match, slices
    #: training-free position scheme -> eval length -> the same metrics, the trained weights read that way
    #: (TrainConfig.eval_position_schemes; empty without)
    by_scheme: dict
    state_size: int  # the recurrent state as the papers count it (per example, all layers)
    state_size_by_length: dict
    cache_size: int  # all that inference carries (convolution taps too)
    params: int
    steps: int
    train_tokens: int
    train_tokens_per_s: float  # this member's tokens over the pack's training time while it was in the pack
    train_time_s: float
    wall_time_s: float
    stopped_at_target: bool
    diverged: str | None
    pruned: str | None  # why a judge (the sweep's pruner) stopped it, or None
    history: list  # one entry per evaluation: step, accuracy, training loss, accuracy by length
    seed: int
    device: str
    pack_size: int  # members trained together in this run's pack
    #: CUDA: the peak allocated memory while the pack trained (the process's: packs training at once in one
    #: worker count together); None on the CPU
    peak_memory_bytes: int | None
    versions: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: a judge looks at a member after each evaluation (step, accuracy) and returns a reason to stop it, or None
Judge = Callable[[int, float], "str | None"]


class Paused(Exception):
    """Raised by `fit` when its `pause` event was set: the pack stopped at an evaluation, and `state` (`fit`'s
    `resume`) holds everything needed to go on from there as if it had not stopped. A sweep's worker saves it
    when interrupted (probe.tuning) and resumes the pack from it on the next run."""

    def __init__(self, state: dict):
        super().__init__(f"paused at step {state['step']}")
        self.state = state


def pack_fingerprint(specs: list[RunSpec]) -> str:
    """What a paused pack's state must match to resume: the shared configuration and each member's own (not the
    device: a pack paused on a GPU goes on on another, or on a CPU)."""
    first = dataclasses.replace(specs[0], train=dataclasses.replace(specs[0].train, device="auto"))
    return repr((first.pack_key(), [(s.train.lr, s.train.weight_decay, s.train.stop_at) for s in specs]))


def pack_losses(pack: PackedModel, inputs: torch.Tensor, positions: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    """Each member's mean training loss over the scored tokens, [K]: inputs [B, L], positions and targets
    [B, M] (IGNORE where an example has fewer scored positions)."""
    logits = pack.scored_logits(inputs, positions)  # [K, B, M, V]
    k = logits.shape[0]
    # bf16 logits, the loss in fp32 (the kernel on CUDA reads them without a float32 copy)
    ce = cross_entropy(logits.flatten(0, 2), targets.flatten().repeat(k), IGNORE).view(k, -1)  # [K, B·M]
    return ce.sum(1) / (targets != IGNORE).sum().clamp(min=1)


@dataclass
class _Member:
    spec: RunSpec
    history: list = field(default_factory=list)
    diverged: str | None = None
    pruned: str | None = None
    steps: int | None = None  # set when it leaves the pack
    train_time: float | None = None

    def state(self) -> dict:
        return dict(history=self.history, diverged=self.diverged, pruned=self.pruned, steps=self.steps,
                    train_time=self.train_time)


class PackModule(L.LightningModule):
    """Trains a pack of K members (K = 1: one run); evaluates token, per-example and per-slice accuracy of each
    member at every length, with torchmetrics per member. A member that reaches its stop-at accuracy, diverges,
    or is stopped by its judge leaves the pack at that evaluation; the trainer stops when none is left."""

    def __init__(self, pack: PackedModel, members: list[_Member], *, vocab_size: int, eval_lengths: list[int],
                 eval_slices: list[dict[str, torch.Tensor]], num_test: int, judges: list[Judge] | None,
                 schemes: tuple[str, ...] = (), train_len: int = 1,
                 clock: "Throughput", log_names: list[str] | None = None, graphs: bool = False,
                 end_at_first_target: bool = False):
        super().__init__()
        self.pack, self.members, self.judges, self.clock = pack, members, judges, clock
        #: the first member to reach its stop-at accuracy stops the others at that evaluation (a sweep cell is
        #: solved: `Sweep.end_cell_at_target`)
        self.end_at_first_target = end_at_first_target
        #: each member's name in a logger's curves (`fit(logger=...)`): "<name>/loss", "<name>/accuracy"
        self.log_names = log_names or [f"member{m}" for m in range(len(members))]
        self.eval_lengths, self.eval_slices = eval_lengths, eval_slices
        self.train_len = train_len
        # dataloader i: (None: as trained, or a training-free scheme; the evaluation length), TaskData's order
        self.eval_runs = [(scheme, length) for scheme in (None, *schemes) for length in eval_lengths]
        self.rows = list(range(len(members)))  # rows[i]: the member that row i of the stacked weights holds
        self.accuracy = torch.nn.ModuleList(torch.nn.ModuleList(
            MulticlassAccuracy(num_classes=vocab_size, ignore_index=IGNORE, average="micro") for _ in self.eval_runs)
            for _ in members)
        self.counts = torch.nn.ModuleList(torch.nn.ModuleList(ExampleCounts(num_test) for _ in self.eval_runs)
                                          for _ in members)
        self.register_buffer("nonfinite", torch.zeros(len(members), dtype=torch.bool), persistent=False)
        self.register_buffer("last_loss", torch.full((len(members),), float("nan")), persistent=False)
        # fit's loop is written out (forward, backward and update in one closure), so a CUDA step can be captured
        self.automatic_optimization = False
        #: CUDA: each training step captured as a CUDA graph and replayed (StepGraph); None: eager steps
        self.step_graph = StepGraph() if graphs else None
        self.batch_buffers: tuple | None = None
        #: steps trained before this fit, by the paused pack it resumes (`fit(resume=...)`); `step` counts them
        self.step_offset = 0
        #: set (by another thread or a signal handler): stop at the next evaluation and raise Paused
        self.pause: threading.Event | None = None
        #: the paused pack's optimiser state, loaded when training starts (the optimiser exists only then)
        self.resume_optimizer: dict | None = None
        self.wall_start = time.perf_counter()  # set again by fit when training starts

    @property
    def step(self) -> int:
        """Training steps so far, those before a resume included."""
        return int(self.global_step) + self.step_offset

    def on_train_start(self):
        if self.resume_optimizer is not None:
            opt = self.optimizers().optimizer
            opt.load_state_dict(self.resume_optimizer["state"])
            opt.steps.fill_(self.resume_optimizer["steps"])
            self.resume_optimizer = None

    def paused_state(self) -> dict:
        """Everything a resumed fit needs (on the CPU): the step, which members are still in, every member's
        curve and verdict, the pack's weights and optimiser state, the training time so far."""
        opt = self.optimizers().optimizer
        to_cpu = lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t  # noqa: E731
        opt_state = opt.state_dict()
        opt_state["state"] = {i: {k: to_cpu(v) for k, v in st.items()} for i, st in opt_state["state"].items()}
        return {"version": 1, "fingerprint": pack_fingerprint([m.spec for m in self.members]),
                "step": self.step, "rows": list(self.rows),
                "members": [m.state() for m in self.members],
                "pack": {k: to_cpu(v) for k, v in self.pack.state_dict().items()},
                "optimizer": {"state": opt_state, "steps": float(opt.steps)},
                "train_time": self.clock.train_time, "wall_time": time.perf_counter() - self.wall_start}

    def _static(self, batch) -> tuple:
        """The batch copied into buffers that stay where they are, which a captured step reads."""
        if self.batch_buffers is None or any(b.shape != x.shape for b, x in zip(self.batch_buffers, batch)):
            self.batch_buffers = tuple(x.clone() for x in batch)
            self.step_graph.reset()  # a captured step would read the old buffers
        else:
            for b, x in zip(self.batch_buffers, batch):
                b.copy_(x)
        return self.batch_buffers

    def training_step(self, batch, batch_idx):
        opt, sched = self.optimizers(), self.lr_schedulers()
        inputs, positions, targets, _ = self._static(batch) if self.step_graph is not None else batch

        def closure():  # a whole step's forward and backward; captured with the update when graphed
            opt.zero_grad(set_to_none=True)
            loss = pack_losses(self.pack, inputs, positions, targets)
            self.manual_backward(loss.sum())  # members share no weights: each gets exactly its own loss's gradient
            self.nonfinite |= ~torch.isfinite(loss.detach())
            self.last_loss.copy_(loss.detach())
            return loss.detach()  # nothing keeps this step's autograd graph alive into the next (or its capture)
        opt.step(closure=closure)
        sched.step()
        if self.trainer.progress_bar_callback is not None:  # host work every step, read only by a bar
            self.log("loss", self.last_loss.mean(), prog_bar=True, on_step=True, on_epoch=False,
                     logger=False)  # the bar's pack mean; a logger gets each member's own (on_train_batch_end)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """With a logger: each member's training loss every `log_every_n_steps` steps (a host sync, so only
        then), one curve per member still in the pack."""
        if self.logger is not None and self.global_step % self.trainer.log_every_n_steps == 0:
            self.logger.log_metrics({f"{self.log_names[m]}/loss": v for m, v in zip(self.rows,
                                                                                   self.last_loss.tolist())},
                                    step=self.step)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        inputs, positions, targets, idx = batch
        scheme, length = self.eval_runs[dataloader_idx]
        if scheme is None:
            preds = self.pack.scored_logits(inputs, positions).argmax(-1)  # [K, B, M]
        else:  # the same weights, positions read the training-free scheme's way
            with evaluated_with(self.pack.template, scheme, seq_len=length, train_len=self.train_len):
                preds = self.pack.scored_logits(inputs, positions).argmax(-1)
        scored = targets != IGNORE
        for row, m in enumerate(self.rows):
            self.accuracy[m][dataloader_idx].update(preds[row].flatten(), targets.flatten())
            self.counts[m][dataloader_idx].update(idx, ((preds[row] == targets) & scored).sum(1), scored.sum(1))

    def _evaluation(self, m: int) -> dict:
        entry = {"step": self.step, "by_length": {}}
        for i, (scheme, length) in enumerate(self.eval_runs):
            correct, scored = self.counts[m][i].compute()
            slices = {k: v.to(correct.device) for k, v in self.eval_slices[i % len(self.eval_lengths)].items()}
            result = {"accuracy": self.accuracy[m][i].compute().item(), **summarise(correct, scored, slices)}
            if scheme is None:
                entry["by_length"][length] = result
            else:
                entry.setdefault("by_scheme", {}).setdefault(scheme, {})[length] = result
            self.accuracy[m][i].reset()
            self.counts[m][i].reset()
        entry["accuracy"] = entry["by_length"][self.eval_lengths[0]]["accuracy"]
        return entry

    def on_validation_epoch_end(self):
        fitting = self.trainer.state.fn == "fit"
        nonfinite, losses = self.nonfinite.tolist(), self.last_loss.tolist()  # the host syncs of an evaluation
        keep, solved = [], []
        for row, m in enumerate(self.rows):
            member, entry = self.members[m], self._evaluation(m)
            entry["loss"] = losses[row]  # the training loss of the last step before this evaluation
            member.history.append(entry)
            stop_at = member.spec.train.stop_at
            if not fitting:
                continue
            verdict = self.judges[m](entry["step"], entry["accuracy"]) if self.judges else None
            if nonfinite[row]:
                member.diverged = f"loss became non-finite before step {entry['step']}"
            elif stop_at is None or entry["accuracy"] < stop_at:
                if verdict is None:
                    keep.append(row)
                    continue
                member.pruned = verdict
            else:
                solved.append(m)
            member.steps, member.train_time = entry["step"], self.clock.train_time
        if self.end_at_first_target and solved and keep:
            self._stop_for(solved[0], keep)
            keep = []
        if self.rows:
            self.log("acc", max(self.members[m].history[-1]["accuracy"] for m in self.rows), prog_bar=True,
                     logger=False)  # the progress bar's; a logger gets each member's own, below
            if self.logger is not None:  # each member's accuracy at every evaluation length
                curves = {}
                for m in self.rows:
                    for length, result in self.members[m].history[-1]["by_length"].items():
                        at = "" if length == self.train_len else f"_L{length}"
                        curves[f"{self.log_names[m]}/accuracy{at}"] = result["accuracy"]
                self.logger.log_metrics(curves, step=self.step)
        if fitting and len(keep) < len(self.rows):
            self._drop(keep)
        if fitting and self.rows and self.pause is not None and self.pause.is_set() \
                and self.step < self.trainer.max_steps + self.step_offset:
            raise Paused(self.paused_state())  # train_time as of this evaluation (Throughput)

    def _stop_for(self, solver: int, rows: list[int]) -> None:
        """Stop the members at pack rows `rows` because member `solver` has just reached its target."""
        target = self.members[solver].spec.train.stop_at
        for row in rows:
            member = self.members[self.rows[row]]
            step = member.history[-1]["step"]
            member.pruned = (f"stopped at step {step}: {self.log_names[solver]} reached the target accuracy "
                             f"{target:g} first")
            member.steps, member.train_time = step, self.clock.train_time

    def _drop(self, keep: list[int]) -> None:
        """Leave only the pack rows `keep`: weights, optimiser state and divergence flags are sliced in place."""
        if keep:
            self.pack.keep(keep)
            for opt in self.trainer.optimizers:
                opt.keep(keep)
            self.nonfinite, self.last_loss = self.nonfinite[keep], self.last_loss[keep]  # new tensors: the
            # optimiser's keep has reset the captured step, which is captured again with these
        self.rows = [self.rows[r] for r in keep]
        if not keep:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        cfgs = [self.members[m].spec.train for m in self.rows]
        opt = PackedAdamW(self.pack, lr=[c.lr for c in cfgs], weight_decay=[c.weight_decay for c in cfgs],
                          graph=self.step_graph)
        cfg = cfgs[0]
        warmup, total = cfg.warmup_steps, cfg.max_steps

        def schedule(step: int) -> float:
            step += self.step_offset  # a resumed pack goes on where its schedule was
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Throughput(L.Callback):
    """Wall time of training alone (evaluation excluded), measured with the pack's CUDA stream synchronised;
    `train_time` is the time so far at each evaluation during training, and the total once training ends."""

    def __init__(self, before: float = 0.0):
        self.start = self.eval_start = None
        self.eval_time = 0.0
        self.before = before  # a resumed pack's training time before it paused
        self.train_time = before

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":  # the pack's own stream: other packs of the worker may be running
            torch.cuda.current_stream(pl_module.device).synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.start = self._now(pl_module)

    def on_validation_start(self, trainer, pl_module):
        self.eval_start = self._now(pl_module)
        if trainer.state.fn == "fit":  # training time so far: what a member leaving the pack here used
            self.train_time = self.before + self.eval_start - self.start - self.eval_time

    def on_validation_end(self, trainer, pl_module):
        if self.eval_start is not None:
            self.eval_time += self._now(pl_module) - self.eval_start
            self.eval_start = None

    def on_train_end(self, trainer, pl_module):
        self.train_time = self.before + self._now(pl_module) - self.start - self.eval_time


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
    # a pack on the CPU runs torch's CPU attention member by member (it has no vmap rule); correct, and the CPU
    # is not where packs are fast
    warnings.filterwarnings("ignore", message=r".*batching rule for aten::_scaled_dot_product_flash_attention_for_cpu.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_logger(logger: str | None) -> None:
    """Refuse, in one line, a logger that is not known or whose package is not installed."""
    import importlib.util
    if logger is not None and logger not in get_args(Logger):
        raise ProbeError(f"--logger {logger!r} is not one of {', '.join(get_args(Logger))}")
    if logger == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ProbeError("--logger tensorboard needs the tensorboard package: pip install 'probe[tensorboard]'")


def make_logger(logger: Logger, log_dir: str):
    """A Lightning logger writing into exactly `log_dir` (metrics.csv, or TensorBoard event files)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    if logger == "csv":
        return CSVLogger(log_dir, name="", version="")
    return TensorBoardLogger(log_dir, name="", version="", default_hp_metric=False)


_SEEDING = threading.Lock()


def fit(specs: list[RunSpec], *, progress: bool = False, callbacks: list | None = None,
        judges: list[Judge] | None = None, logger: Logger | None = None, log_dir: str | None = None,
        log_names: list[str] | None = None, end_at_first_target: bool = False,
        pause: threading.Event | None = None, resume: dict | None = None) -> list[RunRecord]:
    """Train the runs as one pack (they must differ only in lr, weight_decay and stop_at); one record per run,
    in order. `judges[k]`, if given, is asked about run k after every evaluation (a sweep's pruner).
    `end_at_first_target`: once a run reaches its stop-at accuracy, the runs still training stop at that
    evaluation, recorded as pruned, with the reason naming the run that got there (a sweep cell is solved).

    `logger` ("csv" or "tensorboard") writes live learning curves into `log_dir`: each member's training loss
    and its accuracy at every evaluation length, named `log_names[k]` (default member0, member1, ...), so a
    pack of K shows K curves.

    `pause`: once set, the pack stops at its next evaluation and fit raises `Paused`, whose `state` passed back
    as `resume` (with the same specs and judges) goes on from that evaluation exactly as if it had not stopped:
    the same weights, optimiser state, schedule, data order, curves and verdicts (the judges are shown every
    evaluation before the pause again, which rebuilds their state; dropout's random stream starts anew).

    When it returns, nothing of the pack is left in memory (its weights, optimiser state, data and captured
    step are freed: `release_memory`), so a worker's next pack has the whole device."""
    try:
        return _fit(specs, progress=progress, callbacks=callbacks, judges=judges, logger=logger, log_dir=log_dir,
                    log_names=log_names, end_at_first_target=end_at_first_target, pause=pause, resume=resume)
    finally:
        for callback in callbacks or ():  # Lightning gives each callback the module's log methods, which would
            for name in ("log", "log_dict"):  # keep the pack alive as long as the caller keeps its callbacks
                callback.__dict__.pop(name, None)
        release_memory()  # on an error, the traceback still holds the pack: whoever catches it releases again


def _fit(specs: list[RunSpec], *, progress: bool, callbacks: list | None, judges: list[Judge] | None,
         logger: Logger | None, log_dir: str | None, log_names: list[str] | None,
         end_at_first_target: bool, pause: threading.Event | None = None,
         resume: dict | None = None) -> list[RunRecord]:
    if not specs:
        raise ProbeError("fit needs at least one run")
    check_logger(logger)
    if logger is not None and log_dir is None:
        raise ProbeError("fit: a logger needs a log_dir")
    if log_names is not None and len(log_names) != len(specs):
        raise ProbeError(f"{len(log_names)} log names for {len(specs)} runs")
    for spec in specs:
        spec.train.check()
    if any(s.pack_key() != specs[0].pack_key() for s in specs):
        raise ProbeError("the runs of one pack must differ only in lr, weight_decay and stop_at")
    if judges is not None and len(judges) != len(specs):
        raise ProbeError(f"{len(judges)} judges for {len(specs)} runs")
    if resume is not None and resume.get("fingerprint") != pack_fingerprint(specs):
        raise ProbeError("fit: the paused pack to resume was trained with other runs or settings")
    first = specs[0]
    task, cfg = first.task, first.train
    device = cfg.resolve_device()
    models = []
    with _SEEDING:  # packs training in threads of one worker (`--concurrent`) seed torch's global generator
        for spec in specs:  # each member starts from its seed's weights, exactly as a run of its own would
            L.seed_everything(spec.train.seed, workers=False, verbose=False)
            models.append(build_model(first.arch, vocab_size=task.vocab_size, max_seq_len=task.max_seq_len,
                                      decoder=task.decoder, **dataclasses.asdict(first.model),
                                      **first.mixer_options))
    data = TaskData(task, num_train=cfg.num_train, num_test=cfg.num_test, batch_size=cfg.batch_size,
                    seed=cfg.seed, device=device, repeats=1 + len(cfg.eval_position_schemes))
    data.setup()
    members = [_Member(spec) for spec in specs]
    clock = Throughput(resume["train_time"] if resume else 0.0)
    module = PackModule(PackedModel(models), members, vocab_size=task.vocab_size, eval_lengths=data.eval_lengths,
                        eval_slices=[t.slices for t in data.tests], num_test=cfg.num_test, judges=judges,
                        schemes=cfg.eval_position_schemes, train_len=task.seq_len,
                        clock=clock, log_names=log_names, graphs=device.type == "cuda" and cfg.cuda_graphs,
                        end_at_first_target=end_at_first_target)
    module.pause = pause
    offset = _restore(module, resume, data, judges) if resume is not None else 0
    quiet_lightning()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=cfg.max_steps - offset, val_check_interval=cfg.val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=make_logger(logger, log_dir) if logger else False,
        log_every_n_steps=min(50, cfg.val_every), enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress, callbacks=[clock, *(callbacks or [])])
    # probe's commands handle SIGTERM themselves (a sweep's worker pauses its packs at their next evaluation);
    # Lightning's own handler would end fit at the next step instead
    trainer._signal_connector.register_signal_handlers = lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # a resumed pack's wall time counts its time before the pause too
    module.wall_start = time.perf_counter() - (resume.get("wall_time", 0.0) if resume else 0.0)
    try:
        trainer.fit(module, datamodule=data)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl-C into exit(1); callers (a sweep's pack) need to know
            raise KeyboardInterrupt from None
        raise
    still_in = [members[m] for m in module.rows]  # they share their evaluation steps
    if still_in and (not still_in[0].history or still_in[0].history[-1]["step"] != module.step):
        trainer.validate(module, datamodule=data, verbose=False)  # the final weights are always evaluated
    wall = time.perf_counter() - module.wall_start
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    for m in module.rows:  # trained to the end
        members[m].steps, members[m].train_time = module.step, clock.train_time
    common = dict(state_size=models[0].state_size(task.seq_len), cache_size=models[0].cache_size(task.seq_len),
                  state_size_by_length={L_: models[0].state_size(L_) for L_ in data.eval_lengths},
                  params=models[0].num_params(), wall_time_s=wall, pack_size=len(specs), peak_memory_bytes=peak,
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  versions=versions())
    return [_record(member, task, common) for member in members]


def _restore(module: PackModule, state: dict, data: TaskData, judges: list[Judge] | None) -> int:
    """Set a new pack up as the paused one was at its pause (`fit(resume=...)`); returns the steps it had
    trained."""
    rows, step = list(state["rows"]), int(state["step"])
    for member, saved in zip(module.members, state["members"]):
        for key, value in saved.items():
            setattr(member, key, value)
    if rows != list(range(len(module.members))):
        module.pack.keep(rows)
        module.nonfinite, module.last_loss = module.nonfinite[rows], module.last_loss[rows]
    module.rows = rows
    module.pack.load_state_dict(state["pack"])
    module.step_offset, module.resume_optimizer = step, state["optimizer"]
    data.start_step = step
    for m, member in enumerate(module.members):  # each judge sees the curve so far again: its state as it was
        for entry in member.history if judges else ():
            judges[m](entry["step"], entry["accuracy"])
    return step


def _record(member: _Member, task: TaskConfig, common: dict) -> RunRecord:
    spec, final = member.spec, member.history[-1]
    tokens = member.steps * spec.train.batch_size * task.seq_len
    at_train_len = final["by_length"][task.seq_len]
    return RunRecord(
        task=task.name, arch=spec.arch, task_config=dataclasses.asdict(task),
        model_config=dataclasses.asdict(spec.model), mixer_options=dict(spec.mixer_options),
        train_config=dataclasses.asdict(spec.train), accuracy=final["accuracy"],
        per_example_accuracy=at_train_len["per_example_accuracy"], exact_match=at_train_len["exact_match"],
        best_accuracy=max(h["accuracy"] for h in member.history), by_length=final["by_length"],
        by_scheme=final.get("by_scheme", {}),
        steps=member.steps, train_tokens=tokens, train_tokens_per_s=tokens / max(member.train_time, 1e-9),
        train_time_s=member.train_time,
        stopped_at_target=spec.train.stop_at is not None and final["accuracy"] >= spec.train.stop_at,
        diverged=member.diverged, pruned=member.pruned,
        history=[{"step": h["step"], "accuracy": h["accuracy"], "loss": h.get("loss"),
                  "by_length": {k: v["accuracy"] for k, v in h["by_length"].items()}} for h in member.history],
        seed=spec.train.seed, **common)


def train(task: TaskConfig, arch: str, model_cfg: ModelConfig = ModelConfig(), cfg: TrainConfig = TrainConfig(),
          mixer_options: dict | None = None, *, progress: bool = False, callbacks: list | None = None,
          logger: Logger | None = None, log_dir: str | None = None) -> dict:
    """Train one model (a pack of one); returns its record's JSON form (`RunRecord.as_dict()`)."""
    spec = RunSpec(task, arch, model_cfg, cfg, dict(mixer_options or {}))
    return fit([spec], progress=progress, callbacks=callbacks, logger=logger, log_dir=log_dir)[0].as_dict()
