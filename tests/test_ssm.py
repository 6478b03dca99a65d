"""State space models: the core ops against independent forms, and what each block promises beyond the contract.

Specification: the selective scan equals its closed form; SSD (through the linear-attention op) equals its
recurrence on awkward lengths, equals the selective scan when heads have one channel, and gives the same
outputs and gradients through the op's kernel as through its reference; the FFT convolution is a
causal convolution; S4D's Vandermonde kernel is its recurrence's impulse response; H3's shift SSM shifts;
initialisations are the papers'; state sizes match the formulas; bad arguments are refused by name.
"""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from probe.mixers import ssm
from probe.mixers.base import state_numel
from probe.ops import long_conv_ref, selective_scan_ref
from mixer_helpers import randn

f64 = torch.float64


# --- selective scan (Mamba) -------------------------------------------------------------------------------------


def scan_cm(u, delta, A, B, C, D=None):
    """probe.ops' selective-scan reference (token-major) in the channel-major layout [B, D, L] these tests write."""
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    return t(selective_scan_ref(t(u), t(delta), A, t(B), t(C), D))


def test_selective_scan_by_hand_on_three_steps():
    # one channel, one state: h_t = e^{Δ_t a} h_{t-1} + Δ_t u_t b_t, y_t = c_t h_t + d u_t
    u, delta = torch.tensor([[[1.0, 2.0, -1.0]]], dtype=f64), torch.tensor([[[0.5, 1.0, 2.0]]], dtype=f64)
    A, D = torch.tensor([[-1.0]], dtype=f64), torch.tensor([0.5], dtype=f64)
    B, C = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=f64), torch.tensor([[[2.0, 1.0, -1.0]]], dtype=f64)
    h0 = 0.5 * 1 * 1
    h1 = math.exp(-1.0) * h0 + 1.0 * 2 * 2
    h2 = math.exp(-2.0) * h1 + 2.0 * -1 * 3
    expected = torch.tensor([[[2 * h0 + 0.5, 1 * h1 + 1.0, -1 * h2 - 0.5]]], dtype=f64)
    torch.testing.assert_close(scan_cm(u, delta, A, B, C, D), expected)


def test_selective_scan_equals_cumulative_decay_closed_form():
    b, d, n, L = 2, 3, 4, 9
    u, delta = randn(b, d, L, seed=1), F.softplus(randn(b, d, L, seed=2))
    A, B, C, D = -torch.rand(d, n, dtype=f64), randn(b, n, L, seed=3), randn(b, n, L, seed=4), randn(d, seed=5)
    # y_t = Σ_{s<=t} exp(A·(S_t − S_s)) Δ_s u_s B_s C_t + D u_t, with S_t = Δ_1 + ... + Δ_t
    S = delta.cumsum(-1)  # [b, d, L]
    gap = S.unsqueeze(-1) - S.unsqueeze(-2)  # [b, d, t, s]
    decay = torch.exp(gap.unsqueeze(-1) * A[:, None, None, :])  # [b, d, t, s, n]
    decay = decay * torch.ones(L, L, dtype=torch.bool).tril()[..., None]
    y = torch.einsum("bdtsn,bds,bns,bnt->bdt", decay, delta * u, B, C) + D[:, None] * u
    torch.testing.assert_close(scan_cm(u, delta, A, B, C, D), y)


def test_selective_scan_accumulates_bf16_inputs_in_float32():
    b, d, n, L = 1, 4, 8, 64
    args = [randn(b, d, L, seed=1), F.softplus(randn(b, d, L, seed=2)) * 0.05, -torch.rand(d, n, dtype=f64) * 0.1,
            randn(b, n, L, seed=3), randn(b, n, L, seed=4)]
    low = [t.to(torch.bfloat16) for t in args]
    y = scan_cm(*low)
    assert y.dtype == torch.bfloat16
    exact = scan_cm(*[t.to(f64) for t in low])  # same rounded inputs, float64 accumulation
    torch.testing.assert_close(y.to(f64), exact, rtol=1e-2, atol=1e-2)


# --- SSD (Mamba-2) ------------------------------------------------------------------------------------------------


def ssd_inputs(L, heads=4, head_dim=3, groups=2, d_state=5, seed=0):
    x = randn(2, L, heads, head_dim, seed=seed)
    dt = F.softplus(randn(2, L, heads, seed=seed + 1))
    A = -torch.rand(heads, dtype=f64, generator=torch.Generator().manual_seed(seed)) * 2
    B, C = randn(2, L, groups, d_state, seed=seed + 2), randn(2, L, groups, d_state, seed=seed + 3)
    return x, dt, A, B, C


