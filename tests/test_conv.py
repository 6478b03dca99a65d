"""Gated convolutions (probe/mixers/conv.py): the convolution ops against a direct sum, BaseConv's equation,
Hyena's implicit filter, and recurrent forms beyond what tests/test_mixers.py covers."""
import math

import pytest
import torch

from probe.mixers.base import state_numel
from probe.mixers.conv import BaseConv, Hyena, HyenaFilter, ImplicitFilter, causal_conv_step, positional_table
from probe.ops import long_conv_ref, short_conv
from probe.model import build_model
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


def fft_conv(u, k, bias=None):
    """probe.ops.long_conv_ref (the FFT) channel-major: u [B, D, L] -> [B, D, L]."""
    return long_conv_ref(u.transpose(1, 2), k, bias).transpose(1, 2)


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
def test_short_conv_of_the_flipped_filter_is_the_filter_order_convolution(seq_len, taps):
    # the mixers store short filters in filter order (k[:, s] meets u_{t-s}) and call the op, which takes
    # Conv1d's order (its last tap meets u_t) on token-major [B, L, D], with k flipped
    u, k, bias = randn(2, D, seq_len, seed=1), randn(D, taps, seed=2), randn(D, seed=3)
    y = short_conv(u.transpose(1, 2), k.flip(-1), bias).transpose(1, 2)
    torch.testing.assert_close(y, direct_causal_conv(u, k) + bias[:, None], rtol=1e-12, atol=1e-12)


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


ZOOLOGY_CASES = [dict(filter="short", kernel_size=3), dict(filter="long"), dict(filter="long", implicit=True)]
ZOOLOGY_IDS = ["short3", "long", "long-implicit"]


@pytest.mark.parametrize("kwargs", ZOOLOGY_CASES, ids=ZOOLOGY_IDS)
def test_zoology_baseconv_adds_feed_through_to_long_conv_and_a_residual(kwargs):
    torch.manual_seed(0)
    mixer = BaseConv(D, max_seq_len=32, form="zoology", **kwargs).double()
    x = randn(2, 20, D, seed=1)
    conv = direct_causal_conv(x.transpose(1, 2), mixer.filter_taps(20)).transpose(1, 2)
    # Zoology's long convolution adds its input (no b'); its short Conv1d adds a bias
    conv = conv + (mixer.conv_bias if kwargs["filter"] == "short" else x)
    expected = (x @ mixer.projection.weight.T + mixer.projection.bias) * conv + x
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-10)


def test_zoology_baseconv_with_a_zero_long_filter_is_feed_through_plus_residual():
    mixer = BaseConv(D, max_seq_len=32, form="zoology").double()
    with torch.no_grad():
        mixer.h.zero_()
    x = randn(2, 20, D, seed=1)
    torch.testing.assert_close(mixer(x), mixer.projection(x) * x + x, rtol=1e-12, atol=1e-12)


def test_zoology_baseconv_initialises_as_zoologys_code():
    torch.manual_seed(0)
    long, paper = BaseConv(64, max_seq_len=256, form="zoology"), BaseConv(64, max_seq_len=256)
    assert 0.95 < long.h.std() < 1.05 and 0.019 < paper.h.std() < 0.021, "N(0, 1) vs 0.02·N(0, 1)"
    assert not hasattr(long, "conv_bias"), "the long convolution's feed-through replaces b'"
    short = BaseConv(64, filter="short", kernel_size=3, form="zoology")
    assert short.conv_bias.abs().max() <= 3 ** -0.5 and short.conv_bias.std() > 0.1, "Conv1d bias, U(±1/√3)"


@pytest.mark.parametrize("kwargs", ZOOLOGY_CASES, ids=ZOOLOGY_IDS)
def test_zoology_baseconv_recurrent_form_and_state(kwargs):
    torch.manual_seed(0)
    mixer = BaseConv(D, max_seq_len=32, form="zoology", **kwargs).double()
    x = randn(2, 20, D, seed=1)
    ys, state = run_steps(mixer, x)
    torch.testing.assert_close(ys, mixer(x), rtol=1e-8, atol=1e-10)
    assert state_numel(state, 2) == mixer.state_size(20)


