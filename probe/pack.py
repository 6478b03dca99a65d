"""A pack: K language models of one architecture and shape, trained as one model.

    pack = PackedModel([build_model(...) for _ in range(K)])
    logits = pack.scored_logits(inputs, positions)       # inputs [B, L], positions [B, M] -> [K, B, M, V]
    opt = PackedAdamW(pack, lr=[1e-3, 3e-3, ...], weight_decay=[0.1, ...])
    pack.keep(rows); opt.keep(rows)                        # drop members (stopped, pruned, diverged)

Design choices:
- Weights are stacked on a leading K dimension (torch.func.stack_module_state) and the model runs under
  torch.func.vmap over that dimension, with the batch shared by every member (the members of a sweep cell train
  on the cell's data, as Zoology's learning-rate grid does). vmap lowers each op to one batched op: a matmul
  becomes one bmm over K, attention and convolutions see K folded into their batch, so one launch serves all K
  members. Every registered mixer runs under vmap (tests/test_pack.py checks the registry); an op whose
  autograd.Function has no vmap rule (a Triton kernel) gets one that folds K into its batch.
- Members never interact: the K losses are summed, so member k's gradient is exactly that of its own loss, and
  each member has its own learning rate, weight decay and AdamW moments. A member whose loss turns NaN ruins
  only its own weights.
- A member that is done (stop-at reached, pruned, diverged) is dropped from the pack at once (`keep`): its
  weights and optimiser state are sliced away in place (the Parameter objects stay, so the optimiser and
  Lightning keep their references) and the remaining members train on, unchanged.
"""
from __future__ import annotations

import copy
import gc
import threading
import warnings

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .model import LanguageModel
from .ops.adamw import adamw_update


