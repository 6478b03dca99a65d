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
    ("attention", {"decoder": "autoencoder"}, "decoder='autoencoder'"),
])
def test_bad_model_requests_name_the_problem(arch, kw, match):
    with pytest.raises(ProbeError, match=match):
        small(arch, **kw)


def test_option_goes_only_to_layers_that_take_it():
    model = small("mamba,attention", d_state=8)
    assert model.blocks[0].mixer.state_size(10) != small("mamba,attention").blocks[0].mixer.state_size(10)


@pytest.mark.parametrize("arch", probe.list_archs())
def test_norms_in_autocast_dtype_change_no_archs_logits(arch):
    # probe's norms hand a mixer its input in bf16 under autocast unless the mixer says it computes on the input
    # other than through projections (Mixer.projects_input); for every arch that must give exactly the logits of
    # torch's float32 norm output, which autocast's projections would have cast to bf16 themselves
    from probe.model import LayerNorm
    torch.manual_seed(0)
    model = build_model(arch, vocab_size=32, d_model=32, n_layers=2, max_seq_len=64, channel_mixer="mlp").eval()
    tokens = torch.randint(0, 32, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(tokens).float()
        norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
        assert any(m.autocast_output for m in norms)  # the final norm feeds the head: always a projection
        for m in norms:
            m.autocast_output = False
        exact = model(tokens).float()
    assert torch.equal(fast, exact)


# -- model-level decoders: MAD's compression ------------------------------------------------------------------
def gathered(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # [B, L, V], [B, M] -> [B, M, V]
    return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))


@pytest.mark.parametrize("decoder", [None, "compression"])
def test_hidden_at_positions_gives_the_logits_forward_gives_there(decoder):
    # training and packs read `hidden(tokens, positions)`, a user reads `model(tokens)`: the same logits
    torch.manual_seed(0)
    model = small(vocab_size=16, decoder=decoder)
    tokens = torch.randint(0, 16, (2, 12))
    positions = torch.tensor([[11, 0, 5, 5], [3, 4, 1, 2]])  # any order, repeats allowed
    torch.testing.assert_close(model.logits(model.hidden(tokens, positions)), gathered(model(tokens), positions))


def test_a_model_without_a_decoder_has_no_decoder_weights():
    assert not any(k.startswith("decoder") for k in small().state_dict())
    assert small(decoder="compression").num_params() == small().num_params() + 2 * (32 * 32 + 32) + 2 * (2 * 32)


@pytest.mark.parametrize("arch", ["attention", "mamba", "baseconv"])
def test_compression_logits_depend_on_the_input_only_through_the_last_positions_features(arch):
    torch.manual_seed(0)
    model = small(arch, vocab_size=16, decoder="compression")
    a, b = torch.randint(0, 15, (2, 2, 12))
    a[:, -1] = b[:, -1] = 15
    features_a = model.features(a)

    def graft(module, inputs, output):  # b's features everywhere but at the last position, which is a's
        return torch.cat([output[:, :-1], features_a[:, -1:]], dim=1)
    handle = model.blocks[-1].register_forward_hook(graft)
    try:
        grafted = model(b)
    finally:
        handle.remove()
    torch.testing.assert_close(grafted, model(a), rtol=1e-5, atol=1e-6)  # a's logits at every output position
    c = a.clone()
    c[:, 0] = (a[:, 0] + 1) % 15
    changed = (model(c) - model(a)).abs().amax(-1)  # [B, L]
    assert (changed > 1e-6).all(), "the first token reaches every output position, through the last"


def test_sinusoidal_embedding_is_mads_fixed_layout():
    from probe.model import sinusoidal_embedding
    pe = sinusoidal_embedding(torch.arange(300), 33)  # odd width: a zero channel at the end
    assert pe.shape == (300, 33) and (pe[:, -1] == 0).all() and pe.abs().max() <= 1
    torch.testing.assert_close(pe[0], torch.cat([torch.zeros(16), torch.ones(16), torch.zeros(1)]))
    torch.testing.assert_close(pe[7, 0], torch.sin(torch.tensor(7.0)))  # the first frequency is 1
    assert torch.cdist(pe, pe).add(torch.eye(300)).min() > 1e-3, "every position has its own embedding"
