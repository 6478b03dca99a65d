"""Test-wide settings. pytest-xdist runs one process per core, so each process keeps to one torch thread:
two processes × two threads on two cores makes tiny ops spin against each other (orders of magnitude slower)."""
import torch

torch.set_num_threads(1)