@pytest.mark.parametrize("L", [1, 63, 100], ids=lambda n: f"L{n}")
def test_ssd_equals_recurrent(L):
    args = ssd_inputs(L)
    torch.testing.assert_close(ssm.ssd(*args), ssm.ssd_recurrent(*args))


def test_ssd_with_one_channel_heads_is_the_selective_scan_with_scalar_decay():
    heads, n, L = 3, 4, 10
    x, dt, A, B, C = ssd_inputs(L, heads=heads, head_dim=1, groups=1, d_state=n)
    y = ssm.ssd_recurrent(x, dt, A, B, C)[..., 0]  # [b, L, H]
    y_scan = scan_cm(x[..., 0].transpose(1, 2), dt.transpose(1, 2), A[:, None].expand(heads, n),
                                    B[:, :, 0].transpose(1, 2), C[:, :, 0].transpose(1, 2))
    torch.testing.assert_close(y, y_scan.transpose(1, 2))


def test_mamba2_through_the_kernel_matches_the_reference(monkeypatch, poisoned):
    # SSD's op through its Triton kernel (on a CPU through Triton's interpreter) against its reference
    kernel = importlib.import_module("probe.ops.linear_attention.kernel")  # the op's name hides its package
    torch.manual_seed(0)
    mixer = ssm.Mamba2(16, d_state=8, head_dim=4, ngroups=2)
    x = torch.randn(2, 70, 16, requires_grad=True)
    wrt = [x, *mixer.parameters()]
    monkeypatch.setenv("PROBE_OPS", "ref")
    expected = mixer(x)
    grads_ref = torch.autograd.grad(expected.square().sum(), wrt)
    launches = []
    original = kernel.linear_attention_kernel
    monkeypatch.setattr(kernel, "linear_attention_kernel", lambda *a: launches.append(1) or original(*a))
    monkeypatch.setenv("PROBE_OPS", "triton")
    y = mixer(x)
    grads = torch.autograd.grad(y.square().sum(), wrt)
    assert launches, "Mamba-2 did not reach the kernel"
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-5)


def test_mamba2_step_equals_forward_across_chunk_boundaries_with_groups():
    torch.manual_seed(0)
    mixer = ssm.Mamba2(16, d_state=8, head_dim=4, ngroups=2).double()
    x = randn(2, 70, 16)  # past the op's 64-step chunk
    state = mixer.init_state(2, dtype=f64)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x))
    assert state_numel(state, 2) == mixer.cache_size(11)


def test_gated_rms_norm_gives_each_group_unit_rms_before_the_weight():
    y, z = randn(3, 5, 12, seed=1), randn(3, 5, 12, seed=2)
    y = y * torch.tensor([1.0] * 6 + [50.0] * 6, dtype=f64)  # the groups' scales differ by 50x
    weight = torch.linspace(0.5, 2.0, 12, dtype=f64)
    out = ssm.gated_rms_norm(y, z, weight, ngroups=2, eps=0.0) / weight  # [3, 5, 12]
    for half in (out[..., :6], out[..., 6:]):
        torch.testing.assert_close(half.square().mean(-1), torch.ones(3, 5, dtype=f64))
    # one group is RMSNorm over all of d_inner: only the whole vector has unit RMS
    whole = ssm.gated_rms_norm(y, z, weight, eps=0.0) / weight
    torch.testing.assert_close(whole.square().mean(-1), torch.ones(3, 5, dtype=f64))
    assert not torch.allclose(whole[..., :6].square().mean(-1), torch.ones(3, 5, dtype=f64))


def test_mamba2_with_two_groups_normalises_each_group_of_heads_separately():
    torch.manual_seed(0)
    mixer = ssm.Mamba2(8, d_state=4, head_dim=4, ngroups=2).double()  # d_inner 16: 4 heads, 2 per group
    seen = {}
    mixer.out_proj.register_forward_hook(lambda module, args, out: seen.setdefault("normed", args[0]))
    with torch.no_grad():
        mixer.norm_weight.copy_(torch.linspace(0.5, 2.0, 16))
        mixer.D.copy_(torch.tensor([1e3, 1e3, 1e2, 1e2]))  # the groups differ ~10x, both far above eps
    mixer(randn(2, 7, 8))
    normed = seen["normed"] / mixer.norm_weight.detach()  # [2, 7, 16], RMSNorm'd before the weight
    for group in normed.split(8, dim=-1):
        torch.testing.assert_close(group.square().mean(-1), torch.ones(2, 7, dtype=f64), rtol=1e-5, atol=1e-5)


