"""Linear attention family: the shared core's two forms agree, the feature maps are what their papers say, and
each variant keeps its defining property (what tests/test_mixers.py, generated from the registry, cannot know).
"""
import importlib
import math
import os

import pytest
import torch

from probe import ops
from probe.mixers import MIXERS, state_numel
from probe.mixers.linear_attention import (
    GatedLinearAttention,
    ScalarGatedLinearAttention,
    favor_plus_features,
    linear_attention,
    linear_attention_recurrent,
    orthogonal_gaussian_features,
    rotate,
    taylor_feature_map,
)

FAMILY = ["performer", "based", "retnet", "gla", "gla_scalar"]
B, H, DK, DV = 2, 3, 5, 7


def qkv(length, positive=False, seed=0):
    """q, k: [B, L, H, DK], v: [B, L, H, DV] (token-major, as the mixers produce them)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, length, H, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, length, H, DV, generator=g, dtype=torch.float64)
    if positive:  # feature maps of normalised variants are positive, so the denominator is
        q, k = q.exp() / 4, k.exp() / 4
    return q, k, v


def log_decay(kind, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "per_head":
        return -torch.rand(H, generator=g, dtype=torch.float64)
    return -2 * torch.rand(B, length, H, generator=g, dtype=torch.float64)  # per step, decays down to e^-2


def quadratic_form(q, k, v, g, normalize):
    """The definition written out: o_i = Σ_{j≤i} (Π_{j<s≤i} a_s) (q_i·k_j) v_j, optionally over its row sum."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, ·]
    L = q.shape[2]
    b = torch.zeros(B, H, L, dtype=q.dtype) if g is None else g.transpose(1, 2) if g.dim() == 3 else \
        g[None, :, None].expand(B, H, L)
    b = b.cumsum(-1)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    weights = (q @ k.transpose(-1, -2)) * torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, -math.inf))
    o = weights @ v
    return (o / weights.sum(-1, keepdim=True) if normalize else o).transpose(1, 2)


# --- the shared core ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
@pytest.mark.parametrize("decay", ["none", "per_head", "per_step"])
@pytest.mark.parametrize("length", [1, 63, 100], ids=lambda n: f"L{n}")
def test_chunked_form_equals_recurrent_form(length, decay, normalize):
    q, k, v = qkv(length, positive=normalize)
    g = log_decay(decay, length)
    o_chunked, S_chunked = linear_attention(q, k, v, g, normalize=normalize, output_final_state=True)
    o_rec, S_rec = linear_attention_recurrent(q, k, v, g, normalize=normalize, output_final_state=True)
    torch.testing.assert_close(o_chunked, o_rec, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(S_chunked, S_rec, rtol=1e-9, atol=1e-10)
    assert S_chunked.shape == (B, H, DK, DV + normalize)


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
@pytest.mark.parametrize("decay", ["none", "per_head", "per_step"])
def test_chunked_form_equals_the_quadratic_definition(decay, normalize):
    q, k, v = qkv(37, positive=normalize)
    g = log_decay(decay, 37)
    expected = quadratic_form(q, k, v, g, normalize)
    torch.testing.assert_close(linear_attention(q, k, v, g, normalize=normalize, eps=0.0), expected)


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
def test_chunked_form_resumes_from_a_state(normalize):
    q, k, v = qkv(100, positive=normalize)
    g = log_decay("per_step", 100)
    whole = linear_attention(q, k, v, g, normalize=normalize)
    first, S = linear_attention(q[:, :41], k[:, :41], v[:, :41], g[:, :41], normalize=normalize,
                                output_final_state=True)
    rest = linear_attention(q[:, 41:], k[:, 41:], v[:, 41:], g[:, 41:], normalize=normalize, initial_state=S)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole)


def test_zero_log_decay_is_no_decay():
    q, k, v = qkv(50)
    torch.testing.assert_close(linear_attention(q, k, v, torch.zeros(B, 50, H, dtype=torch.float64)),
                               linear_attention(q, k, v, None))


