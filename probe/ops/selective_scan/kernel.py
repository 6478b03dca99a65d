"""Mamba's selective scan as Triton kernels, forward and backward.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t,     y_t = h_t C_t + D u_t          (per batch row b)

with u, Δ: [B, L, D] (Δ already positive), A: [D, N], B_t, C_t: [B, L, N], D: [D] or None: the function of
`reference.selective_scan_ref`, which the dispatch rule (probe.ops.dispatch) runs wherever this kernel does not.

One program owns one batch row and a block of BLOCK_D channels and walks the sequence, its [BLOCK_D, N] state in
registers; every step reads BLOCK_D contiguous channels and N contiguous state inputs, so the loads are
coalesced in the token-major layout the model already has. Everything is computed in float32 whatever the input
dtype (bf16 under autocast); y comes back in u's dtype.

Backward walks the sequence in reverse with the state gradient dh in registers:
    dh_t   = C_t g_t + exp(Δ_{t+1} A) dh_{t+1}                       (g = dy)
    du_t   = Σ_n dh_t Δ_t B_t + D g_t
    dΔ_t   = Σ_n dh_t (A exp(Δ_t A) h_{t-1} + u_t B_t)
    dA    += dh_t Δ_t exp(Δ_t A) h_{t-1}          dD += g_t u_t
    dB_t   = Σ_d dh_t Δ_t u_t                      dC_t = Σ_d h_t g_t
It needs h_{t-1} at every step, in reverse. The forward pass, when a gradient is needed, stores only the state
at the end of every CHUNK steps ([B, L/CHUNK, D, N] float32); the backward recomputes one chunk's states from
its checkpoint into a per-program scratch slab (CHUNK x BLOCK_D x N float32, small enough to stay in L2), then
walks that chunk in reverse. Memory is L/CHUNK states instead of L, and the states never make a round trip
through device memory at full length. The sums over channels (dB, dC) and over rows and steps (dA, dD) cross
programs: each program writes its partial sums and the host adds them, so nothing needs atomics and results
do not depend on timing.
No tl.dot anywhere: the work is elementwise and row sums.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold
from .reference import check

NUM_WARPS = 1  # a program's state is BLOCK_D x N: a few registers per thread of one warp
CHUNK = 8  # steps between the forward's checkpoints; the backward recomputes one chunk of states at a time


def block_d(rows: int, d: int) -> int:
    """Channels per program: the widest of 32, 16, 8 that still gives >= 1024 programs, else 4 (short batches
    still spread over the SMs). Measured on the H200 (bf16, N = 16, fwd+bwd, `scratch` grid of CHUNK in
    {8, 16, 32} x BLOCK_D in {4, 8, 16, 32} x warps in {1, 2}): at [2048, 256, 256] one warp with 32 channels and
    8-step chunks is fastest (7.35 ms; the previous 32-step chunks with 16 channels 10.6 ms, 4 channels 22.5 ms),
    and at a K = 32 pack's [8192, 256, 256] 28.5 ms against 41.7 ms: wider blocks load B_t, C_t once for more
    channels and halve the partial sums of dB, dC; shorter chunks keep the backward's scratch states in L2."""
    for width in (32, 16, 8):
        if rows * triton.cdiv(d, width) >= 1024:
            return width
    return 4


