"""Gated convolutions (probe/mixers/conv.py): the convolution ops against a direct sum, BaseConv's equation,
Hyena's implicit filter, and recurrent forms beyond what tests/test_mixers.py covers."""
import pytest
import torch

from probe.mixers.base import state_numel
from probe.mixers.conv import BaseConv, Hyena, ImplicitFilter, causal_conv_step, fft_conv, short_conv
from mixer_helpers import randn, run_steps

D = 6


def direct_causal_conv(u, k):
    """y[b, d, t] = Σ_{s=0}^{min(t, Lk-1)} k[d, s] · u[b, d, t-s], summed term by term."""
    seq_len = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(seq_len):
        for s in range(min(t + 1, k.shape[-1])):
            y[..., t] += k[:, s] * u[..., t - s]
    return y


CONV_CASES = [(1, 1), (1, 5), (63, 7), (63, 90), (100, 3), (100, 100), (100, 250)]
CONV_IDS = [f"L{L}-Lk{Lk}" for L, Lk in CONV_CASES]


@pytest.mark.parametrize("seq_len,filter_len", CONV_CASES, ids=CONV_IDS)
def test_fft_conv_equals_direct_convolution(seq_len, filter_len):
    u, k, bias = randn(2, D, seq_len, seed=1), randn(D, filter_len, seed=2), randn(D, seed=3)
    torch.testing.assert_close(fft_conv(u, k), direct_causal_conv(u, k), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fft_conv(u, k, bias), direct_causal_conv(u, k) + bias[:, None] * u,
                               rtol=1e-10, atol=1e-10)


def test_fft_conv_upcasts_bf16_and_casts_back():
    u, k = randn(2, D, 100, seed=1), randn(D, 100, seed=2) * 0.1
    y = fft_conv(u.bfloat16(), k.bfloat16())
    assert y.dtype == torch.bfloat16
    # error of bf16 inputs and output only, not of a bf16 transform (which would be far worse at L=100)
    expected = direct_causal_conv(u.bfloat16().double(), k.bfloat16().double())
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("seq_len,taps", [(1, 3), (63, 3), (100, 4), (5, 1)])
def test_short_conv_equals_direct_convolution(seq_len, taps):
    u, k, bias = randn(2, D, seq_len, seed=1), randn(D, taps, seed=2), randn(D, seed=3)
    torch.testing.assert_close(short_conv(u, k, bias), direct_causal_conv(u, k) + bias[:, None],
                               rtol=1e-12, atol=1e-12)


def test_causal_conv_step_reproduces_the_convolution():
    u, k = randn(2, D, 20, seed=1), randn(D, 7, seed=2)
    past, ys = u[..., :0], []
    for t in range(u.shape[-1]):
        y_t, past = causal_conv_step(u[..., t], past, k)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), direct_causal_conv(u, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(filter="short", kernel_size=3), dict(filter="short", kernel_size=5),
                                    dict(filter="long"), dict(filter="long", implicit=True)],
                         ids=["short3", "short5", "long", "long-implicit"])
def test_baseconv_is_projection_gated_by_convolution(kwargs):
    torch.manual_seed(0)
    mixer = BaseConv(D, max_seq_len=32, **kwargs).double()
    x = randn(2, 20, D, seed=1)
    k = mixer.filter_taps(20)
    conv = direct_causal_conv(x.transpose(1, 2), k).transpose(1, 2) + mixer.conv_bias
    expected = (x @ mixer.projection.weight.T + mixer.projection.bias) * conv
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs,max_seq_len,expected_kept", [
    (dict(filter="short", kernel_size=4), 64, 3),
    (dict(filter="long"), 8, 7),              # an explicit filter of 8 taps reaches 7 past inputs
    (dict(filter="long", implicit=True), 8, 20),  # an implicit filter reaches every past input
], ids=["short4", "long-explicit-capped", "long-implicit"])
def test_baseconv_recurrent_form_and_state(kwargs, max_seq_len, expected_kept):
    torch.manual_seed(0)
    mixer = BaseConv(D, max_seq_len=max_seq_len, **kwargs).double()
    x = randn(2, 20, D, seed=1)
    ys, state = run_steps(mixer, x)
    torch.testing.assert_close(ys, mixer(x), rtol=1e-8, atol=1e-10)
    assert state_numel(state, 2) == mixer.state_size(20) == D * expected_kept


