"""2-simplicial attention: the windowed reference against a dense oracle, and the properties the papers claim.

Clift et al. (2019); Roy et al. (2025). The generic contract (shape, causality, step == forward at L=17) lives in
tests/test_mixers.py, and the op's kernel against its reference in tests/test_ops.py; here: windows shorter than
the sequence, rotation invariance, relative positions, reductions, kv heads shared GQA-style, the reference's K'/V'
biases (which make plain windowed attention the layer at zero K', V' projections), and the layer on the kernel path.
"""
import copy
import math

import pytest
import torch

from probe.mixers.base import state_numel
from probe.mixers.simplicial import SimplicialAttention, rotary_3d
from probe.ops.simplicial import simplicial_attention_naive, simplicial_attention_ref

B, H = 2, 2


def qkv(length, dim=12, seed=0, dtype=torch.float64):
    """q, k1, v1, k2, v2: token-major [B, L, H, D]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, length, H, dim, generator=g, dtype=dtype) for _ in range(5)]


def random_rotation(seed=0):
    """A random element of SO(3) (QR of a Gaussian matrix, sign-fixed to det +1)."""
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    return Q if torch.det(Q) > 0 else -Q


def rotate_chunks(x, R):
    """Apply the same 3x3 matrix R to every 3-chunk of x: [..., D] -> [..., D]."""
    return (x.unflatten(-1, (-1, 3)) @ R.T).flatten(-2)


CASES = [(L, w1, w2) for L in (1, 5, 40) for (w1, w2) in ((1, 1), (3, 7), (40, 2), (64, 16))]


@pytest.mark.parametrize("score", ["trilinear", "determinant"])
@pytest.mark.parametrize("L,w1,w2", CASES, ids=[f"L{L}-w{w1}x{w2}" for L, w1, w2 in CASES])
def test_windowed_reference_equals_dense_oracle(L, w1, w2, score):
    q, k1, v1, k2, v2 = qkv(L)
    expected = simplicial_attention_naive(q, k1, v1, k2, v2, w1, w2, score)
    for query_chunk in (7, 128):  # 7 splits L=40 unevenly; 128 is one chunk
        got = simplicial_attention_ref(q, k1, v1, k2, v2, w1, w2, score, query_chunk=query_chunk)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("score", ["trilinear", "determinant"])
def test_each_kv_head_serves_a_run_of_consecutive_query_heads(score):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, 9, 4, 12, generator=g, dtype=torch.float64)
    kv = [torch.randn(B, 9, 2, 12, generator=g, dtype=torch.float64) for _ in range(4)]
    shared = simplicial_attention_ref(q, *kv, 4, 3, score)
    expected = simplicial_attention_naive(q, *(t.repeat_interleave(2, dim=2) for t in kv), 4, 3, score)  # 0 0 1 1
    torch.testing.assert_close(shared, expected, rtol=1e-10, atol=1e-12)


def test_determinant_score_is_invariant_to_a_common_rotation_of_q_k_kprime():
    q, k1, v1, k2, v2 = qkv(9)
    R = random_rotation()
    before = simplicial_attention_ref(q, k1, v1, k2, v2, 4, 3, "determinant")
    after = simplicial_attention_ref(rotate_chunks(q, R), rotate_chunks(k1, R), v1, rotate_chunks(k2, R), v2,
                                     4, 3, "determinant")
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)
    # the trilinear form has no such symmetry, which is why the determinant is needed for rotary positions
    tri_before = simplicial_attention_ref(q, k1, v1, k2, v2, 4, 3, "trilinear")
    tri_after = simplicial_attention_ref(rotate_chunks(q, R), rotate_chunks(k1, R), v1, rotate_chunks(k2, R), v2,
                                         4, 3, "trilinear")
    assert not torch.allclose(tri_after, tri_before, atol=1e-3)


def test_determinant_score_flips_sign_under_a_reflection():
    # det[Pq, Pk, Pk'] = det P · det[q, k, k'] = -det[...]: sign is part of the score, as in the paper's signed form
    q, k1, v1, k2, v2 = qkv(6)
    P = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    flipped = simplicial_attention_ref(rotate_chunks(q, P), rotate_chunks(k1, P), v1, rotate_chunks(k2, P), v2,
                                       6, 6, "determinant")
    negated_query = simplicial_attention_ref(-q, k1, v1, k2, v2, 6, 6, "determinant")
    torch.testing.assert_close(flipped, negated_query, rtol=1e-10, atol=1e-12)


def sliding_window_softmax_attention(q, k, v, window):
    """Plain causal sliding-window attention, row by row: [B, L, H, D] -> [B, L, H, D]."""
    L, D = q.shape[1], q.shape[3]
    rows = []
    for i in range(L):
        lo = max(0, i - window + 1)
        weights = torch.softmax(torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, lo : i + 1]) / math.sqrt(D), dim=-1)
        rows.append(torch.einsum("bhj,bjhd->bhd", weights, v[:, lo : i + 1]))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("w1", [1, 4, 50])
def test_trilinear_with_one_constant_pair_partner_is_windowed_softmax_attention(w1):
    q, k1, v1, _, _ = qkv(13)
    c = torch.randn(12, dtype=torch.float64)
    k2 = c.expand_as(q)  # the same k' at every position
    v2 = torch.ones_like(q)  # v' = 1, so v ⊙ v' = v
    got = simplicial_attention_ref(q, k1, v1, k2, v2, w1, 1, "trilinear")
    expected = sliding_window_softmax_attention(q * c, k1, v1, w1)  # <q, k, c> = <q ⊙ c, k>
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shift", [1, 17, -5])
def test_rotary_determinant_scores_depend_only_on_relative_position(shift):
    q, k1, v1, k2, v2 = qkv(11)
    positions = torch.arange(11)[:, None]  # token-major

    def attend(pos):
        return simplicial_attention_ref(rotary_3d(q, pos), rotary_3d(k1, pos), v1, rotary_3d(k2, pos), v2,
                                        5, 3, "determinant")

    torch.testing.assert_close(attend(positions + shift), attend(positions), rtol=1e-9, atol=1e-11)
    assert not torch.allclose(attend(positions), simplicial_attention_ref(q, k1, v1, k2, v2, 5, 3, "determinant"))


def test_rotary_3d_is_a_rotation_of_each_chunk():
    x = qkv(7)[0]
    y = rotary_3d(x, torch.arange(7)[:, None])  # token-major [B, L, H, D]
    chunk_norm = lambda t: t.unflatten(-1, (-1, 3)).norm(dim=-1)
    torch.testing.assert_close(chunk_norm(y), chunk_norm(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position 0 is the identity
    torch.testing.assert_close(rotary_3d(x.transpose(1, 2), torch.arange(7)).transpose(1, 2), y)  # head-major


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    return SimplicialAttention(24, **kwargs).double()


VARIANTS = [dict(score="trilinear"), dict(score="determinant"), dict(score="determinant", pos="rope"),
            dict(score="determinant", pos="rope", kv_bias=False)]
VARIANT_IDS = ["trilinear", "determinant", "determinant-rope", "determinant-rope-no-kv-bias"]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=VARIANT_IDS)
def test_step_equals_forward_after_the_windows_slide(kwargs):
    mixer = make(w1=5, w2=3, **kwargs)
    x = torch.randn(B, 20, 24, dtype=torch.float64)
    state = mixer.init_state(B, dtype=x.dtype)
    ys = []
    for t in range(20):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
        assert state_numel(state, B) == mixer.state_size(t + 1)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x), rtol=1e-9, atol=1e-11)
    assert mixer.state_size(20) == 2 * mixer.n_heads * mixer.head_dim * (5 + 3)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=VARIANT_IDS)
def test_only_rotary_positions_make_the_output_depend_on_prefix_order(kwargs):
    # with both windows covering the sequence, the last output sees the prefix as a set unless positions are used
    mixer = make(w1=8, w2=8, **kwargs)
    x = torch.randn(B, 8, 24, dtype=torch.float64)
    permuted = torch.cat((x[:, [4, 0, 6, 2, 1, 5, 3]], x[:, 7:]), dim=1)
    same = torch.allclose(mixer(x)[:, -1], mixer(permuted)[:, -1], rtol=1e-10, atol=1e-12)
    assert same == (kwargs.get("pos", "none") == "none")


def projections(mixer, x):
    """The raw q, k, v, k', v' of the mixer's fused projection, without biases: each [B, L, H, hd]."""
    return (x @ mixer.in_proj.weight.T).unflatten(-1, (5, mixer.n_heads, mixer.head_dim)).unbind(2)