@triton.jit
def _channel_block(pid_d, D, N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's channels and state slots, and their bounds masks."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < D, offs_n < N
    return offs_d, offs_n, mask_d, mask_n, mask_d[:, None] & mask_n[None, :]


@triton.jit
def _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, t, lo, L, offs_d, offs_n, mask_d, mask_n, D,
                N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """u_t, Δ_t [BLOCK_D] and B_t, C_t [BLOCK_N] in float32; zeros unless lo <= t < L (a zero Δ is a no-op step).
    The kernels call it one step ahead of the step they compute, so its loads overlap that step's arithmetic."""
    tok = row * L + t
    in_d = mask_d & (tl.full([BLOCK_D], t, tl.int32) >= lo) & (tl.full([BLOCK_D], t, tl.int32) < L)
    in_n = mask_n & (tl.full([BLOCK_N], t, tl.int32) >= lo) & (tl.full([BLOCK_N], t, tl.int32) < L)
    u = tl.load(u_ptr + tok * D + offs_d, mask=in_d, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + tok * D + offs_d, mask=in_d, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + tok * N + offs_n, mask=in_n, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + tok * N + offs_n, mask=in_n, other=0.0).to(tl.float32)
    return u, dt, b, c


@triton.jit
def _scan_fwd(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, y_ptr, ckpt_ptr, L, D, n_chunks, rows_per_group,
              N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              HAS_D: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_d, offs_n, mask_d, mask_n, mask_dn = _channel_block(tl.program_id(1), D, N, BLOCK_N, BLOCK_D)
    group = row // rows_per_group  # the rows of one group (one packed model) share A and D
    a = tl.load(a_ptr + (group * D + offs_d[:, None]) * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(dskip_ptr + group * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    u, dt, b, c = _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, 0, 0, L, offs_d, offs_n, mask_d, mask_n, D,
                              N, BLOCK_D, BLOCK_N)
    for t in range(L):
        u_next, dt_next, b_next, c_next = _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, t + 1, 0, L, offs_d,
                                                      offs_n, mask_d, mask_n, D, N, BLOCK_D, BLOCK_N)
        h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1)
        if HAS_D:
            y += skip * u
        tl.store(y_ptr + (row * L + t) * D + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
        if STORE_CHECKPOINTS:  # the state at the end of each chunk: where the backward restarts from
            chunk_end = tl.full([BLOCK_D, BLOCK_N], t % CHUNK, tl.int32) == CHUNK - 1
            tl.store(ckpt_ptr + ((row * n_chunks + t // CHUNK) * D + offs_d[:, None]) * N + offs_n[None, :], h,
                     mask=mask_dn & chunk_end)
        u, dt, b, c = u_next, dt_next, b_next, c_next


@triton.jit
def _scan_bwd(u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, ckpt_ptr, scratch_ptr, dy_ptr,
              du_ptr, ddelta_ptr, db_part_ptr, dc_part_ptr, da_part_ptr, dskip_part_ptr, B_rows, L, D, n_chunks,
              rows_per_group, N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              HAS_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    dblock = tl.program_id(1)
    offs_d, offs_n, mask_d, mask_n, mask_dn = _channel_block(dblock, D, N, BLOCK_N, BLOCK_D)
    group = row // rows_per_group  # the rows of one group (one packed model) share A and D
    a = tl.load(a_ptr + (group * D + offs_d[:, None]) * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(dskip_ptr + group * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dh = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    da = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dskip = tl.zeros([BLOCK_D], dtype=tl.float32)
    part = (dblock.to(tl.int64) * B_rows + row) * L  # partial sums over this program's channels: [blocks, B, L, N]
    # this program's scratch: the states of one chunk, [CHUNK, BLOCK_D, BLOCK_N]
    slab = (row * tl.num_programs(1) + dblock) * (CHUNK * BLOCK_D * BLOCK_N)
    local = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    for i in range(n_chunks):
        chunk = n_chunks - 1 - i
        start = chunk * CHUNK
        has_start = tl.full([BLOCK_D, BLOCK_N], chunk, tl.int32) > 0
        h0 = tl.load(ckpt_ptr + ((row * n_chunks + chunk - 1) * D + offs_d[:, None]) * N + offs_n[None, :],
                     mask=mask_dn & has_start, other=0.0)  # the state before the chunk (0 before the first)
        # recompute the chunk's states from its checkpoint; steps past L are no-ops (Δ = 0 keeps h)
        h = h0
        u, dt, b, c = _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, start, start, L, offs_d, offs_n, mask_d,
                                  mask_n, D, N, BLOCK_D, BLOCK_N)
        for j in range(CHUNK):
            u_next, dt_next, b_next, c_next = _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, start + j + 1, start,
                                                          L, offs_d, offs_n, mask_d, mask_n, D, N, BLOCK_D, BLOCK_N)
            h = tl.exp(dt[:, None] * a) * h + (dt * u)[:, None] * b[None, :]
            tl.store(scratch_ptr + slab + j * (BLOCK_D * BLOCK_N) + local, h)
            u, dt, b, c = u_next, dt_next, b_next, c_next
        tl.debug_barrier()  # the whole program sees the chunk's states before reading them back
        # walk the chunk in reverse; each step's inputs and dy are loaded one step ahead, and h_{t-1} read for
        # step t is h_t of the next
        t = start + CHUNK - 1
        u, dt, b, c = _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, t, start, L, offs_d, offs_n, mask_d, mask_n,
                                  D, N, BLOCK_D, BLOCK_N)
        g = tl.load(dy_ptr + (row * L + t) * D + offs_d, mask=mask_d & (tl.full([BLOCK_D], t, tl.int32) < L),
                    other=0.0).to(tl.float32)
        h = tl.load(scratch_ptr + slab + (CHUNK - 1) * (BLOCK_D * BLOCK_N) + local)
        for jj in range(CHUNK):
            j = CHUNK - 1 - jj
            t = start + j
            tok = row * L + t
            in_d = mask_d & (tl.full([BLOCK_D], t, tl.int32) < L)
            in_n = mask_n & (tl.full([BLOCK_N], t, tl.int32) < L)
            u_next, dt_next, b_next, c_next = _step_loads(u_ptr, delta_ptr, b_ptr, c_ptr, row, t - 1, start, L,
                                                          offs_d, offs_n, mask_d, mask_n, D, N, BLOCK_D, BLOCK_N)
            prev_in = (tl.full([BLOCK_D], j, tl.int32) > 0) & (tl.full([BLOCK_D], t - 1, tl.int32) < L)
            g_next = tl.load(dy_ptr + (tok - 1) * D + offs_d, mask=mask_d & prev_in, other=0.0).to(tl.float32)
            has_prev = tl.full([BLOCK_D, BLOCK_N], j, tl.int32) > 0
            h_prev = tl.load(scratch_ptr + slab + (j - 1) * (BLOCK_D * BLOCK_N) + local, mask=has_prev, other=0.0)
            h_prev = tl.where(has_prev, h_prev, h0)
            dh += g[:, None] * c[None, :]  # now the whole gradient of h_t
            tl.store(dc_part_ptr + (part + t) * N + offs_n, tl.sum(h * g[:, None], axis=0), mask=in_n)
            decay = tl.exp(dt[:, None] * a)
            ddt = tl.sum(dh * (a * decay * h_prev + u[:, None] * b[None, :]), axis=1)
            da += dh * dt[:, None] * decay * h_prev
            tl.store(db_part_ptr + (part + t) * N + offs_n, tl.sum(dh * (dt * u)[:, None], axis=0), mask=in_n)
            du = tl.sum(dh * dt[:, None] * b[None, :], axis=1)
            if HAS_D:
                du += skip * g
                dskip += g * u
            tl.store(du_ptr + tok * D + offs_d, du.to(du_ptr.dtype.element_ty), mask=in_d)
            tl.store(ddelta_ptr + tok * D + offs_d, ddt.to(ddelta_ptr.dtype.element_ty), mask=in_d)
            dh = dh * decay  # carried to step t - 1 (unchanged past L, where Δ = 0)
            u, dt, b, c, g, h = u_next, dt_next, b_next, c_next, g_next, h_prev
        tl.debug_barrier()  # every read of this chunk's states is done before the next chunk overwrites them
    tl.store(da_part_ptr + (row * D + offs_d[:, None]) * N + offs_n[None, :], da, mask=mask_dn)
    if HAS_D:
        tl.store(dskip_part_ptr + row * D + offs_d, dskip, mask=mask_d)


class _SelectiveScan(torch.autograd.Function):
    """y and the backward's checkpoints from the grouped scan: A [G, D, N] and D [G, D], rows in G equal groups.

    torch.func.vmap over it (a pack of K models) folds the vmap dimension into the rows and A's groups, so the
    K models' scans are one launch."""

    @staticmethod
    def forward(u, delta, A, B, C, D):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D = D.contiguous() if D is not None else None
        rows, L, d = u.shape
        n = A.shape[-1]
        needs_grad = any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D))
        y = torch.empty_like(u)
        n_chunks = triton.cdiv(L, CHUNK)
        ckpt = u.new_empty((rows, n_chunks if needs_grad else 0, d, n), dtype=torch.float32)
        bd = block_d(rows, d)
        _scan_fwd[(rows, triton.cdiv(d, bd))](
            u, delta, A, B, C, D if D is not None else A, y, ckpt, L, d, n_chunks, rows // A.shape[0], N=n,
            BLOCK_N=triton.next_power_of_2(n), BLOCK_D=bd, CHUNK=CHUNK, HAS_D=D is not None,
            STORE_CHECKPOINTS=needs_grad, num_warps=NUM_WARPS)
        return y, ckpt

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, delta, A, B, C, D = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(u, delta, A, B, C, D, output[1])

    @staticmethod
    def backward(ctx, dy, _dckpt):
        u, delta, A, B, C, D, ckpt = ctx.saved_tensors
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        rows, L, d = u.shape
        groups, n = A.shape[0], A.shape[-1]
        dy = dy.contiguous()
        bd, block_n = block_d(rows, d), triton.next_power_of_2(n)
        n_blocks, n_chunks = triton.cdiv(d, bd), triton.cdiv(L, CHUNK)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        f32 = dict(device=u.device, dtype=torch.float32)
        scratch = torch.empty(rows * n_blocks * CHUNK * bd * block_n, **f32)
        db_part = torch.empty(n_blocks, rows, L, n, **f32)
        dc_part = torch.empty(n_blocks, rows, L, n, **f32)
        da_part = torch.empty(rows, d, n, **f32)
        dskip_part = torch.empty(rows, d, **f32) if D is not None else da_part
        _scan_bwd[(rows, n_blocks)](u, delta, A, B, C, D.contiguous() if D is not None else A, ckpt, scratch, dy,
                                    du, ddelta, db_part, dc_part, da_part, dskip_part, rows, L, d, n_chunks,
                                    rows // groups, N=n, BLOCK_N=block_n, BLOCK_D=bd, CHUNK=CHUNK,
                                    HAS_D=D is not None, num_warps=NUM_WARPS)
        # per-row partial sums of dA and dD, added within each group (one packed model's rows)
        dA = da_part.view(groups, rows // groups, d, n).sum(1).to(A.dtype)
        dD = dskip_part.view(groups, rows // groups, d).sum(1).to(D.dtype) if D is not None else None
        return du, ddelta, dA, db_part.sum(0).to(B.dtype), dc_part.sum(0).to(C.dtype), dD

    @staticmethod
    def vmap(info, in_dims, u, delta, A, B, C, D):
        k = info.batch_size
        rows = u.shape[0] if in_dims[0] is None else u.shape[1 if in_dims[0] == 0 else 0]
        folded = [fold(x, bdim, k) for x, bdim in zip((u, delta, A, B, C, D), in_dims)]
        y, ckpt = _SelectiveScan.apply(*folded)
        return (y.view(k, rows, *y.shape[1:]), ckpt.view(k, rows, *ckpt.shape[1:])), (0, 0)


def selective_scan_kernel(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """y [B, L, D] (u's dtype) from u, delta [B, L, D], A [D, N], B, C [B, L, N], D [D] or None.

    A may also be [G, D, N] (and D [G, D]): the rows come in G equal groups, group g scanning with A[g], D[g]
    (K packed models folded into the rows). Runs under torch.func.vmap (one launch for all K members)."""
    check(u, delta, A, B, C, D)
    if u.shape[1] == 0:
        return torch.empty_like(u)
    if A.dim() == 2:
        A, D = A[None], (D[None] if D is not None else None)
    return _SelectiveScan.apply(u, delta, A, B, C, D)[0]
