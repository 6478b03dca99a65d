"""Every op of probe.ops.OPS: its Triton kernel against its float64 reference on odd shapes, outputs and every
gradient, with every uninitialised buffer poisoned by NaN first; a packed call (torch.func.vmap over K members)
against a loop over the members, in one launch. On a CPU the kernels run through Triton's interpreter (fp32, tiny
shapes); on a GPU the same tests run compiled, in fp32 and bf16."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from probe import ops
from probe.errors import ProbeError

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv("PROBE_OPS", "triton")


def _layer_norm_case(shape, seed):
    *lead, d = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64) * 3 + 1
    w = torch.randn(d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return [x, w, b], {}, [0, 1, 2]  # inputs, options, which inputs are differentiable


def _group_norm_case(shape, seed):
    *lead, d, groups = shape
    inputs, _, diff = _layer_norm_case((*lead, d), seed)
    return inputs, {"groups": groups}, diff


def _embedding_case(shape, seed):
    vocab, d, n = shape
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (n,), generator=g)
    tokens[torch.rand(n, generator=g) < 0.8] = 0  # a filler token at most positions: segments longer than an item
    return [weight, tokens], {}, [0]


def _cross_entropy_case(shape, seed):
    n, v = shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * 4
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::3] = -100  # ignored rows: loss 0, gradient 0
    return [logits, targets], {"ignore_index": -100}, [0]


def _rotary_case(shape, seed):
    *lead, length, d = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, length, d, generator=g, dtype=torch.float64)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(d // 2) / (d // 2))
    return [x, angles.cos(), angles.sin()], {}, [0]


def _selective_scan_case(shape, seed):
    rows, length, d, n = shape
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, length, d, generator=g, dtype=torch.float64)
    delta = torch.rand(rows, length, d, generator=g, dtype=torch.float64) * 0.5 + 1e-3  # softplus range
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 4 - 0.1
    B, C = (torch.randn(rows, length, n, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(d, generator=g, dtype=torch.float64)
    return [u, delta, A, B, C, D], {}, [0, 1, 2, 3, 4, 5]


def _linear_attention_case(shape, seed):
    batch, length, heads, dk, dv, decay, initial = shape  # decay, initial: 0 or 1 (an initial state needs a decay
    assert decay or not initial  # here, being positional; test_linear_attention_final_state_* covers the rest)
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, length, heads, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, length, heads, dv, generator=g, dtype=torch.float64)
    extra = [-0.5 * torch.rand(batch, length, heads, generator=g, dtype=torch.float64)] if decay else []
    extra += [torch.randn(batch, heads, dk, dv, generator=g, dtype=torch.float64)] if initial else []
    return [q, k, v, *extra], {}, list(range(3 + len(extra)))


def _gla_case(shape, seed):
    batch, length, heads, dk, dv, initial = shape  # initial: 0 or 1
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, length, heads, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, length, heads, dv, generator=g, dtype=torch.float64)
    log_gate = -2 * torch.rand(batch, length, heads, dk, generator=g, dtype=torch.float64)
    extra = [torch.randn(batch, heads, dk, dv, generator=g, dtype=torch.float64)] if initial else []
    return [q, k, v, log_gate, *extra], {}, list(range(4 + len(extra)))


def _short_conv_case(shape, seed):
    rows, length, c, taps, bias, silu, gate = shape  # bias, silu, gate: 0 or 1 (a gate comes with a bias)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, length, c, generator=g, dtype=torch.float64)
    w = torch.randn(c, taps, generator=g, dtype=torch.float64) / taps**0.5
    extra = [torch.randn(c, generator=g, dtype=torch.float64)] if bias or gate else []
    extra += [torch.randn(rows, length, c, generator=g, dtype=torch.float64)] if gate else []
    return [x, w, *extra], {"activation": "silu" if silu else "none"}, list(range(2 + len(extra)))


def _long_conv_case(shape, seed):
    rows, length, c, taps, bias = shape  # bias: 0 or 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, length, c, generator=g, dtype=torch.float64)
    k = torch.randn(c, taps, generator=g, dtype=torch.float64) / taps**0.5
    extra = [torch.randn(c, generator=g, dtype=torch.float64)] if bias else []
    return [x, k, *extra], {}, list(range(2 + len(extra)))


def _taylor_attention_case(shape, seed):
    batch, length, heads, d, dv = shape
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, length, heads, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, length, heads, dv, generator=g, dtype=torch.float64)
    # at L = 1, o = v·A/(A + eps): q and k reach o only through eps, so their gradients are O(eps), below what
    # float32 resolves at the default eps = 1e-6 (the float32 reference misses them by 10%); a large eps makes them
    # measurable
    return [q, k, v], ({"eps": 0.5} if length == 1 else {}), [0, 1, 2]


def _causal_attention_case(shape, seed):
    batch, length, heads, kv_heads, d, rotary, window, alibi = shape
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, length, (heads + 2 * kv_heads) * d, generator=g, dtype=torch.float64)
    options = {"n_heads": heads, "n_kv_heads": kv_heads, "window": window or None}
    inv_freq = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    positions = torch.arange(length, dtype=torch.float64)[:, None]
    if rotary:  # 1: RoPE; 2: the keys' own scaled tables (xPos-like, and a query scale); 3: ReRoPE's far branch
        angles = positions * inv_freq
        options.update(cos=angles.cos(), sin=angles.sin())
    if rotary == 2:
        up, down = 1.01 ** (positions / 8), 1.01 ** (-positions / 8)
        options.update(cos=angles.cos() * up, sin=angles.sin() * up, k_cos=angles.cos() * down,
                       k_sin=angles.sin() * down)
    if rotary == 3:  # leaky: far pairs at relative position w + (i - j - w)/k, k = 4, w = 7
        q_far, k_far = (positions / 4 + 7 * (1 - 1 / 4)) * inv_freq, positions / 4 * inv_freq
        options["far"] = (7, q_far.cos(), q_far.sin(), k_far.cos(), k_far.sin())
    if alibi:
        options["slopes"] = 2.0 ** -torch.arange(1, heads + 1, dtype=torch.float64)
    return [qkv], options, [0]


def _simplicial_attention_case(shape, seed):
    batch, length, heads, kv_heads, d, w1, w2, determinant = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, length, heads, d, generator=g, dtype=torch.float64)
    k1, v1, k2, v2 = (torch.randn(batch, length, kv_heads, d, generator=g, dtype=torch.float64) for _ in range(4))
    options = {"w1": w1, "w2": w2, "score": "determinant" if determinant else "trilinear"}
    return [q, k1, v1, k2, v2], options, [0, 1, 2, 3, 4]


# op -> (case builder, shapes: lengths 1, 63, 64, 200, 1000 rows; odd widths; and its packed form)
CASES = {
    # (V, D, positions): the positions hold a token drawn from V, 80% of them token 0
    "embedding": (_embedding_case, [(1, 1, 1), (5, 3, 63), (17, 10, 200), (64, 33, 1000), (3, 130, 64)]),
    "layer_norm": (_layer_norm_case, [(1, 1, 7), (2, 63, 10), (64, 33), (1, 200, 128), (1000, 5)]),
    # (..., D, groups): slices of odd and power-of-two widths (a slice of 2 normalises to ±1: its gradient is all
    # float32 cancellation)
    "group_norm": (_group_norm_case, [(1, 1, 6, 2), (2, 63, 12, 4), (64, 33, 3), (1, 200, 128, 4), (1000, 10, 2)]),
    "cross_entropy": (_cross_entropy_case, [(1, 3), (63, 100), (64, 2049), (200, 17), (1000, 64)]),
    "rotary": (_rotary_case, [(1, 1, 1, 2), (2, 3, 63, 10), (64, 6), (1, 2, 200, 32), (1000, 4)]),
    "selective_scan": (_selective_scan_case, [(2, 1, 10, 5), (2, 63, 10, 5), (1, 64, 6, 4), (2, 200, 9, 4),
                                              (1, 1000, 6, 16)]),
    # (B, L, H, Dk, Dv, decay, initial state)
    "linear_attention": (_linear_attention_case, [(2, 1, 3, 10, 6, 1, 1), (2, 63, 3, 10, 6, 1, 1),
                                                  (1, 64, 2, 16, 32, 0, 0), (2, 200, 2, 33, 17, 1, 0),
                                                  (1, 1000, 1, 8, 5, 1, 1), (1, 130, 1, 256, 153, 1, 1)]),
    # (B, L, H, Dk, Dv, initial state): chunks of 16 (L 1), 64 (L 63, 100: two, 150: three) in sub-chunks of 16
    "gla": (_gla_case, [(2, 1, 3, 16, 8, 1), (1, 63, 3, 10, 6, 1), (2, 100, 1, 16, 24, 0), (1, 150, 1, 33, 17, 1),
                        (1, 40, 1, 128, 64, 1), (1, 20, 1, 64, 128, 0)]),
    # (rows, L, C, taps, bias, silu, gate)
    "short_conv": (_short_conv_case, [(2, 1, 10, 3, 1, 1, 1), (2, 63, 10, 4, 1, 1, 1), (1, 64, 33, 2, 0, 1, 0),
                                      (3, 200, 7, 8, 1, 0, 0), (1, 1000, 5, 1, 0, 0, 0), (1, 200, 130, 3, 1, 0, 1)]),
    # (rows, L, C, Lk, bias): Lk > L is cut to L, Lk < L acts as zeros past Lk
    "long_conv": (_long_conv_case, [(2, 1, 5, 1, 1), (2, 63, 10, 90, 1), (3, 64, 33, 64, 0), (2, 200, 7, 50, 1),
                                    (1, 1000, 3, 1000, 0), (1, 40, 130, 30, 1)]),
    # (B, L, H, d', Dv)
    "taylor_attention": (_taylor_attention_case, [(2, 1, 3, 8, 16), (2, 63, 3, 16, 33), (1, 64, 2, 33, 16),
                                                  (2, 200, 2, 16, 16), (1, 1000, 1, 16, 33), (1, 130, 5, 8, 64)]),
    # (B, L, H, G, D, rotary (0-3, see the builder), window or 0, alibi): GQA and MQA groups, head halves padded
    # (D 24, 20), a window shorter than a block and one longer than the sequence, keys' own tables, ReRoPE's far
    # branch with and without a window
    "causal_attention": (_causal_attention_case, [(2, 1, 1, 1, 16, 1, 0, 0), (1, 63, 2, 1, 32, 1, 0, 0),
                                                  (1, 64, 4, 1, 16, 0, 5, 1), (1, 200, 2, 2, 24, 2, 0, 1),
                                                  (1, 1000, 1, 1, 16, 3, 100, 0), (1, 70, 2, 1, 128, 1, 300, 0),
                                                  (2, 130, 3, 3, 20, 3, 0, 1), (1, 90, 4, 2, 32, 3, 0, 0)]),
    # (B, L, H, G, D, w1, w2, determinant): GQA groups of 1, 2 and 3, windows shorter and longer than the sequence
    # (w2 > w1: the kernel swaps them), the determinant on 3-chunks (D 24 padded to 32), one allowed pair at L = 1
    "simplicial_attention": (_simplicial_attention_case, [(2, 1, 2, 1, 16, 4, 3, 0), (1, 40, 3, 1, 16, 9, 5, 0),
                                                          (1, 63, 1, 1, 32, 8, 100, 0), (1, 100, 2, 1, 16, 20, 6, 0),
                                                          (1, 63, 2, 1, 24, 100, 5, 1), (1, 63, 1, 1, 24, 3, 70, 1),
                                                          (1, 1, 2, 2, 24, 1, 1, 1)]),
}
# op -> (how many leading arguments each member has its own of under vmap, the autograd.Function it launches)
PACKABLE = {"embedding": (1, "probe.ops.embedding.kernel._Embedding"),
            "layer_norm": (3, "probe.ops.layer_norm.kernel._LayerNorm"),
            "group_norm": (3, "probe.ops.layer_norm.kernel._LayerNorm"),
            "rotary": (1, "probe.ops.rotary.kernel._Rotary"),
            "selective_scan": (6, "probe.ops.selective_scan.kernel._SelectiveScan"),
            "linear_attention": (5, "probe.ops.linear_attention.kernel._LinearAttention"),
            "gla": (5, "probe.ops.gla.kernel._GLA"),
            "short_conv": (4, "probe.ops.short_conv.kernel._ShortConv"),
            "long_conv": (3, "probe.ops.long_conv.kernel._LongConv"),
            "taylor_attention": (3, "probe.ops.taylor_attention.kernel._TaylorAttention"),
            "causal_attention": (1, "probe.ops.attention.kernel._CausalAttention"),
            "simplicial_attention": (5, "probe.ops.simplicial.kernel._SimplicialAttention")}


def test_every_registered_op_has_test_cases():
    assert set(CASES) == set(ops.OPS), "add the new op's shapes to CASES"


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name, shape", [(n, s) for n, (_, shapes) in CASES.items() for s in shapes],
                         ids=lambda v: str(v))
def test_kernel_matches_the_float64_reference(name, shape, dtype, kernel, poisoned):
    _check_against_reference(name, shape, dtype)


def _check_against_reference(name, shape, dtype):
    op, ref = ops.OPS[name]
    build, _ = CASES[name]
    inputs, options, diff = build(shape, seed=sum(shape))
    exact = [x.clone().requires_grad_(i in diff) for i, x in enumerate(inputs)]
    expected = ref(*exact, **options)
    cast = [x.to(DEVICE, dtype if x.is_floating_point() else x.dtype).requires_grad_(i in diff)
            for i, x in enumerate(inputs)]
    out = op(*cast, **options)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    assert _rel(out.cpu(), expected) < TOL[dtype]
    dout = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, [cast[i] for i in diff], dout.to(DEVICE, out.dtype))
    grads_ref = torch.autograd.grad(expected, [exact[i] for i in diff], dout)
    for i, g, g_ref in zip(diff, grads, grads_ref):
        assert g.shape == g_ref.shape and torch.isfinite(g).all(), f"gradient of input {i}"
        assert _rel(g.cpu(), g_ref) < 4 * TOL[dtype], f"gradient of input {i}"


@pytest.mark.parametrize("name", sorted(PACKABLE))
def test_a_packed_call_is_each_members_own_call_in_one_launch(name, kernel, poisoned, monkeypatch):
    _check_packed_call(name, monkeypatch)


def _check_packed_call(name, monkeypatch):
    op, ref = ops.OPS[name]
    build, shapes = CASES[name]
    k, (per_member, function) = 3, PACKABLE[name]
    members = [build(shapes[1], seed=10 + i) for i in range(k)]
    options, diff = members[0][1], members[0][2]
    stacked = [torch.stack([m[0][j] for m in members]).float().to(DEVICE).requires_grad_(j in diff)
               for j in range(per_member)]
    shared = [(x.float() if x.is_floating_point() else x).to(DEVICE) for x in members[0][0][per_member:]]
    for m in members:  # the members share these arguments
        m[0][per_member:] = members[0][0][per_member:]
    module, cls = function.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), cls)
    launches = []
    original = fn.forward
    monkeypatch.setattr(fn, "forward", staticmethod(lambda *a: launches.append(1) or original(*a)))
    out = torch.func.vmap(lambda *a: op(*a, *shared, **options))(*stacked)
    assert len(launches) == 1, "one launch for the whole pack"
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    grads = torch.autograd.grad(out, [stacked[j] for j in diff], dout)
    for i, (inputs, _, _) in enumerate(members):
        exact = [x.clone().requires_grad_(j in diff) for j, x in enumerate(inputs)]
        expected = ref(*exact, **options)
        assert _rel(out[i].cpu(), expected) < 1e-5
        for j, g_ref in zip(diff, torch.autograd.grad(expected, [exact[j] for j in diff], dout[i].double().cpu())):
            assert _rel(grads[diff.index(j)][i].cpu(), g_ref) < 1e-4, f"member {i}, gradient of input {j}"


def test_layer_norm_follows_autocast_like_torchs_own():
    # under autocast torch's LayerNorm returns float32 whatever its input; probe's op does the same
    x, w, b = (t.float() for t in _layer_norm_case((4, 8), 0)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.layer_norm(x.bfloat16(), w, b).dtype == torch.float32
    assert ops.layer_norm(x, w, b).dtype == torch.float32


def test_cross_entropy_of_non_finite_logits_is_non_finite(kernel):
    logits = torch.zeros(2, 5, device=DEVICE)
    logits[0, 3] = float("nan")
    loss = ops.cross_entropy(logits, torch.tensor([1, 2], device=DEVICE))
    assert not torch.isfinite(loss[0]) and torch.isfinite(loss[1])  # training's divergence check relies on it


def test_dispatch_rule(monkeypatch):
    cpu = torch.zeros(2)
    monkeypatch.delenv("PROBE_OPS", raising=False)
    assert ops.backend(cpu) == "ref"
    if torch.cuda.is_available():
        assert ops.backend(cpu.cuda()) == "triton" and ops.backend(cpu.cuda().double()) == "ref"
    monkeypatch.setenv("PROBE_OPS", "triton")
    assert ops.backend(cpu) == "triton" and ops.backend(cpu.double()) == "ref"
    monkeypatch.setenv("PROBE_OPS", "fast")
    with pytest.raises(ProbeError, match="PROBE_OPS='fast'"):
        ops.backend(cpu)


@pytest.mark.parametrize("name, args, message", [
    ("layer_norm", lambda: (torch.zeros(2, 4), torch.zeros(3), torch.zeros(4)), "weight and bias must be"),
    ("group_norm", lambda: (torch.zeros(2, 6), torch.zeros(6), torch.zeros(6), 4), "groups=4 must be"),
    ("group_norm", lambda: (torch.zeros(2, 6), torch.zeros(3), torch.zeros(6), 3), "weight and bias must be"),
    ("cross_entropy", lambda: (torch.zeros(2, 4), torch.zeros(3, dtype=torch.long)), "targets"),
    ("rotary", lambda: (torch.zeros(2, 5, 4), torch.zeros(5, 3), torch.zeros(5, 3)), "cos, sin"),
    ("rotary", lambda: (torch.zeros(2, 5, 3), torch.zeros(5, 1), torch.zeros(5, 1)), "D even"),
    ("linear_attention", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 6), torch.zeros(2, 5, 3, 4)),
     "q and k"),
    ("linear_attention", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 4)), "v must"),
    ("linear_attention", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4),
                                  torch.zeros(2, 3, 5)), "log_decay"),
    ("linear_attention", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4), None,
                                  torch.zeros(2, 3, 4, 5)), "initial_state"),
    ("gla", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 6), torch.zeros(2, 5, 3)),
     "log_gate"),
    ("short_conv", lambda: (torch.zeros(2, 5, 3), torch.zeros(4, 2)), "weight must be"),
    ("short_conv", lambda: (torch.zeros(3, 5, 4), torch.zeros(2, 4, 2)), "groups"),
    ("short_conv", lambda: (torch.zeros(2, 5, 4), torch.zeros(4, 2), torch.zeros(3)), "bias must be"),
    ("short_conv", lambda: (torch.zeros(2, 5, 4), torch.zeros(4, 2), None, torch.zeros(2, 4, 4)), "gate must be"),
    ("long_conv", lambda: (torch.zeros(5, 4), torch.zeros(4, 5)), "x must be"),
    ("long_conv", lambda: (torch.zeros(2, 5, 3), torch.zeros(4, 5)), "k must be"),
    ("long_conv", lambda: (torch.zeros(2, 5, 3), torch.zeros(3, 0)), "k must be"),
    ("long_conv", lambda: (torch.zeros(3, 5, 4), torch.zeros(2, 4, 5)), "groups"),
    ("long_conv", lambda: (torch.zeros(2, 5, 4), torch.zeros(4, 5), torch.zeros(3)), "bias must be"),
    ("taylor_attention", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 6), torch.zeros(2, 5, 3, 4)),
     "q and k"),
    ("taylor_attention", lambda: (torch.zeros(2, 5, 4), torch.zeros(2, 5, 4), torch.zeros(2, 5, 4)), "q and k"),
    ("taylor_attention", lambda: (torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 3, 4), torch.zeros(2, 6, 3, 4)),
     "v must"),
])
def test_ops_name_a_misshapen_input(name, args, message):
    with pytest.raises(ValueError, match=message):
        ops.OPS[name][0](*args())


def test_rotary_reads_a_transposed_view_without_a_copy_first(kernel, poisoned):
    # attention's q and k are [B, H, L, hd] views of a [B, L, H, hd] projection
    (x, cos, sin), _, _ = _rotary_case((2, 3, 37, 8), seed=3)  # [B, H, L, D] and the angles of L = 37
    view = x.float().transpose(1, 2).contiguous().to(DEVICE).transpose(1, 2)  # the same values, as a view
    assert not view.is_contiguous()
    out = ops.rotary(view, cos.float().to(DEVICE), sin.float().to(DEVICE))
    assert _rel(out.cpu(), ops.rotary_ref(x, cos, sin)) < 1e-5


def test_rotary_of_a_tensor_with_strided_rows(kernel, poisoned):
    (x, cos, sin), _, _ = _rotary_case((2, 3, 37, 8), seed=4)
    wide = torch.zeros(2, 3, 37, 16, dtype=torch.float64)
    wide[..., ::2] = x
    view = wide.float().to(DEVICE)[..., ::2]  # the same values, every other element of wider rows
    assert view.stride(-1) == 2
    out = ops.rotary(view, cos.float().to(DEVICE), sin.float().to(DEVICE))
    assert _rel(out.cpu(), ops.rotary_ref(x, cos, sin)) < 1e-5


def _linear_attention_inputs(length, decay, initial, heads=3, dk=10, dv=6, seed=0):
    """q, k, v, log_decay (None, [H] or [B, L, H]) and initial state (or None), float64, for 2 batch rows."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, length, heads, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, length, heads, dv, generator=g, dtype=torch.float64)
    log_decay = {"none": None, "per_head": -torch.rand(heads, generator=g, dtype=torch.float64),
                 "per_step": -torch.rand(2, length, heads, generator=g, dtype=torch.float64)}[decay]
    s0 = torch.randn(2, heads, dk, dv, generator=g, dtype=torch.float64) if initial else None
    return [q, k, v, log_decay, s0]


