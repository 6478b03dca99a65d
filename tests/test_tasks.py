"""Every registered task, tested from the registry, plus each task's answer recomputed from its inputs.

Specification: inputs and targets are [n, L] int64 with targets IGNORE or a token; generation is a pure
function of (config, n, seed) that never touches torch's global RNG; every evaluation length generates;
every bad config raises TaskConfigError naming the field. Per task, the scored answer is recomputed from the
inputs alone, by a plain loop written independently of the vectorised generator.
"""
import dataclasses
import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import IGNORE, TASKS, TaskConfigError
from tasks import rng
from tasks.compositional_mqar import CompositionalMQAR
from tasks.compression import Compression
from tasks.copying import Copying
from tasks.forgetting_mqar import ForgettingMQAR
from tasks.fuzzy_recall import FuzzyRecall
from tasks.in_context_recall import InContextRecall, NoisyRecall
from tasks.memorization import Memorization
from tasks.mqar import MQAR
from tasks.order import Order
from tasks.passkey import Passkey
from tasks.phonebook import PhoneBook
from tasks.state_tracking import StateTracking

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


GROUP_ORDERS = {"parity": 2, "S3": 6, "S4": 24, "A4": 12, "S5": 120, "A5": 60}


@st.composite
def state_tracking_configs(draw):
    group = draw(st.sampled_from(["parity", "modular", "S3", "S4", "A4", "S5", "A5"]))
    modulus = draw(st.integers(2, 9))
    order = modulus if group == "modular" else GROUP_ORDERS[group]
    return StateTracking(seq_len=draw(st.integers(1, 40)), vocab_size=draw(st.integers(order + 1, order + 5)),
                         group=group, modulus=modulus, score=draw(st.sampled_from(["every", "last"])),
                         vary_length=draw(st.booleans()), num_length_buckets=draw(st.integers(1, 10)))


@st.composite
def in_context_recall_configs(draw, noisy=False):
    multi = draw(st.booleans())
    noise = draw(st.integers(1, 6)) if noisy else draw(st.sampled_from([0, 0, 3]))
    frac = draw(st.sampled_from([0.2, 0.5, 0.9])) if noisy or noise else 0.0
    cls = NoisyRecall if noisy else InContextRecall
    return cls(seq_len=draw(st.integers(4, 40)), vocab_size=draw(st.integers(3 + noise, 16 + noise)),
               multi_query=multi, noise_vocab_size=noise, frac_noise=frac)


@st.composite
def fuzzy_recall_configs(draw):
    K, V, multi = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.booleans())
    special = 1 if multi else 2
    return FuzzyRecall(k_motif_size=K, v_motif_size=V, multi_query=multi,
                       vocab_size=draw(st.integers(special + max(2 * K, 2 * V - 1), 14)),
                       seq_len=draw(st.integers(2 * (K + V) + special - 1, 40)))


@st.composite
def memorization_configs(draw):
    return Memorization(seq_len=draw(st.integers(2, 30)), vocab_size=draw(st.integers(3, 40)),
                        map_seed=draw(st.integers(0, 2**31)))


@st.composite
def forgetting_mqar_configs(draw):
    N = draw(st.integers(1, 6))
    M = draw(st.integers(0, N))
    return ForgettingMQAR(num_kv_pairs=N, num_overwrites=M, seq_len=draw(st.integers(4 * N + 2 * M, 4 * N + 2 * M + 20)),
                          vocab_size=draw(st.integers(2 * N + 2, 40)), vary_overwrites=draw(st.booleans()),
                          power_a=draw(st.sampled_from([0.01, 1.0])), random_non_queries=draw(st.booleans()))


@st.composite
def phonebook_configs(draw):
    # at least 16 names: enough for the entries of the 3x longer evaluation book in the contract tests
    A, D = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    names = draw(st.integers(16, 20)) if A == 1 else draw(st.integers(4, 8))
    entry, query = A + D + 2, A + D + 1
    return PhoneBook(name_len=A, number_len=D, name_vocab_size=names, vocab_size=14 + names + draw(st.integers(0, 3)),
                     seq_len=draw(st.integers(query + entry, query + 4 * entry + entry - 1)),
                     num_depth_buckets=draw(st.integers(1, 6)))