def test_core_accumulates_in_float32_under_bf16_autocast():
    q, k, v = (t.to(torch.bfloat16) for t in qkv(100))
    g = log_decay("per_step", 100).float()
    plain, S = linear_attention(q, k, v, g, output_final_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = linear_attention(q, k, v, g)
    assert plain.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert torch.equal(plain, autocast), "autocast reached the core's matmuls"
    exact = linear_attention(q.double(), k.double(), v.double(), g.double())
    torch.testing.assert_close(plain.double(), exact, rtol=1e-2, atol=1e-2)


# --- GLA's chunked form (a gate per key dimension) ---------------------------------------------------------------

def key_gates(length, low=-2.0, seed=1):
    """log α: [B, length, H, DK], uniform in [low, 0]."""
    g = torch.Generator().manual_seed(seed)
    return low * torch.rand(B, length, H, DK, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("chunk", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("length", [1, 63, 100], ids=lambda n: f"L{n}")
def test_gla_chunked_form_equals_recurrent_form(length, chunk):
    q, k, v = qkv(length)
    g = key_gates(length)
    S0 = torch.randn(B, H, DK, DV, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for initial in (None, S0):
        o_chunked, S_chunked = ops.gla_ref(q, k, v, g, initial, output_final_state=True, chunk=chunk)
        o_rec, S_rec = linear_attention_recurrent(q, k, v, g, initial_state=initial, output_final_state=True)
        torch.testing.assert_close(o_chunked, o_rec, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(S_chunked, S_rec, rtol=1e-9, atol=1e-10)
        assert S_chunked.shape == (B, H, DK, DV)


def test_gla_tiny_case_by_hand():
    # One head, d_k = 2, d_v = 1, two steps:
    #   S_1 = k_1ᵀ v_1 = [1, 2]ᵀ·3 = [3, 6]ᵀ                         o_1 = q_1·S_1 = [1, 1]·[3, 6] = 9
    #   S_2 = diag(1/2, 1/4) S_1 + k_2ᵀ v_2 = [1.5 + 1, 1.5 + 0]ᵀ   o_2 = q_2·S_2 = [2, 4]·[2.5, 1.5] = 11
    # (α_1 multiplies the zero initial state, so its value cannot matter.)
    q = torch.tensor([[1.0, 1.0], [2.0, 4.0]], dtype=torch.float64)[None, :, None]  # [B, L, H, Dk] = [1, 2, 1, 2]
    k = torch.tensor([[1.0, 2.0], [1.0, 0.0]], dtype=torch.float64)[None, :, None]
    v = torch.tensor([[3.0], [1.0]], dtype=torch.float64)[None, :, None]  # [1, 2, 1, 1]
    alpha = torch.tensor([[0.9, 0.1], [0.5, 0.25]], dtype=torch.float64)[None, :, None]
    expected_o = torch.tensor([9.0, 11.0], dtype=torch.float64)[None, :, None, None]
    expected_S = torch.tensor([[2.5], [1.5]], dtype=torch.float64)[None, None]
    for chunk in (1, 2):
        o, S = ops.gla_ref(q, k, v, alpha.log(), output_final_state=True, chunk=chunk)
        torch.testing.assert_close(o, expected_o)
        torch.testing.assert_close(S, expected_S)
    o, S = linear_attention_recurrent(q, k, v, alpha.log(), output_final_state=True)
    torch.testing.assert_close(o, expected_o)
    torch.testing.assert_close(S, expected_S)


def test_gla_chunked_form_is_finite_where_gates_would_overflow_a_factorised_form():
    # log α down to -20 per step sums far below -88 within a chunk of 64: e^{-b} overflows float32 there, while
    # exponents taken relative to the chunk start stay ≤ 0.
    q, k, v = (t.float() for t in qkv(100))
    g = key_gates(100, low=-20.0).float()
    g.requires_grad_(True)
    o = ops.gla_ref(q, k, v, g, chunk=64)
    (grad,) = torch.autograd.grad(o.square().sum(), g)
    assert torch.isfinite(o).all() and torch.isfinite(grad).all()
    exact = linear_attention_recurrent(q.double(), k.double(), v.double(), g.detach().double())
    # float32 cumulative sums reach |b| ≈ 10³ here: each exponent carries ~|b|·2⁻²⁴ ≈ 10⁻⁴ absolute error
    torch.testing.assert_close(o.double(), exact, rtol=2e-3, atol=1e-4)


def test_gla_chunked_form_accumulates_in_float32_under_bf16_autocast():
    q, k, v = (t.to(torch.bfloat16) for t in qkv(100))
    g = key_gates(100).float()
    plain, S = ops.gla_ref(q, k, v, g, output_final_state=True, chunk=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = ops.gla_ref(q, k, v, g, chunk=16)
    assert plain.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert torch.equal(plain, autocast), "autocast reached the core's matmuls"


def test_gla_with_a_gate_tied_across_key_dimensions_is_the_scalar_decay_form():
    q, k, v = qkv(50)
    g = log_decay("per_step", 50)  # [B, L, H]
    tied = g[..., None].expand(B, 50, H, DK)
    torch.testing.assert_close(ops.gla_ref(q, k, v, tied, chunk=16), linear_attention(q, k, v, g))


# --- feature maps -------------------------------------------------------------------------------------------------

def test_taylor_features_give_exactly_one_plus_s_plus_half_s_squared():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 100, 16, generator=g, dtype=torch.float64)
    phi_q, phi_k = taylor_feature_map(q), taylor_feature_map(k)
    assert phi_q.shape == (100, 1 + 16 + 16 * 17 // 2)  # 153: the upper triangle of x ⊗ x, not all 256
    s = (q * k).sum(-1) / math.sqrt(16)
    torch.testing.assert_close((phi_q * phi_k).sum(-1), 1 + s + s**2 / 2)


def test_taylor_features_by_hand():
    # d' = 2, so √d' = √2, d'^{1/4} = 2^{1/4} and the pairs (1,1), (1,2), (2,2) are scaled by 1/2, 1/√2, 1/2:
    #   φ(x) = [1, x_1/2^{1/4}, x_2/2^{1/4}, x_1²/2, x_1 x_2/√2, x_2²/2]
    # q = (1, 2), k = (3, -1): s = q·k/√2 = 1/√2, so φ(q)·φ(k) must be 1 + s + s²/2 = 5/4 + 1/√2.
    q = torch.tensor([1.0, 2.0], dtype=torch.float64)
    k = torch.tensor([3.0, -1.0], dtype=torch.float64)
    r2, r4 = math.sqrt(2), 2**0.25
    torch.testing.assert_close(taylor_feature_map(q), torch.tensor([1, 1 / r4, 2 / r4, 1 / 2, 2 / r2, 2],
                                                                   dtype=torch.float64))
    torch.testing.assert_close(taylor_feature_map(k), torch.tensor([1, 3 / r4, -1 / r4, 9 / 2, -3 / r2, 1 / 2],
                                                                   dtype=torch.float64))
    torch.testing.assert_close(taylor_feature_map(q) @ taylor_feature_map(k),
                               torch.tensor(1.25 + 1 / r2, dtype=torch.float64), rtol=1e-15, atol=1e-15)


def test_based_state_is_153_features_per_value_channel_at_feature_dim_16():
    based = MIXERS["based"].build(64, n_heads=4, feature_dim=16)  # head_dim 16
    state = based.init_state(2)
    # the paper's keys-values state, (1 + d' + d'(d'+1)/2)·head_dim per head, plus the normaliser z
    assert state["S"].shape == (2, 4, 153, 16) and state["z"].shape == (2, 4, 153)
    assert based.state_size(100) == 4 * (153 * 16 + 153) == state_numel(state, 2)


@pytest.mark.parametrize("length", [1, 63, 100])
def test_taylor_quadratic_form_equals_the_chunked_form_on_its_features(length):
    g = torch.Generator().manual_seed(length)
    q, k = (torch.randn(B, length, H, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, length, H, DV, generator=g, dtype=torch.float64)
    quadratic = ops.taylor_attention(q, k, v)  # float64: the reference on any device
    chunked = linear_attention(taylor_feature_map(q), taylor_feature_map(k), v, None, normalize=True)
    torch.testing.assert_close(quadratic, chunked, rtol=1e-9, atol=1e-10)


def test_based_gives_the_same_outputs_and_gradients_past_its_quadratic_length():
    torch.manual_seed(0)
    mixer = MIXERS["based"].build(16).double()
    x = torch.randn(2, 40, 16, dtype=torch.float64, requires_grad=True)
    quadratic = mixer(x)
    (gq,) = torch.autograd.grad(quadratic.square().sum(), x)
    mixer.quadratic_max_len = 39  # as if 40 were a long sequence: the chunked form
    chunked = mixer(x)
    (gc,) = torch.autograd.grad(chunked.square().sum(), x)
    torch.testing.assert_close(quadratic, chunked, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gq, gc, rtol=1e-9, atol=1e-10)


def test_taylor_features_approximate_exp_to_second_order():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 200, 16, generator=g, dtype=torch.float64) * 0.5
    s = (q * k).sum(-1) / 4
    small = s.abs() < 0.3
    error = ((taylor_feature_map(q) * taylor_feature_map(k)).sum(-1) - s.exp()).abs()
    # The remainder of a 2nd-order Taylor expansion: at most |s|³/6 · e^|s|.
    assert small.sum() > 50
    assert (error[small] <= s[small].abs() ** 3 / 6 * s[small].abs().exp() + 1e-12).all()


def test_performer_features_are_positive():
    torch.manual_seed(0)
    omega = orthogonal_gaussian_features(64, 8)
    x = torch.randn(4, 100, 8) * 2
    for is_query in (True, False):
        phi = favor_plus_features(x, omega, is_query)
        assert phi.shape == (4, 100, 64)
        assert (phi > 0).all()


def test_performer_query_features_stay_finite_for_huge_queries():
    # The per-query shift puts every query's largest feature at exactly 1/√m: no overflow, no all-zero row.
    torch.manual_seed(0)
    phi = favor_plus_features(torch.randn(4, 100, 8) * 100, orthogonal_gaussian_features(64, 8), is_query=True)
    assert torch.isfinite(phi).all() and (phi >= 0).all()
    torch.testing.assert_close(phi.amax(-1), torch.full((4, 100), 1 / 8.0))


def test_performer_features_estimate_the_softmax_kernel():
    g = torch.Generator().manual_seed(0)
    d = 8
    q, k = torch.randn(2, 16, d, generator=g, dtype=torch.float64) * 0.5
    estimate = torch.stack([
        (favor_plus_features(q, omega, False) * favor_plus_features(k, omega, False)).sum(-1)
        for omega in (orthogonal_gaussian_features(512, d, generator=g).double() for _ in range(16))
    ]).mean(0)
    torch.testing.assert_close(estimate, ((q * k).sum(-1) / math.sqrt(d)).exp(), rtol=0.05, atol=0)


def test_random_features_are_orthogonal_within_a_block():
    omega = orthogonal_gaussian_features(20, 8, generator=torch.Generator().manual_seed(0))
    for block in (omega[:8], omega[8:16], omega[16:]):
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(torch.diagonal(gram)), torch.zeros_like(gram), atol=1e-4, rtol=0)


def test_performer_features_are_fixed_at_init():
    torch.manual_seed(0)
    a = MIXERS["performer"].build(32)
    torch.manual_seed(0)
    b = MIXERS["performer"].build(32)
    assert "omega" in a.state_dict() and "omega" not in dict(a.named_parameters())
    assert torch.equal(a.omega, b.omega)
    x = torch.randn(2, 9, 32)
    assert torch.equal(a(x), a(x))


def test_performer_redraws_features_at_each_training_forward_when_asked():
    torch.manual_seed(0)
    fixed = MIXERS["performer"].build(32)
    torch.manual_seed(0)
    redrawn = MIXERS["performer"].build(32, redraw_features=True)  # the same weights and the same ω buffer
    x = torch.randn(2, 9, 32)
    first, second = redrawn(x), redrawn(x)
    assert not torch.allclose(first, second), "training forwards share one draw"
    assert not torch.allclose(first, fixed(x))
    torch.manual_seed(5)
    again = redrawn(x)
    torch.manual_seed(5)
    assert torch.equal(again, redrawn(x)), "the draw does not come from torch's RNG"
    assert torch.equal(redrawn.omega, fixed.omega), "a forward pass changed the buffer"
    redrawn.eval()
    assert torch.equal(redrawn(x), redrawn(x))
    torch.testing.assert_close(redrawn(x), fixed(x), rtol=0, atol=0)  # eval reads the ω drawn at init


def test_performer_with_redrawing_runs_under_vmap_each_member_drawing_its_own():
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(MIXERS["performer"].build(16, redraw_features=True))
    params, buffers = torch.func.stack_module_state(models)
    x = torch.randn(2, 20, 16)

    def run(p, b):
        return torch.func.functional_call(models[0], (p, b), (x,))

    for p in params.values():  # identical members: any difference between their outputs is the draw
        p.data.copy_(p[0].expand_as(p))
    y = torch.vmap(run, randomness="different")(params, buffers)
    assert y.shape == (3, 2, 20, 16) and torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])


# --- the variants -------------------------------------------------------------------------------------------------

def test_retnet_decays_per_head():
    retnet = MIXERS["retnet"].build(32, n_heads=4)
    gamma = retnet.log_gamma.double().exp()
    torch.testing.assert_close(gamma, torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8], dtype=torch.float64))


def test_retnet_rotation_makes_scores_depend_on_relative_position_only():
    retnet = MIXERS["retnet"].build(32)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=g, dtype=torch.float64)
    theta = retnet.theta.double()

    def score(n, m):
        return (rotate(q, (n * theta)[None]) * rotate(k, (m * theta)[None])).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103))
    torch.testing.assert_close(score(3, 7), score(1003, 1007))
    assert not torch.allclose(score(7, 3), score(7, 4))