# --- S4D ----------------------------------------------------------------------------------------------------------


def test_s4d_kernel_is_the_recurrence_impulse_response():
    torch.manual_seed(0)
    diag = ssm.DiagonalSSM(channels=3, d_state=8, dt_min=1e-2, dt_max=0.5).double()
    L = 20
    h = torch.zeros(1, 3, 4, 2, dtype=f64)
    response = []
    for t in range(L):
        impulse = torch.full((1, 3), 1.0 if t == 0 else 0.0, dtype=f64)
        y, h = diag.step(h, impulse)
        response.append(y[0])
    torch.testing.assert_close(diag.kernel(L, f64), torch.stack(response, -1))


def test_s4d_uses_s4d_lin_initialisation_and_dt_range():
    mixer = ssm.S4D(8, d_state=6, dt_min=1e-3, dt_max=1e-1)
    A_real = -torch.exp(mixer.ssm.log_A_real)
    torch.testing.assert_close(A_real, torch.full((8, 3), -0.5))
    torch.testing.assert_close(mixer.ssm.A_imag, math.pi * torch.arange(3.0).expand(8, 3))
    dt = torch.exp(mixer.ssm.log_dt)
    assert ((dt >= 1e-3) & (dt <= 1e-1)).all()


def test_s4d_is_time_invariant():
    # a time-invariant convolution: delaying the input by 3 delays the SSM output by 3
    torch.manual_seed(0)
    mixer = ssm.S4D(4, d_state=8).double()
    u = randn(1, 12, 4)
    delayed = F.pad(u, (0, 0, 3, 0))[:, :12]
    torch.testing.assert_close(mixer(delayed)[:, 3:], mixer(u)[:, :9])


# --- H3 -----------------------------------------------------------------------------------------------------------


def test_h3_shift_ssm_moves_an_impulse_one_position_per_step():
    mixer = ssm.H3(4, d_state=6).double()
    with torch.no_grad():  # make K = u so the impulse enters the shift register unchanged
        mixer.k_proj.weight.copy_(torch.eye(4))
        mixer.k_proj.bias.zero_()
    state = mixer.init_state(1, dtype=f64)
    for t in range(8):
        u_t = torch.tensor([[1.0, 0, 0, 0]] if t == 0 else [[0.0, 0, 0, 0]], dtype=f64)
        _, state = mixer.step(u_t, state)
        expected = torch.zeros(1, 4, 6, dtype=f64)
        if t < 6:  # the register holds the last d_state keys; after that the impulse falls off
            expected[0, 0, t] = 1.0
        torch.testing.assert_close(state["shift"], expected)


def test_h3_shift_kernel_is_the_learned_filter():
    mixer = ssm.H3(4, d_state=6).double()
    k = torch.zeros(1, 10, 4, dtype=f64)
    k[:, 2] = 1.0  # an impulse at position 2 comes out as the taps starting at 2
    out = long_conv_ref(k, mixer._shift_kernel(10)).transpose(1, 2)
    expected = F.pad(mixer.shift_C.detach(), (2, 10 - 2 - mixer.d_state)).unsqueeze(0)
    torch.testing.assert_close(out, expected)


def test_multi_head_h3_step_equals_forward():
    torch.manual_seed(0)
    mixer = ssm.H3(8, d_state=4, n_heads=2).double()
    x = randn(2, 9, 8)
    state = mixer.init_state(2, dtype=f64)
    ys = []
    for t in range(9):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x))
    assert state_numel(state, 2) == mixer.cache_size(9) == 8 * 4 * (1 + 4)


def test_single_head_h3_mixes_channels_through_the_kv_outer_product():
    # with head_dim = d_model the output channel j reads every key channel i (Q_i·KV_ij); with head_dim 1 it
    # cannot: perturbing only k's channel 0 leaves the pre-projection output channel 1 unchanged
    torch.manual_seed(0)
    for n_heads, mixes in [(1, True), (None, False)]:
        mixer = ssm.H3(4, d_state=4, n_heads=n_heads).double()
        with torch.no_grad():
            mixer.out_proj.weight.copy_(torch.eye(4))
            mixer.k_proj.weight.copy_(torch.eye(4))
        u = randn(1, 5, 4)
        u2 = u.clone()
        u2[..., 0] += 1.0
        with torch.no_grad():  # q and v ignore the input channel 0 so only the key changes
            for proj in (mixer.q_proj, mixer.v_proj):
                proj.weight[:, 0] = 0
        changed = not torch.allclose(mixer(u)[..., 1], mixer(u2)[..., 1])
        assert changed == mixes, f"n_heads={n_heads}"