@pytest.mark.parametrize("initial", [False, True], ids=["from_zero", "from_a_state"])
@pytest.mark.parametrize("decay", ["none", "per_head", "per_step"])
@pytest.mark.parametrize("length", [1, 100])
def test_linear_attention_final_state_and_every_gradient_match_the_reference(length, decay, initial, kernel,
                                                                             poisoned):
    inputs = _linear_attention_inputs(length, decay, initial)
    exact = [x.clone().requires_grad_() if x is not None else None for x in inputs]
    cast = [x.float().to(DEVICE).requires_grad_() if x is not None else None for x in inputs]
    o_ref, s_ref = ops.linear_attention_ref(*exact, output_final_state=True)
    o, s = ops.linear_attention(*cast, output_final_state=True)
    assert s.dtype == torch.float32 and s.shape == s_ref.shape
    assert _rel(o.cpu(), o_ref) < TOL[torch.float32] and _rel(s.cpu(), s_ref) < TOL[torch.float32]
    g = torch.Generator().manual_seed(1)
    do, ds = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (o_ref, s_ref))
    wanted = [i for i, x in enumerate(inputs) if x is not None]
    grads = torch.autograd.grad((o * do.float().to(DEVICE)).sum() + (s * ds.float().to(DEVICE)).sum(),
                                [cast[i] for i in wanted])
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), [exact[i] for i in wanted])
    for i, grad, grad_ref in zip(wanted, grads, grads_ref):
        assert torch.isfinite(grad).all(), f"input {i}"
        if i == 3:  # the decay's gradient sums q·dq − k·dk, so its error scales with those terms (the whole of
            # it cancels where a_0 multiplies a zero state, at L = 1)
            scale = max(grad_ref.norm(), (exact[0] * grads_ref[0]).sum(-1).norm())
            assert (grad.cpu().double() - grad_ref).norm() / scale < 4 * TOL[torch.float32], "the decay"
        else:
            assert _rel(grad.cpu(), grad_ref) < 4 * TOL[torch.float32], f"input {i}"