@st.composite
def compositional_mqar_configs(draw):
    g = draw(st.integers(1, 4))
    N = g * g
    return CompositionalMQAR(num_kv_pairs=N, seq_len=draw(st.integers(6 * N, 6 * N + 24)),
                             vocab_size=draw(st.integers(max(3 * (g + 1), 3 * N - 2), 3 * N + 30)),
                             power_a=draw(st.sampled_from([0.01, 0.5, 1.0, 3.0])),
                             random_non_queries=draw(st.booleans()))


@st.composite
def compression_configs(draw):
    noise = draw(st.sampled_from([0, 0, 1, 4]))
    frac = draw(st.sampled_from([0.0, 0.3, 0.9])) if noise else 0.0
    return Compression(seq_len=draw(st.integers(2, 40)), vocab_size=draw(st.integers(2 + noise, 12 + noise)),
                       noise_vocab_size=noise, frac_noise=frac)


CONFIGS = {"mqar": mqar_configs(), "passkey": passkey_configs(), "copying": copying_configs(),
           "order": order_configs(), "state_tracking": state_tracking_configs(),
           "in_context_recall": in_context_recall_configs(), "noisy_recall": in_context_recall_configs(noisy=True),
           "fuzzy_recall": fuzzy_recall_configs(), "memorization": memorization_configs(),
           "forgetting_mqar": forgetting_mqar_configs(), "phonebook": phonebook_configs(),
           "compositional_mqar": compositional_mqar_configs(), "compression": compression_configs()}
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
    (StateTracking, dict(group="S7"), "group"),
    (StateTracking, dict(score="first"), "score"),
    (StateTracking, dict(group="modular", modulus=1), "modulus"),
    (StateTracking, dict(num_length_buckets=0), "num_length_buckets"),
    (StateTracking, dict(group="S5", vocab_size=120), "vocab_size"),
    (StateTracking, dict(group="modular", modulus=200), "vocab_size"),
    (InContextRecall, dict(frac_noise=1.0), "frac_noise"),
    (InContextRecall, dict(frac_noise=0.2), "noise_vocab_size"),
    (InContextRecall, dict(noise_vocab_size=-1), "noise_vocab_size"),
    (InContextRecall, dict(vocab_size=1), "vocab_size"),
    (InContextRecall, dict(vocab_size=2, multi_query=False), "vocab_size"),
    (InContextRecall, dict(seq_len=2), "seq_len"),
    (InContextRecall, dict(seq_len=3, multi_query=False), "seq_len"),
    (NoisyRecall, dict(frac_noise=0.0), "frac_noise"),
    (FuzzyRecall, dict(k_motif_size=0), "k_motif_size"),
    (FuzzyRecall, dict(v_motif_size=0), "v_motif_size"),
    (FuzzyRecall, dict(k_motif_size=4, vocab_size=8), "vocab_size"),
    (FuzzyRecall, dict(k_motif_size=40, vocab_size=200), "k_motif_size"),
    (FuzzyRecall, dict(seq_len=11), "seq_len"),
    (FuzzyRecall, dict(eval_seq_lens=(8,)), "eval_seq_lens"),
    (Memorization, dict(vocab_size=2), "vocab_size"),
    (Memorization, dict(seq_len=1), "seq_len"),
    (Memorization, dict(map_seed=-1), "map_seed"),
    (ForgettingMQAR, dict(num_kv_pairs=0), "num_kv_pairs"),
    (ForgettingMQAR, dict(num_overwrites=-1), "num_overwrites"),
    (ForgettingMQAR, dict(num_kv_pairs=2, num_overwrites=3), "num_overwrites"),
    (ForgettingMQAR, dict(vocab_size=9), "vocab_size"),
    (ForgettingMQAR, dict(seq_len=19), "seq_len"),
    (ForgettingMQAR, dict(power_a=0.0), "power_a"),
    (PhoneBook, dict(name_len=0), "name_len"),
    (PhoneBook, dict(number_len=0), "number_len"),
    (PhoneBook, dict(num_depth_buckets=0), "num_depth_buckets"),
    (PhoneBook, dict(vocab_size=45), "vocab_size"),
    (PhoneBook, dict(seq_len=14), "seq_len"),
    (PhoneBook, dict(name_vocab_size=3, seq_len=256), "name_vocab_size"),
    (PhoneBook, dict(name_len=20, vocab_size=64, name_vocab_size=32), "name_len"),
    (CompositionalMQAR, dict(num_kv_pairs=0), "num_kv_pairs"),
    (CompositionalMQAR, dict(num_kv_pairs=8), "num_kv_pairs"),
    (CompositionalMQAR, dict(num_kv_pairs=4, vocab_size=9), "vocab_size"),
    (CompositionalMQAR, dict(num_kv_pairs=1, vocab_size=5), "vocab_size"),
    (CompositionalMQAR, dict(num_kv_pairs=4, seq_len=23), "seq_len"),
    (CompositionalMQAR, dict(power_a=0.0), "power_a"),
    (CompositionalMQAR, dict(eval_num_kv_pairs=(16,)), "eval_num_kv_pairs"),
    (CompositionalMQAR, dict(eval_seq_lens=(128,), eval_num_kv_pairs=(10,)), "eval_seq_lens"),
    (CompositionalMQAR, dict(eval_seq_lens=(128,), eval_num_kv_pairs=(25,)), "eval_seq_lens"),
    (Compression, dict(seq_len=1), "seq_len"),
    (Compression, dict(vocab_size=1), "vocab_size"),
    (Compression, dict(noise_vocab_size=-1), "noise_vocab_size"),
    (Compression, dict(noise_vocab_size=15), "vocab_size"),
    (Compression, dict(frac_noise=1.0, noise_vocab_size=4), "frac_noise"),
    (Compression, dict(frac_noise=-0.1, noise_vocab_size=4), "frac_noise"),
    (Compression, dict(frac_noise=0.2), "noise_vocab_size"),
    (Compression, dict(eval_seq_lens=(1,)), "eval_seq_lens"),
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


