"""Counter-based random numbers in plain torch integer ops: same seed, same numbers on every device.

`torch.Generator` streams differ between CPU and CUDA, so a task generated on the GPU would not match the
same task generated on the CPU. Every random draw here is instead a hash of (seed, stream, counters): a
pure function of its inputs, computed elementwise with int64 ops that behave identically on any device.
Values are kept in 32-bit lanes inside int64, and 32x32-bit products are split into 16-bit halves so no
int64 product overflows (signed overflow is undefined behaviour in the C++/CUDA kernels behind torch).

    u = uniform(seed, "keys", example_idx[:, None], slot[None, :])   # float64 in [0, 1)
"""
from __future__ import annotations

import zlib

import torch

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32: each partial product stays below 2^48, so int64 never overflows."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """An avalanche hash on 32-bit values held in int64 (the 'lowbias32' constants)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _stream_id(stream: str) -> int:
    return zlib.crc32(stream.encode())


def bits32(seed: int, stream: str, *counters: torch.Tensor | int, device=None) -> torch.Tensor:
    """Uniform 32-bit integers (int64 tensor), broadcast over the counters."""
    tensors = [c for c in counters if isinstance(c, torch.Tensor)]
    device = tensors[0].device if tensors else device
    h = _mix32(torch.tensor((seed & MASK32) ^ 0x9E3779B9, dtype=torch.int64, device=device))
    h = _mix32(h ^ _stream_id(stream))
    h = _mix32(h + ((seed >> 32) & MASK32))
    for c in counters:
        c = torch.as_tensor(c, dtype=torch.int64, device=device)
        h = _mix32((h * 0x01000193) ^ (c & MASK32))
        h = _mix32(h ^ ((c >> 32) & MASK32))
    return h


def uniform(seed: int, stream: str, *counters: torch.Tensor | int, device=None) -> torch.Tensor:
    """Uniform floats in [0, 1), float64, 53 random bits."""
    hi = bits32(seed, stream + "/hi", *counters, device=device)
    lo = bits32(seed, stream + "/lo", *counters, device=device)
    # Assemble the 53 bits as an integer: int64 * float would compute in the default dtype (float32), keeping
    # 24 bits and rounding values near the top up to exactly 1.0. An integer below 2^53 converts exactly.
    return (((hi >> 6) << 27) | (lo >> 5)).double() * 2.0**-53


def randint(low: int, high: int, seed: int, stream: str, *counters, device=None) -> torch.Tensor:
    """Integers uniform in [low, high); floor(u * range) with 53-bit u, so the bias is below range / 2^53."""
    if high <= low:
        raise ValueError(f"empty range [{low}, {high})")
    u = uniform(seed, stream, *counters, device=device)
    return low + torch.clamp((u * (high - low)).long(), max=high - low - 1)


def randbelow(high: torch.Tensor, seed: int, stream: str, *counters) -> torch.Tensor:
    """Integers uniform in [0, high) with a per-element bound: high is an int64 tensor (>= 1) that broadcasts
    with the counters, e.g. a position drawn below each example's own limit."""
    u = uniform(seed, stream, *counters, device=high.device)
    return torch.minimum((u * high).long(), high - 1)


def sample_without_replacement(n: int, k: int, low: int, high: int, seed: int, stream: str,
                               device) -> torch.Tensor:
    """[n, k] integers from [low, high), distinct within each row, in uniformly random order.

    Each row is an exactly uniform k-subset (Floyd's algorithm: the j-th draw is uniform in [0, j], replaced
    by j itself when already taken) put in a random order, so any prefix of a row is again a uniform sample
    without replacement. O(n·k) memory whatever the range; O(n·k²) time, a loop over the k slots only.
    (A keyed Feistel permutation would be O(n·k) time but, on small ranges, skews pairs by up to 2x.)
    """
    if not 0 <= k <= high - low:
        raise ValueError(f"cannot draw {k} distinct integers from [{low}, {high})")
    chosen = torch.empty(n, k, dtype=torch.int64, device=device)
    for i, j in enumerate(range(high - low - k, high - low)):
        t = randbelow(torch.full((n,), j + 1, dtype=torch.int64, device=device), seed, stream,
                      torch.arange(n, device=device), i)
        taken = (chosen[:, :i] == t[:, None]).any(dim=1)
        chosen[:, i] = torch.where(taken, j, t)
    order = torch.argsort(uniform(seed, stream + "/order", torch.arange(n, device=device)[:, None],
                                  torch.arange(k, device=device)[None, :]), dim=1)
    return low + chosen.gather(1, order)


def gumbel_top_k(log_weights: torch.Tensor, k: int, seed: int, stream: str) -> torch.Tensor:
    """Indices of k draws without replacement, probability ∝ exp(log_weights) (Gumbel-top-k).

    log_weights: [n, m] (expand a shared [m] row); returns [n, k].
    Equivalent in distribution to drawing one at a time and renormalising.
    """
    n, m = log_weights.shape
    rows = torch.arange(n, device=log_weights.device)[:, None]
    cols = torch.arange(m, device=log_weights.device)[None, :]
    u = uniform(seed, stream, rows, cols).clamp_min(1e-300)
    scores = log_weights - torch.log(-torch.log(u))
    return torch.topk(scores, k, dim=1).indices