def merge_heads(mixer, o):
    return o.flatten(2) @ mixer.out_proj.weight.T  # [B, L, H, hd] -> [B, L, D]


@pytest.mark.parametrize("score", ["trilinear", "determinant"])
def test_kv_bias_adds_one_over_head_dim_to_kprime_and_one_to_vprime(score):
    mixer = make(w1=5, w2=3, score=score)
    x = torch.randn(B, 11, 24, dtype=torch.float64)
    q, k1, v1, k2, v2 = projections(mixer, x)
    d = mixer.head_dim
    expected = simplicial_attention_ref(q, k1, v1, k2 + 1 / d, v2 + 1, 5, 3, score)
    torch.testing.assert_close(mixer(x), merge_heads(mixer, expected), rtol=1e-10, atol=1e-12)
    bare = make(w1=5, w2=3, score=score, kv_bias=False)
    torch.testing.assert_close(bare(x), merge_heads(bare, simplicial_attention_ref(q, k1, v1, k2, v2, 5, 3, score)),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("score", ["trilinear", "determinant"])
@pytest.mark.parametrize("w1,w2", [(4, 3), (13, 1), (2, 13)])
def test_with_kv_bias_and_zero_kprime_vprime_projections_the_layer_is_windowed_attention_at_scale_d_sqrt_d(
        score, w1, w2):
    # k' = 1/d, v' = 1: A_ijk = s(q_i, k_j)/(d·sqrt(d)) for every k, so the softmax over k is uniform and the
    # sum over k of p_ijk (v_j ⊙ 1) leaves softmax_j(s/(d·sqrt(d))) v_j over the w1 window
    mixer = make(w1=w1, w2=w2, score=score)
    hd, inner = mixer.head_dim, mixer.n_heads * mixer.head_dim
    with torch.no_grad():
        mixer.in_proj.weight[3 * inner:] = 0.0  # the W_K' and W_V' rows
    x = torch.randn(B, 13, 24, dtype=torch.float64)
    q, k, v, _, _ = projections(mixer, x)
    L = x.shape[1]
    rows = []
    for i in range(L):
        lo = max(0, i - w1 + 1)
        qi, kj = q[:, i : i + 1], k[:, lo : i + 1]  # [B, 1, H, hd], [B, n, H, hd]
        if score == "trilinear":
            s = (qi * kj).sum(-1)  # <q, k, 1> = <q, k>
        else:  # det[a, b, 1] = (a × b)·(1, 1, 1), chunk by chunk
            s = torch.linalg.cross(*torch.broadcast_tensors(qi.unflatten(-1, (-1, 3)), kj.unflatten(-1, (-1, 3))),
                                   dim=-1).sum((-1, -2))
        weights = torch.softmax(s / (hd * math.sqrt(hd)), dim=1)  # [B, n, H]
        rows.append((weights.unsqueeze(-1) * v[:, lo : i + 1]).sum(1))  # [B, H, hd]
    expected = merge_heads(mixer, torch.stack(rows, dim=1))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)