# -- chance: no input-free guess beats the stated level -------------------------------------------------------
def assert_targets_uniform_over(ex, answers: set, sigmas: float = 5.0):
    """Scored targets lie in `answers` and are spread evenly over them, so a guess that ignores the input (a
    constant or any random one) scores 1/len(answers): the stated chance level."""
    scored = ex.targets[ex.targets != IGNORE]
    assert set(scored.tolist()) <= answers
    p, total = 1 / len(answers), scored.numel()
    top = torch.bincount(scored).max().item() / total
    assert top < p + sigmas * math.sqrt(p * (1 - p) / total), f"one answer takes {top:.3f} of the targets, chance {p:.3f}"
    guesses = torch.tensor(random.Random(0).choices(sorted(answers), k=total))
    assert abs((guesses == scored).double().mean().item() - p) < sigmas * math.sqrt(p * (1 - p) / total)


CHANCE = [
    (StateTracking(group="parity", seq_len=32, vocab_size=3), {1, 2}),
    (StateTracking(group="modular", modulus=5, seq_len=32, vocab_size=6), set(range(1, 6))),
    (StateTracking(group="S3", seq_len=32, vocab_size=7, score="last", vary_length=True), set(range(1, 7))),
    (StateTracking(group="A5", seq_len=32, vocab_size=61), set(range(1, 61))),
    (InContextRecall(seq_len=64, vocab_size=16), set(range(8, 16))),
    (NoisyRecall(seq_len=64, vocab_size=20, noise_vocab_size=4, frac_noise=0.4), set(range(8, 16))),
    (FuzzyRecall(seq_len=64, vocab_size=13), set(range(6, 12))),
    (Memorization(seq_len=32, vocab_size=17), set(range(8, 16))),
    (ForgettingMQAR(seq_len=40, vocab_size=20, num_kv_pairs=4, num_overwrites=3), set(range(10, 20))),
    (PhoneBook(seq_len=64, vocab_size=30, name_vocab_size=16), set(range(4, 14))),
    (CompositionalMQAR(seq_len=48, vocab_size=31, num_kv_pairs=4), set(range(20, 31))),
    (Compression(seq_len=32, vocab_size=16), set(range(15))),
    (Compression(seq_len=32, vocab_size=16, noise_vocab_size=5, frac_noise=0.4), set(range(10))),
]