def test_zoology_figure2_pattern_alternates_short_and_implicit_long_kernels():
    from probe.mixers.conv import ZoologyImplicitFilter
    model = build_model("baseconv_short,baseconv_implicit", vocab_size=16, d_model=8, n_layers=4, max_seq_len=32,
                        form="zoology")
    mixers = [block.mixer for block in model.blocks]
    assert [(m.filter, m.kernel_size if m.filter == "short" else m.implicit) for m in mixers] == \
        [("short", 3), ("long", True), ("short", 3), ("long", True)]
    assert all(m.form == "zoology" for m in mixers)
    assert isinstance(mixers[1].implicit_filter, ZoologyImplicitFilter)  # Zoology's ImplicitLongConvolution


@pytest.mark.parametrize("name", ["zoology_mqar", "zoology_figure2"])
def test_zoology_sweeps_build_baseconv_as_zoologys_figure_2_does(name):
    from probe.sweep import load_sweep
    options = load_sweep(f"sweeps/{name}.py").archs["baseconv"]
    assert options["arch"] == "baseconv_short,baseconv_implicit" and options["form"] == "zoology"


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
    # the same positions give the same taps at any length; BLAS may round differently by shape, so compare
    # within float64 rounding, never bitwise
    torch.testing.assert_close(filt(10), filt(40)[:, :10], rtol=1e-12, atol=1e-12)


def hyena_short_conv(mixer, x):
    """Hyena's projections after their short convolution, by the direct sum: [B, (N+1)·D, L]."""
    u = (x @ mixer.in_proj.weight.T + mixer.in_proj.bias).transpose(1, 2)
    return direct_causal_conv(u, mixer.short_filter) + mixer.short_bias[:, None]


def test_hyena_is_one_long_convolution_between_two_gates():
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=32).double()
    x = randn(2, 20, D, seed=1)
    x0, x1, v = hyena_short_conv(mixer, x).split(D, dim=1)
    h = mixer.long_filters(20)
    assert h.shape == (1, D, 20), "order 2 has one long filter"
    w = x1 * v
    y = x0 * (direct_causal_conv(w, h[0]) + mixer.filter_bias[0, :, None] * w)
    torch.testing.assert_close(mixer(x), mixer.out_proj(y.transpose(1, 2)), rtol=1e-10, atol=1e-10)


def test_hyena_order_3_nests_two_gated_convolutions_inside_out():
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=32, order=3).double()
    x = randn(2, 20, D, seed=1)
    x0, x1, x2, v = hyena_short_conv(mixer, x).split(D, dim=1)
    h, bias = mixer.long_filters(20), mixer.filter_bias[:, :, None]
    w = x2 * v
    z = direct_causal_conv(w, h[0]) + bias[0] * w
    w = x1 * z
    z = direct_causal_conv(w, h[1]) + bias[1] * w
    torch.testing.assert_close(mixer(x), mixer.out_proj((x0 * z).transpose(1, 2)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order,short_filter_order", [(2, 3), (3, 3), (2, 1), (4, 2)],
                         ids=["N2", "N3", "N2-short1", "N4-short2"])
def test_hyena_recurrent_form_and_state(order, short_filter_order):
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=32, order=order, short_filter_order=short_filter_order).double()
    x = randn(2, 11, D, seed=1)
    ys, state = run_steps(mixer, x)
    torch.testing.assert_close(ys, mixer(x), rtol=1e-8, atol=1e-10)
    # one D·L buffer per long convolution (order − 1 of them), the short convolution's last taps − 1 inputs
    expected = (order - 1) * D * 11 + (order + 1) * D * (short_filter_order - 1)
    assert state_numel(state, 2) == mixer.cache_size(11) == expected
    assert mixer.state_size(11) == (order - 1) * D * 11  # the papers count the long convolutions' inputs


def test_hyena_order_2_state_is_one_sequence_of_d_model():
    mixer = Hyena(D, max_seq_len=64)
    assert mixer.state_size(50) == D * 50 and mixer.cache_size(50) == D * 50 + 3 * D * 2


