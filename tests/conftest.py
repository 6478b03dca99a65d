"""Test-wide settings.

- pytest-xdist runs one process per core, so each process keeps to one torch thread: two processes × two threads
  on two cores makes tiny ops spin against each other (orders of magnitude slower).
- Without a GPU, probe's Triton kernels run through Triton's interpreter. It is chosen when a kernel is
  decorated, so it is set here, before any test imports a kernel of probe.ops.
"""
import os

import torch

torch.set_num_threads(1)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