@pytest.mark.parametrize("cfg, answers", CHANCE, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(CHANCE)])
def test_chance_level_holds_by_simulation(cfg, answers):
    assert_targets_uniform_over(cfg.generate(1500, 11), answers)


# -- state tracking ------------------------------------------------------------------------------------------
def group_elements(group: str, modulus: int) -> tuple[list, object]:
    """The elements in the module's stated order and the product a · b (apply a, then b), from the definitions."""
    if group in ("parity", "modular"):
        m = 2 if group == "parity" else modulus
        return list(range(m)), lambda a, b: (a + b) % m
    degree = int(group[1])
    perms = list(itertools.permutations(range(degree)))
    if group[0] == "A":  # even permutations: degree minus the number of cycles is even
        def cycles(p):
            seen, count = set(), 0
            for i in range(len(p)):
                if i not in seen:
                    count += 1
                    while i not in seen:
                        seen.add(i)
                        i = p[i]
            return count
        perms = [p for p in perms if (degree - cycles(p)) % 2 == 0]
    return perms, lambda a, b: tuple(b[a[i]] for i in range(len(a)))


@FEW
@given(cfg=state_tracking_configs(), n=sizes, seed=seeds)
def test_state_tracking_targets_are_the_running_product(cfg, n, seed):
    elements, times = group_elements(cfg.group, cfg.modulus)
    assert cfg.order == len(elements)
    ex = cfg.generate(n, seed)
    for inputs, targets, bucket in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices["length"].tolist()):
        length = sum(t != 0 for t in inputs)
        assert inputs[length:] == [0] * (cfg.seq_len - length)  # padding only after the word
        assert length == cfg.seq_len or cfg.vary_length
        expected, state = [IGNORE] * cfg.seq_len, None
        for t in range(length):
            g = elements[inputs[t] - 1]
            state = g if state is None else times(state, g)
            if cfg.score == "every" or t == length - 1:
                expected[t] = 1 + elements.index(state)
        assert targets == expected
        assert bucket == (length - 1) * cfg.num_length_buckets // cfg.seq_len


def test_state_tracking_order_of_the_elements_matters_in_s3_but_not_in_z5():
    assert (StateTracking(group="S5").order, StateTracking(group="A5").order) == (120, 60)
    for group, vocab, abelian in [("S3", 7, False), ("modular", 6, True)]:
        ex = StateTracking(group=group, seq_len=2, vocab_size=vocab).generate(500, 0)
        product = {tuple(x): t[1] for x, t in zip(ex.inputs.tolist(), ex.targets.tolist())}
        commutes = all(product[a, b] == product[b, a] for a, b in product if (b, a) in product)
        assert commutes == abelian  # a bag of elements cannot answer S3's word problems


def test_state_tracking_vary_length_spreads_lengths_over_every_bucket():
    ex = StateTracking(group="parity", vocab_size=3, seq_len=64, vary_length=True, score="last").generate(800, 0)
    assert torch.bincount(ex.slices["length"], minlength=8).min() > 60
    assert ((ex.targets != IGNORE).sum(1) == 1).all()


