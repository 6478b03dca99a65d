"""Token embedding for G tables that read the same tokens (a pack's members share their batch), forward and
backward; the backward is a deterministic segmented sum in Triton.

Forward: a gather, out [G, N, D] = weight[:, tokens], ROWS positions a program. Backward: the tokens are sorted
once for all G tables (stable, so every sum runs in position order, and the result is the same run after run: no
atomics). The sorted positions of token v form one segment; a segment is cut into items of at most ROWS
positions (a filler token can hold most of a batch: MQAR's 0 fills ~80% of the positions at L 256), and

    pass 1, a program per (item, table, column block):  partial[g, item] = Σ dout[g, position] over its positions
    pass 2, a program per (token, table, column block): dweight[g, v] = Σ partial[g, item] over v's items

The item list has a static upper bound (N / ROWS + V items), so nothing here waits for the host and the
backward can be captured in a CUDA graph. torch's own backward of a vmapped embedding sorts G·N indices and
sums each segment serially (0.58 ms of a pack-of-4 step at MQAR's L 256 on the H200). No tl.dot.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold

ROWS = 64  # positions per item of pass 1
ITEMS = 32  # partials per load of pass 2


@triton.jit
def _sum_items(dout_ptr, order_ptr, bounds_ptr, item_token_ptr, item_first_ptr, part_ptr, N, V, D, n_items,
               ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    item = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < D
    v = tl.load(item_token_ptr + item)
    if v < V:  # items past the last token's are unused
        first = tl.load(item_first_ptr + v)  # v's first item
        start = tl.load(bounds_ptr + v) + (item - first) * ROWS
        end = tl.minimum(start + ROWS, tl.load(bounds_ptr + v + 1))
        r = start + tl.arange(0, ROWS)
        in_r = r < end
        pos = tl.load(order_ptr + r, mask=in_r, other=0)
        x = tl.load(dout_ptr + (g * N + pos)[:, None] * D + cols[None, :], mask=in_r[:, None] & in_d[None, :],
                    other=0.0).to(tl.float32)
        tl.store(part_ptr + (g * n_items + item) * D + cols, tl.sum(x, axis=0), mask=in_d)


@triton.jit
def _sum_tokens(part_ptr, item_first_ptr, dw_ptr, V, D, n_items, ITEMS: tl.constexpr, BLOCK_D: tl.constexpr):
    v = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < D
    first = tl.load(item_first_ptr + v)
    last = tl.load(item_first_ptr + v + 1)
    acc = tl.zeros([ITEMS, BLOCK_D], dtype=tl.float32)
    for start in range(first, last, ITEMS):  # ITEMS partials a load: a filler token has hundreds
        items = start + tl.arange(0, ITEMS)
        acc += tl.load(part_ptr + (g * n_items + items)[:, None] * D + cols[None, :],
                       mask=(items < last)[:, None] & in_d[None, :], other=0.0)
    tl.store(dw_ptr + (g * V + v) * D + cols, tl.sum(acc, axis=0).to(dw_ptr.dtype.element_ty), mask=in_d)


@triton.jit
def _gather(w_ptr, t_ptr, out_ptr, N, V, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    g = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < N)[:, None] & (cols < D)[None, :]
    tok = tl.load(t_ptr + rows, mask=rows < N, other=0)
    x = tl.load(w_ptr + (g * V + tok)[:, None] * D + cols[None, :], mask=mask)
    tl.store(out_ptr + (g * N + rows)[:, None] * D + cols[None, :], x, mask=mask)


def _block_d(d: int) -> int:
    return min(128, triton.next_power_of_2(d))


def embedding_forward(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """weight [G, V, D], tokens [N] -> [G, N, D]."""
    g, v, d = weight.shape
    n = tokens.shape[0]
    weight = weight.contiguous()
    out = torch.empty(g, n, d, dtype=weight.dtype, device=weight.device)
    if out.numel():
        block_d = _block_d(d)
        _gather[(triton.cdiv(n, ROWS), g, triton.cdiv(d, block_d))](weight, tokens, out, n, v, d, ROWS=ROWS,
                                                                      BLOCK_D=block_d)
    return out


def embedding_backward(dout: torch.Tensor, tokens: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """dout [G, N, D], tokens [N] -> dweight [G, V, D] in dtype."""
    g, n, d = dout.shape
    dout = dout.contiguous()
    dw = torch.empty(g, vocab, d, dtype=dtype, device=dout.device)
    if n == 0:
        return dw.zero_()
    sorted_tokens, order = torch.sort(tokens, stable=True)
    bounds = torch.searchsorted(sorted_tokens, torch.arange(vocab + 1, device=tokens.device, dtype=tokens.dtype))
    items = (bounds[1:] - bounds[:-1] + ROWS - 1) // ROWS  # [V] items per token
    item_first = torch.zeros(vocab + 1, dtype=torch.int64, device=tokens.device)
    torch.cumsum(items, 0, out=item_first[1:])
    n_items = triton.cdiv(n, ROWS) + vocab  # a bound on item_first[-1]: the grid needs no host sync
    item_token = torch.searchsorted(item_first[1:], torch.arange(n_items, device=tokens.device), right=True)
    part = torch.empty(g, n_items, d, dtype=torch.float32, device=dout.device)
    block_d = _block_d(d)
    _sum_items[(n_items, g, triton.cdiv(d, block_d))](dout, order, bounds, item_token, item_first, part, n, vocab,
                                                      d, n_items, ROWS=ROWS, BLOCK_D=block_d)
    _sum_tokens[(vocab, g, triton.cdiv(d, block_d))](part, item_first, dw, vocab, d, n_items, ITEMS=ITEMS,
                                                     BLOCK_D=block_d)
    return dw


class _Embedding(torch.autograd.Function):
    """weight [G, V, D], tokens [N] (shared by the G tables) -> [G, N, D]; torch.func.vmap folds the vmap dimension
    of weight into G, so a pack's K tables are read, and their gradients summed, in one pass."""

    @staticmethod
    def forward(weight, tokens):
        return embedding_forward(weight, tokens)

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, tokens = inputs
        ctx.save_for_backward(tokens)
        ctx.vocab, ctx.dtype = weight.shape[1], weight.dtype

    @staticmethod
    def backward(ctx, dout):
        (tokens,) = ctx.saved_tensors
        return embedding_backward(dout, tokens, ctx.vocab, ctx.dtype), None

    @staticmethod
    def vmap(info, in_dims, weight, tokens):
        k = info.batch_size
        w = fold(weight, in_dims[0], k)  # [K·G, V, D]
        groups, vocab = w.shape[0] // k, w.shape[1]
        if in_dims[1] is not None:  # tokens of their own per member: one table of K·G·V rows, offset tokens
            table = torch.arange(k * groups, device=tokens.device).view(k, groups, 1) * vocab
            t = (tokens.movedim(in_dims[1], 0).reshape(k, 1, -1) + table).reshape(-1)  # [K·G·N]
            out = _Embedding.apply(w.reshape(1, -1, w.shape[-1]), t)  # [1, K·G·N, D]
            return out.view(k, groups, -1, out.shape[-1]), 0
        out = _Embedding.apply(w, tokens)
        return out.view(k, groups, *out.shape[1:]), 0


def embedding_kernel(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """weight [V, D], tokens [...] -> [..., D]."""
    out = _Embedding.apply(weight[None], tokens.reshape(-1))
    return out.view(*tokens.shape, weight.shape[-1])