def test_gla_scalar_with_decay_one_is_unnormalised_linear_attention():
    torch.manual_seed(0)
    gla = MIXERS["gla_scalar"].build(32).double()
    with torch.no_grad():
        gla.A_log.fill_(-math.inf)  # A = 0, so a_t = exp(-dt·0) = 1 at every step
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    q, k, v, g = (t.transpose(1, 2) for t in gla._qkv(x))  # [B, H, L, ·]
    assert torch.equal(g, torch.zeros_like(g))
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    o = ((q @ k.transpose(-1, -2)).masked_fill(~causal, 0) @ v).transpose(1, 2)  # [B, L, H, Dv]
    torch.testing.assert_close(gla(x), gla._readout(o, x))


@pytest.mark.parametrize("name", ["gla", "gla_scalar"])
def test_gla_decay_depends_on_the_input_and_lies_in_0_1(name):
    torch.manual_seed(0)
    gla = MIXERS[name].build(32).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    a = gla._qkv(x)[3].exp()  # [B, L, H] (gla_scalar) or [B, L, H, d_k] (gla)
    assert ((a > 0) & (a < 1)).all()
    assert a.std(1).min() > 0, "the decay does not change along the sequence"


def test_gla_gate_is_a_low_rank_sigmoid_to_the_power_one_over_16_per_key_dimension():
    torch.manual_seed(0)
    gla = MIXERS["gla"].build(32).double()  # 4 heads, d_k = 32/2/4 = 4
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    alpha = gla._qkv(x)[3].exp()  # [B, L, H, d_k]
    assert gla.gate_down.weight.shape == (16, 32) and gla.gate_up.weight.shape == (16, 16)
    logits = gla.gate_up(gla.gate_down(x)).reshape(2, 10, 4, 4)
    torch.testing.assert_close(alpha, torch.sigmoid(logits) ** (1 / 16))
    assert alpha.std(-1).min() > 0, "one gate shared by every key dimension"
    assert alpha.min() > 0.9, "τ = 16 should keep α near 1 at init"