@pytest.mark.parametrize("seq_len", [63, 100])
def test_hyena_is_causal_at_awkward_lengths(seq_len):
    torch.manual_seed(0)
    mixer = Hyena(D, max_seq_len=128).double()
    x = randn(1, seq_len, D, seed=1)
    t = seq_len - 9
    x2 = torch.cat([x[:, :t], randn(1, seq_len - t, D, seed=2)], dim=1)
    torch.testing.assert_close(mixer(x)[:, :t], mixer(x2)[:, :t], rtol=1e-10, atol=1e-10)


def test_positional_table_is_time_and_complex_exponential():
    table = positional_table(50, emb_dim=5).double()          # K = 2 bands, frequencies 1e-4 and 1
    pos = torch.arange(50, dtype=torch.float64)
    omega = 2 * math.pi * pos / 50
    expected = torch.stack([pos / 49, torch.cos(1e-4 * omega), torch.cos(omega),
                            -torch.sin(1e-4 * omega), -torch.sin(omega)], dim=-1)
    torch.testing.assert_close(table, expected, rtol=1e-6, atol=1e-6)   # stored in float32


def test_hyena_filter_is_a_shared_frequency_sine_network_under_a_decay_window():
    torch.manual_seed(0)
    filt = HyenaFilter(4, max_seq_len=40, filter_order=8).double()
    assert len(filt.layers) == 3, "input layer and two inner layers"
    with torch.no_grad():
        filt.freq.uniform_(0.5, 2.0)                            # a learnt ω, the same in every sine
    z = filt.positions[:20]
    for layer in filt.layers:
        z = torch.sin(filt.freq * (z @ layer.weight.T + layer.bias))
    t = torch.arange(20, dtype=torch.float64) / 39
    window = torch.exp(-filt.decay_rates[:, None] * t)
    torch.testing.assert_close(filt(20), (z @ filt.out.weight.T).T * window, rtol=1e-12, atol=1e-12)


def test_hyena_filter_window_decays_slowest_channel_first():
    filt = HyenaFilter(16, max_seq_len=201).double()
    window = filt.window(201, torch.float64, None)                          # [C, L], t = l / 200
    assert (window[:, 1:] < window[:, :-1]).all(), "every channel's window decays monotonically"
    # the last (fastest) channel reaches the target 1e-2 at t = fast_decay_pct = 0.3, the first at 1.5
    torch.testing.assert_close(window[-1, 60], torch.tensor(1e-2, dtype=torch.float64))
    torch.testing.assert_close(window[0, 200], torch.tensor(1e-2 ** (1 / 1.5), dtype=torch.float64))


def test_hyena_filter_does_not_depend_on_sequence_length():
    torch.manual_seed(0)
    filt = HyenaFilter(8, max_seq_len=64).double()
    # BLAS may round differently by shape, so compare within float64 rounding, never bitwise
    torch.testing.assert_close(filt(10), filt(40)[:, :10], rtol=1e-12, atol=1e-12)


def test_hyena_filter_learns_its_positions_unless_told_not_to():
    assert isinstance(HyenaFilter(4, max_seq_len=16).positions, torch.nn.Parameter)
    fixed = HyenaFilter(4, max_seq_len=16, learn_positions=False)
    assert "positions" not in dict(fixed.named_parameters())
    with pytest.raises(ValueError, match="^seq_len=17 exceeds max_seq_len=16"):
        fixed(17)


@pytest.mark.parametrize("cls,kwargs,argument", [
    (BaseConv, dict(filter="medium"), "filter"),
    (BaseConv, dict(filter="short", kernel_size=0), "kernel_size"),
    (BaseConv, dict(filter="short", implicit=True), "implicit"),
    (BaseConv, dict(form="safari"), "form"),
    (Hyena, dict(order=1), "order"),
    (Hyena, dict(filter_order=0), "filter_order"),
    (Hyena, dict(emb_dim=4), "emb_dim"),
    (Hyena, dict(short_filter_order=0), "short_filter_order"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_kwargs_raise_value_error_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}="):
        cls(D, **kwargs)
