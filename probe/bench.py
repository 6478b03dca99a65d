"""`probe bench tasks|mixers|ops|train|step`: the speed figures recorded in BENCHMARKS.md, measured the same way each
time.

- tasks:  seconds to generate n examples of each task at a reference config (median of repeats, after a
          warm-up, device synchronised).
- mixers: forward+backward milliseconds and tokens/s of each registered mixer alone (bf16 autocast on CUDA,
          fp32 on CPU), median of repeats (CUDA: timed with events by triton.testing.do_bench).
- ops:    forward+backward milliseconds of each op of probe.ops.OPS at a probe shape (--batch rows of --seq-len
          tokens at width --d-model; Mamba-sized 2·d channels for the scan and the convolution, heads of 64 for
          linear attention), its Triton kernel against its plain PyTorch reference on the same inputs (bf16 on
          CUDA), and the ratio, timed as called (the host's launches included) and captured as CUDA graphs (the
          GPU's time alone, as fit's captured steps see it); on a CPU only the reference is timed (the kernels run
          compiled on CUDA only).
- train:  train tokens/s of the whole training loop at Zoology's Figure-2 MQAR cell (L 256, 16 pairs, vocab
          8192, batch 256, d_model 128, 2 layers, no MLP), the figure to compare with its 2.2-2.8 M tokens/s;
          `--pack 1,8,32` trains packs of K members and prints tokens/s per member and summed, the ratio to K = 1
          in the same run, model FLOP utilisation and peak memory; each pack first trains 20 steps, untimed;
          `--cuda-graphs both` times each pack with eager steps too (fit captures CUDA steps as graphs);
          `--seq-len L` moves the cell to Zoology's row at L (pairs L/16, as sweeps/zoology_mqar.py); `--concurrent
          1,2,4` trains that many identical packs at once, each in a thread of its own on a CUDA stream of its own
          (what `probe worker --concurrent N` does on the CPU; refused there on CUDA, BENCHMARKS.md 2026-12-03),
          and prints their aggregate
          tokens/s (all tokens over the span from the first pack's start to the last one's end) against one pack
          timed the same way in the same run.
- step:   where a pack's training step goes, at the same cell (`--archs`, `--pack K`, `--seq-len L`): the step's
          milliseconds (CUDA: captured as a graph, as fit replays it) and, from a profile of eager steps, the
          `--top N` kernels (CUDA) or aten ops (CPU) by their own time per step, with their launches per step.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from tasks import TASKS

from .errors import ProbeError

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


def _timed_captured(fn, repeats: int, per_graph: int = 10) -> float:
    """Median seconds of fn() on the GPU alone: `per_graph` calls captured as one CUDA graph (after two warm-up
    calls on a side stream) and replayed `repeats` times, timed with events; the host's launch time stays out,
    as in a training step, which fit captures too."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            fn()
    graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / per_graph / 1e3)
    del graph
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


PEAK_BF16_FLOPS = 790e12  # an H200's measured bf16 matrix-product rate (8192³ products, this workplace)


def flops_per_token(arch: str, task, model_cfg, device: torch.device) -> float:
    """Training FLOPs per token of one model (forward + backward), as torch's FlopCounterMode counts them: matrix
    products and attention; scans, FFTs and elementwise work are not counted, so this is a lower bound."""
    from torch.utils.flop_counter import FlopCounterMode

    from .data import Scored
    from .model import build_model
    from .pack import ScoredLogits
    model = ScoredLogits(build_model(arch, vocab_size=task.vocab_size, max_seq_len=task.max_seq_len,
                                     d_model=model_cfg.d_model, n_layers=model_cfg.n_layers,
                                     channel_mixer=model_cfg.channel_mixer, decoder=task.decoder)).to(device)
    ex = task.generate(8, seed=1, device=device)
    scored = Scored(ex.targets)
    with FlopCounterMode(display=False) as counter:
        logits = model(ex.inputs, scored.positions)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), scored.targets.flatten(),
                                          ignore_index=-100).backward()
    return counter.get_total_flops() / ex.inputs.numel()


