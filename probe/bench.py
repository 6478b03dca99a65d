"""`probe bench tasks|mixers|train`: the speed figures recorded in BENCHMARKS.md, measured the same way each time.

- tasks:  seconds to generate n examples of each task at a reference config (median of repeats, after a
          warm-up, device synchronised).
- mixers: forward+backward milliseconds and tokens/s of each registered mixer alone (bf16 autocast on CUDA,
          fp32 on CPU), median of repeats (CUDA: timed with events by triton.testing.do_bench).
- train:  train tokens/s of the whole training loop at Zoology's Figure-2 MQAR cell (L 256, 16 pairs, vocab
          8192, batch 256, d_model 128, 2 layers, no MLP), the figure to compare with its 2.2-2.8 M tokens/s;
          each arch first trains 20 steps at the same shapes, untimed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tasks import TASKS

REFERENCE_TASKS = {
    "mqar": dict(seq_len=256, vocab_size=8192, num_kv_pairs=16),
    "passkey": dict(seq_len=256, vocab_size=8192, num_digits=5),
    "copying": dict(seq_len=256, vocab_size=64, string_len=100, alphabet_size=32),
    "order": dict(seq_len=256, vocab_size=256, probe="last_write", num_keys=32, num_values=64),
}


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn().

    CUDA: Triton's do_bench (warm-up, then repeats timed with CUDA events, L2 flushed between them), so launch
    gaps and one-time costs stay out; `repeats` sets its budget to 20·repeats ms. CPU: the median of `repeats`
    wall-clock calls after one warm-up call.
    """
    if device.type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=20 * repeats, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_tasks(device: torch.device, n: int, repeats: int) -> list[dict]:
    rows = []
    for name, cfg in REFERENCE_TASKS.items():
        task = TASKS[name](**cfg)
        seconds = _timed(lambda: task.generate(n, seed=1, device=device), device, repeats)
        rows.append({"task": name, "n": n, "seq_len": task.seq_len, "seconds": seconds})
        print(f"{name:10s} n={n:>7,d} L={task.seq_len:<5d} {seconds:8.3f} s", flush=True)
    return rows


def bench_mixers(device: torch.device, d_model: int, seq_len: int, batch: int, repeats: int,
                 archs: list[str] | None) -> list[dict]:
    from .mixers import MIXERS
    rows = []
    for name in archs or sorted(MIXERS):
        torch.manual_seed(0)
        mixer = MIXERS[name].build(d_model, max_seq_len=seq_len).to(device)
        x = torch.randn(batch, seq_len, d_model, device=device, requires_grad=True)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                y = mixer(x)
            y.float().square().mean().backward()
        try:
            seconds = _timed(step, device, repeats)
        except torch.OutOfMemoryError:
            print(f"{name:24s} out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        rows.append({"arch": name, "ms": 1e3 * seconds, "tokens_per_s": batch * seq_len / seconds})
        print(f"{name:24s} {1e3 * seconds:9.2f} ms fwd+bwd  {batch * seq_len / seconds / 1e6:8.3f} M tok/s",
              flush=True)
    return rows


def bench_train(device: torch.device, archs: list[str], steps: int) -> list[dict]:
    from .train import ModelConfig, TrainConfig, train
    task = TASKS["mqar"](seq_len=256, vocab_size=8192, num_kv_pairs=16)
    rows = []
    for arch in archs:
        def run(max_steps: int, num_train: int) -> dict:
            return train(task, arch, ModelConfig(d_model=128, n_layers=2),
                         TrainConfig(lr=1e-3, batch_size=256, max_steps=max_steps, num_train=num_train,
                                     num_test=3_000, val_every=max_steps, stop_at=None, device=device.type))
        run(20, 256 * 20)  # warm-up at the same shapes: kernel loads, library handles and plans stay out
        r = run(steps, 100_000)
        rows.append({"arch": arch, "tokens_per_s": r["train_tokens_per_s"], "accuracy": r["accuracy"]})
        print(f"{arch:24s} {r['train_tokens_per_s'] / 1e6:7.3f} M train tok/s over {steps} steps "
              f"(accuracy {r['accuracy']:.3f})", flush=True)
    return rows


def main(argv: list[str]) -> None:
    from .cli import OneLineParser
    p = OneLineParser(prog="probe bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["tasks", "mixers", "train"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("-n", type=int, default=100_000, help="tasks: examples to generate")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300, help="train: steps per arch")
    p.add_argument("--archs", default=None, help="comma-separated (default: all for mixers; four for train)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    archs = args.archs.split(",") if args.archs else None
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch "
          f"{torch.__version__}", flush=True)
    if args.what == "tasks":
        bench_tasks(device, args.n, args.repeats)
    elif args.what == "mixers":
        bench_mixers(device, args.d_model, args.seq_len, args.batch, args.repeats, archs)
    else:
        bench_train(device, archs or ["attention", "baseconv", "based", "hyena"], args.steps)
