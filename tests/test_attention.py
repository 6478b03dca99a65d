"""Softmax attention family: what the generic registry tests cannot see.

Specification: GQA is MHA with shared KV weights; the SDPA path equals a dense per-query reference; a window
at least as long as the sequence changes nothing; each position scheme has its defining property (RoPE and
friends depend on i - j only, ALiBi slopes, ReRoPE = RoPE within its window, PI at scale 1 = RoPE, dynamic
NTK = RoPE within train_len); step == forward for every scheme at awkward lengths, with and without a window;
attention dropout drops weights only in training mode and keeps the layer causal; bad keyword arguments raise
ValueError naming the argument.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from probe.mixers import MIXERS, state_numel
from probe.mixers.attention import (
    MLA, POSITIONS, Attention, alibi_slopes, attention, attention_ref, coca_features, rope_inv_freq, rotate,
    xpos_zeta,
)
from mixer_helpers import randn, run_steps

D, B = 32, 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a busy 2-core machine, handing each op to a second thread costs ~1000x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(seed=0, d_model=D, **kwargs):
    torch.manual_seed(seed)
    return Attention(d_model, **kwargs).double()


# ------------------------------------------------------------------------------------------- heads, masks
@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_is_mha_with_kv_weights_shared_within_groups(n_kv_heads):
    gqa = build(n_heads=4, n_kv_heads=n_kv_heads)
    mha = build(n_heads=4)
    hd, group = D // 4, 4 // n_kv_heads
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):  # query head h reads kv head h // group
            w = getattr(gqa, name).weight.view(n_kv_heads, hd, D)
            getattr(mha, name).weight.copy_(w.repeat_interleave(group, 0).reshape(4 * hd, D))
    x = randn(B, 19, D)
    torch.testing.assert_close(gqa(x), mha(x))


def test_gqa_with_one_kv_head_equals_the_mqa_preset():
    x = randn(B, 11, D)
    torch.manual_seed(3)
    mqa = MIXERS["mqa"].build(D).double()
    torch.manual_seed(3)
    gqa = MIXERS["gqa"].build(D, n_kv_heads=1).double()
    torch.testing.assert_close(gqa(x), mqa(x))
    assert mqa.state_size(10) == 2 * 1 * (D // 4) * 10


def dense_reference(q, k, v, window=None, bias=None):
    """Per query, a plain softmax over the keys it may see; queries are the last Lq of the Lk positions."""
    h, lq, lk = q.shape[1], q.shape[2], k.shape[2]
    k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // v.shape[1], 1)
    out = torch.zeros_like(q[..., : v.shape[-1]])
    for i in range(lq):
        pos = lk - lq + i
        lo = 0 if window is None else max(0, pos - window + 1)
        s = q[:, :, i : i + 1] @ k[:, :, lo : pos + 1].transpose(-1, -2) / math.sqrt(q.shape[-1])
        if bias is not None:
            s = s + bias[:, i : i + 1, lo : pos + 1]
        out[:, :, i] = (s.softmax(-1) @ v[:, :, lo : pos + 1])[:, :, 0]
    return out


@pytest.mark.parametrize("window", [None, 1, 3, 50])
@pytest.mark.parametrize("lq,lk", [(1, 1), (7, 7), (1, 9), (4, 13)])
@pytest.mark.parametrize("core", [attention, attention_ref], ids=["sdpa", "ref"])
def test_attention_core_equals_dense_causal_reference(core, lq, lk, window):
    q, k, v = randn(B, 4, lq, 6, seed=1), randn(B, 2, lk, 6, seed=2), randn(B, 2, lk, 5, seed=3)
    bias = randn(4, lq, lk, seed=4)
    torch.testing.assert_close(core(q, k, v, window=window), dense_reference(q, k, v, window))
    torch.testing.assert_close(core(q, k, v, window=window, bias=bias), dense_reference(q, k, v, window, bias))


@pytest.mark.parametrize("pos", ["rope", "alibi", "learned", "rerope"])
def test_window_at_least_the_length_is_full_attention_and_a_shorter_one_is_not(pos):
    x = randn(B, 20, D)
    full = build(n_heads=2, pos=pos, max_seq_len=64)(x)
    torch.testing.assert_close(build(n_heads=2, pos=pos, window=20, max_seq_len=64)(x), full)
    local = build(n_heads=2, pos=pos, window=4, max_seq_len=64)(x)
    torch.testing.assert_close(local[:, :4], full[:, :4])  # the first window positions see everything
    assert not torch.allclose(local[:, 4:], full[:, 4:])


def test_sliding_window_output_ignores_tokens_outside_the_window():
    mixer = build(n_heads=2, window=5)
    x = randn(B, 16, D)
    x2 = x.clone()
    x2[:, :6] = randn(B, 6, D, seed=9)  # position 10 sees 6..10 only
    torch.testing.assert_close(mixer(x)[:, 10:], mixer(x2)[:, 10:])


# ------------------------------------------------------------------------------------- attention dropout
DROPOUT_PATHS = ["rope", "alibi", "learned", "rerope", "coca", "ntk_dynamic"]  # every call site of the cores


def identity_values(lk):
    """v = I: attention output row i is then the (dropped) weight vector of query i. [B, 2, Lk, Lk]."""
    return torch.eye(lk, dtype=torch.float64).expand(B, 2, lk, lk)


@pytest.mark.parametrize("lq,lk,window", [(9, 9, None), (4, 9, None), (9, 9, 3)],
                         ids=["causal", "rectangular", "window3"])
@pytest.mark.parametrize("core", [attention, attention_ref], ids=["sdpa", "ref"])
def test_attention_dropout_zeroes_weights_and_scales_the_rest_by_one_over_keep(core, lq, lk, window):
    p = 0.5
    q, k = randn(B, 2, lq, 6, seed=1), randn(B, 2, lk, 6, seed=2)
    weights = core(q, k, identity_values(lk), window=window)  # [B, 2, Lq, Lk] softmax weights
    torch.manual_seed(0)
    dropped = core(q, k, identity_values(lk), window=window, dropout_p=p)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], weights[kept] / (1 - p))
    visible = weights > 0
    assert kept[visible].any() and (~kept[visible]).any()  # both outcomes occur among the 2·2·Lq·Lk weights


def test_sdpa_core_with_dropout_draws_exactly_the_explicit_references_masks():
    # dropout leaves SDPA for the explicit path (SDPA's fused dropout breaks packed training on CUDA)
    q, k, v = randn(B, 4, 9, 6, seed=1), randn(B, 2, 9, 6, seed=2), randn(B, 2, 9, 5, seed=3)
    torch.manual_seed(0)
    sdpa = attention(q, k, v, window=4, dropout_p=0.3)
    torch.manual_seed(0)
    torch.testing.assert_close(sdpa, attention_ref(q, k, v, window=4, dropout_p=0.3), rtol=0, atol=0)


@pytest.mark.parametrize("pos", DROPOUT_PATHS)
def test_dropout_zero_in_training_mode_equals_the_layer_without_dropout(pos):
    x = randn(B, 13, D)
    plain = build(n_heads=2, pos=pos, train_len=8).eval()(x)
    torch.testing.assert_close(build(n_heads=2, pos=pos, train_len=8, dropout=0.0).train()(x), plain)
    torch.testing.assert_close(build(n_heads=2, pos=pos, train_len=8).train()(x), plain)


@pytest.mark.parametrize("pos", DROPOUT_PATHS)
def test_dropout_changes_nothing_in_eval_mode(pos):
    x = randn(B, 13, D)
    torch.testing.assert_close(build(n_heads=2, pos=pos, train_len=8, dropout=0.5).eval()(x),
                               build(n_heads=2, pos=pos, train_len=8).eval()(x))


@pytest.mark.parametrize("pos", DROPOUT_PATHS)
def test_dropout_in_training_mode_changes_outputs_and_the_layer_stays_causal(pos):
    mixer = build(n_heads=2, pos=pos, train_len=8, dropout=0.5).train()
    x = randn(B, 13, D).requires_grad_()
    torch.manual_seed(0)
    y = mixer(x)
    assert not torch.allclose(y, build(n_heads=2, pos=pos, train_len=8).eval()(x))
    for t in (0, 5, 11):  # one draw of the masks: output t must not depend on any later token
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1:].abs().max() == 0 and grad[:, t].abs().max() > 0


def test_dropout_rejects_probabilities_outside_zero_to_one():
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"^dropout="):
            Attention(D, dropout=p)


def test_packed_members_draw_their_own_dropout_masks():
    from torch.func import functional_call, stack_module_state, vmap

    mixer = build(n_heads=1, pos="learned", dropout=0.1)  # Zoology's Figure-2 attention: 1 head, dropout 0.1
    params, buffers = stack_module_state([mixer, build(n_heads=1, pos="learned", dropout=0.1)])
    params = {name: w[:1].expand_as(w) for name, w in params.items()}  # two identical members
    skeleton = build(n_heads=1, pos="learned", dropout=0.1).to("meta")
    x = randn(B, 12, D)
    y = vmap(lambda p, b: functional_call(skeleton, (p, b), (x,)), randomness="different")(params, buffers)
    assert not torch.allclose(y[0], y[1])
    skeleton.eval()
    y = vmap(lambda p, b: functional_call(skeleton, (p, b), (x,)), randomness="different")(params, buffers)
    torch.testing.assert_close(y[0], y[1])
    torch.testing.assert_close(y[0], mixer.eval()(x))


# ------------------------------------------------------------------------------------- position schemes
def scores(mixer, q, k, q_pos, k_pos):
    """Attention logits q_i·k_j after the mixer's position transform, for single vectors at given positions."""
    qp, kp = torch.tensor([float(q_pos)]), torch.tensor([float(k_pos)])
    inv_freq = rope_inv_freq(mixer.head_dim, mixer.base)
    qa, ka = mixer._angles(qp, inv_freq), mixer._angles(kp, inv_freq)
    if mixer.pos == "coca":
        qf, kf = coca_features(q, k, qa, ka)
        return (qf * kf).sum()
    q, k = rotate(q, qa), rotate(k, ka)
    if mixer.pos == "xpos":
        zeta = xpos_zeta(mixer.head_dim).repeat_interleave(2)
        q, k = q * zeta ** (q_pos / mixer.xpos_scale_base), k * zeta ** (-k_pos / mixer.xpos_scale_base)
    return (q * k).sum()


