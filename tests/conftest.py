"""Test-wide settings.

- pytest-xdist runs one process per core, so each process keeps to one torch thread: two processes × two threads
  on two cores makes tiny ops spin against each other (orders of magnitude slower).
- Without a GPU, probe's Triton kernels run through Triton's interpreter. It is chosen when a kernel is
  decorated, so it is set here, before any test imports a kernel of probe.ops.
- `poisoned`: the kernel tests' fixture that makes every uninitialised float tensor NaN.
"""
import os

import pytest
import torch

torch.set_num_threads(1)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def poisoned(monkeypatch):
    """Every uninitialised float tensor starts as NaN, so an element a kernel never writes shows up."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: fill(new_empty(self, *a, **k)))
