"""Monarch Mixer (probe/mixers/monarch.py): the Monarch product is the documented block-diagonal/permutation
product, the Monarch DFT is the DFT, the Monarch convolution is the causal convolution, and M2 is causal."""
import pytest
import torch

from probe.mixers.base import state_numel
from probe.ops import long_conv_ref
from probe.mixers.monarch import MonarchMixer, monarch_conv, monarch_dft_factors, monarch_multiply, monarch_size
from mixer_helpers import randn, run_steps
from test_conv import direct_causal_conv

D = 6


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(*shape, generator=g, dtype=torch.float64))


def stride_permutation(rows, cols):
    """Dense matrix P with (P x)[c·rows + r] = x[r·cols + c]: read a rows×cols grid column by column."""
    perm = torch.arange(rows * cols).view(rows, cols).T.reshape(-1)
    return torch.eye(rows * cols, dtype=torch.complex128)[perm]


@pytest.mark.parametrize("n1,n2", [(4, 4), (3, 5), (8, 2)], ids=["4x4", "3x5", "8x2"])
def test_monarch_multiply_is_permuted_block_diagonal_product(n1, n2):
    blocks1, blocks2 = crandn(n2, n1, n1, seed=1), crandn(n1, n2, n2, seed=2)
    b1, b2 = torch.block_diag(*blocks1), torch.block_diag(*blocks2)
    p_in = stride_permutation(n1, n2)      # x[j1·n2 + j2] -> position j2·n1 + j1 (grouped by j2 for B1)
    p_mid = stride_permutation(n2, n1)     # Y[j2·n1 + k1] -> position k1·n2 + j2 (grouped by k1 for B2)
    p_out = stride_permutation(n1, n2)     # Z[k1·n2 + k2] -> position k2·n1 + k1
    dense = p_out @ b2 @ p_mid @ b1 @ p_in
    x = crandn(3, n1 * n2, seed=3)
    torch.testing.assert_close(monarch_multiply(x, blocks1, blocks2), x @ dense.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [16, 64, 256])
def test_monarch_dft_equals_torch_fft(n):
    m = int(n ** 0.5)
    x = crandn(2, 3, n, seed=n)
    torch.testing.assert_close(monarch_multiply(x, *monarch_dft_factors(m, m)), torch.fft.fft(x),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(monarch_multiply(x, *monarch_dft_factors(m, m, inverse=True)),
                               torch.fft.ifft(x), rtol=1e-10, atol=1e-12)


def test_monarch_dft_with_unequal_factors_equals_torch_fft():
    x = crandn(4, 32, seed=0)
    torch.testing.assert_close(monarch_multiply(x, *monarch_dft_factors(4, 8)), torch.fft.fft(x),
                               rtol=1e-10, atol=1e-10)


def test_monarch_size_is_smallest_square_covering_twice_the_length():
    for seq_len in range(1, 300):
        m = monarch_size(seq_len)
        assert m * m >= 2 * seq_len > (m - 1) ** 2


CONV_CASES = [(1, 1), (1, 4), (63, 7), (63, 90), (100, 3), (100, 250)]


@pytest.mark.parametrize("seq_len,filter_len", CONV_CASES, ids=[f"L{L}-Lk{Lk}" for L, Lk in CONV_CASES])
def test_monarch_conv_equals_direct_causal_convolution(seq_len, filter_len):
    u, k, bias = randn(2, D, seq_len, seed=1), randn(D, filter_len, seed=2), randn(D, seed=3)
    torch.testing.assert_close(monarch_conv(u, k, bias), direct_causal_conv(u, k) + bias[:, None] * u,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(monarch_conv(u, k, bias), long_conv_ref(u.transpose(1, 2), k, bias).transpose(1, 2),
                               rtol=1e-10, atol=1e-10)


def test_monarch_conv_in_float32_keeps_dtype_and_accuracy():
    u, k = randn(2, D, 100, seed=1), randn(D, 100, seed=2) * 0.1
    y = monarch_conv(u.float(), k.float())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), direct_causal_conv(u, k), rtol=1e-4, atol=1e-4)


def test_m2_is_gated_convolution_of_its_projections():
    torch.manual_seed(0)
    mixer = MonarchMixer(D, max_seq_len=32).double()
    x = randn(2, 13, D, seed=1)
    u = direct_causal_conv((x @ mixer.in_proj.weight.T + mixer.in_proj.bias).transpose(1, 2),
                           mixer.short_filter) + mixer.short_bias[:, None]
    q, k, v = u.split(D, dim=1)
    z = k * v
    y = q * (direct_causal_conv(z, mixer.implicit_filter(13)) + mixer.filter_bias[:, None] * z)
    torch.testing.assert_close(mixer(x), mixer.out_proj(y.transpose(1, 2)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seq_len", [2, 10, 63, 100])
def test_m2_is_causal_when_padding_to_a_non_power_of_two(seq_len):
    torch.manual_seed(0)
    mixer = MonarchMixer(D, max_seq_len=128).double()
    x = randn(1, seq_len, D, seed=1)
    t = seq_len // 2
    x2 = torch.cat([x[:, :t], randn(1, seq_len - t, D, seed=2)], dim=1)
    y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y[:, :t], y2[:, :t], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y[:, t], y2[:, t])


@pytest.mark.parametrize("short_filter_order", [1, 4])
def test_m2_recurrent_form_and_state(short_filter_order):
    torch.manual_seed(0)
    mixer = MonarchMixer(D, max_seq_len=32, short_filter_order=short_filter_order).double()
    x = randn(2, 10, D, seed=1)        # 2L = 20 pads to 25 = 5²: neither square nor power of two
    ys, state = run_steps(mixer, x)
    torch.testing.assert_close(ys, mixer(x), rtol=1e-8, atol=1e-10)
    assert state_numel(state, 2) == mixer.state_size(10) == D * 10 + 3 * D * min(10, short_filter_order - 1)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(filter_order=0), "filter_order"),
    (dict(emb_dim=2), "emb_dim"),
    (dict(short_filter_order=0), "short_filter_order"),
], ids=["filter_order", "emb_dim", "short_filter_order"])
def test_bad_kwargs_raise_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}="):
        MonarchMixer(D, **kwargs)