def test_gla_with_gates_one_is_unnormalised_linear_attention():
    torch.manual_seed(0)
    gla = MIXERS["gla"].build(32).double()
    with torch.no_grad():
        gla.gate_up.bias.fill_(1e4)  # σ(10⁴) = 1 in float64: α_t = 1 at every step
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    q, k, v, g = (t.transpose(1, 2) for t in gla._qkv(x))  # [B, H, L, ·]
    assert torch.equal(g, torch.zeros_like(g))
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    o = ((q @ k.transpose(-1, -2)).masked_fill(~causal, 0) @ v).transpose(1, 2)  # [B, L, H, Dv]
    torch.testing.assert_close(gla(x), gla._readout(o, x))


@pytest.mark.parametrize("name", FAMILY)
def test_step_equals_forward_across_chunk_boundaries(name):
    torch.manual_seed(0)
    mixer = MIXERS[name].build(16).double()
    x = torch.randn(1, 70, 16, dtype=torch.float64)  # past one 64-step chunk
    state = mixer.init_state(1, dtype=x.dtype)
    ys = []
    for t in range(70):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x), rtol=1e-6, atol=1e-8)
    assert state_numel(state, 1) == mixer.state_size(70)


@pytest.mark.parametrize("name", FAMILY)
def test_mixer_under_bf16_autocast_stays_close_to_float32(name):
    torch.manual_seed(0)
    mixer = MIXERS[name].build(32)
    x = torch.randn(2, 100, 32)
    reference = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x)
    assert y.dtype == torch.bfloat16
    assert (y.float() - reference).norm() / reference.norm() < 0.03