# -- MAD's in-context recall and noisy recall -------------------------------------------------------------
def solve_in_context_recall(cfg, inputs):
    """Targets recomputed from the inputs: walk the pairs, bind each key at its first occurrence, answer its
    recurrences (multi_query) or only the pair after the copy prefix."""
    ns, K = cfg.kv_tokens, cfg.num_keys
    expected, bound, i, probe_next, pairs = [IGNORE] * len(inputs), {}, 0, False, []
    while i < len(inputs):
        tok = inputs[i]
        if not cfg.multi_query and tok == cfg.vocab_size - 1:
            probe_next, i = True, i + 1
            continue
        if ns <= tok < ns + cfg.noise_vocab_size:  # a noise pair: both tokens noise
            assert i + 1 >= len(inputs) or ns <= inputs[i + 1] < ns + cfg.noise_vocab_size
            i += 2
            continue
        assert 0 <= tok < K
        value = inputs[i + 1] if i + 1 < len(inputs) else None
        assert value is None or K <= value < ns
        if tok in bound:
            assert value is None or value == bound[tok]  # a key keeps its first value
            if cfg.multi_query or probe_next:
                expected[i] = bound[tok]
        else:
            bound[tok] = value
            assert not probe_next
        pairs.append(tok)
        i += 2
    return expected, bound, pairs


@FEW
@given(data=st.data(), n=sizes, seed=seeds)
def test_in_context_recall_answers_are_the_first_value_of_each_recurring_key(data, n, seed):
    cfg = data.draw(st.one_of(in_context_recall_configs(), in_context_recall_configs(noisy=True)))
    ex = cfg.generate(n, seed)
    for inputs, targets, distinct in zip(ex.inputs.tolist(), ex.targets.tolist(),
                                         ex.slices["distinct_keys"].tolist()):
        expected, bound, pairs = solve_in_context_recall(cfg, inputs)
        assert targets == expected
        assert pairs[-1] in pairs[:-1], "the last pair probes a key seen before"
        assert distinct == len(bound)


def test_noisy_recall_replaces_about_frac_noise_of_the_pairs():
    cfg = NoisyRecall(seq_len=256, vocab_size=32, noise_vocab_size=16, frac_noise=0.4)
    first = cfg.generate(200, 0).inputs[:, 0:254:2]  # the body pairs' first tokens
    assert 0.36 < (first >= 16).double().mean().item() < 0.44


def test_in_context_recall_follows_mads_vocabulary_layout():
    ex = InContextRecall(seq_len=128, vocab_size=16).generate(100, 0)  # 8 keys, 8 values, no special token
    assert set(ex.inputs[:, 0::2].flatten().tolist()) == set(range(8))
    assert set(ex.inputs[:, 1::2].flatten().tolist()) == set(range(8, 16))
    single = InContextRecall(seq_len=128, vocab_size=16, multi_query=False).generate(100, 0)
    assert (single.inputs[:, -2] == 15).all() and ((single.targets != IGNORE).sum(1) == 1).all()


# -- MAD's fuzzy recall ------------------------------------------------------------------------------------
def parse_fuzzy(cfg, inputs):
    """[(key tuple, value tuple, position of the key's last token, after a copy prefix)] from the inputs."""
    ns, Kv = cfg.kv_tokens, cfg.num_keys
    i = 0
    while i < len(inputs) and inputs[i] == ns:
        i += 1
    assert ns not in inputs[i:], "padding only on the left"
    pairs, after_copy = [], False
    while i < len(inputs):
        if not cfg.multi_query and inputs[i] == cfg.vocab_size - 1:
            after_copy, i = True, i + 1
            continue
        start = i
        while i < len(inputs) and inputs[i] < Kv:
            i += 1
        key, key_end = tuple(inputs[start:i]), i - 1
        start = i
        while i < len(inputs) and Kv <= inputs[i] < ns:
            i += 1
        pairs.append((key, tuple(inputs[start:i]), key_end, after_copy))
    return pairs


@FEW
@given(cfg=fuzzy_recall_configs(), n=sizes, seed=seeds)
def test_fuzzy_recall_answers_recurring_multi_token_keys_with_their_first_value(cfg, n, seed):
    ex = cfg.generate(n, seed)
    for inputs, targets, key_size in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices["key_size"].tolist()):
        pairs = parse_fuzzy(cfg, inputs)
        expected, bound = [IGNORE] * cfg.seq_len, {}
        for p, (key, value, key_end, after_copy) in enumerate(pairs):
            last = p == len(pairs) - 1
            assert 1 <= len(key) <= cfg.k_motif_size and len(set(key)) == len(key)
            assert len(set(value)) == len(value) and (last or 1 <= len(value) <= cfg.v_motif_size)
            if key in bound:
                assert bound[key][:len(value)] == value  # a key keeps its value (the probe's is cut short)
                if cfg.multi_query or after_copy:
                    for j, v in enumerate(bound[key]):
                        expected[key_end + j] = v
            else:
                assert not last, "the last pair repeats a key seen before"
                bound[key] = value
        assert targets == expected
        assert key_size == len(pairs[-1][0])
        assert pairs[-1][2] + len(bound[pairs[-1][0]]) == cfg.seq_len  # only the probe's last token falls off


