"""build_model: the registry, hybrid patterns, options and sizes as a user sees them."""
import pytest
import torch

import probe
from probe import ProbeError, build_model


def small(arch="attention", **kw):
    args = dict(vocab_size=50, d_model=32, n_layers=2, max_seq_len=64)
    args.update(kw)
    return build_model(arch, **args)


def test_model_maps_tokens_to_logits():
    model = small()
    tokens = torch.randint(0, 50, (3, 20))
    assert model(tokens).shape == (3, 20, 50)


def test_list_archs_is_the_registry():
    names = probe.list_archs()
    assert {"attention", "baseconv", "mamba"} <= set(names)
    assert names == sorted(names)


def test_hybrid_pattern_cycles_over_layers():
    model = small("baseconv_short,attention", n_layers=4)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds[0] == kinds[2] and kinds[1] == kinds[3] and kinds[0] != kinds[1]


def test_state_size_sums_the_layers():
    model = small("attention", n_layers=3)
    assert model.state_size(40) == 3 * model.blocks[0].mixer.state_size(40)


def test_channel_mixers_add_parameters():
    base = small().num_params()
    assert small(channel_mixer="mlp").num_params() > base
    assert small(channel_mixer="swiglu").num_params() > base


@pytest.mark.parametrize("arch,kw,match", [
    ("nonsense", {}, "unknown arch 'nonsense'"),
    ("attention,nope_not_here", {}, "unknown arch 'nope_not_here'"),
    ("attention", {"d_model": 0}, "d_model=0"),
    ("attention", {"d_state": 4}, "option 'd_state'"),
    ("attention,mamba,baseconv", {"n_layers": 2}, "n_layers=2"),
    ("attention", {"channel_mixer": "moe"}, "channel_mixer"),
])
def test_bad_model_requests_name_the_problem(arch, kw, match):
    with pytest.raises(ProbeError, match=match):
        small(arch, **kw)


def test_option_goes_only_to_layers_that_take_it():
    model = small("mamba,attention", d_state=8)
    assert model.blocks[0].mixer.state_size(10) != small("mamba,attention").blocks[0].mixer.state_size(10)