def _train_span():
    """A Lightning callback recording when training started and when its steps ended (the first evaluation, which
    bench_train's packs run after their last step; the pack's CUDA stream synchronised)."""
    import lightning as L

    from .train import Throughput

    class Span(L.Callback):
        start = end = None
        _now = staticmethod(Throughput._now)

        def on_train_start(self, trainer, pl_module):
            self.start = self._now(pl_module)

        def on_validation_start(self, trainer, pl_module):
            if self.end is None and trainer.state.fn == "fit":
                self.end = self._now(pl_module)

        def on_train_end(self, trainer, pl_module):
            if self.end is None:
                self.end = self._now(pl_module)
    return Span()


def _at_once(n: int, train, cuda: bool):
    """`train(callbacks)` run n times at once, each in a thread and (CUDA) on a stream of its own; returns (the
    records of all, the span from the first training start to the last end, in seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        span = _train_span()
        with torch.cuda.stream(torch.cuda.Stream()) if cuda else contextlib.nullcontext():
            return train([span]), span
    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(one, range(n)))
    spans = [span for _, span in done]
    return [r for records, _ in done for r in records], max(s.end for s in spans) - min(s.start for s in spans)


def bench_train(device: torch.device, archs: list[str], steps: int, packs: list[int],
                graphs: tuple[bool, ...] = (True,), seq_len: int = 256,
                concurrent: tuple[int, ...] = (1,)) -> list[dict]:
    """Each arch at Zoology's Figure-2 cell (or its row at `seq_len`), trained as packs of K members (learning
    rates spread over 1e-4..1e-2, as a sweep cell's trials are): tokens/s per member and summed, the ratio to
    K = 1 measured in the same run, model FLOP utilisation against the bf16 peak, and the pack's peak memory.
    `graphs`: each pack with its steps captured as CUDA graphs (True, what fit does on CUDA), eager (False), or
    both, the ratio printed. `concurrent`: also N such packs at once (threads, a CUDA stream each), their
    aggregate tokens/s over the span they trained in against one pack's, timed the same way."""
    from .pack import release_memory
    from .train import ModelConfig, RunSpec, TrainConfig, fit
    task = TASKS["mqar"](seq_len=seq_len, vocab_size=8192, num_kv_pairs=seq_len // 16)
    model_cfg = ModelConfig(d_model=128, n_layers=2)
    rows, cuda = [], device.type == "cuda"
    for arch in archs:
        def run(k: int, max_steps: int, num_train: int, graph: bool, callbacks=None):
            lrs = [10 ** (-4 + 2 * i / max(1, k - 1)) for i in range(k)] if k > 1 else [1e-3]
            return fit([RunSpec(task, arch, model_cfg, TrainConfig(
                lr=lr, batch_size=256, max_steps=max_steps, num_train=num_train, num_test=3_000,
                val_every=max_steps, stop_at=None, device=device.type, cuda_graphs=graph)) for lr in lrs],
                callbacks=callbacks)
        flops = flops_per_token(arch, task, model_cfg, device)
        single, fits = {}, True
        for k in sorted(set([1, *packs])):
            eager = None
            for graph in graphs:
                try:  # warm-up at the same shapes: kernel loads, library handles and plans stay out
                    run(k, 20, 256 * 20, graph)
                    records = run(k, steps, 100_000, graph)
                except torch.OutOfMemoryError:
                    fits = False
                if not fits:  # out of the except block, where the error no longer holds the pack's tensors
                    release_memory()
                    print(f"{arch:24s} K={k:<3d} does not fit in GPU memory", flush=True)
                    break
                total = sum(r.train_tokens_per_s for r in records)
                single.setdefault(graph, total)  # K = 1 comes first
                eager = total if not graph else eager
                peak = records[0].peak_memory_bytes
                mode = "graphs" if graph else "eager"
                row = {"arch": arch, "seq_len": seq_len, "pack": k, "concurrent": 1, "steps": mode,
                       "tokens_per_s_per_member": total / k,
                       "tokens_per_s": total, "ratio_to_single": total / single[graph], "flops_per_token": flops,
                       "mfu": total * flops / PEAK_BF16_FLOPS if device.type == "cuda" else None,
                       "peak_memory_gib": peak / 2**30 if peak is not None else None}
                rows.append(row)
                print(f"{arch:24s} L={seq_len:<4d} K={k:<3d} {mode:6s} {total / k / 1e6:7.3f} M tok/s per member, "
                      f"{total / 1e6:8.3f} M summed ({row['ratio_to_single']:5.2f}x K=1"
                      + (f", {total / eager:4.2f}x eager" if graph and eager else "") + ")"
                      + (f", MFU {100 * row['mfu']:5.2f}% of {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s"
                         if row["mfu"] is not None else "")
                      + (f", peak {row['peak_memory_gib']:.2f} GiB" if peak is not None else "")
                      + f" [{flops / 1e6:.2f} MFLOP/token counted]", flush=True)
                alone = None
                for n in sorted(set([1, *concurrent])) if len(concurrent) > 1 or concurrent[0] > 1 else []:
                    try:
                        _at_once(n, lambda cb: run(k, 20, 256 * 20, graph, cb), cuda)
                        recs, span = _at_once(n, lambda cb: run(k, steps, 100_000, graph, cb), cuda)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        print(f"{arch:24s} K={k:<3d} x{n} at once does not fit in GPU memory", flush=True)
                        break
                    agg = sum(r.train_tokens for r in recs) / span
                    alone = alone or agg  # n = 1 comes first
                    rows.append({**row, "concurrent": n, "tokens_per_s": agg, "tokens_per_s_per_member": agg / (n * k),
                                 "ratio_to_single": agg / alone,
                                 "mfu": agg * flops / PEAK_BF16_FLOPS if device.type == "cuda" else None,
                                 "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                                     if device.type == "cuda" else None)})
                    print(f"{arch:24s} L={seq_len:<4d} K={k:<3d} {mode:6s} x{n} at once: {agg / 1e6:8.3f} M tok/s "
                          f"aggregate over {span:.2f} s ({agg / alone:5.2f}x one pack timed so)", flush=True)
            if not fits:
                break
    return rows


def bench_step(device: torch.device, archs: list[str], packs: list[int], seq_len: int = 256, repeats: int = 5,
               top: int = 15) -> list[dict]:
    """One training step of a pack at Zoology's Figure-2 cell (or its row at `seq_len`), as fit runs it (forward
    under bf16 autocast on CUDA, the scored positions' loss, backward, the pack's AdamW update): its time (CUDA:
    captured as a CUDA graph, as fit replays it; CPU: eager) and, from a profile of eager steps, the `top` kernels
    (CUDA) or aten ops (CPU) by their own time per step. Where a pack's step goes, before deciding what to fuse."""
    from torch.profiler import ProfilerActivity, profile

    from .data import Scored
    from .model import build_model
    from .pack import PackedAdamW, PackedModel, release_memory
    from .train import pack_losses
    task = TASKS["mqar"](seq_len=seq_len, vocab_size=8192, num_kv_pairs=seq_len // 16)
    examples = task.generate(256, seed=1, device=device)
    scored = Scored(examples.targets)
    inputs, positions, targets = examples.inputs, scored.positions, scored.targets
    cuda = device.type == "cuda"
    rows = []
    for arch in archs:
        for k in packs:
            torch.manual_seed(0)
            pack = PackedModel([build_model(arch, vocab_size=task.vocab_size, d_model=128, n_layers=2,
                                            max_seq_len=task.max_seq_len, decoder=task.decoder)
                                for _ in range(k)]).to(device)
            opt = PackedAdamW(pack, lr=[1e-3] * k, weight_decay=[0.1] * k)

            def closure():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    losses = pack_losses(pack, inputs, positions, targets)  # fit's loss, [K]
                losses.sum().backward()

            def step():
                opt.step(closure)
            seconds = _timed_captured(step, repeats, per_graph=1) if cuda else _timed(step, device, repeats)
            step()
            step()
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step()
                if cuda:
                    torch.cuda.synchronize()
            kind = "CUDA" if cuda else "CPU"
            events = [e for e in prof.key_averages() if e.device_type.name == kind
                      and (cuda or e.key.startswith("aten::"))]
            own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)  # µs
            total = sum(own(e) for e in events) / 3 / 1e3
            tokens = k * inputs.numel()
            row = {"arch": arch, "seq_len": seq_len, "pack": k, "step_ms": 1e3 * seconds,
                   "tokens_per_s": tokens / seconds, "profiled_ms": total,
                   "launches": sum(e.count for e in events) / 3 if cuda else None,
                   "top": [(e.key, own(e) / 3 / 1e3, e.count / 3) for e in sorted(events, key=own, reverse=True)[:top]]}
            rows.append(row)
            what = (f"kernels {total:.3f} ms/step in {row['launches']:.0f} launches" if cuda else
                    f"aten ops {total:.3f} ms/step of their own")
            print(f"{arch:24s} L={seq_len:<4d} K={k:<3d} step {1e3 * seconds:8.3f} ms "
                  f"({'captured' if cuda else 'eager'}), {tokens / seconds / 1e6:8.3f} M tok/s; {what}", flush=True)
            for name, ms, count in row["top"]:
                print(f"    {ms:8.3f} ms  {count:5.0f}/step  {name[:100]}", flush=True)
            del pack, opt, closure, step, prof, events
            release_memory()
    return rows


def op_inputs(name: str, batch: int, seq_len: int, d_model: int, device: torch.device, dtype: torch.dtype):
    """(args, kwargs) for op `name` at a probe shape; floating tensors that take a gradient require one."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0, grad=True):
        t = (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)
        return t.requires_grad_(grad)
    rows, inner, heads = batch * seq_len, 2 * d_model, max(1, d_model // 64)
    if name == "layer_norm":
        return [randn(rows, d_model), randn(d_model), randn(d_model)], {}
    if name == "group_norm":  # a norm per head of 64, as RetNet's and GLA's
        return [randn(rows, d_model), randn(d_model), randn(d_model), heads], {}
    if name == "embedding":  # Zoology's vocabulary
        return [randn(8192, d_model), torch.randint(0, 8192, (batch, seq_len), device=device, generator=g)], {}
    if name == "cross_entropy":  # Zoology's head: 16 scored positions per example over vocab 8192
        targets = torch.randint(0, 8192, (batch * 16,), device=device, generator=g)
        return [randn(batch * 16, 8192), targets], {}
    if name == "rotary":
        angles = torch.arange(seq_len, device=device)[:, None] * 10000.0 ** (
            -torch.arange(d_model // 2, device=device) / (d_model // 2))
        return [randn(batch, 1, seq_len, d_model), angles.cos().float(), angles.sin().float()], {}
    if name == "selective_scan":
        delta = (torch.rand(batch, seq_len, inner, device=device, generator=g) * 0.5 + 1e-3).to(dtype)
        A = -(torch.rand(inner, 16, device=device, generator=g) * 4 + 0.1)
        return [randn(batch, seq_len, inner), delta.requires_grad_(), A.requires_grad_(),
                randn(batch, seq_len, 16), randn(batch, seq_len, 16), randn(inner)], {}
    if name == "short_conv":
        return [randn(batch, seq_len, inner), randn(inner, 4, scale=0.5), randn(inner)], {"activation": "silu"}
    if name == "long_conv":  # Hyena's shape: a filter decaying along the sequence, float32 beside bf16 activations
        decay = torch.exp(-4 * torch.arange(seq_len, device=device) / seq_len)
        k = torch.randn(d_model, seq_len, device=device, generator=g) * decay / seq_len**0.5
        bias = torch.randn(d_model, device=device, generator=g)
        return [randn(batch, seq_len, d_model), k.requires_grad_(), bias.requires_grad_()], {}
    if name == "linear_attention":
        log_decay = -torch.rand(batch, seq_len, heads, device=device, generator=g) * 0.1
        return [randn(batch, seq_len, heads, 64, scale=0.125), randn(batch, seq_len, heads, 64, scale=0.125),
                randn(batch, seq_len, heads, 64), log_decay.requires_grad_()], {}
    if name == "gla":  # the GLA mixer's defaults: 4 heads, d_k = d_model/8, d_v = d_model/4, gates near 1
        dk, dv = max(1, d_model // 8), max(1, d_model // 4)
        log_gate = -torch.rand(batch, seq_len, 4, dk, device=device, generator=g) * 0.1
        q, k = randn(batch, seq_len, 4, dk, scale=dk**-0.5), randn(batch, seq_len, 4, dk)
        return [q, k, randn(batch, seq_len, 4, dv), log_gate.requires_grad_()], {}
    if name == "taylor_attention":  # Based's defaults: 4 heads, feature_dim 16, head_dim d_model / 4
        return [randn(batch, seq_len, 4, 16), randn(batch, seq_len, 4, 16),
                randn(batch, seq_len, 4, max(1, d_model // 4))], {}
    if name == "causal_attention":  # heads of 64 from one fused projection, RoPE applied inside
        d = d_model // heads
        angles = torch.arange(seq_len, device=device)[:, None] * 10000.0 ** (
            -torch.arange(d // 2, device=device) / (d // 2))
        return [randn(batch, seq_len, 3 * heads * d), heads, heads], {"cos": angles.cos().float(),
                                                                      "sin": angles.sin().float()}
    if name == "simplicial_attention":  # the mixer's defaults: 2 heads of d_model / 2, windows (64, 16)
        q, k1, v1, k2, v2 = (randn(batch, seq_len, 2, max(1, d_model // 2)) for _ in range(5))
        return [q, k1, v1, k2, v2, 64, 16], {}
    raise ProbeError(f"bench ops: no bench shape for op {name!r}")


def bench_ops(device: torch.device, d_model: int, seq_len: int, batch: int, repeats: int,
              names: list[str] | None) -> list[dict]:
    from .ops import OPS
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name in names or list(OPS):
        op, ref = OPS[name]
        args, kwargs = op_inputs(name, batch, seq_len, d_model, device, dtype)
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

        def fwd_bwd(fn):
            out = fn(*args, **kwargs)
            torch.autograd.grad(out.float().sum(), leaves)
        ref_s = _timed(lambda: fwd_bwd(ref), device, repeats)
        kernel_s = _timed(lambda: fwd_bwd(op), device, repeats) if device.type == "cuda" else None
        row = {"op": name, "batch": batch, "seq_len": seq_len, "d_model": d_model, "dtype": str(dtype),
               "reference_ms": 1e3 * ref_s, "kernel_ms": None if kernel_s is None else 1e3 * kernel_s}
        if device.type == "cuda":  # the same calls captured as CUDA graphs: the GPU's time alone
            calls = lambda eager_s: max(1, min(10, int(0.02 / eager_s)))  # noqa: E731  (a long reference: one)
            row["reference_captured_ms"] = 1e3 * _timed_captured(lambda: fwd_bwd(ref), repeats, calls(ref_s))
            row["kernel_captured_ms"] = 1e3 * _timed_captured(lambda: fwd_bwd(op), repeats, calls(kernel_s))
            kernel = (f"{1e3 * kernel_s:9.3f} ms  {ref_s / kernel_s:6.1f}x; captured: reference "
                      f"{row['reference_captured_ms']:9.3f} ms  kernel {row['kernel_captured_ms']:9.3f} ms  "
                      f"{row['reference_captured_ms'] / row['kernel_captured_ms']:6.1f}x")
        else:
            kernel = "needs CUDA"
        rows.append(row)
        print(f"{name:18s} fwd+bwd reference {1e3 * ref_s:9.3f} ms  kernel {kernel}", flush=True)
        if name == "causal_attention" and device.type == "cuda":
            rows += bench_attention_variants(device, batch, seq_len, d_model, repeats)
    return rows


def bench_attention_variants(device: torch.device, batch: int, seq_len: int, d_model: int,
                             repeats: int) -> list[dict]:
    """probe.ops.causal_attention's kernel (bf16, fwd+bwd, heads of 64 from one fused projection) against torch's
    SDPA (flash) on the same inputs, for the plain causal case and each variant: the SDPA side splits the
    projection, rotates q and k with probe's rotary kernel where the variant rotates, and runs SDPA (is_causal, or
    its boolean/additive mask for a window or ALiBi; ReRoPE has no SDPA form: its two-pass reference instead).
    Also each variant's time over the plain kernel's, and TFLOP/s counted as 4·B·H·L²·d/2 forward, 2.5x that
    backward."""
    import torch.nn.functional as F
    from .mixers.attention import alibi_slopes, attention_mask, rerope_attention_ref
    from .ops import causal_attention, rotary
    heads, d = max(1, d_model // 64), d_model // max(1, d_model // 64)
    g = torch.Generator(device=device).manual_seed(0)
    inv = 10000.0 ** (-torch.arange(d // 2, device=device, dtype=torch.float64) * 2 / d)
    angles = torch.arange(seq_len, device=device, dtype=torch.float64)[:, None] * inv
    cos, sin = angles.cos().float(), angles.sin().float()
    far_angles = torch.full_like(angles, 16.0) * inv  # ReRoPE, window 16: far queries at w, far keys unrotated
    far = (16, far_angles.cos().float(), far_angles.sin().float(), torch.ones_like(cos), torch.zeros_like(sin))
    slopes = alibi_slopes(heads).to(device)
    variants = {"plain": ({}, heads), "rope": ({"cos": cos, "sin": sin}, heads),
                "window 128": ({"cos": cos, "sin": sin, "window": 128}, heads),
                "alibi": ({"slopes": slopes}, heads), "rerope": ({"cos": cos, "sin": sin, "far": far}, heads),
                "gqa 4": ({"cos": cos, "sin": sin}, max(1, heads // 4))}
    flops = 4 * batch * heads * seq_len**2 * d / 2 * 3.5
    rows, plain = [], None
    for label, (kwargs, kv_heads) in variants.items():
        qkv = (torch.randn(batch, seq_len, (heads + 2 * kv_heads) * d, device=device, generator=g)
               .to(torch.bfloat16).requires_grad_())
        do = torch.randn(batch, seq_len, heads * d, device=device, generator=g).to(torch.bfloat16)

        def split():
            q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], -1)
            q, k, v = (t.unflatten(-1, (-1, d)).transpose(1, 2) for t in (q, k, v))
            if "cos" in kwargs:  # probe's interleaved rotary: the same arithmetic, another pairing
                q, k = rotary(q, cos, sin), rotary(k, cos, sin)
            return q, k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)

        def sdpa():
            q, k, v = split()
            if "far" in kwargs:
                o = rerope_attention_ref(q, k, rotary(q, far[1], far[2]), k, v, rerope_window=16)
            elif "window" in kwargs:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(seq_len, seq_len, window=128,
                                                                                     device=device))
            elif "slopes" in kwargs:
                i = torch.arange(seq_len, device=device)
                bias = (-slopes[:, None, None] * (i[:, None] - i[None, :])).to(q.dtype)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(i[None, :] > i[:, None],
                                                                                        float("-inf")))
            else:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return o.transpose(1, 2).flatten(2)

        def kernel():
            return causal_attention(qkv, heads, kv_heads, **kwargs)
        times = {}
        for side, fn in (("sdpa", sdpa), ("kernel", kernel)):
            times[side + "_fwd"] = _timed(lambda: fn(), device, repeats)
            times[side] = _timed(lambda: torch.autograd.grad(fn(), qkv, do), device, repeats)
        plain = plain or times["kernel"]
        row = {"op": f"causal_attention {label}", "batch": batch, "seq_len": seq_len, "heads": heads,
               "kv_heads": kv_heads, "head_dim": d, **{k + "_ms": 1e3 * v for k, v in times.items()},
               "kernel_tflops": flops / times["kernel"] / 1e12}
        rows.append(row)
        print(f"  {label:12s} fwd+bwd kernel {1e3 * times['kernel']:8.3f} ms ({row['kernel_tflops']:6.1f} TFLOP/s, "
              f"{times['kernel'] / plain:4.2f}x plain)  SDPA side {1e3 * times['sdpa']:8.3f} ms  "
              f"{times['sdpa'] / times['kernel']:5.2f}x;  fwd kernel {1e3 * times['kernel_fwd']:7.3f} ms, "
              f"SDPA side {1e3 * times['sdpa_fwd']:7.3f} ms", flush=True)
    return rows


TRAIN_ARCHS = ["attention", "baseconv", "based", "hyena"]  # `bench train` without --archs


def _check(args) -> tuple[list[str] | None, list[int]]:
    """Every flag, before anything is measured: the archs and pack sizes, and sizes that can be allocated."""
    from .cli import check_bytes, check_fits
    from .mixers import MIXERS
    from .model import parse_pattern
    from .config import ModelConfig, TrainConfig
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ProbeError("--device cuda but no CUDA device is available")
    if args.seq_len is None:
        args.seq_len = 256 if args.what in ("train", "step") else 1024
    for flag in ("n", "d_model", "seq_len", "batch", "steps", "repeats"):
        if getattr(args, flag) < 1:
            raise ProbeError(f"{'-n' if flag == 'n' else '--' + flag.replace('_', '-')} {getattr(args, flag)} "
                             "must be >= 1")
    try:
        packs = [int(k) for k in args.pack.split(",")]
    except ValueError:
        raise ProbeError(f"--pack {args.pack!r} must be comma-separated integers") from None
    if any(k < 1 for k in packs):
        raise ProbeError(f"--pack {args.pack}: every pack size must be >= 1")
    try:
        args.concurrent = tuple(int(n) for n in args.concurrent.split(","))
    except ValueError:
        raise ProbeError(f"--concurrent {args.concurrent!r} must be comma-separated integers") from None
    if any(n < 1 for n in args.concurrent):
        raise ProbeError(f"--concurrent {','.join(map(str, args.concurrent))}: every number must be >= 1")
    if args.what in ("train", "step") and args.seq_len < 16:
        raise ProbeError(f"--seq-len {args.seq_len}: bench {args.what}'s MQAR row needs L >= 16 (pairs L/16)")
    if args.top < 1:
        raise ProbeError(f"--top {args.top} must be >= 1")
    archs = [a.strip() for a in args.archs.split(",")] if args.archs else None
    if args.cuda_graphs == "both" and args.device != "cuda":
        raise ProbeError("--cuda-graphs both needs --device cuda (CUDA graphs capture CUDA steps)")
    if args.what == "tasks":
        longest = max(cfg["seq_len"] for cfg in REFERENCE_TASKS.values())
        check_bytes(f"-n {args.n:,}", {"examples": 16 * args.n * longest})
    elif args.what == "ops":
        from .ops import OPS
        for name in archs or []:
            if name not in OPS:
                raise ProbeError(f"--archs: unknown op {name!r} (known: {', '.join(OPS)})")
        check_bytes("bench ops", {"inputs and gradients": 3 * 4 * args.batch * args.seq_len * 2 * args.d_model * 16})
    elif args.what == "mixers":
        for name in archs or sorted(MIXERS):
            if name not in MIXERS:
                raise ProbeError(f"--archs: unknown arch {name!r} (known: {', '.join(sorted(MIXERS))})")
            with torch.device("meta"):  # the mixer's own checks and its size, nothing allocated
                try:
                    params = sum(p.numel() for p in MIXERS[name].build(args.d_model, max_seq_len=args.seq_len)
                                 .parameters())
                except (ValueError, TypeError) as e:
                    raise ProbeError(f"--archs {name}: {e}") from None
            check_bytes(f"bench mixers {name}", {"weights with gradients": 8 * params,
                                                 "activations": 4 * args.batch * args.seq_len * args.d_model})
    else:  # train, step
        task = TASKS["mqar"](seq_len=args.seq_len, vocab_size=8192, num_kv_pairs=args.seq_len // 16)
        archs = archs or TRAIN_ARCHS
        for arch in archs:
            parse_pattern(arch)
            check_fits(task, arch, ModelConfig(d_model=128, n_layers=2), TrainConfig(batch_size=256,
                       num_train=100_000, num_test=3_000), {}, pack=max(packs) * max(args.concurrent))
    return archs, packs


def main(argv: list[str]) -> None:
    from .cli import OneLineParser
    p = OneLineParser(prog="probe bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["tasks", "mixers", "ops", "train", "step"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("-n", type=int, default=100_000, help="tasks: examples to generate")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=None, help="mixers, ops: default 1024; train: the MQAR row (default "
                   "256, Zoology's Figure-2 cell)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300, help="train: steps per arch")
    p.add_argument("--pack", default="1", help="train: comma-separated pack sizes K (K=1 is always measured too)")
    p.add_argument("--cuda-graphs", default="on", choices=["on", "off", "both"],
                   help="train: steps captured as CUDA graphs (fit's default), eager, or both (the ratio printed)")
    p.add_argument("--archs", default=None, help="comma-separated archs (default: all for mixers; four for "
                   "train), or ops for `ops` (default: all)")
    p.add_argument("--concurrent", default="1", help="train: comma-separated numbers of identical packs trained at "
                   "once, a thread and CUDA stream each (the aggregate printed)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=15, help="step: the kernels (CUDA) or aten ops (CPU) listed per pack")
    args = p.parse_args(argv)
    archs, packs = _check(args)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch "
          f"{torch.__version__}", flush=True)
    if args.what == "tasks":
        bench_tasks(device, args.n, args.repeats)
    elif args.what == "mixers":
        bench_mixers(device, args.d_model, args.seq_len, args.batch, args.repeats, archs)
    elif args.what == "ops":
        bench_ops(device, args.d_model, args.seq_len, args.batch, args.repeats, archs)
    elif args.what == "step":
        bench_step(device, archs, packs, args.seq_len, args.repeats, args.top)
    else:
        graphs = {"on": (device.type == "cuda",), "off": (False,), "both": (False, True)}[args.cuda_graphs]
        bench_train(device, archs, args.steps, packs, graphs, args.seq_len, args.concurrent)