def test_linear_attention_reference_is_the_recurrence_step_by_step():
    from probe.mixers.linear_attention import linear_attention_recurrent  # the mixers' step-by-step form
    for length in (1, 63, 64, 130):
        for decay in ("none", "per_head", "per_step"):
            inputs = _linear_attention_inputs(length, decay, initial=True, seed=length)
            o, s = ops.linear_attention_ref(*inputs, output_final_state=True)
            q, k, v, log_decay, initial = inputs
            o_rec, s_rec = linear_attention_recurrent(q, k, v, log_decay, initial_state=initial,
                                                      output_final_state=True)
            torch.testing.assert_close(o, o_rec, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(s, s_rec, rtol=1e-10, atol=1e-10)


def test_linear_attention_stays_finite_where_decays_sum_far_below_float32s_range(kernel, poisoned):
    # log a down to -30 per step: a chunk's decays sum to about -1000, so e^{-b} would overflow; e^{b_i - b_j}
    # masked before exp never does
    q, k, v, _, s0 = _linear_attention_inputs(150, "none", True)
    log_decay = -30 * torch.rand(2, 150, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cast = [x.float().to(DEVICE).requires_grad_() for x in (q, k, v, log_decay, s0)]
    o = ops.linear_attention(*cast)
    grads = torch.autograd.grad(o.square().sum(), cast)
    assert torch.isfinite(o).all() and all(torch.isfinite(g).all() for g in grads)
    assert _rel(o.cpu(), ops.linear_attention_ref(q, k, v, log_decay, s0)) < TOL[torch.float32]


@pytest.mark.parametrize("low", [-1.0, -20.0], ids=["mild_gates", "strong_gates"])
@pytest.mark.parametrize("length", [1, 100])
def test_gla_final_state_and_every_gradient_match_the_reference(length, low, kernel, poisoned):
    # log α down to -20 per step: a chunk's gates sum to about -600 per key dimension, so a split of e^{b_i - b_j}
    # about any fixed point of the chunk would overflow float32; the kernel's about a point between the sub-chunks
    # and its pairwise diagonal never do
    (q, k, v, _, s0), _, _ = _gla_case((2, length, 2, 20, 12, 1), seed=length)
    log_gate = low * torch.rand(q.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    inputs = [q, k, v, log_gate, s0]
    exact = [x.clone().requires_grad_() for x in inputs]
    cast = [x.float().to(DEVICE).requires_grad_() for x in inputs]
    o_ref, s_ref = ops.gla_ref(*exact, output_final_state=True)
    o, s = ops.gla(*cast, output_final_state=True)
    assert s.dtype == torch.float32 and s.shape == s_ref.shape and torch.isfinite(o).all()
    assert _rel(o.cpu(), o_ref) < TOL[torch.float32] and _rel(s.cpu(), s_ref) < TOL[torch.float32]
    g = torch.Generator().manual_seed(1)
    do, ds = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (o_ref, s_ref))
    grads = torch.autograd.grad((o * do.float().to(DEVICE)).sum() + (s * ds.float().to(DEVICE)).sum(), cast)
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), exact)
    for i, grad, grad_ref in zip(range(5), grads, grads_ref):
        assert torch.isfinite(grad).all(), f"input {i}"
        if i == 3:  # the gate's gradient sums q ⊙ dq − k ⊙ dk, so its error scales with those terms
            scale = max(grad_ref.norm(), (exact[0] * grads_ref[0]).norm())
            assert (grad.cpu().double() - grad_ref).norm() / scale < 4 * TOL[torch.float32], "the gate"
        else:
            assert _rel(grad.cpu(), grad_ref) < 4 * TOL[torch.float32], f"input {i}"