# --- initialisation, state sizes, arguments -----------------------------------------------------------------------


def test_mamba_initialisation_follows_the_paper():
    mixer = ssm.Mamba(32, d_state=16, dt_min=1e-3, dt_max=0.1)
    # S4D-real: A[n] = −(n + 1) for every channel
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 17).expand(64, 16))
    dt = F.softplus(mixer.dt_proj.bias)  # inverse softplus of dt, so softplus(bias) = dt
    assert ((dt >= 1e-3 * (1 - 1e-4)) & (dt <= 0.1 * (1 + 1e-4))).all()
    assert mixer.dt_rank == 2  # "auto": ceil(32 / 16)


@pytest.mark.parametrize(
    "cls, kwargs, expected, cache",
    [
        (ssm.Mamba, {}, 64 * 16, 64 * (16 + 4 - 1)),  # d_inner·d_state = Zoology's 2·d_model·d_state; + conv taps
        (ssm.Mamba2, {}, 64 * 64, 64 * 64 + (64 + 2 * 64) * 3),  # + (d_inner + 2·G·N)·(d_conv − 1) conv taps
        (ssm.S4D, {}, 32 * 64, 32 * 64),  # d_model·d_state (32 complex modes, 2 reals each)
        (ssm.H3, {}, 32 * 64, 32 * 64 * 2),  # Zoology's d·N (head_dim 1); the cache adds the shift SSM's d·N
        (ssm.H3, {"n_heads": 2}, 32 * 64 * 16, 32 * 64 * 17),
    ],
    ids=["mamba", "mamba2", "s4d", "h3", "h3-2heads"],
)
def test_state_size_at_d_model_32(cls, kwargs, expected, cache):
    mixer = cls(32, **kwargs)
    assert mixer.state_size(1) == mixer.state_size(1000) == expected
    assert mixer.cache_size(1) == mixer.cache_size(1000) == cache
    state = mixer.init_state(1, dtype=torch.float32)
    assert state_numel(state, 1) == cache


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (ssm.Mamba, {"d_state": 0}, "d_state"),
        (ssm.Mamba, {"d_conv": 0}, "d_conv"),
        (ssm.Mamba, {"dt_rank": 0}, "dt_rank"),
        (ssm.Mamba, {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
        (ssm.Mamba2, {"head_dim": 5}, "head_dim"),
        (ssm.Mamba2, {"ngroups": 3}, "ngroups"),
        (ssm.S4D, {"d_state": 7}, "d_state"),
        (ssm.H3, {"n_heads": 3}, "n_heads"),
        (ssm.H3, {"d_state": 0}, "d_state"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_arguments_are_refused_by_name(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(32, **kwargs)


@pytest.mark.parametrize("cls", [ssm.Mamba, ssm.Mamba2, ssm.S4D, ssm.H3], ids=lambda c: c.__name__)
def test_bf16_autocast_forward_runs_and_stays_close_to_float32(cls):
    torch.manual_seed(0)
    mixer = cls(16)
    x = torch.randn(2, 12, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x)
    torch.testing.assert_close(y.float(), mixer(x), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("cls", [ssm.Mamba, ssm.Mamba2, ssm.S4D, ssm.H3], ids=lambda c: c.__name__)
def test_vmap_over_stacked_weights_equals_each_model(cls):
    models = [cls(8).double() for _ in range(2)]
    params, buffers = torch.func.stack_module_state(models)
    x = randn(2, 5, 8)

    def run(p, b):
        return torch.func.functional_call(models[0], (p, b), (x,))

    ys = torch.func.vmap(run)(params, buffers)
    for i, model in enumerate(models):
        torch.testing.assert_close(ys[i], model(x))


def test_h3_head_dim_sets_the_heads_as_zoology_does():
    from probe.mixers.ssm import H3
    assert H3(16, head_dim=2).n_heads == 8 and H3(16, head_dim=2).head_dim == 2
    with pytest.raises(ValueError, match="not both"):
        H3(16, head_dim=2, n_heads=8)
    with pytest.raises(ValueError, match="must divide"):
        H3(16, head_dim=3)