@pytest.mark.parametrize("pos", ["rope", "xpos", "pi", "ntk", "coca"])
def test_scores_depend_only_on_relative_position(pos):
    mixer = build(n_heads=2, pos=pos, rope_scale=2.5)
    q, k = randn(1, 16, seed=1), randn(1, 16, seed=2)
    if pos == "coca":
        k = k[..., :8].abs()
    for m, n in [(5, 2), (40, 3), (9, 9)]:
        base = scores(mixer, q, k, m, n)
        for shift in (1, 17, 1000):
            torch.testing.assert_close(scores(mixer, q, k, m + shift, n + shift), base)
    assert not torch.allclose(scores(mixer, q, k, 5, 2), scores(mixer, q, k, 6, 2))


def test_rope_rotation_preserves_norm_and_position_zero_is_identity():
    x = randn(3, 5, 16)
    angles = torch.arange(5.0)[:, None] * rope_inv_freq(16, 10000.0)
    torch.testing.assert_close(rotate(x, angles).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotate(x, angles)[:, 0], x[:, 0])


def test_alibi_slopes_for_eight_heads_are_powers_of_one_half():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)], dtype=torch.float64))


def test_alibi_slopes_for_non_power_of_two_interleave_the_next_power():
    # Press et al. 2022: 6 heads take the 4-head slopes, then every other of the 8-head slopes
    expected = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected, dtype=torch.float64))


