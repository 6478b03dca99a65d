"""Every registered task, tested from the registry, plus each task's answer recomputed from its inputs.

Specification: inputs and targets are [n, L] int64 with targets IGNORE or a token; generation is a pure
function of (config, n, seed) that never touches torch's global RNG; every evaluation length generates;
every bad config raises TaskConfigError naming the field. Per task, the scored answer is recomputed from the
inputs alone, by a plain loop written independently of the vectorised generator.
"""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import IGNORE, TASKS, TaskConfigError
from tasks import rng
from tasks.copying import Copying
from tasks.mqar import MQAR
from tasks.order import Order
from tasks.passkey import Passkey

FEW = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**40)
sizes = st.integers(1, 16)


# -- config strategies: one per registered task, each drawing only configs that fit --------------------------
@st.composite
def mqar_configs(draw):
    N = draw(st.integers(1, 8))
    return MQAR(seq_len=draw(st.integers(4 * N, 4 * N + 24)), vocab_size=draw(st.integers(2 * N + 2, 64)),
                num_kv_pairs=N, power_a=draw(st.sampled_from([0.01, 0.5, 1.0, 3.0])),
                random_non_queries=draw(st.booleans()))


@st.composite
def passkey_configs(draw):
    k = draw(st.integers(1, 6))
    filler = draw(st.sampled_from(["random", "constant"]))
    return Passkey(seq_len=draw(st.integers(2 * k + 1, 2 * k + 40)), num_digits=k, filler=filler,
                   vocab_size=draw(st.integers(14 if filler == "random" else 13, 40)),
                   num_depth_buckets=draw(st.integers(1, 12)))


@st.composite
def copying_configs(draw):
    mode = draw(st.sampled_from(["copy", "selective"]))
    K = draw(st.integers(1, 12))
    A = draw(st.integers(1, 20))
    return Copying(seq_len=draw(st.integers(2 * K, 2 * K + 30)), vocab_size=draw(st.integers(A + 2, A + 10)),
                   mode=mode, string_len=K, num_tokens=K, alphabet_size=A, vary_length=draw(st.booleans()))


@st.composite
def order_configs(draw):
    probe = draw(st.sampled_from(["first", "reverse", "last_write"]))
    buckets = draw(st.integers(1, 10))
    if probe == "first":
        filler = draw(st.sampled_from(["constant", "random"]))
        return Order(probe=probe, seq_len=draw(st.integers(3, 48)), filler=filler,
                     vocab_size=draw(st.integers(5, 20)), num_distance_buckets=buckets)
    if probe == "reverse":
        s, A = draw(st.integers(1, 12)), draw(st.integers(1, 20))
        return Order(probe=probe, string_len=s, alphabet_size=A, seq_len=draw(st.integers(2 * s, 2 * s + 20)),
                     vocab_size=4 + A)
    W, K = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    V = draw(st.integers(max(W, 2), 10))
    return Order(probe=probe, num_writes=W, num_keys=K, num_values=V, num_distance_buckets=buckets,
                 seq_len=draw(st.integers(2 * W + 2, 2 * W + 30)), vocab_size=4 + K + V)


CONFIGS = {"mqar": mqar_configs(), "passkey": passkey_configs(), "copying": copying_configs(),
           "order": order_configs()}
NAMES = sorted(TASKS)


def test_every_registered_task_has_a_config_strategy():
    assert sorted(CONFIGS) == NAMES
    assert all(cls.name == name and cls.chance for name, cls in TASKS.items())


def same(a, b) -> bool:
    return (torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
            and a.slices.keys() == b.slices.keys() and all(torch.equal(a.slices[k], b.slices[k]) for k in a.slices))