def test_fuzzy_recall_draws_every_key_size():
    ex = FuzzyRecall(seq_len=128, vocab_size=16).generate(300, 0)
    assert torch.bincount(ex.slices["key_size"], minlength=4)[1:].min() > 60


# -- MAD's memorization ------------------------------------------------------------------------------------
@FEW
@given(cfg=memorization_configs(), seed=seeds, other=seeds)
def test_memorization_map_is_fixed_across_seeds_and_lengths(cfg, seed, other):
    insert, K = cfg.vocab_size - 1, cfg.num_keys
    seen = {}
    for c, s in [(cfg, seed), (cfg, other), (cfg.at_length(2 * cfg.seq_len + 1), seed)]:
        ex = c.generate(8, s)
        for inputs, targets in zip(ex.inputs.tolist(), ex.targets.tolist()):
            assert all(0 <= k < K for k in inputs[0::2]) and all(t == insert for t in inputs[1::2])
            assert all(t == IGNORE for t in targets[0::2])
            for key, value in zip(inputs[0::2], targets[1::2]):
                assert seen.setdefault(key, value) == value  # one value per key, whatever the seed or length
    assert all(K <= v < insert for v in seen.values()) and len(set(seen.values())) == len(seen)  # injective
    assert all(cfg.value_map()[k].item() == v for k, v in seen.items())


def test_memorization_map_changes_with_map_seed_only():
    a, b = Memorization(map_seed=1).value_map(), Memorization(map_seed=2).value_map()
    assert not torch.equal(a, b)
    for m in (a, b):  # 127 keys onto 127 of the 128 values, distinct
        assert len(set(m.tolist())) == 127 and m.min() >= 127 and m.max() < 255


# -- MAD's compression --------------------------------------------------------------------------------------
@FEW
@given(cfg=compression_configs(), n=sizes, seed=seeds)
def test_compression_targets_are_the_content_tokens_and_noise_and_the_compression_token_are_ignored(cfg, n, seed):
    C, compress = cfg.num_content, cfg.vocab_size - 1
    ex = cfg.generate(n, seed)
    for inputs, targets, noise in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices["noise_tokens"].tolist()):
        assert inputs[-1] == compress and compress not in inputs[:-1], "the compression token ends the sequence"
        expected = [t if t < C else IGNORE for t in inputs[:-1]] + [IGNORE]  # every answer is read off the input
        assert targets == expected
        assert noise == sum(C <= t < compress for t in inputs) and (noise == 0 or cfg.frac_noise > 0)


def test_compression_noise_replaces_about_frac_noise_of_the_content_uniformly():
    cfg = Compression(seq_len=257, vocab_size=24, noise_vocab_size=8, frac_noise=0.4)
    ex = cfg.generate(200, 0)
    body = ex.inputs[:, :-1]
    noise = body >= cfg.num_content
    assert 0.37 < noise.double().mean().item() < 0.43
    assert torch.equal(noise, ex.targets[:, :-1] == IGNORE)  # exactly the noise positions go unscored
    counts = torch.bincount(body[noise] - cfg.num_content, minlength=8)
    assert counts.min() > 0.85 * counts.float().mean()  # noise tokens uniform over the noise vocabulary
    assert (~noise).any(dim=1).all()