class ScoredLogits(nn.Module):
    """One member's computation: logits [B, M, V] at the M scored positions [B, M] (the head runs only there)."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.hidden(inputs, positions))  # through the model's decoder, if any


class PackedModel(nn.Module):
    """K same-shape models as one module: each parameter and buffer stacked to [K, ...]."""

    def __init__(self, models: list[LanguageModel]):
        super().__init__()
        if not models:
            raise ValueError("a pack needs at least one model")
        wrapped = [ScoredLogits(m) for m in models]
        shapes = [[(n, p.shape) for n, p in w.named_parameters()] for w in wrapped]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("the models of a pack must have the same architecture and shapes")
        params, buffers = stack_module_state(wrapped)
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        # stack_module_state's tensors are fresh copies: they become the pack's own, no second copy
        self.stacked = nn.ParameterList(nn.Parameter(params[n].detach()) for n in self.param_names)
        for i, n in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[n])
        # the member as a function of its weights; it holds no tensors of its own (meta device), and is kept
        # out of the module tree so that it is neither moved nor counted
        object.__setattr__(self, "template", copy.deepcopy(wrapped[0]).to("meta"))
        #: matrices get weight decay (as a single run decays p.dim() >= 2), vectors and scalars do not
        self.decays = [p.dim() >= 2 for p in wrapped[0].parameters()]
        #: the biases of the members' nn.Linear layers, cast to autocast's dtype before each call (see
        #: `scored_logits`)
        self.linear_biases = {f"{name}.bias" for name, m in wrapped[0].named_modules()
                              if isinstance(m, nn.Linear) and m.bias is not None}

    @property
    def size(self) -> int:
        return self.stacked[0].shape[0]

    def _state(self):
        params = dict(zip(self.param_names, self.stacked))
        buffers = {n: getattr(self, f"buffer{i}") for i, n in enumerate(self.buffer_names)}
        return params, buffers

    def scored_logits(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """inputs [B, L] and positions [B, M], shared by all members -> logits [K, B, M, V].

        Under autocast each member computes as a single run does. Autocast casts a linear layer's input, weight
        and bias to its dtype, but under vmap torch splits a linear with batched weights into a matrix product,
        which autocast casts, and the bias add, which it does not: a bf16 product plus a float32 bias gave a
        float32 output, and every gate, convolution and product after it ran in float32 (seen in Hyena's and
        H3's packs, where float32 elementwise kernels took ~7 ms of a 17-20 ms step on an H100, 2026-12-07).
        So the Linear biases are cast here, once per call, as autocast would inside each member's linear."""
        params, buffers = self._state()
        device = inputs.device.type
        if self.size > 1 and self.linear_biases and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            params = {n: p.to(dtype) if n in self.linear_biases else p for n, p in params.items()}
        if self.size == 1:  # one run: its own weights as views, no vmap
            one = functional_call(self.template, ({n: p[0] for n, p in params.items()},
                                                  {n: b[0] for n, b in buffers.items()}), (inputs, positions))
            return one[None]

        def member(p, b, x, pos):
            return functional_call(self.template, (p, b), (x, pos))
        return vmap(member, in_dims=(0, 0, None, None), randomness="different")(params, buffers, inputs, positions)

    @torch.no_grad()
    def keep(self, rows: list[int]) -> None:
        """Keep only these members (rows of the stack), in this order; the others are dropped."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.stacked[0].device)
        for p in self.stacked:
            p.data = p.data.index_select(0, index)
            p.grad = None
        for i in range(len(self.buffer_names)):
            name = f"buffer{i}"
            setattr(self, name, getattr(self, name).index_select(0, index))


#: held while a step is captured: one capture at a time in a process (see StepGraph.run)
CAPTURING = threading.Lock()


def release_memory() -> None:
    """Free what finished packs still hold. A pack's Lightning trainer, module, optimiser and data refer to each
    other in cycles, which only Python's cyclic collector frees, and it runs by counts of Python objects, not by
    device memory: seen on an H100 (`probe bench train`, 2026-12-07), each finished pack's weights, optimiser
    state, data set and captured step's memory pool stayed on the GPU until later packs ran out of memory (RetNet
    failed at K = 1 after eleven packs of other archs), and a sweep's worker, which trains pack after pack, would
    halve packs for memory its finished ones held. On CUDA the allocator's cache, the released graph pools
    included, goes back too. Not while another thread of the worker captures its step (see StepGraph.run)."""
    with CAPTURING:
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


class StepGraph:
    """One whole training step (the closure's forward and backward, then the optimiser's update) as a CUDA graph.

    The first `warmup` steps run eagerly (kernels compile, library handles, FFT plans and the optimiser's state
    come into being); the next step is captured once and replayed from then on, so a step costs one launch from
    the host instead of hundreds. What the step reads (weights, optimiser state, the static input buffers its
    caller copies each batch into) must stay where it is: `reset()` after anything is reallocated (a pack that
    drops members), and the next steps warm up and capture again. A capture that fails runs that step eagerly and
    tries again after another warm-up, up to `attempts` times; then the step stays eager for good (an op that
    synchronises with the host fails every time), and `failed` says why. Seen in a sweep on the H200: of 7 cells'
    packs, one failed its capture ("operation failed due to a previous error during capture") and its whole
    trial, 5400 steps, ran eagerly. Python's garbage collector is held off during a capture (hardening, not a
    found cause: a finalizer that ran there and made a CUDA call, say destroying an earlier pack's graph, would
    spoil it).
    """

    def __init__(self, warmup: int = 2, attempts: int = 3):
        self.warmup, self.attempts = warmup, attempts
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output = None
        self.eager_steps = 0
        self.captures = 0
        self.failures = 0
        self.failed: str | None = None

    def reset(self) -> None:
        self.graph, self.output, self.eager_steps = None, None, 0

    def run(self, step, params: list[torch.Tensor]):
        """step() once (or its captured replay); params: the tensors whose .grad the step's backward fills."""
        if self.graph is not None:
            self.graph.replay()
            return self.output
        if self.failures >= self.attempts or self.eager_steps < self.warmup:
            self.eager_steps += 1
            return step()
        for p in params:  # the captured backward allocates the gradients in the graph's pool and overwrites them
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        # Packs training at once in one worker (threads, a CUDA stream each) capture one at a time (torch's
        # capture stream is shared, and entering a capture empties the allocator's cache); "thread_local": the
        # other threads go on launching their own steps meanwhile, which a global capture would forbid.
        collecting = gc.isenabled()
        with CAPTURING:
            torch.cuda.current_stream().synchronize()
            gc.disable()  # torch.cuda.graph collects once itself, before the capture begins
            try:
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    output = step()
            except RuntimeError as e:  # nothing captured ran: weights and optimiser state are as they were
                self.failed = str(e).splitlines()[0] if str(e) else type(e).__name__
                graph = None
            finally:
                if collecting:
                    gc.enable()
        if graph is None:
            self.failures += 1
            self.eager_steps = 0
            again = (f"trying again after {self.warmup} eager steps" if self.failures < self.attempts else
                     f"training steps stay eager after {self.failures} attempts")
            warnings.warn(f"a training step could not be captured as a CUDA graph ({self.failed}); {again}",
                          stacklevel=2)
            for p in params:
                p.grad = None
            return step()
        self.graph, self.output = graph, output
        self.captures += 1
        graph.replay()
        return output


class PackedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, as torch.optim.AdamW) over a pack's stacked
    parameters, with a learning rate and a weight decay per member.

    Each parameter group's "lr" is a schedule factor (1.0 at the start), so torch's LR schedulers scale every
    member's own rate by the same warmup/cosine factor: member k steps with lr[k]·factor. Weight decay applies to
    the pack's matrices only (`PackedModel.decays`).

    Each stacked parameter is updated by one fused kernel on CUDA (probe.ops.adamw: one launch, one pass over
    the weights, gradient and moments, instead of eight of each), from per-member scalars formed once per group.

    Capturable: the step count and the schedule factors live on the device, so the update reads no Python number
    that changes from step to step. With `graph` (a StepGraph, CUDA), `step(closure)` runs the closure (forward
    and backward) and the update as one captured graph; the factors are written into their device tensors before
    each replay.
    """

    def __init__(self, pack: PackedModel, lr: list[float], weight_decay: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, graph: StepGraph | None = None):
        if len(lr) != pack.size or len(weight_decay) != pack.size:
            raise ValueError(f"need one lr and one weight_decay per member ({pack.size})")
        decay = [p for p, d in zip(pack.stacked, pack.decays) if d]
        no_decay = [p for p, d in zip(pack.stacked, pack.decays) if not d]
        groups = [{"params": decay, "decay": True}, {"params": no_decay, "decay": False}]
        super().__init__([g for g in groups if g["params"]], dict(lr=1.0, betas=betas, eps=eps))
        device = pack.stacked[0].device
        self.graph = graph
        self.member_lr = torch.tensor(lr, dtype=torch.float64, device=device)  # [K]
        self.member_wd = torch.tensor(weight_decay, dtype=torch.float64, device=device)  # [K]
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # updates so far
        self.factors = torch.ones(len(self.param_groups), dtype=torch.float64, device=device)  # the groups' "lr"

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        for i, group in enumerate(self.param_groups):  # this step's schedule factors, outside any graph
            self.factors[i].fill_(group["lr"])

        def whole():
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._update()
            return loss
        return whole() if self.graph is None else self.graph.run(whole, self._params())

    def _update(self) -> None:
        self.steps += 1
        t = self.steps
        for i, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            lr = self.member_lr * self.factors[i]  # [K], float64: the same product a single run's scheduler forms
            decay = 1 - (lr * self.member_wd).float() if group["decay"] else torch.ones_like(lr, dtype=torch.float32)
            # per member: the decay factor and the bias-corrected step size, float32 as the parameters are
            scalars = torch.stack([decay, (lr / (1 - beta1 ** t)).float()], dim=1)
            correction2 = torch.sqrt(1 - beta2 ** t).float()
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                adamw_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], scalars, correction2,
                             beta1, beta2, group["eps"])

    @torch.no_grad()
    def keep(self, rows: list[int]) -> None:
        """Slice the optimiser to the members a `PackedModel.keep(rows)` kept (call both with the same rows); a
        captured step is dropped (what it read has moved) and captured again."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.member_lr.device)
        self.member_lr = self.member_lr.index_select(0, index)
        self.member_wd = self.member_wd.index_select(0, index)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].index_select(0, index.to(state[key].device))
        if self.graph is not None:
            self.graph.reset()
