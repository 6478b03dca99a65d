"""The short convolution op (probe.ops.short_conv) beyond the registry's tests in tests/test_ops.py: a gate
without a bias, strided inputs, its recurrent form, and the mixers that call it giving the same outputs and
gradients on the kernel as on the reference."""
from __future__ import annotations

import pytest
import torch

from probe import ops
from probe.mixers import MIXERS
from probe.model import build_model
from probe.pack import PackedModel

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONV_MIXERS = ["baseconv_short", "hyena", "m2", "mamba", "mamba2"]  # every mixer that runs the op


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv("PROBE_OPS", "triton")


@pytest.mark.parametrize("activation", ["none", "silu"])
def test_a_gate_without_a_bias_matches_the_reference(activation, kernel, poisoned):
    x, w, gate = randn(2, 37, 9, seed=1), randn(9, 4, seed=2), randn(2, 37, 9, seed=3)
    exact = [t.clone().requires_grad_() for t in (x, w, gate)]
    expected = ops.short_conv_ref(exact[0], exact[1], gate=exact[2], activation=activation)
    cast = [t.float().to(DEVICE).requires_grad_() for t in (x, w, gate)]
    out = ops.short_conv(cast[0], cast[1], gate=cast[2], activation=activation)
    assert rel(out.cpu(), expected) < 2e-5
    dy = randn(*expected.shape, seed=4)
    grads = torch.autograd.grad(out, cast, dy.float().to(DEVICE))
    for g, g_ref in zip(grads, torch.autograd.grad(expected, exact, dy)):
        assert rel(g.cpu(), g_ref) < 1e-4


def test_column_slices_of_a_projection_are_read_in_place(kernel, poisoned):
    # Mamba convolves x of (x, z) = in_proj(u).chunk(2, -1): rows of x are strided, its channels contiguous
    both, w, b = randn(2, 50, 14, seed=1), randn(7, 3, seed=2), randn(7, seed=3)
    x, gate = both.float().to(DEVICE).chunk(2, dim=-1)
    assert not x.is_contiguous()
    out = ops.short_conv(x, w.float().to(DEVICE), b.float().to(DEVICE), gate, activation="silu")
    expected = ops.short_conv_ref(both[..., :7], w, b, both[..., 7:], activation="silu")
    assert rel(out.cpu(), expected) < 2e-5


@pytest.mark.parametrize("taps", [1, 2, 4])
def test_the_recurrent_form_reproduces_the_convolution(taps):
    x, w, b, gate = randn(2, 9, 5, seed=1), randn(5, taps, seed=2), randn(5, seed=3), randn(2, 9, 5, seed=4)
    past, ys = x[:, 0, :, None][..., :0], []  # [B, C, 0]: nothing seen yet
    for t in range(x.shape[1]):
        y_t, past = ops.short_conv_step(x[:, t], past, w, b, gate[:, t], activation="silu")
        assert past.shape[-1] == min(t + 1, taps - 1), "keeps what the next token needs, no more"
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), ops.short_conv_ref(x, w, b, gate, activation="silu"),
                               rtol=1e-12, atol=1e-12)


def _forward_and_grads(mixer, x):
    y = mixer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *mixer.parameters()], allow_unused=True)
    return y, grads


@pytest.mark.parametrize("name", CONV_MIXERS)
def test_a_mixer_on_the_kernel_computes_what_it_does_on_the_reference(name, monkeypatch):
    torch.manual_seed(0)
    mixer = MIXERS[name].build(16, max_seq_len=32).to(DEVICE)
    x = randn(2, 21, 16, seed=1).float().to(DEVICE).requires_grad_()
    monkeypatch.setenv("PROBE_OPS", "ref")
    y_ref, grads_ref = _forward_and_grads(mixer, x)
    monkeypatch.setenv("PROBE_OPS", "triton")
    y, grads = _forward_and_grads(mixer, x)
    assert rel(y, y_ref) < 1e-5
    for g, g_ref in zip(grads, grads_ref):
        if g_ref is not None:
            assert rel(g, g_ref) < 1e-4


@pytest.mark.parametrize("arch", ["baseconv_short", "mamba"])
def test_a_pack_on_the_kernel_computes_each_members_own_outputs(arch, kernel):
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(build_model(arch, vocab_size=16, d_model=16, n_layers=1, max_seq_len=32).to(DEVICE))
    inputs = torch.randint(0, 16, (2, 19), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    positions = torch.tensor([[0, 5, 18], [3, 4, 17]], device=DEVICE)
    out = PackedModel(members).scored_logits(inputs, positions)  # [K, B, M, V]
    for k, model in enumerate(members):
        hidden = model.hidden(inputs)
        own = model.logits(hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])))
        assert rel(out[k], own) < 1e-5