def test_implicit_filter_decays_under_its_window():
    torch.manual_seed(0)
    filt = ImplicitFilter(16, max_seq_len=200).double()
    window = filt.window(200, torch.float64, None)                          # [C, L]
    assert (window[:, 1:] < window[:, :-1]).all(), "every channel's window decays monotonically"
    # the fastest channel reaches the target (1e-2) at t = fast_decay_pct·max_seq_len, the slowest at 1.5×
    torch.testing.assert_close(window[0, 60], torch.tensor(1e-2, dtype=torch.float64))
    assert window[-1, 60] > 0.1, "slow channels still see far back"
    h = filt(200).detach().abs()
    assert h[:, 150:].mean() < 0.15 * h[:, :25].mean(), "the filter's late taps are damped"


def test_implicit_filter_does_not_depend_on_sequence_length():
    torch.manual_seed(0)
    filt = ImplicitFilter(8, max_seq_len=64).double()
    torch.testing.assert_close(filt(10), filt(40)[:, :10], rtol=0, atol=0)


def test_hyena_follows_its_recurrence():
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=32).double()
    x = randn(2, 20, D, seed=1)
    u = direct_causal_conv((x @ mixer.in_proj.weight.T + mixer.in_proj.bias).transpose(1, 2),
                           mixer.short_filter) + mixer.short_bias[:, None]
    x1, x2, v = u.split(D, dim=1)
    h = mixer.long_filters(20)
    z = x1 * (direct_causal_conv(v, h[0]) + mixer.filter_bias[0, :, None] * v)
    z = x2 * (direct_causal_conv(z, h[1]) + mixer.filter_bias[1, :, None] * z)
    torch.testing.assert_close(mixer(x), mixer.out_proj(z.transpose(1, 2)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order,short_filter_order", [(1, 3), (3, 3), (2, 1)], ids=["N1", "N3", "N2-short1"])
def test_hyena_recurrent_form_and_state_at_other_orders(order, short_filter_order):
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=32, order=order, short_filter_order=short_filter_order).double()
    x = randn(2, 11, D, seed=1)
    ys, state = run_steps(mixer, x)
    torch.testing.assert_close(ys, mixer(x), rtol=1e-8, atol=1e-10)
    expected = order * D * 11 + (order + 1) * D * (short_filter_order - 1)
    assert state_numel(state, 2) == mixer.state_size(11) == expected


@pytest.mark.parametrize("seq_len", [63, 100])
def test_hyena_is_causal_at_awkward_lengths(seq_len):
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=128).double()
    x = randn(1, seq_len, D, seed=1)
    t = seq_len - 9
    x2 = torch.cat([x[:, :t], randn(1, seq_len - t, D, seed=2)], dim=1)
    torch.testing.assert_close(mixer(x)[:, :t], mixer(x2)[:, :t], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls,kwargs,argument", [
    (BaseConv, dict(filter="medium"), "filter"),
    (BaseConv, dict(filter="short", kernel_size=0), "kernel_size"),
    (BaseConv, dict(filter="short", implicit=True), "implicit"),
    (Hyena, dict(order=0), "order"),
    (Hyena, dict(filter_order=0), "filter_order"),
    (Hyena, dict(emb_dim=4), "emb_dim"),
    (Hyena, dict(short_filter_order=0), "short_filter_order"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_kwargs_raise_value_error_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}="):
        cls(D, **kwargs)