# -- the contract every task keeps ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@FEW
@given(data=st.data(), n=sizes, seed=seeds)
def test_examples_have_the_shared_layout(name, data, n, seed):
    cfg = data.draw(CONFIGS[name])
    ex = cfg.generate(n, seed)
    assert ex.inputs.shape == ex.targets.shape == (n, cfg.seq_len)
    assert ex.inputs.dtype == ex.targets.dtype == torch.int64
    assert ((ex.inputs >= 0) & (ex.inputs < cfg.vocab_size)).all()
    scored = ex.targets != IGNORE
    assert ((ex.targets[scored] >= 0) & (ex.targets[scored] < cfg.vocab_size)).all()
    assert scored.any(dim=1).all(), "every example scores at least one position"
    for label in ex.slices.values():
        assert label.shape == (n,) and label.dtype == torch.int64


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(data=st.data(), n=sizes, seed=seeds)
def test_same_seed_gives_identical_examples_and_a_prefix_of_a_larger_batch(name, data, n, seed):
    cfg = data.draw(CONFIGS[name])
    ex = cfg.generate(n, seed)
    assert same(ex, cfg.generate(n, seed))
    assert same(ex, cfg.generate(n + 3, seed)[:n])  # example i depends only on (config, seed, i)


@pytest.mark.parametrize("name", NAMES)
def test_different_seeds_give_different_examples(name):
    cfg = TASKS[name]()
    a, b = cfg.generate(64, 0), cfg.generate(64, 1)
    assert not torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs[0], a.inputs[1]), "examples within a batch differ too"


@pytest.mark.parametrize("name", NAMES)
def test_generation_never_uses_torch_global_rng(name):
    cfg = TASKS[name]()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = cfg.generate(16, 7)
    assert torch.equal(torch.get_rng_state(), state), "generate consumed torch's global RNG"
    torch.manual_seed(12345)
    torch.rand(100)
    assert same(first, cfg.generate(16, 7))


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(data=st.data(), seed=seeds)
def test_at_length_generates_at_every_eval_length(name, data, seed):
    base = data.draw(CONFIGS[name])
    L = base.seq_len
    cfg = dataclasses.replace(base, eval_seq_lens=(2 * L, L, 3 * L + 1))
    configs = cfg.eval_configs()
    assert [c.seq_len for c in configs] == [L, 2 * L, 3 * L + 1]  # training length first, deduplicated
    assert configs[0] == base
    assert cfg.max_seq_len == 3 * L + 1
    for c in configs:
        assert c.eval_seq_lens == ()
        ex = c.generate(3, seed)
        assert ex.inputs.shape == (3, c.seq_len)
        assert (ex.targets != IGNORE).any(dim=1).all()


def test_generate_rejects_an_empty_batch():
    with pytest.raises(TaskConfigError, match=r"n=0"):
        MQAR().generate(0, 0)