def test_compression_follows_mads_vocabulary_layout():
    ex = Compression().generate(200, 0)  # MAD's baseline: 15 content tokens, the compression token 15
    assert set(ex.inputs[:, :-1].flatten().tolist()) == set(range(15)) and (ex.inputs[:, -1] == 15).all()
    assert ((ex.targets != IGNORE).sum(1) == 31).all() and Compression.decoder == "compression"


# -- forgetting MQAR ------------------------------------------------------------------------------------------
@FEW
@given(cfg=forgetting_mqar_configs(), n=sizes, seed=seeds)
def test_forgetting_mqar_answers_each_key_with_its_latest_value(cfg, n, seed):
    ex = cfg.generate(n, seed)
    N, M, half = cfg.num_kv_pairs, cfg.num_overwrites, cfg.vocab_size // 2
    for inputs, targets, m in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices["num_overwrites"].tolist()):
        keys = inputs[0:2 * N:2]
        latest = dict(zip(keys, inputs[1:2 * N:2]))
        assert len(latest) == N and all(1 <= k < half for k in keys)
        rebound = []
        for k, v in zip(inputs[2 * N:2 * N + 2 * M:2], inputs[2 * N + 1:2 * N + 2 * M:2]):
            if k == 0:
                assert v == 0
                continue
            assert k in latest and v != latest[k] and half <= v < cfg.vocab_size
            latest[k] = v
            rebound.append(k)
        assert len(set(rebound)) == len(rebound) == m and (0 <= m <= M if cfg.vary_overwrites else m == M)
        queries = [(inputs[t], targets[t]) for t in range(cfg.seq_len) if targets[t] != IGNORE]
        assert sorted(k for k, _ in queries) == sorted(keys)
        assert all(value == latest[k] for k, value in queries)
        assert all(t >= 2 * N + 2 * M for t in range(cfg.seq_len) if targets[t] != IGNORE)


def test_forgetting_mqar_queries_are_mqars_own():
    cfg = ForgettingMQAR(seq_len=64, vocab_size=64, num_kv_pairs=4, num_overwrites=2)
    ex, mqar = cfg.generate(32, 5), MQAR(seq_len=60, vocab_size=64, num_kv_pairs=4).generate(32, 5)
    assert torch.equal(ex.inputs[:, :8], mqar.inputs[:, :8]) and torch.equal(ex.inputs[:, 12:], mqar.inputs[:, 8:])


# -- compositional MQAR -------------------------------------------------------------------------------------
def parse_compositional_context(cfg, inputs):
    """{(K1, K2): value} from the context's triplets, after checking the keys form the g×g grid."""
    N, g, third = cfg.num_kv_pairs, cfg.grid_size, cfg.vocab_size // 3
    k1s, k2s, values = inputs[0:3 * N:3], inputs[1:3 * N:3], inputs[2:3 * N:3]
    assert all(1 <= k < third for k in k1s) and all(third <= k < 2 * third for k in k2s)
    assert all(2 * third <= v < cfg.vocab_size for v in values) and len(set(values)) == N  # distinct values
    assert len(set(k1s)) == len(set(k2s)) == g
    assert set(zip(k1s, k2s)) == set(itertools.product(set(k1s), set(k2s)))  # every combination, once
    return dict(zip(zip(k1s, k2s), values))


@FEW
@given(cfg=compositional_mqar_configs(), n=sizes, seed=seeds)
def test_compositional_mqar_every_key_pair_queried_once_and_answered_with_its_value(cfg, n, seed):
    ex = cfg.generate(n, seed)
    N = cfg.num_kv_pairs
    for inputs, targets in zip(ex.inputs.tolist(), ex.targets.tolist()):
        bound = parse_compositional_context(cfg, inputs)
        scored = [t for t in range(cfg.seq_len) if targets[t] != IGNORE]
        queries = [(inputs[t - 1], inputs[t]) for t in scored]
        assert sorted(queries) == sorted(bound)
        for t, key in zip(scored, queries):
            assert t - 1 >= 3 * N and (t - 1 - 3 * N) % 3 == 0  # K1 at the start of a three-token slot, K2 after
            assert targets[t] == bound[key]
        filler = [inputs[t] for t in range(3 * N, cfg.seq_len) if t not in scored and t + 1 not in scored]
        if cfg.random_non_queries:
            assert all(1 <= x < cfg.vocab_size for x in filler)
        else:
            assert set(filler) <= {0}
    assert (ex.slices["num_kv_pairs"] == N).all()


