"""Every registered mixer, tested from the registry: registering a mixer is what covers it.

Specification: output shape; strict causality; finite gradients; one optimiser step lowers the loss on a fixed
batch; recurrent and parallel forms agree; state_size is the size of the recurrent state actually carried.
"""
import pytest
import torch

from probe.mixers import MIXERS, state_numel

D, L, B = 32, 17, 2
ARCHS = sorted(MIXERS)


def make(name, seed=0, max_seq_len=64):
    torch.manual_seed(seed)
    return MIXERS[name].build(D, max_seq_len=max_seq_len).double()


def inputs(seed=1, length=L):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ARCHS)
def test_output_shape_and_finite(name):
    y = make(name)(inputs())
    assert y.shape == (B, L, D)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("length", [1, 5, 33])
@pytest.mark.parametrize("name", ARCHS)
def test_mixer_is_causal(name, length):
    mixer = make(name)
    x = inputs(length=length)
    t = length // 2
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y[:, :t], y2[:, :t], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(y[:, t], y2[:, t]), "the output at t ignores the input at t"


@pytest.mark.parametrize("name", ARCHS)
def test_gradients_are_finite_and_reach_every_parameter(name):
    mixer = make(name)
    mixer(inputs()).square().mean().backward()
    for pname, p in mixer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{pname} gets no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", ARCHS)
def test_one_step_lowers_the_loss(name):
    mixer = make(name).float()
    x, target = inputs().float(), inputs(seed=2).float()
    opt = torch.optim.Adam(mixer.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = (mixer(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


RECURRENT = [n for n in ARCHS if make(n).has_recurrent_form]


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_form_equals_parallel_form(name):
    mixer = make(name)
    x = inputs()
    state = mixer.init_state(B, device=x.device, dtype=x.dtype)
    ys = []
    for t in range(L):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), mixer(x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", RECURRENT)
def test_state_size_is_the_state_carried(name):
    mixer = make(name)
    x = inputs()
    state = mixer.init_state(B, device=x.device, dtype=x.dtype)
    for t in range(L):
        _, state = mixer.step(x[:, t], state)
    assert state_numel(state, B) == mixer.cache_size(L)
    assert mixer.state_size(L) <= mixer.cache_size(L)


def test_every_mixer_states_its_formula():
    for name, spec in MIXERS.items():
        assert spec.cls.formula != "?", f"{name} states no state-size formula"
        assert spec.summary, f"{name} has no summary"