def _direct_long_conv(x, k, bias):
    """y[b, t, c] = Σ_{s=0}^{min(t, Lk-1)} k[c, s] · x[b, t-s, c] + bias[c] · x[b, t, c], one shift s at a time."""
    rows, length, c = x.shape
    groups = k.shape[0] if k.dim() == 3 else 1
    k = k.reshape(groups, 1, 1, c, -1)
    x = x.reshape(groups, rows // groups, length, c)
    y = bias.reshape(groups, 1, 1, c) * x
    for s in range(min(length, k.shape[-1])):
        y = y + F.pad(k[..., s] * x[:, :, :length - s], (0, 0, s, 0))
    return y.reshape(rows, length, c)


@pytest.mark.parametrize("length, taps, groups", [(1, 1, 1), (1, 4, 2), (63, 20, 1), (63, 90, 2), (200, 57, 1),
                                                  (200, 300, 2)])
def test_long_conv_reference_is_the_direct_sum(length, taps, groups):
    g = torch.Generator().manual_seed(length + taps)
    x = torch.randn(2 * groups, length, 5, generator=g, dtype=torch.float64)
    k = torch.randn(groups, 5, taps, generator=g, dtype=torch.float64)
    bias = torch.randn(groups, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ops.long_conv_ref(x, k, bias), _direct_long_conv(x, k, bias), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ops.long_conv_ref(x, k), _direct_long_conv(x, k, torch.zeros_like(bias)),
                               rtol=1e-10, atol=1e-10)


def test_long_conv_reads_a_channel_major_view_without_a_copy_first(kernel, poisoned):
    # the op's float32 outputs are [B, L, C] views of channel-major [B, C, L] memory, and may come back in
    (x, k, bias), _, _ = _long_conv_case((2, 70, 6, 70, 1), seed=5)
    view = x.float().transpose(1, 2).contiguous().to(DEVICE).transpose(1, 2)  # the same values, positions contiguous
    assert view.stride(1) == 1
    out = ops.long_conv(view, k.float().to(DEVICE), bias.float().to(DEVICE))
    assert _rel(out.cpu(), ops.long_conv_ref(x, k, bias)) < TOL[torch.float32]


@pytest.fixture
def token_major_float32(monkeypatch):
    """long_conv's token-major kernels on float32 tiles: 16-bit tiles always take them, float32 ones by default
    the channel-major kernels, and the CPU interpreter computes dots correctly only in float32."""
    from probe.ops.long_conv import kernel as long_conv_kernel
    monkeypatch.setattr(long_conv_kernel, "FLOAT32_KERNELS", "token")


@pytest.mark.parametrize("shape", CASES["long_conv"][1], ids=str)
def test_long_conv_token_major_kernels_match_the_float64_reference(shape, kernel, poisoned, token_major_float32):
    _check_against_reference("long_conv", shape, torch.float32)


def test_long_conv_token_major_kernels_pack_in_one_launch(kernel, poisoned, token_major_float32, monkeypatch):
    _check_packed_call("long_conv", monkeypatch)


def test_long_conv_reads_a_column_slice_of_a_projection_and_returns_token_major(kernel, poisoned,
                                                                                token_major_float32):
    # Hyena's gates and H3's k are column slices of wider projections: channels contiguous, rows and positions
    # strided; the output is contiguous token-major, for the elementwise gates and projection after it
    (x, k, bias), _, _ = _long_conv_case((2, 70, 6, 70, 1), seed=5)
    wide = torch.cat([torch.randn_like(x), x, torch.randn_like(x)], -1).float().to(DEVICE).requires_grad_()
    view = wide[..., 6:12]
    assert view.stride(-1) == 1 and not view.is_contiguous()
    out = ops.long_conv(view, k.float().to(DEVICE), bias.float().to(DEVICE))
    assert out.is_contiguous()
    exact = x.clone().requires_grad_()
    expected = ops.long_conv_ref(exact, k, bias)
    assert _rel(out.detach().cpu(), expected) < TOL[torch.float32]
    dout = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (g,) = torch.autograd.grad(out, wide, dout.float().to(DEVICE))
    (g_ref,) = torch.autograd.grad(expected, exact, dout)
    assert _rel(g[..., 6:12].cpu(), g_ref) < 4 * TOL[torch.float32]
    assert not g[..., :6].any() and not g[..., 12:].any()


def test_taylor_attention_reads_head_slices_of_a_fused_projection_without_a_copy_first(kernel, poisoned):
    # q, k, v as column slices of one [B, L, 2·H·d' + H·Dv] projection: strided batch, position and head
    (q, k, v), _, _ = _taylor_attention_case((2, 70, 3, 8, 16), seed=6)
    fused = torch.cat([t.flatten(-2) for t in (q, k, v)], -1).float().to(DEVICE).requires_grad_()
    views = [part.unflatten(-1, (3, -1)) for part in fused.split([24, 24, 48], -1)]
    assert not views[0].is_contiguous() and views[0].stride(-1) == 1
    exact = [t.clone().requires_grad_() for t in (q, k, v)]
    out, expected = ops.taylor_attention(*views), ops.taylor_attention_ref(*exact)
    assert _rel(out.cpu(), expected) < TOL[torch.float32]
    dout = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, fused, dout.float().to(DEVICE))
    grads_ref = torch.autograd.grad(expected, exact, dout)
    assert _rel(grad.cpu(), torch.cat([g.flatten(-2) for g in grads_ref], -1)) < 4 * TOL[torch.float32]