# -- each bad config names its field ------------------------------------------------------------------------
BAD = [
    (MQAR, dict(seq_len=0), "seq_len"),
    (MQAR, dict(vocab_size=0), "vocab_size"),
    (MQAR, dict(num_kv_pairs=0), "num_kv_pairs"),
    (MQAR, dict(num_kv_pairs=4, vocab_size=9), "vocab_size"),
    (MQAR, dict(num_kv_pairs=4, seq_len=15), "seq_len"),
    (MQAR, dict(power_a=0.0), "power_a"),
    (MQAR, dict(eval_seq_lens=(0,)), "eval_seq_lens"),
    (MQAR, dict(eval_seq_lens=(8,)), "eval_seq_lens"),
    (MQAR, dict(eval_num_kv_pairs=(8,)), "eval_num_kv_pairs"),
    (MQAR, dict(eval_seq_lens=(128,), eval_num_kv_pairs=(40,)), "eval_seq_lens"),
    (Passkey, dict(num_digits=0), "num_digits"),
    (Passkey, dict(num_depth_buckets=0), "num_depth_buckets"),
    (Passkey, dict(filler="noise"), "filler"),
    (Passkey, dict(vocab_size=13), "vocab_size"),
    (Passkey, dict(vocab_size=12, filler="constant"), "vocab_size"),
    (Passkey, dict(num_digits=5, seq_len=10), "seq_len"),
    (Passkey, dict(num_digits=5, eval_seq_lens=(10,)), "eval_seq_lens"),
    (Copying, dict(mode="paste"), "mode"),
    (Copying, dict(string_len=0), "string_len"),
    (Copying, dict(num_tokens=-1), "num_tokens"),
    (Copying, dict(alphabet_size=0), "alphabet_size"),
    (Copying, dict(alphabet_size=16, vocab_size=17), "vocab_size"),
    (Copying, dict(string_len=16, seq_len=31), "string_len"),
    (Copying, dict(mode="selective", num_tokens=8, seq_len=15), "num_tokens"),
    (Copying, dict(string_len=16, eval_seq_lens=(31,)), "eval_seq_lens"),
    (Order, dict(probe="middle"), "probe"),
    (Order, dict(filler="noise"), "filler"),
    (Order, dict(num_distance_buckets=0), "num_distance_buckets"),
    (Order, dict(string_len=0), "string_len"),
    (Order, dict(alphabet_size=0), "alphabet_size"),
    (Order, dict(num_writes=0), "num_writes"),
    (Order, dict(num_keys=1), "num_keys"),
    (Order, dict(num_values=1), "num_values"),
    (Order, dict(probe="first", seq_len=2), "seq_len"),
    (Order, dict(probe="first", filler="random", vocab_size=4), "vocab_size"),
    (Order, dict(probe="reverse", alphabet_size=16, vocab_size=19), "vocab_size"),
    (Order, dict(probe="reverse", string_len=8, seq_len=15), "string_len"),
    (Order, dict(probe="last_write", num_keys=8, num_values=16, vocab_size=27), "vocab_size"),
    (Order, dict(probe="last_write", num_writes=5, num_values=4), "num_values"),
    (Order, dict(probe="last_write", num_writes=3, seq_len=7), "num_writes"),
    (Order, dict(probe="first", eval_seq_lens=(2,)), "eval_seq_lens"),
]