def test_without_kv_bias_zero_kprime_vprime_projections_give_zero_output():
    # the bare trilinear form has no attention path: k' = 0 makes every score 0, and v' = 0 every output 0
    mixer = make(w1=4, w2=3, kv_bias=False)
    inner = mixer.n_heads * mixer.head_dim
    with torch.no_grad():
        mixer.in_proj.weight[3 * inner:] = 0.0
    x = torch.randn(B, 9, 24, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), torch.zeros_like(x))


def test_the_papers_hybrid_puts_a_simplicial_layer_after_three_global_rope_attention_layers():
    from probe.mixers.attention import Attention
    from probe.model import build_model

    model = build_model("attention,attention,attention,simplicial", vocab_size=16, d_model=24, n_layers=8,
                        max_seq_len=32)
    mixers = [block.mixer for block in model.blocks]
    assert [type(m) for m in mixers] == [Attention, Attention, Attention, SimplicialAttention] * 2
    assert all(m.pos == "rope" and m.window is None for m in mixers if isinstance(m, Attention))
    assert torch.isfinite(model(torch.randint(0, 16, (2, 20)))).all()


def test_default_head_dim_for_the_determinant_is_rounded_down_to_a_multiple_of_3():
    assert SimplicialAttention(32, n_heads=2, score="determinant").head_dim == 15
    assert SimplicialAttention(32, n_heads=2).head_dim == 16


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(n_heads=0), "n_heads"),
        (dict(w1=0), "w1"),
        (dict(w2=0), "w2"),
        (dict(score="quadrilinear"), "score"),
        (dict(pos="alibi"), "pos"),
        (dict(pos="rope"), "pos"),  # rope on the trilinear score
        (dict(score="determinant", head_dim=16), "head_dim"),
        (dict(n_heads=64), "head_dim"),  # d_model // n_heads = 0
        (dict(rope_base=0.0), "rope_base"),
    ],
)
def test_bad_kwargs_raise_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SimplicialAttention(32, **kwargs)


