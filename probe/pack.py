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
import math

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .model import LanguageModel


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

    @property
    def size(self) -> int:
        return self.stacked[0].shape[0]

    def _state(self):
        params = dict(zip(self.param_names, self.stacked))
        buffers = {n: getattr(self, f"buffer{i}") for i, n in enumerate(self.buffer_names)}
        return params, buffers

    def scored_logits(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """inputs [B, L] and positions [B, M], shared by all members -> logits [K, B, M, V]."""
        params, buffers = self._state()
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


class PackedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments, as torch.optim.AdamW) over a pack's stacked
    parameters, with a learning rate and a weight decay per member.

    Each parameter group's "lr" is a schedule factor (1.0 at the start), so torch's LR schedulers scale every
    member's own rate by the same warmup/cosine factor: member k steps with lr[k]·factor. Weight decay applies to
    the pack's matrices only (`PackedModel.decays`).
    """

    def __init__(self, pack: PackedModel, lr: list[float], weight_decay: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if len(lr) != pack.size or len(weight_decay) != pack.size:
            raise ValueError(f"need one lr and one weight_decay per member ({pack.size})")
        decay = [p for p, d in zip(pack.stacked, pack.decays) if d]
        no_decay = [p for p, d in zip(pack.stacked, pack.decays) if not d]
        groups = [{"params": decay, "decay": True}, {"params": no_decay, "decay": False}]
        super().__init__([g for g in groups if g["params"]], dict(lr=1.0, betas=betas, eps=eps))
        device = pack.stacked[0].device
        self.member_lr = torch.tensor(lr, dtype=torch.float64, device=device)  # [K]
        self.member_wd = torch.tensor(weight_decay, dtype=torch.float64, device=device)  # [K]

    @staticmethod
    def _per_member(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.to(p.dtype).view(-1, *([1] * (p.dim() - 1)))  # [K] -> [K, 1, ...] to broadcast over p

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = self.member_lr * group["lr"]  # [K], float64: the same product a single run's scheduler forms
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                if group["decay"]:
                    p.mul_(1 - self._per_member(lr * self.member_wd, p))
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step_size = self._per_member(lr / (1 - beta1 ** t), p)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
                p.addcdiv_(m * step_size, denom, value=-1.0)
        return loss

    @torch.no_grad()
    def keep(self, rows: list[int]) -> None:
        """Slice the optimiser to the members a `PackedModel.keep(rows)` kept (call both with the same rows)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.member_lr.device)
        self.member_lr = self.member_lr.index_select(0, index)
        self.member_wd = self.member_wd.index_select(0, index)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].index_select(0, index.to(state[key].device))