def test_alibi_bias_penalises_distance_linearly():
    # with zero queries every score is the bias alone: weights on key j ∝ exp(-m_h·(i - j)), j <= i
    mixer = build(n_heads=2, pos="alibi")
    with torch.no_grad():
        mixer.q_proj.weight.zero_()
    x = randn(1, 6, D)
    _, _, v = mixer._project(x)  # [1, 2, 6, 16]
    distance = torch.arange(6.0)[:, None] - torch.arange(6.0)  # [i, j]
    logits = (-alibi_slopes(2)[:, None, None] * distance).masked_fill(distance < 0, float("-inf"))
    o = logits.softmax(-1) @ v[0]  # [2, 6, 16]
    torch.testing.assert_close(mixer(x), mixer.o_proj(o.transpose(0, 1).reshape(1, 6, -1)))


@pytest.mark.parametrize("pos", ["rerope", "leaky_rerope"])
def test_rerope_equals_rope_when_every_distance_is_inside_the_window(pos):
    x = randn(B, 12, D)
    rope = build(n_heads=2, pos="rope")(x)
    torch.testing.assert_close(build(n_heads=2, pos=pos, rerope_window=12)(x), rope)
    assert not torch.allclose(build(n_heads=2, pos=pos, rerope_window=3)(x), rope)