def test_reference_in_bfloat16_accumulates_in_float32():
    q, k1, v1, k2, v2 = qkv(33, dtype=torch.float32)
    exact = simplicial_attention_ref(q, k1, v1, k2, v2, 16, 4, "determinant")
    low = simplicial_attention_ref(*(t.bfloat16() for t in (q, k1, v1, k2, v2)), 16, 4, "determinant")
    assert low.dtype == torch.bfloat16
    rel_rms = (low.float() - exact).square().mean().sqrt() / exact.square().mean().sqrt()
    assert rel_rms < 0.05


def test_vmap_over_stacked_weights_equals_a_loop():
    from torch.func import functional_call, stack_module_state, vmap

    mixers = [SimplicialAttention(24, score="determinant", pos="rope", w1=6, w2=3) for _ in range(3)]
    params, buffers = stack_module_state(mixers)
    skeleton = copy.deepcopy(mixers[0]).to("meta")
    x = torch.randn(B, 10, 24)
    stacked = vmap(lambda p, b: functional_call(skeleton, (p, b), (x,)))(params, buffers)
    torch.testing.assert_close(stacked, torch.stack([m(x) for m in mixers]))


@pytest.mark.parametrize("kwargs", [dict(score="trilinear"), dict(score="determinant", pos="rope")],
                         ids=["trilinear", "determinant-rope"])
def test_the_kernel_path_equals_the_reference_path_for_a_layer_and_a_pack(kwargs, monkeypatch, poisoned):
    """PROBE_OPS=triton sends the layer through probe.ops.simplicial_attention's Triton kernel (the interpreter on
    a CPU), reading q, k, v, k', v' as views of the fused projection: outputs and every parameter gradient equal
    the reference path's, for one layer and for a pack of two under vmap (one launch)."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = [make(seed, w1=6, w2=3, **kwargs).float().to(device) for seed in range(2)]
    x = torch.randn(2, 1, 11, 24, generator=torch.Generator().manual_seed(4)).to(device)

    def run(forced):
        monkeypatch.setenv("PROBE_OPS", forced)
        out = layers[0](x[0])
        grads = torch.autograd.grad(out.square().sum(), list(layers[0].parameters()))
        params, buffers = torch.func.stack_module_state(layers)
        packed = torch.func.vmap(lambda p, b, xi: torch.func.functional_call(layers[0], (p, b), (xi,)))(
            params, buffers, x)
        return [out, packed, *grads, *torch.autograd.grad(packed.square().sum(), list(params.values()))]

    expected = run("ref")
    launches = []
    from probe.ops.simplicial import kernel
    original = kernel._SimplicialAttention.forward
    monkeypatch.setattr(kernel._SimplicialAttention, "forward",
                        staticmethod(lambda *a: launches.append(1) or original(*a)))
    got = run("triton")
    assert len(launches) == 2, "the layer's call, then the pack's in one launch"
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("args, message", [
    (lambda: qkv(5)[:1] + [torch.zeros(B, 5, 3, 12)] * 4, "k1 must be"),  # 3 kv heads for 2 query heads
    (lambda: qkv(5)[:4] + [torch.zeros(B, 5, H, 9)], "v2 must be"),
    (lambda: qkv(5, dim=8) + ["determinant"], "multiple of 3"),
    (lambda: qkv(5) + ["quadrilinear"], "score"),
])
def test_the_op_names_a_misshapen_input(args, message):
    from probe.ops import simplicial_attention
    inputs, score = args(), "trilinear"
    if isinstance(inputs[-1], str):
        inputs, score = inputs[:-1], inputs[-1]
    with pytest.raises(ValueError, match=message):
        simplicial_attention(*inputs, 4, 3, score)