@pytest.mark.parametrize("shape", [(1, 1), (3, 7, 5), (2, 1000), (4, 63, 3)])
def test_fused_adamw_update_matches_its_reference_over_several_steps(shape, kernel):
    """PackedAdamW's fused update: each member's slice with its own decay factor and step size, in place."""
    from probe.ops.adamw import adamw_update, adamw_update_ref
    g = torch.Generator().manual_seed(sum(shape))
    k = shape[0]
    p = torch.randn(*shape, generator=g).to(DEVICE)
    ours = [p.clone(), torch.zeros_like(p), torch.zeros_like(p)]
    theirs = [p.clone(), torch.zeros_like(p), torch.zeros_like(p)]
    lr = torch.rand(k, generator=g, dtype=torch.float64) * 1e-2
    wd = torch.rand(k, generator=g, dtype=torch.float64)
    for t in range(1, 4):
        grad = torch.randn(*shape, generator=g).to(DEVICE)
        scalars = torch.stack([1 - (lr * wd).float(), (lr / (1 - 0.9 ** t)).float()], 1).to(DEVICE)
        c2 = torch.tensor((1 - 0.999 ** t) ** 0.5, dtype=torch.float32, device=DEVICE)
        adamw_update(ours[0], grad, ours[1], ours[2], scalars, c2, 0.9, 0.999, 1e-8)
        adamw_update_ref(theirs[0], grad, theirs[1], theirs[2], scalars, c2, 0.9, 0.999, 1e-8)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the second moment as tightly as float32 allows: 1 - β2 formed in float32 (0.999 → 1.3e-5 off) shows here
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-6, atol=0)
    assert not torch.equal(ours[0], p)  # it moved


