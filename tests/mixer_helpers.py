"""Shared by the mixer test files: float64 inputs from a seed, and a mixer run one step at a time."""
import torch


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_steps(mixer, x):
    """Feed x: [B, L, D] through mixer.step token by token -> (outputs [B, L, D], final state)."""
    state = mixer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    return torch.stack(ys, 1), state