@pytest.mark.parametrize("name, expected", [
    ("performer", 4 * 64 * (16 + 1)),                # n_heads·n_features·(head_dim+1)
    ("based", 4 * (1 + 16 + 16 * 17 // 2) * (16 + 1)),  # n_heads·(1+d'+d'(d'+1)/2)·(head_dim+1)
    ("retnet", 4 * 16 * 2 * 16),                     # n_heads·head_dim·expand_v·head_dim
    ("gla", 4 * 8 * 16),                             # n_heads·head_k_dim·head_v_dim, d_k = d/2 in all
    ("gla_scalar", 4 * 16 * 16),                     # n_heads·d_state·head_dim
])
def test_state_size_at_d_model_64(name, expected):
    mixer = MIXERS[name].build(64)
    assert mixer.state_size(1) == mixer.state_size(4096) == expected


def test_state_size_follows_its_knobs():
    assert MIXERS["based"].build(64, feature_dim=8).state_size(10) == 4 * (1 + 8 + 36) * 17
    assert MIXERS["performer"].build(64, n_heads=2, n_features=16).state_size(10) == 2 * 16 * 33
    assert MIXERS["gla_scalar"].build(64, d_state=4).state_size(10) == 4 * 4 * 16
    assert MIXERS["gla"].build(64, n_heads=2, expand_k=1.0, expand_v=2.0).state_size(10) == 2 * 32 * 64
    assert MIXERS["retnet"].build(64, expand_v=1).state_size(10) == 4 * 16 * 16


@pytest.mark.parametrize("name, kwargs, argument", [
    ("performer", {"n_heads": 3}, "n_heads"),
    ("performer", {"n_features": 0}, "n_features"),
    ("based", {"n_heads": 5}, "n_heads"),
    ("based", {"feature_dim": 0}, "feature_dim"),
    ("retnet", {"n_heads": 0}, "n_heads"),
    ("retnet", {"n_heads": 32}, "n_heads"),  # head_dim 1 cannot be rotated
    ("retnet", {"expand_v": 0}, "expand_v"),
    ("gla", {"n_heads": 7}, "n_heads"),
    ("gla", {"expand_k": 0.3}, "expand_k"),   # 9.6 channels
    ("gla", {"n_heads": 32, "expand_k": 0.5}, "expand_k"),  # 16 key channels for 32 heads
    ("gla", {"expand_v": 0.0}, "expand_v"),
    ("gla", {"gate_low_rank_dim": 0}, "gate_low_rank_dim"),
    ("gla", {"gate_logit_normalizer": 0.0}, "gate_logit_normalizer"),
    ("gla_scalar", {"n_heads": 7}, "n_heads"),
    ("gla_scalar", {"d_state": 0}, "d_state"),
    ("gla_scalar", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
])
def test_bad_kwargs_raise_value_error_naming_the_argument(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        MIXERS[name].build(32, **kwargs)


@pytest.mark.parametrize("name", FAMILY)
def test_stacked_models_run_under_vmap(name):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(MIXERS[name].build(16))
    params, buffers = torch.func.stack_module_state(models)
    x = torch.randn(3, 2, 20, 16)

    def run(p, b, x):
        return torch.func.functional_call(models[0], (p, b), (x,))

    stacked = torch.vmap(run)(params, buffers, x)
    for i, model in enumerate(models):
        torch.testing.assert_close(stacked[i], model(x[i]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [GatedLinearAttention, ScalarGatedLinearAttention])
def test_gla_without_output_gate_has_no_gate_weights(cls):
    gla = cls(32, output_gate=False)
    assert gla.g_proj is None
    assert gla(torch.randn(1, 5, 32)).shape == (1, 5, 32)


@pytest.mark.skipif(torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET"),
                    reason="CPU tensors reach a kernel only through Triton's interpreter (tests/test_gpu.py covers CUDA)")
@pytest.mark.parametrize("name", ["performer", "based", "retnet", "gla", "gla_scalar"])
def test_mixer_through_the_kernel_matches_the_reference(name, monkeypatch, poisoned):
    # the op's Triton kernel (on a CPU through Triton's interpreter) against its reference, inside the mixer
    op = "gla" if name == "gla" else "linear_attention"  # gla's gate per key dimension has an op of its own
    kernel = importlib.import_module(f"probe.ops.{op}.kernel")  # the op's name hides its package
    torch.manual_seed(0)
    mixer = MIXERS[name].build(16)
    if name == "based":
        mixer.quadratic_max_len = 0  # the linear form, which runs the op, at any length
    x = torch.randn(2, 70, 16, requires_grad=True)  # past one 64-step chunk
    wrt = [x, *mixer.parameters()]
    monkeypatch.setenv("PROBE_OPS", "ref")
    expected = mixer(x)
    grads_ref = torch.autograd.grad(expected.square().sum(), wrt, allow_unused=True)
    launches = []
    original = getattr(kernel, f"{op}_kernel")
    monkeypatch.setattr(kernel, f"{op}_kernel", lambda *a: launches.append(1) or original(*a))
    monkeypatch.setenv("PROBE_OPS", "triton")
    y = mixer(x)
    grads = torch.autograd.grad(y.square().sum(), wrt, allow_unused=True)
    assert launches, "the mixer did not reach the kernel"
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        if g_ref is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET"),
                    reason="CPU tensors reach a kernel only through Triton's interpreter (tests/test_gpu.py covers CUDA)")
def test_based_quadratic_form_through_the_kernel_matches_the_reference(monkeypatch, poisoned):
    # at L ≤ quadratic_max_len Based runs the op probe.ops.taylor_attention: its kernel against its reference
    kernel = importlib.import_module("probe.ops.taylor_attention.kernel")
    torch.manual_seed(0)
    mixer = MIXERS["based"].build(16)
    x = torch.randn(2, 70, 16, requires_grad=True)  # past one 64-position block
    wrt = [x, *mixer.parameters()]
    monkeypatch.setenv("PROBE_OPS", "ref")
    expected = mixer(x)
    grads_ref = torch.autograd.grad(expected.square().sum(), wrt)
    launches = []
    original = kernel.taylor_attention_kernel
    monkeypatch.setattr(kernel, "taylor_attention_kernel", lambda *a: launches.append(1) or original(*a))
    monkeypatch.setenv("PROBE_OPS", "triton")
    y = mixer(x)
    grads = torch.autograd.grad(y.square().sum(), wrt)
    assert launches, "the mixer did not reach the kernel"
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5)