def test_leaky_rerope_far_scores_use_the_shrunk_relative_position():
    # a far pair (i - j >= w) must score like RoPE at relative position w + (i - j - w)/k
    w, k, i, j = 4, 8.0, 30, 2
    mixer = build(n_heads=1, pos="leaky_rerope", rerope_window=w, rerope_k=k)
    x = randn(1, i + 1, D)
    q, kk, v = mixer._project(x)
    v = torch.zeros_like(v)
    v[0, 0, j, 0] = 1.0  # read off the weight on key j through v
    weights = mixer._attend(q, kk, v, torch.arange(i + 1), torch.arange(i + 1))[0, 0, :, 0]
    inv_freq = rope_inv_freq(D, 10000.0)
    rel = torch.tensor([float(min(r - c, w) if r - c < w else w + (r - c - w) / k) for r in range(i + 1)
                        for c in range(i + 1)]).view(i + 1, i + 1)
    expected = []
    for r in range(i + 1):
        s = torch.stack([(rotate(q[0, 0, r], rel[r, c] * inv_freq) * kk[0, 0, c]).sum() for c in range(r + 1)])
        expected.append((s / math.sqrt(D)).softmax(-1)[j] if j <= r else torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(weights, torch.stack(expected))


def test_pi_with_scale_one_equals_rope_and_scale_s_divides_positions():
    x = randn(B, 15, D)
    rope = build(n_heads=2)
    torch.testing.assert_close(build(n_heads=2, pos="pi", rope_scale=1.0)(x), rope(x))
    torch.testing.assert_close(build(n_heads=2, pos="pi", train_len=64, max_seq_len=64)(x), rope(x))
    pi = build(n_heads=2, pos="pi", train_len=16, max_seq_len=64)  # s = 4
    q, k, v = pi._project(x)
    torch.testing.assert_close(pi._attend(q, k, v, torch.arange(15), torch.arange(15)),
                               rope._attend(q, k, v, torch.arange(15) / 4, torch.arange(15) / 4))


def test_ntk_scales_the_base_by_s_to_the_d_over_d_minus_2():
    d = D // 2
    assert build(n_heads=2, pos="ntk", rope_scale=1.0).base == 10000.0
    assert build(n_heads=2, pos="ntk", rope_scale=4.0).base == pytest.approx(10000.0 * 4.0 ** (d / (d - 2)))
    # the lowest frequency is interpolated by exactly s, the highest unchanged
    freqs = rope_inv_freq(d, build(n_heads=2, pos="ntk", rope_scale=4.0).base)
    plain = rope_inv_freq(d, 10000.0)
    assert freqs[0] == plain[0]
    torch.testing.assert_close(freqs[-1], plain[-1] / 4)


def test_dynamic_ntk_is_rope_within_train_len_and_rescales_beyond():
    x = randn(B, 20, D)
    rope = build(n_heads=2)(x)
    dyn = build(n_heads=2, pos="ntk_dynamic", train_len=8)
    y = dyn(x)
    torch.testing.assert_close(y[:, :8], rope[:, :8])
    assert not torch.allclose(y[:, 8:], rope[:, 8:])
    # row 12 uses s = 13/8 for itself and its keys: the same as static NTK at that scale on the prefix
    static = build(n_heads=2, pos="ntk", rope_scale=13 / 8)
    torch.testing.assert_close(y[:, 12], static(x[:, :13])[:, 12])
    torch.testing.assert_close(build(n_heads=2, pos="ntk_dynamic", train_len=64)(x), rope)


def test_learned_positions_reject_sequences_longer_than_max_seq_len():
    mixer = build(pos="learned", max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        mixer(randn(1, 9, D))


# ------------------------------------------------------------------------- recurrent form, every scheme
SCHEME_KWARGS = dict(rope_scale=2.0, rerope_window=5, rerope_k=4.0, train_len=24, xpos_scale_base=32.0)


@pytest.mark.parametrize("window", [None, 16], ids=["full", "window16"])
@pytest.mark.parametrize("length", [1, 63, 100])
@pytest.mark.parametrize("pos", POSITIONS)
def test_every_scheme_steps_like_its_parallel_form(pos, length, window):
    mixer = build(n_heads=4, n_kv_heads=2, pos=pos, window=window, max_seq_len=128, **SCHEME_KWARGS)
    x = randn(1, length, D, seed=length)
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    ys, state = run_steps(mixer, x)
    torch.testing.assert_close(ys, y, rtol=1e-6, atol=1e-8)
    assert state_numel(state, 1) == mixer.state_size(length)


def test_window_cache_stops_growing():
    mixer = build(n_heads=2, window=4)
    _, state = run_steps(mixer, randn(B, 9, D))
    assert state["k"].shape[2] == 4 and mixer.state_size(9) == 2 * 2 * 16 * 4


def test_coca_caches_one_t_per_rotary_pair():
    mixer = build(n_heads=2, pos="coca")
    assert mixer.state_size(10) == 2 * (8 + 16) * 10


# --------------------------------------------------------------------------------------------------- MLA
@pytest.mark.parametrize("q_lora_rank", [None, 12])
@pytest.mark.parametrize("length", [1, 63])
def test_mla_latent_decoding_equals_the_parallel_form(q_lora_rank, length):
    torch.manual_seed(0)
    mla = MLA(D, n_heads=4, q_lora_rank=q_lora_rank, kv_lora_rank=20, qk_rope_head_dim=6).double()
    x = randn(B, length, D, seed=5)
    ys, state = run_steps(mla, x)
    torch.testing.assert_close(ys, mla(x), rtol=1e-6, atol=1e-8)
    assert set(state) == {"c_kv", "k_rope"}
    assert state_numel(state, B) == mla.state_size(length) == (20 + 6) * length


def test_mla_default_cache_is_smaller_than_mha():
    mla = MLA(D, n_heads=4)  # d_c = 4·8, d_R = 4 (paper ratios)
    assert mla.state_size(10) == (32 + 4) * 10 < build(n_heads=4).state_size(10)


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,name", [
    (dict(n_heads=3), "n_heads"),
    (dict(n_heads=0), "n_heads"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(n_heads=4, n_kv_heads=0), "n_kv_heads"),
    (dict(pos="sinusoid"), "pos"),
    (dict(head_dim=5), "head_dim"),
    (dict(window=0), "window"),
    (dict(rope_base=0.0), "rope_base"),
    (dict(rope_scale=-1.0), "rope_scale"),
    (dict(xpos_scale_base=0.0), "xpos_scale_base"),
    (dict(train_len=0), "train_len"),
    (dict(rerope_window=0), "rerope_window"),
    (dict(rerope_k=0.5), "rerope_k"),
])
def test_bad_attention_kwargs_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        Attention(D, **kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_heads=5), "n_heads"),
    (dict(kv_lora_rank=0), "kv_lora_rank"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(qk_rope_head_dim=3), "qk_rope_head_dim"),
    (dict(rope_base=-2.0), "rope_base"),
])
def test_bad_mla_kwargs_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        MLA(D, **kwargs)


