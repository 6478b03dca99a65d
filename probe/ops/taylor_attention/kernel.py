"""Based's normalised Taylor attention in its quadratic form as fused Triton kernels, forward and backward, in the
manner of flash attention: the L×L scores live only as tiles in registers, never in memory.

    s_ts = q_t·k_s / √d' (s ≤ t),   A_ts = 1 + s_ts + s_ts²/2,   n_t = Σ_s A_ts v_s,   z_t = Σ_s A_ts,
    o_t = n_t / (z_t + eps)                                          (per batch row b and head h)

q, k [B, L, H, d'], v [B, L, H, Dv] of one dtype, token-major (read through their batch, position and head
strides: only the last dimension must be contiguous): the function of `reference.taylor_attention_ref`, which the
dispatch rule (probe.ops.dispatch) runs wherever this kernel does not.

Forward (_forward): one program per (b·h, block of BLOCK queries) walks the key blocks up to the diagonal with
q in registers: s = q kᵀ on tensor cores, A = 1 + s + s²/2 (masked causal on the diagonal block only: every block
before it lies wholly in the past and inside L), n += A v, z += Σ_s A. Unlike softmax attention there is no exp,
so no running maximum and no rescaling; A grows like s², so n and z accumulate in float32. It stores o and z
([B·H, L] float32), the one per-row number the backward needs besides o.

Backward, with dn_t = do_t / (z_t + eps) and δ_t = dz_t = −(do_t·o_t) / (z_t + eps):
    dA_ts = dn_t·v_s + δ_t,     ds_ts = dA_ts (1 + s_ts),
    dq_t = Σ_{s≤t} ds_ts k_s / √d',   dk_s = Σ_{t≥s} ds_ts q_t / √d',   dv_s = Σ_{t≥s} A_ts dn_t
  _grad_q   one program per (b·h, query block): δ for its rows (stored for _grad_kv), then the key blocks up to
            the diagonal, recomputing s and A, accumulating dq in registers;
  _grad_kv  one program per (b·h, key block): the query blocks from the diagonal on, computing the transposed
            tiles sᵀ = k qᵀ, Aᵀ and dsᵀ directly, accumulating dk = dsᵀ q and dv = Aᵀ dn in registers.
Every gradient has one writer: no atomics, so results do not depend on timing.

Dtypes: every tl.dot (q kᵀ, A v, dn vᵀ, ds k, Aᵀ dn, dsᵀ q) takes operands of the inputs' dtype and accumulates
in float32; A, dA, ds and every sum are float32, rounded to the inputs' dtype only as a dot's operand (to bf16 for
bf16 inputs: about 2⁻⁹ relative per element, averaged over the key sum; the normaliser z sums the unrounded A).
With float32 inputs the dots are IEEE float32, never tf32. Triton 3.6 on Hopper miscompiles tl.dot of a tl.trans of a computed tile, so a transposed operand is
loaded from memory with swapped strides (kᵀ, vᵀ, qᵀ, doᵀ) and a transposed product such as sᵀ is formed as k qᵀ.
Head dimensions are padded to a power of two (at least 16, what tl.dot needs) with masked loads; a head dimension
is one tile (the op sends wider heads than MAX_HEAD_DIM to the reference). Fixed block sizes, no autotuning.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import fold

MAX_BLOCK = 64  # positions per query or key block: the backward holds four [BLOCK, BLOCK] float32 tiles
NUM_WARPS = 4  # untuned (no GPU to hand when written)
NUM_WARPS_BWD = 8
#: launch order: a (batch row, head)'s blocks one after another (1), so their k and v reads meet in L2, or each
#: block index across every (batch row, head) first (0, the order first written; kept to time against)
BLOCKS_FIRST = 1


# --- tiles -----------------------------------------------------------------------------------------------------

@triton.jit
def _rows(ptr, base, t, L, stride_l, offs_d, D):
    """x[t, d] of one (batch row, head) as a [len(t), BD] tile, zeros outside L and D."""
    mask = (t[:, None] < L) & (offs_d[None, :] < D)
    return tl.load(ptr + base + t.to(tl.int64)[:, None] * stride_l + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _cols(ptr, base, t, L, stride_l, offs_d, D):
    """The same tile transposed, [BD, len(t)], read from memory with swapped strides (never tl.trans: see above)."""
    mask = (t[None, :] < L) & (offs_d[:, None] < D)
    return tl.load(ptr + base + t.to(tl.int64)[None, :] * stride_l + offs_d[:, None], mask=mask, other=0.0)


@triton.jit
def _base(bh, H, stride_b, stride_h):
    """The offset of batch row bh // H, head bh % H."""
    return (bh // H) * stride_b + (bh % H) * stride_h


@triton.jit
def _taylor(s):
    """A = 1 + s + s²/2 (= ((1 + s)² + 1)/2 ≥ 1/2) and its derivative 1 + s."""
    return 1.0 + s + 0.5 * s * s, 1.0 + s


@triton.jit
def _program(L, BLOCK: tl.constexpr, BLOCKS_FIRST: tl.constexpr):
    """This program's (batch row · head, first position of its block), in the launch order of `_grid`."""
    if BLOCKS_FIRST:
        n_blocks = tl.cdiv(L, BLOCK)
        pid = tl.program_id(0).to(tl.int64)
        return pid // n_blocks, (pid % n_blocks).to(tl.int32) * BLOCK
    return tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK


# --- kernels ---------------------------------------------------------------------------------------------------

@triton.jit
def _forward_tile(q, n, z, k_ptr, k_base, sk_l, v_ptr, v_base, sv_l, offs_m, offs_n, offs_d, offs_v, L, D, Dv,
                  scale, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """n += A v and z += Σ_s A over one key block (offs_n) for the query block (offs_m) whose q is in registers."""
    kT = _cols(k_ptr, k_base, offs_n, L, sk_l, offs_d, D)  # [BD, BLOCK]
    v = _rows(v_ptr, v_base, offs_n, L, sv_l, offs_v, Dv)  # [BLOCK, BV]
    a, _ = _taylor(tl.dot(q, kT, input_precision=PRECISION) * scale)  # [BLOCK (t), BLOCK (s)]
    if CAUSAL:  # the diagonal block: s ≤ t, which also leaves out the keys past L of every row inside L
        a = tl.where(offs_n[None, :] <= offs_m[:, None], a, 0.0)
    n = tl.dot(a.to(v.dtype), v, n, input_precision=PRECISION)
    return n, z + tl.sum(a, 1)


@triton.jit
def _forward(q_ptr, k_ptr, v_ptr, o_ptr, z_ptr, L, H, D, Dv, scale, eps,
             sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
             BLOCK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
             BLOCKS_FIRST: tl.constexpr):
    """o and z for one (batch row, head) and one block of queries."""
    bh, m0 = _program(L, BLOCK, BLOCKS_FIRST)
    offs_m, offs_n = m0 + tl.arange(0, BLOCK), tl.arange(0, BLOCK)
    offs_d, offs_v = tl.arange(0, BD), tl.arange(0, BV)
    q_base, k_base, v_base = _base(bh, H, sq_b, sq_h), _base(bh, H, sk_b, sk_h), _base(bh, H, sv_b, sv_h)
    q = _rows(q_ptr, q_base, offs_m, L, sq_l, offs_d, D)  # [BLOCK, BD]
    n = tl.zeros([BLOCK, BV], dtype=tl.float32)
    z = tl.zeros([BLOCK], dtype=tl.float32)
    for n0 in range(0, m0, BLOCK):  # the key blocks wholly in the past: no mask
        n, z = _forward_tile(q, n, z, k_ptr, k_base, sk_l, v_ptr, v_base, sv_l, offs_m, n0 + offs_n, offs_d,
                             offs_v, L, D, Dv, scale, False, PRECISION)
    n, z = _forward_tile(q, n, z, k_ptr, k_base, sk_l, v_ptr, v_base, sv_l, offs_m, m0 + offs_n, offs_d, offs_v,
                         L, D, Dv, scale, True, PRECISION)
    o = n / (z + eps)[:, None]
    o_base = _base(bh, H, L * H * Dv, Dv)  # o is contiguous [B, L, H, Dv]
    tl.store(o_ptr + o_base + offs_m.to(tl.int64)[:, None] * (H * Dv) + offs_v[None, :],
             o.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_v[None, :] < Dv))
    tl.store(z_ptr + bh * L + offs_m, z, mask=offs_m < L)


@triton.jit
def _grad_q_tile(q, dn, delta, dq, k_ptr, k_base, sk_l, v_ptr, v_base, sv_l, offs_m, offs_n, offs_d, offs_v,
                 L, D, Dv, scale, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dq += ds k over one key block (before the 1/√d')."""
    kT = _cols(k_ptr, k_base, offs_n, L, sk_l, offs_d, D)  # [BD, BLOCK]
    k = _rows(k_ptr, k_base, offs_n, L, sk_l, offs_d, D)  # [BLOCK, BD]
    vT = _cols(v_ptr, v_base, offs_n, L, sv_l, offs_v, Dv)  # [BV, BLOCK]
    _, slope = _taylor(tl.dot(q, kT, input_precision=PRECISION) * scale)
    da = tl.dot(dn, vT, input_precision=PRECISION) + delta[:, None]  # [BLOCK (t), BLOCK (s)]
    ds = da * slope
    if CAUSAL:
        ds = tl.where(offs_n[None, :] <= offs_m[:, None], ds, 0.0)
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)


@triton.jit
def _grad_q(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, z_ptr, delta_ptr, dq_ptr, L, H, D, Dv, scale, eps,
            sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
            BLOCK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
             BLOCKS_FIRST: tl.constexpr):
    """δ and dq for one (batch row, head) and one block of queries."""
    bh, m0 = _program(L, BLOCK, BLOCKS_FIRST)
    offs_m, offs_n = m0 + tl.arange(0, BLOCK), tl.arange(0, BLOCK)
    offs_d, offs_v = tl.arange(0, BD), tl.arange(0, BV)
    q_base, k_base, v_base = _base(bh, H, sq_b, sq_h), _base(bh, H, sk_b, sk_h), _base(bh, H, sv_b, sv_h)
    o_base = _base(bh, H, L * H * Dv, Dv)  # o and do are contiguous [B, L, H, Dv]
    q = _rows(q_ptr, q_base, offs_m, L, sq_l, offs_d, D)  # [BLOCK, BD]
    do = _rows(do_ptr, o_base, offs_m, L, H * Dv, offs_v, Dv)  # [BLOCK, BV]
    o = _rows(o_ptr, o_base, offs_m, L, H * Dv, offs_v, Dv)
    r = 1.0 / (tl.load(z_ptr + bh * L + offs_m, mask=offs_m < L, other=1.0) + eps)  # [BLOCK]
    delta = -tl.sum(do.to(tl.float32) * o.to(tl.float32), 1) * r
    tl.store(delta_ptr + bh * L + offs_m, delta, mask=offs_m < L)
    dn = (do.to(tl.float32) * r[:, None]).to(do.dtype)  # [BLOCK, BV]
    dq = tl.zeros([BLOCK, BD], dtype=tl.float32)
    for n0 in range(0, m0, BLOCK):
        dq = _grad_q_tile(q, dn, delta, dq, k_ptr, k_base, sk_l, v_ptr, v_base, sv_l, offs_m, n0 + offs_n, offs_d,
                          offs_v, L, D, Dv, scale, False, PRECISION)
    dq = _grad_q_tile(q, dn, delta, dq, k_ptr, k_base, sk_l, v_ptr, v_base, sv_l, offs_m, m0 + offs_n, offs_d,
                      offs_v, L, D, Dv, scale, True, PRECISION)
    dq_base = _base(bh, H, L * H * D, D)  # dq is contiguous [B, L, H, d']
    tl.store(dq_ptr + dq_base + offs_m.to(tl.int64)[:, None] * (H * D) + offs_d[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=(offs_m[:, None] < L) & (offs_d[None, :] < D))


@triton.jit
def _grad_kv_tile(k, v, dk, dv, q_ptr, q_base, sq_l, do_ptr, o_base, z_ptr, delta_ptr, bh, offs_m, offs_n,
                  offs_d, offs_v, L, H, D, Dv, scale, eps, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """dk += dsᵀ q (before the 1/√d') and dv += Aᵀ dn over one query block (offs_m), for the key block whose k
    and v are in registers. Queries past L load as zeros with δ = 0, so they add nothing."""
    qT = _cols(q_ptr, q_base, offs_m, L, sq_l, offs_d, D)  # [BD, BLOCK]
    q = _rows(q_ptr, q_base, offs_m, L, sq_l, offs_d, D)  # [BLOCK, BD]
    doT = _cols(do_ptr, o_base, offs_m, L, H * Dv, offs_v, Dv)  # [BV, BLOCK]
    do = _rows(do_ptr, o_base, offs_m, L, H * Dv, offs_v, Dv)  # [BLOCK, BV]
    r = 1.0 / (tl.load(z_ptr + bh * L + offs_m, mask=offs_m < L, other=1.0) + eps)  # [BLOCK]
    delta = tl.load(delta_ptr + bh * L + offs_m, mask=offs_m < L, other=0.0)
    dnT = (doT.to(tl.float32) * r[None, :]).to(do.dtype)
    dn = (do.to(tl.float32) * r[:, None]).to(do.dtype)
    aT, slopeT = _taylor(tl.dot(k, qT, input_precision=PRECISION) * scale)  # [BLOCK (s), BLOCK (t)]
    daT = tl.dot(v, dnT, input_precision=PRECISION) + delta[None, :]
    dsT = daT * slopeT
    if CAUSAL:
        keep = offs_m[None, :] >= offs_n[:, None]
        aT, dsT = tl.where(keep, aT, 0.0), tl.where(keep, dsT, 0.0)
    dv = tl.dot(aT.to(dn.dtype), dn, dv, input_precision=PRECISION)
    dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _grad_kv(q_ptr, k_ptr, v_ptr, do_ptr, z_ptr, delta_ptr, dk_ptr, dv_ptr, L, H, D, Dv, scale, eps,
             sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
             BLOCK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
             BLOCKS_FIRST: tl.constexpr):
    """dk and dv for one (batch row, head) and one block of keys."""
    bh, n0 = _program(L, BLOCK, BLOCKS_FIRST)
    offs_m, offs_n = tl.arange(0, BLOCK), n0 + tl.arange(0, BLOCK)
    offs_d, offs_v = tl.arange(0, BD), tl.arange(0, BV)
    q_base, k_base, v_base = _base(bh, H, sq_b, sq_h), _base(bh, H, sk_b, sk_h), _base(bh, H, sv_b, sv_h)
    o_base = _base(bh, H, L * H * Dv, Dv)  # do and dv are contiguous [B, L, H, Dv]
    k = _rows(k_ptr, k_base, offs_n, L, sk_l, offs_d, D)  # [BLOCK, BD]
    v = _rows(v_ptr, v_base, offs_n, L, sv_l, offs_v, Dv)  # [BLOCK, BV]
    dk = tl.zeros([BLOCK, BD], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BV], dtype=tl.float32)
    dk, dv = _grad_kv_tile(k, v, dk, dv, q_ptr, q_base, sq_l, do_ptr, o_base, z_ptr, delta_ptr, bh, n0 + offs_m,
                           offs_n, offs_d, offs_v, L, H, D, Dv, scale, eps, True, PRECISION)
    for m0 in range(n0 + BLOCK, L, BLOCK):  # the query blocks wholly in the future: no causal mask
        dk, dv = _grad_kv_tile(k, v, dk, dv, q_ptr, q_base, sq_l, do_ptr, o_base, z_ptr, delta_ptr, bh,
                               m0 + offs_m, offs_n, offs_d, offs_v, L, H, D, Dv, scale, eps, False, PRECISION)
    in_l = offs_n.to(tl.int64)[:, None]
    dk_base = _base(bh, H, L * H * D, D)  # dk is contiguous [B, L, H, d']
    tl.store(dk_ptr + dk_base + in_l * (H * D) + offs_d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=(offs_n[:, None] < L) & (offs_d[None, :] < D))
    tl.store(dv_ptr + o_base + in_l * (H * Dv) + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=(offs_n[:, None] < L) & (offs_v[None, :] < Dv))


# --- host ------------------------------------------------------------------------------------------------------

def _sizes(q, v):
    """(B, L, H, d', Dv) and the blocks: BLOCK positions, d' and Dv padded to powers of two, all at least 16."""
    B, L, H, D = q.shape
    Dv = v.shape[-1]
    block = max(16, min(MAX_BLOCK, triton.next_power_of_2(L)))
    return B, L, H, D, Dv, block, max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(Dv))


def _grid(heads: int, blocks: int) -> tuple[int, ...]:
    """The launch grid over (batch row · head, block): one axis, a head's blocks adjacent, with BLOCKS_FIRST (a
    grid's second axis holds at most 65535, fewer than a large pack's batch rows · heads); else two axes."""
    return (heads * blocks,) if BLOCKS_FIRST else (heads, blocks)


def _precision(q) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 dots in full precision; tf32 means bf16/fp16 here


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t with a contiguous last dimension (a copy only where it is not): the kernels read the other strides."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(*tensors) -> list[int]:
    """The batch, position and head strides of each [B, L, H, D] tensor."""
    return [s for t in tensors for s in t.stride()[:3]]


class _TaylorAttention(torch.autograd.Function):
    """(o [B, L, H, Dv], z [B·H, L] float32: the normaliser, kept for the backward and not differentiable) from
    q, k [B, L, H, d'] and v [B, L, H, Dv] of one dtype. torch.func.vmap over it folds the vmap dimension into B:
    one launch per pack."""

    @staticmethod
    def forward(q, k, v, eps):
        q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
        B, L, H, D, Dv, block, bd, bv = _sizes(q, v)
        o = torch.empty(B, L, H, Dv, dtype=v.dtype, device=v.device)
        z = torch.empty(B * H, L, dtype=torch.float32, device=v.device)
        _forward[_grid(B * H, triton.cdiv(L, block))](
            q, k, v, o, z, L, H, D, Dv, D**-0.5, eps, *_strides(q, k, v), BLOCK=block, BD=bd, BV=bv,
            PRECISION=_precision(q), BLOCKS_FIRST=BLOCKS_FIRST, num_warps=NUM_WARPS)
        return o, z

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, eps = inputs
        o, z = output
        ctx.mark_non_differentiable(z)
        ctx.save_for_backward(q, k, v, o, z)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, do, dz):
        q, k, v, o, z = ctx.saved_tensors
        q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
        do = do.to(v.dtype).contiguous()  # the kernels read do with o's (contiguous) strides
        B, L, H, D, Dv, block, bd, bv = _sizes(q, v)
        delta = torch.empty(B * H, L, dtype=torch.float32, device=v.device)
        dq, dk = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(2))
        dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        grid = _grid(B * H, triton.cdiv(L, block))
        common = dict(BLOCK=block, BD=bd, BV=bv, PRECISION=_precision(q), BLOCKS_FIRST=BLOCKS_FIRST,
                      num_warps=NUM_WARPS_BWD)
        _grad_q[grid](q, k, v, o, do, z, delta, dq, L, H, D, Dv, D**-0.5, ctx.eps, *_strides(q, k, v), **common)
        _grad_kv[grid](q, k, v, do, z, delta, dk, dv, L, H, D, Dv, D**-0.5, ctx.eps, *_strides(q, k, v), **common)
        return dq, dk, dv, None

    @staticmethod
    def vmap(info, in_dims, q, k, v, eps):
        size = info.batch_size
        q, k, v = (fold(x, bdim, size) for x, bdim in zip((q, k, v), in_dims[:3]))
        o, z = _TaylorAttention.apply(q, k, v, eps)
        return (o.view(size, -1, *o.shape[1:]), z.view(size, -1, *z.shape[1:])), (0, 0)


def taylor_attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """o [B, L, H, Dv] (v's dtype) from q, k [B, L, H, d'] and v [B, L, H, Dv] of one dtype, L ≥ 1 (shapes checked
    by the caller). Runs under torch.func.vmap (one launch for all K members)."""
    return _TaylorAttention.apply(q, k, v, float(eps))[0]