def test_compositional_mqar_one_key_token_alone_scores_one_over_the_grid_size():
    """The grid leaves no shortcut: looking a query up by K1 alone (or K2 alone) finds the right value 1/g of the
    time, by the whole key every time."""
    cfg = CompositionalMQAR(seq_len=96, vocab_size=64, num_kv_pairs=9)  # g = 3
    ex = cfg.generate(800, 2)
    hits = {"k1": 0, "k2": 0, "both": 0}
    total = 0
    for inputs, targets in zip(ex.inputs.tolist(), ex.targets.tolist()):
        triplets = [tuple(inputs[i:i + 3]) for i in range(0, 27, 3)]
        for t in (t for t in range(cfg.seq_len) if targets[t] != IGNORE):
            k1, k2 = inputs[t - 1], inputs[t]
            hits["k1"] += next(v for a, _, v in triplets if a == k1) == targets[t]  # the first triplet with K1
            hits["k2"] += next(v for _, b, v in triplets if b == k2) == targets[t]
            hits["both"] += next(v for a, b, v in triplets if (a, b) == (k1, k2)) == targets[t]
            total += 1
    sigma = math.sqrt((1 / 3) * (2 / 3) / total)
    assert abs(hits["k1"] / total - 1 / 3) < 5 * sigma and abs(hits["k2"] / total - 1 / 3) < 5 * sigma
    assert hits["both"] == total


def test_compositional_mqar_eval_num_kv_pairs_sets_the_grid_at_each_length():
    cfg = CompositionalMQAR(seq_len=48, num_kv_pairs=4, eval_seq_lens=(96, 192), eval_num_kv_pairs=(9, 16))
    configs = cfg.eval_configs()
    assert [(c.seq_len, c.num_kv_pairs, c.grid_size) for c in configs] == [(48, 4, 2), (96, 9, 3), (192, 16, 4)]
    for c in configs:
        ex = c.generate(4, 0)
        assert ((ex.targets != IGNORE).sum(dim=1) == c.num_kv_pairs).all()
        assert (ex.slices["num_kv_pairs"] == c.num_kv_pairs).all()  # one slice value labels the whole test set


# -- phone book --------------------------------------------------------------------------------------------
@FEW
@given(cfg=phonebook_configs(), n=sizes, seed=seeds)
def test_phonebook_answer_is_the_queried_names_number(cfg, n, seed):
    A, D = cfg.name_len, cfg.number_len
    ex = cfg.generate(n, seed)
    for inputs, targets, depth, entries in zip(ex.inputs.tolist(), ex.targets.tolist(), ex.slices["depth"].tolist(),
                                               ex.slices["num_entries"].tolist()):
        i = 0
        while inputs[i] == 0:
            i += 1
        book = []
        while inputs[i] != 3:  # entries until QUERY
            name, number = inputs[i:i + A], inputs[i + A + 1:i + A + 1 + D]
            assert inputs[i + A] == 1 and inputs[i + A + 1 + D] == 2
            assert all(t >= 14 for t in name) and all(4 <= d < 14 for d in number)
            book.append((tuple(name), number))
            i += A + D + 2
        names = [name for name, _ in book]
        assert len(set(names)) == len(names) == entries == cfg.num_entries
        asked = tuple(inputs[i + 1:i + 1 + A])
        assert inputs[i + 1 + A] == 1
        q = names.index(asked)
        number = book[q][1]
        assert targets == [IGNORE] * (cfg.seq_len - D) + number
        assert inputs[cfg.seq_len - D + 1:] == number[:-1]  # teacher forcing
        assert depth == q * cfg.num_depth_buckets // entries


def test_phonebook_grows_with_length():
    cfg = PhoneBook(seq_len=128, eval_seq_lens=(512,))
    assert [c.num_entries for c in cfg.eval_configs()] == [15, 63]


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