def test_packed_sdpa_folds_the_members_into_one_call_with_each_members_gradients():
    # what a pack of attention models runs on CUDA, checked here on the CPU through the same autograd.Function
    from probe.mixers.attention import _FoldedSDPA, attention_mask
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 2, 37, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dout = torch.randn(3, 2, 2, 37, 8, generator=g, dtype=torch.float64)
    for allowed in (None, attention_mask(37, 37, window=5)):
        out = torch.func.vmap(lambda a, b, c: _FoldedSDPA.apply(a, b, c, allowed, None))(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        for i in range(3):
            qi, ki, vi = (t[i].detach().requires_grad_() for t in (q, k, v))
            ref = (F.scaled_dot_product_attention(qi, ki, vi, is_causal=True) if allowed is None
                   else F.scaled_dot_product_attention(qi, ki, vi, attn_mask=allowed))
            torch.testing.assert_close(out[i], ref)
            for got, want in zip(grads, torch.autograd.grad(ref, (qi, ki, vi), dout[i])):
                torch.testing.assert_close(got[i], want)


@pytest.mark.parametrize("scheme", ["pi", "ntk", "ntk_dynamic", "rerope", "leaky_rerope"])
def test_a_training_free_scheme_changes_nothing_within_the_training_length_and_reads_further_its_own_way(scheme):
    from probe.mixers.attention import evaluated_with
    torch.manual_seed(0)
    trained = Attention(16, n_heads=2, max_seq_len=64).double()  # trained with plain RoPE at length 16
    x = randn(2, 48, 16, seed=3)
    plain = trained(x)
    with evaluated_with(trained, scheme, seq_len=48, train_len=16):
        read = trained(x)
        assert trained.pos == ("rope" if scheme in ("pi", "ntk") else scheme)
    # causal: the first positions see only keys within the training length... only where the scheme keeps them
    if scheme in ("ntk_dynamic", "rerope", "leaky_rerope"):
        torch.testing.assert_close(read[:, :16], plain[:, :16])  # within train_len (and rerope's window) as RoPE
    assert not torch.allclose(read[:, 40:], plain[:, 40:]), "far positions read differently"
    torch.testing.assert_close(trained(x), plain)  # restored after the block
    scheme_alone = dict(pi="attention_pi", ntk="attention_ntk").get(scheme)
    if scheme_alone:  # the same map as a layer built with that scheme for 48 tokens trained at 16
        built = MIXERS[scheme_alone].build(16, n_heads=2, max_seq_len=48, train_len=16).double()
        built.load_state_dict(trained.state_dict())
        torch.testing.assert_close(read, built(x))


def test_rerope_scales_queries_by_log_n_only_past_the_training_length():
    torch.manual_seed(0)
    layer = MIXERS["attention_rerope"].build(16, n_heads=2, max_seq_len=64, train_len=16).double()
    x = randn(1, 40, 16, seed=4)
    scaled = layer(x)
    layer.log_n_scale = False
    plain = layer(x)
    torch.testing.assert_close(scaled[:, :16], plain[:, :16])
    assert not torch.allclose(scaled[:, 20:], plain[:, 20:])


# --------------------------------------------------------------------------- the fused kernel's path
@pytest.mark.parametrize("pos, heads, kv_heads, window, bias, extra", [
    ("rope", 2, 1, None, False, {}), ("alibi", 4, 2, 5, False, {}), ("ntk", 1, 1, None, True, {}),
    ("learned", 2, 2, 3, False, {}), ("xpos", 2, 1, None, False, {"xpos_scale_base": 16.0}),
    ("rerope", 2, 2, None, False, {"rerope_window": 5}), ("leaky_rerope", 4, 2, 20, False, {"rerope_window": 6}),
    ("rope", 2, 1, None, False, {"log_n_scale": True, "train_len": 16}),
    ("alibi", 2, 2, None, False, {"log_n_scale": True, "train_len": 16}),
    ("leaky_rerope", 2, 1, None, False, {"log_n_scale": True, "train_len": 16, "rerope_window": 6})])
def test_the_fused_kernel_path_equals_the_separate_projections_rotation_and_core(pos, heads, kv_heads, window,
                                                                                 bias, extra, monkeypatch, poisoned):
    """PROBE_OPS=triton sends the layer through probe.ops.causal_attention (its Triton kernel, through the
    interpreter on a CPU): q/k rows taken in half-split order, rotation and ALiBi inside the kernel. It must give
    the outputs and every parameter gradient of the path through separate q/k/v, `rotate` and the core, for one
    layer and for a pack of three under vmap (ALiBi's slopes are then each member's own stacked buffer)."""
    kwargs = dict(n_heads=heads, n_kv_heads=kv_heads, pos=pos, window=window, bias=bias, max_seq_len=64, **extra)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = [build(seed, **kwargs).float().to(device) for seed in range(3)]
    x = randn(3, B, 37, D, seed=4).float().to(device)

    def run(forced):
        monkeypatch.setenv("PROBE_OPS", forced)
        outs = [layer(x[i]) for i, layer in enumerate(layers)]
        grads = [torch.autograd.grad(o.square().sum(), list(layer.parameters())) for o, layer in zip(outs, layers)]
        params, buffers = torch.func.stack_module_state(layers)
        packed = torch.func.vmap(lambda p, b, xi: torch.func.functional_call(layers[0], (p, b), (xi,)))(
            params, buffers, x)
        packed_grads = torch.autograd.grad(packed.square().sum(), list(params.values()))
        return outs, grads, packed, packed_grads

    ref_outs, ref_grads, ref_packed, ref_packed_grads = run("ref")
    launches = []
    from probe.ops.attention import kernel as attention_kernel
    original = attention_kernel._CausalAttention.forward
    monkeypatch.setattr(attention_kernel._CausalAttention, "forward",
                        staticmethod(lambda *a: launches.append(1) or original(*a)))
    outs, grads, packed, packed_grads = run("triton")
    assert len(launches) == 4, "each layer's call, then the pack's in one launch"
    for o, o_ref in zip(outs + [packed], ref_outs + [ref_packed]):
        torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    for g, g_ref in zip([t for gs in grads for t in gs] + list(packed_grads),
                        [t for gs in ref_grads for t in gs] + list(ref_packed_grads)):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
