"""Every registered arch trains on every task through the real training path (tiny sizes, a few steps),
evaluated at the training length and at twice it."""
import pytest

from probe.mixers import MIXERS
from probe.model import build_model
from probe.train import ModelConfig, TrainConfig, train
from tasks import TASKS

TINY = {
    "mqar": dict(seq_len=16, vocab_size=32, num_kv_pairs=2),
    "passkey": dict(seq_len=20, vocab_size=32, num_digits=3),
    "copying": dict(seq_len=20, vocab_size=16, string_len=6, alphabet_size=8, num_tokens=4),
    "order": dict(seq_len=20, vocab_size=32, probe="last_write", num_keys=4, num_values=8, num_writes=2),
    "state_tracking": dict(seq_len=12, vocab_size=8, group="S3"),
    "in_context_recall": dict(seq_len=16, vocab_size=16),
    "noisy_recall": dict(seq_len=16, vocab_size=20, noise_vocab_size=4, frac_noise=0.3),
    "fuzzy_recall": dict(seq_len=16, vocab_size=12, k_motif_size=2, v_motif_size=2),
    "memorization": dict(seq_len=16, vocab_size=32),
    "forgetting_mqar": dict(seq_len=20, vocab_size=32, num_kv_pairs=2, num_overwrites=1),
    "phonebook": dict(seq_len=24, vocab_size=24, name_len=2, name_vocab_size=8, number_len=2),
    "compositional_mqar": dict(seq_len=24, vocab_size=32, num_kv_pairs=4),
    "compression": dict(seq_len=8, vocab_size=8),
}


def test_every_task_has_a_tiny_config():
    assert set(TINY) == set(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("arch", sorted(MIXERS))
def test_arch_trains_on_task(arch, task):
    cfg = TINY[task]
    task_cfg = TASKS[task](**cfg, eval_seq_lens=(2 * cfg["seq_len"],))
    record = train(task_cfg, arch, ModelConfig(d_model=32, n_layers=2),
                   TrainConfig(max_steps=2, batch_size=8, num_train=16, num_test=8, val_every=2, stop_at=None,
                               device="cpu"))
    assert record["steps"] == 2 and record["diverged"] is None
    assert set(record["by_length"]) == {cfg["seq_len"], 2 * cfg["seq_len"]}
    assert 0 <= record["accuracy"] <= 1 and record["state_size"] > 0


def test_hybrid_pattern_trains():
    record = train(TASKS["mqar"](**TINY["mqar"]), "baseconv_short,based,sliding_window",
                   ModelConfig(d_model=32, n_layers=3),
                   TrainConfig(max_steps=2, batch_size=8, num_train=16, num_test=8, val_every=2, device="cpu"))
    assert record["steps"] == 2


def test_attention_learns_tiny_compression_through_its_decoder():
    # 7 tokens of 7 symbols decoded from the last position alone: chance is 1/7, attention reaches ~0.87 in 400
    # steps (a few seconds). Without the decoder the task would be a copy of each position's own input, so the
    # record's parameter count shows the model was built with the task's decoder.
    task = TASKS["compression"](**TINY["compression"])
    record = train(task, "attention", ModelConfig(d_model=32, n_layers=2),
                   TrainConfig(lr=1e-2, max_steps=400, warmup_steps=20, batch_size=64, num_train=4000, num_test=256,
                               val_every=400, stop_at=None, device="cpu", seed=0))
    shape = dict(vocab_size=task.vocab_size, d_model=32, n_layers=2, max_seq_len=task.max_seq_len)
    assert record["params"] == build_model("attention", **shape, decoder="compression").num_params()
    assert record["params"] > build_model("attention", **shape).num_params()
    assert record["accuracy"] > 0.6