def test_fused_adamw_update_names_misshapen_scalars():
    from probe.ops.adamw import adamw_update
    p = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"scalars must be \[K, 2\]"):
        adamw_update(p, p, p.clone(), p.clone(), torch.ones(2, 2), torch.ones(()), 0.9, 0.999, 1e-8)


def test_embedding_of_per_member_tokens_in_a_pack_is_each_members_own(kernel, poisoned):
    """A pack whose members read tokens of their own (not the shared batch): one table of K·V rows."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3, 11, 6, generator=g).to(DEVICE).requires_grad_()
    tokens = torch.randint(0, 11, (3, 4, 70), generator=g)
    tokens[:, :, ::2] = 5
    out = torch.func.vmap(ops.embedding)(weight, tokens.to(DEVICE))
    dout = torch.randn(out.shape, generator=g).to(DEVICE)
    (grad,) = torch.autograd.grad(out, [weight], dout)
    for k in range(3):
        exact = weight[k].detach().cpu().double().requires_grad_()
        expected = ops.embedding_ref(exact, tokens[k])
        assert _rel(out[k].detach().cpu(), expected) < 1e-6
        (g_ref,) = torch.autograd.grad(expected, [exact], dout[k].cpu().double())
        assert _rel(grad[k].cpu(), g_ref) < 1e-5


def test_embedding_gradient_is_the_same_run_after_run(kernel):
    weight, tokens = (x.to(DEVICE) for x in _embedding_case((50, 16, 3000), 4)[0])
    weight = weight.float().requires_grad_()
    dout = torch.randn(3000, 16, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    first, second = (torch.autograd.grad(ops.embedding(weight, tokens), [weight], dout)[0] for _ in range(2))
    assert torch.equal(first, second)  # no atomics: the sums run in position order


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_probe_bench_ops_has_a_shape_for_every_registered_op(name):
    """`probe bench ops` times every registered op (none named): each must have inputs its reference takes."""
    from probe.bench import op_inputs
    args, kwargs = op_inputs(name, 2, 16, 64, torch.device("cpu"), torch.float32)
    out = ops.OPS[name][1](*args, **kwargs)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    assert leaves and all(g is not None for g in torch.autograd.grad(out.float().sum(), leaves))