@pytest.mark.parametrize("cls, kwargs, field", BAD, ids=[f"{c.name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                                                         for c, kw, _ in BAD])
def test_bad_config_raises_naming_the_field(cls, kwargs, field):
    with pytest.raises(TaskConfigError) as err:
        cls(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{cls.name}: ") and f"{field}=" in message and "\n" not in message


# -- MQAR ---------------------------------------------------------------------------------------------------------
@FEW
@given(cfg=mqar_configs(), n=sizes, seed=seeds)
def test_mqar_every_key_queried_once_and_answered_with_its_value(cfg, n, seed):
    ex = cfg.generate(n, seed)
    N, half = cfg.num_kv_pairs, cfg.vocab_size // 2
    for inputs, targets in zip(ex.inputs.tolist(), ex.targets.tolist()):
        keys, values = inputs[0:2 * N:2], inputs[1:2 * N:2]
        assert len(set(keys)) == N and all(1 <= k < half for k in keys)
        assert all(half <= v < cfg.vocab_size for v in values)
        bound = dict(zip(keys, values))
        queries = [(t, inputs[t], targets[t]) for t in range(cfg.seq_len) if targets[t] != IGNORE]
        assert sorted(key for _, key, _ in queries) == sorted(keys)
        for t, key, value in queries:
            assert t >= 2 * N and (t - 2 * N) % 2 == 0  # in the query region, at the start of a slot
            assert value == bound[key]
    assert (ex.slices["num_kv_pairs"] == N).all()


def test_mqar_eval_num_kv_pairs_sets_the_pairs_at_each_length():
    cfg = MQAR(seq_len=64, num_kv_pairs=4, eval_seq_lens=(128, 256, 64), eval_num_kv_pairs=(16, 32, 8))
    configs = cfg.eval_configs()
    assert [(c.seq_len, c.num_kv_pairs) for c in configs] == [(64, 4), (128, 16), (256, 32)]
    for c in configs:
        ex = c.generate(4, 0)
        assert ((ex.targets != IGNORE).sum(dim=1) == c.num_kv_pairs).all()
        assert (ex.slices["num_kv_pairs"] == c.num_kv_pairs).all()
    assert [c.num_kv_pairs for c in MQAR(num_kv_pairs=4, eval_seq_lens=(128,)).eval_configs()] == [4, 4]


# -- passkey ------------------------------------------------------------------------------------------------
@FEW
@given(cfg=passkey_configs(), n=sizes, seed=seeds)
def test_passkey_digits_are_recoverable_from_the_input_and_are_the_targets(cfg, n, seed):
    ex = cfg.generate(n, seed)
    k, L = cfg.num_digits, cfg.seq_len
    for inputs, targets, depth in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices["depth"].tolist()):
        assert inputs.count(1) == 1 and inputs.count(2) == 1 and inputs[L - k] == 2  # one KEY, one QUERY
        at = inputs.index(1)
        key = inputs[at + 1:at + 1 + k]
        assert all(3 <= d < 13 for d in key)
        assert targets[L - k:] == key and targets[:L - k] == [IGNORE] * (L - k)
        assert inputs[L - k + 1:] == key[:-1]  # teacher forcing
        filler = inputs[:at] + inputs[at + 1 + k:L - k]
        assert all(t == 0 for t in filler) if cfg.filler == "constant" else all(t >= 13 for t in filler)
        assert depth == at * cfg.num_depth_buckets // (L - 2 * k)
    assert (ex.slices["num_digits"] == k).all()


def test_passkey_depth_covers_every_bucket():
    ex = Passkey(seq_len=64, num_depth_buckets=10).generate(400, 3)
    assert torch.bincount(ex.slices["depth"], minlength=10).min() > 20


# -- copying -----------------------------------------------------------------------------------------------
@FEW
@given(cfg=copying_configs(), n=sizes, seed=seeds)
def test_copying_targets_reproduce_the_string_or_the_data_tokens_in_order(cfg, n, seed):
    ex = cfg.generate(n, seed)
    L, K = cfg.seq_len, cfg.string_len
    slice_name = "string_len" if cfg.mode == "copy" else "num_tokens"
    for inputs, targets, k in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices[slice_name].tolist()):
        assert inputs.count(1) == 1  # one SEP
        sep = inputs.index(1)
        if cfg.mode == "copy":
            data = inputs[:sep]
        else:
            assert sep == L - K
            data = [t for t in inputs[:sep] if t != 0]  # the noise token is 0
        assert all(2 <= t < 2 + cfg.alphabet_size for t in data)
        assert len(data) == k and (1 <= k <= K if cfg.vary_length else k == K)
        assert targets == [IGNORE] * sep + data + [IGNORE] * (L - sep - k)
        assert inputs[sep + 1:sep + k] == data[:-1] and all(t == 0 for t in inputs[sep + k:])


def test_copying_at_length_scales_only_with_scale_with_length():
    fixed = Copying(seq_len=64, string_len=16, eval_seq_lens=(256,))
    scaled = Copying(seq_len=64, string_len=16, num_tokens=8, scale_with_length=True, eval_seq_lens=(256,))
    assert fixed.eval_configs()[1].string_len == 16
    assert (scaled.eval_configs()[1].string_len, scaled.eval_configs()[1].num_tokens) == (64, 32)


def test_selective_copying_positions_spread_over_the_noise_region():
    ex = Copying(mode="selective", seq_len=64, num_tokens=8).generate(200, 0)
    used = (ex.inputs[:, :56] != 0).float().mean(dim=0)  # [56], share of examples with a data token there
    assert used.min() > 0.05 and used.max() < 0.3  # 8/56 ≈ 0.14 everywhere


# -- order ---------------------------------------------------------------------------------------------------
def check_first(cfg, inputs, targets, slices):
    L = cfg.seq_len
    assert inputs.count(2) == 1 and inputs.count(3) == 1 and inputs[-1] == 1
    a, b = inputs.index(2), inputs.index(3)
    assert targets == [IGNORE] * (L - 1) + [2 if a < b else 3]
    assert slices["distance"] == (abs(a - b) - 1) * cfg.num_distance_buckets // (L - 2)


def check_reverse(cfg, inputs, targets, slices):
    s = cfg.string_len
    assert inputs[s] == 1
    string = inputs[:s]
    assert targets[s:2 * s] == string[::-1] and set(targets[:s] + targets[2 * s:]) <= {IGNORE}
    assert inputs[s + 1:2 * s] == string[::-1][:-1]
    assert slices["string_len"] == s


def check_last_write(cfg, inputs, targets, slices):
    L, P = cfg.seq_len, (cfg.seq_len - 2) // 2
    assert inputs[-2] == 1 and targets[:-1] == [IGNORE] * (L - 1)
    key = inputs[-1]
    pairs = inputs[L - 2 - 2 * P:L - 2]
    writes = [(g, pairs[2 * g + 1]) for g in range(P) if pairs[2 * g] == key]
    assert len(writes) == cfg.num_writes
    assert len({v for _, v in writes}) == cfg.num_writes  # every rebinding changes the value
    assert targets[-1] == writes[-1][1]
    assert slices["distance"] == (P - 1 - writes[-1][0]) * cfg.num_distance_buckets // P
    assert slices["num_writes"] == cfg.num_writes


@FEW
@given(cfg=order_configs(), n=sizes, seed=seeds)
def test_order_answer_is_right_by_construction(cfg, n, seed):
    ex = cfg.generate(n, seed)
    check = {"first": check_first, "reverse": check_reverse, "last_write": check_last_write}[cfg.probe]
    for i in range(n):
        check(cfg, ex.inputs[i].tolist(), ex.targets[i].tolist(), {k: v[i].item() for k, v in ex.slices.items()})


def test_order_first_answers_are_balanced_and_distances_cover_every_bucket():
    ex = Order(probe="first", seq_len=64, num_distance_buckets=8).generate(800, 0)
    assert 0.4 < (ex.targets[:, -1] == 2).float().mean() < 0.6
    assert torch.bincount(ex.slices["distance"], minlength=8).min() > 60  # distance is uniform: ~100 per bucket


# -- rng -----------------------------------------------------------------------------------------------------
def mix32_reference(x: int) -> int:
    m = 0xFFFFFFFF
    x &= m
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_rng_hash_matches_exact_integer_arithmetic():
    x = torch.cat([torch.arange(1000), torch.tensor([0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0x7FFFFFFF])])
    assert rng._mix32(x).tolist() == [mix32_reference(v) for v in x.tolist()]


def test_rng_uniform_is_in_unit_interval_with_53_bits():
    u = rng.uniform(0, "test", torch.arange(100_000))
    assert u.dtype == torch.float64 and u.min() >= 0 and u.max() < 1
    assert ((u * 2**24).frac() != 0).float().mean() > 0.99  # not float32 values in disguise


def test_rng_sample_without_replacement_is_distinct_and_uniform_over_pairs():
    s = rng.sample_without_replacement(50_000, 2, 3, 10, 0, "test", "cpu") - 3
    assert (s[:, 0] != s[:, 1]).all() and s.min() == 0 and s.max() == 6
    counts = torch.bincount(s[:, 0] * 7 + s[:, 1], minlength=49).view(7, 7).double()
    off_diagonal = counts[~torch.eye(7, dtype=torch.bool)] / (50_000 / 42)
    assert off_diagonal.min() > 0.88 and off_diagonal.max() < 1.12  # ~3% noise per cell
    with pytest.raises(ValueError):
        rng.sample_without_replacement(1, 5, 0, 4, 0, "test", "cpu")
