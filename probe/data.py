"""Task data on the training device: generated there once per run, shuffled there every epoch.

Nothing crosses the host/device boundary per step: the train set and every evaluation set are generated on
the device by the task's own vectorised generator, and batches are index slices of those tensors. The scored
positions of every example are found once per set (`Scored`), so a step gathers a fixed number of positions
per example instead of indexing with a boolean mask, whose result size the host would have to wait for.
"""
from __future__ import annotations

import lightning as L
import torch

from tasks import IGNORE, Examples, TaskConfig
from tasks.rng import bits32

# inputs [B, L], scored positions [B, M], their targets [B, M] (IGNORE in padding), example index [B]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Scored:
    """The positions each example is scored at, as a fixed-width [N, M] table (M: the most any example has).

    Positions come in increasing order; an example with fewer than M scored positions is padded with unscored
    ones, whose targets are IGNORE, so losses and accuracies skip them. Built with one host sync per set.
    """

    def __init__(self, targets: torch.Tensor):  # [N, L]
        scored = targets != IGNORE
        width = max(1, int(scored.sum(1).max())) if len(targets) else 1
        # a stable sort of "not scored" puts each row's scored positions first, in order
        self.positions = torch.sort((~scored).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # [N, M]
        self.targets = targets.gather(1, self.positions)  # [N, M]


def derived_seed(seed: int, purpose: str, *extra: int) -> int:
    """Independent seeds for train and each test set, so test examples are never the train examples' twins."""
    return int(bits32(seed, purpose, *extra)) | (int(bits32(seed, purpose + "/hi", *extra)) << 32)


class Batches:
    """Minibatches over one Examples set; reshuffled per epoch (train) or in order (evaluation)."""

    def __init__(self, examples: Examples, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last=False,
                 start: int = 0):
        self.examples, self.batch_size, self.shuffle, self.seed = examples, batch_size, shuffle, seed
        self.scored = Scored(examples.targets)
        self.drop_last = drop_last
        # start: batches already served (a resumed run's steps); the first pass begins where they left off
        n = len(self)
        self.epoch, self.skip = (start // n, start % n) if shuffle and n else (0, 0)

    def __len__(self) -> int:
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n, device = len(self.examples), self.examples.inputs.device
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).to(device)
            self.epoch += 1
        else:
            order = torch.arange(n, device=device)
        first, self.skip = self.skip, 0
        for i in range(first, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.examples.inputs[idx], self.scored.positions[idx], self.scored.targets[idx], idx


class TaskData(L.LightningDataModule):
    """Train set at the task's training length; one test set per evaluation length (training length first)."""

    def __init__(self, task: TaskConfig, *, num_train: int, num_test: int, batch_size: int, seed: int,
                 device: torch.device, repeats: int = 1):
        super().__init__()
        self.repeats = repeats  # the evaluation sets are served this many times (once per position scheme)
        self.task, self.num_train, self.num_test = task, num_train, num_test
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.eval_tasks = task.eval_configs()
        self.train: Examples | None = None
        self.tests: list[Examples] = []
        self.start_step = 0  # training batches already served: a resumed pack's steps (train.fit(resume=...))

    @property
    def eval_lengths(self) -> list[int]:
        return [t.seq_len for t in self.eval_tasks]

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        self.train = self.task.generate(self.num_train, derived_seed(self.seed, "train"), self.device)
        self.tests = [t.generate(self.num_test, derived_seed(self.seed, "test", t.seq_len), self.device)
                      for t in self.eval_tasks]

    def train_dataloader(self):
        return Batches(self.train, self.batch_size, shuffle=True, seed=self.seed,
                       drop_last=len(self.train) >= self.batch_size, start=self.start_step)

    def val_dataloader(self):
        # the same number of tokens per evaluation batch at every length: a 16x longer test set gets 16x
        # smaller batches, so quadratic mixers evaluated far past the training length still fit in memory
        return [Batches(t, max(1, self.batch_size * self.task.seq_len // t.inputs.shape[1]), shuffle=False)
                for _ in range(self.repeats) for t in self.tests]
