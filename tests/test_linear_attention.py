"""Linear attention family: the shared core's two forms agree, the feature maps are what their papers say, and
each variant keeps its defining property (what tests/test_mixers.py, generated from the registry, cannot know).
"""
import math

import pytest
import torch

from probe.mixers import MIXERS, state_numel
from probe.mixers.linear_attention import (
    GatedLinearAttention,
    favor_plus_features,
    linear_attention_chunked,
    linear_attention_recurrent,
    orthogonal_gaussian_features,
    rotate,
    taylor_attention_quadratic,
    taylor_feature_map,
)

FAMILY = ["performer", "based", "retnet", "gla"]
B, H, DK, DV = 2, 3, 5, 7


def qkv(length, positive=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, length, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, length, DV, generator=g, dtype=torch.float64)
    if positive:  # feature maps of normalised variants are positive, so the denominator is
        q, k = q.exp() / 4, k.exp() / 4
    return q, k, v


def log_decay(kind, length, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "per_head":
        return -torch.rand(H, generator=g, dtype=torch.float64)
    return -2 * torch.rand(B, H, length, generator=g, dtype=torch.float64)  # per step, decays down to e^-2


def quadratic_form(q, k, v, g, normalize):
    """The definition written out: o_i = Σ_{j≤i} (Π_{j<s≤i} a_s) (q_i·k_j) v_j, optionally over its row sum."""
    L = q.shape[2]
    b = torch.zeros(B, H, L, dtype=q.dtype) if g is None else g.expand(B, H, L) if g.dim() == 3 else \
        g[None, :, None].expand(B, H, L)
    b = b.cumsum(-1)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    weights = (q @ k.transpose(-1, -2)) * torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, -math.inf))
    o = weights @ v
    return o / weights.sum(-1, keepdim=True) if normalize else o


# --- the shared core ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
@pytest.mark.parametrize("decay", ["none", "per_head", "per_step"])
@pytest.mark.parametrize("chunk", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("length", [1, 63, 100], ids=lambda n: f"L{n}")
def test_chunked_form_equals_recurrent_form(length, chunk, decay, normalize):
    q, k, v = qkv(length, positive=normalize)
    g = log_decay(decay, length)
    o_chunked, S_chunked = linear_attention_chunked(q, k, v, g, chunk, normalize=normalize, output_final_state=True)
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
    torch.testing.assert_close(linear_attention_chunked(q, k, v, g, 16, normalize=normalize, eps=0.0), expected)


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
def test_chunked_form_resumes_from_a_state(normalize):
    q, k, v = qkv(100, positive=normalize)
    g = log_decay("per_step", 100)
    whole = linear_attention_chunked(q, k, v, g, 16, normalize=normalize)
    first, S = linear_attention_chunked(q[:, :, :41], k[:, :, :41], v[:, :, :41], g[..., :41], 16,
                                        normalize=normalize, output_final_state=True)
    rest = linear_attention_chunked(q[:, :, 41:], k[:, :, 41:], v[:, :, 41:], g[..., 41:], 16,
                                    normalize=normalize, initial_state=S)
    torch.testing.assert_close(torch.cat([first, rest], dim=2), whole)


def test_zero_log_decay_is_no_decay():
    q, k, v = qkv(50)
    torch.testing.assert_close(linear_attention_chunked(q, k, v, torch.zeros(B, H, 50, dtype=torch.float64)),
                               linear_attention_chunked(q, k, v, None))


def test_core_accumulates_in_float32_under_bf16_autocast():
    q, k, v = (t.to(torch.bfloat16) for t in qkv(100))
    g = log_decay("per_step", 100).float()
    plain, S = linear_attention_chunked(q, k, v, g, 16, output_final_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = linear_attention_chunked(q, k, v, g, 16)
    assert plain.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert torch.equal(plain, autocast), "autocast reached the core's matmuls"
    exact = linear_attention_chunked(q.double(), k.double(), v.double(), g.double(), 16)
    torch.testing.assert_close(plain.double(), exact, rtol=1e-2, atol=1e-2)


# --- feature maps -------------------------------------------------------------------------------------------------

def test_taylor_features_give_exactly_one_plus_s_plus_half_s_squared():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 100, 16, generator=g, dtype=torch.float64)
    phi_q, phi_k = taylor_feature_map(q), taylor_feature_map(k)
    assert phi_q.shape == (100, 1 + 16 + 16**2)
    s = (q * k).sum(-1) / math.sqrt(16)
    torch.testing.assert_close((phi_q * phi_k).sum(-1), 1 + s + s**2 / 2)


@pytest.mark.parametrize("length", [1, 63, 100])
def test_taylor_quadratic_form_equals_the_chunked_form_on_its_features(length):
    g = torch.Generator().manual_seed(length)
    q, k = (torch.randn(B, H, length, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, length, DV, generator=g, dtype=torch.float64)
    quadratic = taylor_attention_quadratic(q, k, v)
    chunked = linear_attention_chunked(taylor_feature_map(q), taylor_feature_map(k), v, None, 16, normalize=True)
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


def test_gla_with_decay_one_is_unnormalised_linear_attention():
    torch.manual_seed(0)
    gla = MIXERS["gla"].build(32).double()
    with torch.no_grad():
        gla.A_log.fill_(-math.inf)  # A = 0, so a_t = exp(-dt·0) = 1 at every step
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    q, k, v, g = gla._qkv(x)
    assert torch.equal(g, torch.zeros_like(g))
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    o = ((q @ k.transpose(-1, -2)).masked_fill(~causal, 0) @ v).transpose(1, 2)  # [B, L, H, Dv]
    torch.testing.assert_close(gla(x), gla._readout(o, x))


def test_gla_decay_depends_on_the_input_and_lies_in_0_1():
    torch.manual_seed(0)
    gla = MIXERS["gla"].build(32).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    a = gla._qkv(x)[3].exp()  # [B, H, L]
    assert ((a > 0) & (a < 1)).all()
    assert a.std(-1).min() > 0, "the decay does not change along the sequence"


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
    ("based", 4 * (1 + 16 + 16**2) * (16 + 1)),      # n_heads·(1+d'+d'²)·(head_dim+1)
    ("retnet", 4 * 16 * 2 * 16),                     # n_heads·head_dim·expand_v·head_dim
    ("gla", 4 * 16 * 16),                            # n_heads·d_state·head_dim
])
def test_state_size_at_d_model_64(name, expected):
    mixer = MIXERS[name].build(64)
    assert mixer.state_size(1) == mixer.state_size(4096) == expected


def test_state_size_follows_its_knobs():
    assert MIXERS["based"].build(64, feature_dim=8).state_size(10) == 4 * (1 + 8 + 64) * 17
    assert MIXERS["performer"].build(64, n_heads=2, n_features=16).state_size(10) == 2 * 16 * 33
    assert MIXERS["gla"].build(64, d_state=4).state_size(10) == 4 * 4 * 16
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
    ("gla", {"d_state": 0}, "d_state"),
    ("gla", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
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


def test_gla_without_output_gate_has_no_gate_weights():
    gla = GatedLinearAttention(32, output_gate=False)
    assert gla.g_proj is None
    assert gla(torch.randn(1, 5, 32)).shape == (1, 5, 32)
