"""Lightning training on the CPU: a small attention model learns MQAR; the record holds what a user reads."""
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from probe.metrics import ExampleCounts, summarise
from probe.train import ModelConfig, TrainConfig, train
from tasks import IGNORE
from tasks.mqar import MQAR

SMALL_MQAR = MQAR(seq_len=32, vocab_size=64, num_kv_pairs=4, eval_seq_lens=(64,))


@pytest.fixture(scope="module")
def learned():
    cfg = TrainConfig(lr=3e-3, max_steps=800, num_train=4000, num_test=500, val_every=100, stop_at=0.95,
                      device="cpu", seed=0)
    return train(SMALL_MQAR, "attention", ModelConfig(d_model=64, n_layers=2), cfg)


@pytest.mark.slow
def test_attention_learns_small_mqar(learned):
    assert learned["accuracy"] >= 0.9
    assert learned["stopped_at_target"] and learned["steps"] < 800, "stop_at did not end training early"


@pytest.mark.slow
def test_record_holds_metrics_per_length_and_slice(learned):
    r = learned
    assert set(r["by_length"]) == {32, 64}
    at_train = r["by_length"][32]
    assert at_train["accuracy"] == r["accuracy"]
    # one slice value (4 pairs): its token accuracy is the headline token accuracy
    assert at_train["slices"]["num_kv_pairs"][4]["accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
    assert at_train["slices"]["num_kv_pairs"][4]["examples"] == 500
    # every MQAR example has the same number of queries: per-example mean equals token accuracy
    assert r["per_example_accuracy"] == pytest.approx(r["accuracy"], abs=1e-6)
    assert 0 <= r["exact_match"] <= r["per_example_accuracy"]
    assert r["state_size"] == 2 * (2 * 64 * 32) and r["state_size_by_length"][64] == 2 * (2 * 64 * 64)
    assert r["params"] > 0 and r["train_tokens_per_s"] > 0 and r["wall_time_s"] >= r["train_time_s"] > 0
    assert [h["step"] for h in r["history"]] == sorted(h["step"] for h in r["history"])
    assert r["seed"] == 0 and r["device"] == "cpu" and "torch" in r["versions"] and "lightning" in r["versions"]


def test_micro_accuracy_counts_tokens_not_classes():
    preds = torch.tensor([1, 1, 1, 2])
    target = torch.tensor([1, 1, 1, 3])
    micro = MulticlassAccuracy(num_classes=5, ignore_index=IGNORE, average="micro")
    assert micro(preds, target).item() == pytest.approx(0.75)
    macro = MulticlassAccuracy(num_classes=5, ignore_index=IGNORE, average="macro")
    assert macro(preds, target).item() != pytest.approx(0.75), "the test would not tell micro from macro"


def test_per_example_mean_and_slices():
    counts = ExampleCounts(3)
    counts.update(torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]), torch.tensor([2, 4, 1]))
    correct, scored = counts.compute()
    s = summarise(correct, scored, {"depth": torch.tensor([0, 0, 1])})
    assert s["per_example_accuracy"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["slices"]["depth"][0]["accuracy"] == pytest.approx(3 / 6)
    assert s["slices"]["depth"][1]["accuracy"] == 0


def test_divergence_ends_the_run_and_is_recorded():
    cfg = TrainConfig(lr=1e30, warmup_steps=0, max_steps=40, num_train=256, num_test=64, val_every=10,
                      device="cpu", stop_at=None)
    r = train(MQAR(seq_len=16, vocab_size=32, num_kv_pairs=2), "attention", ModelConfig(d_model=16), cfg)
    assert r["diverged"] and "non-finite" in r["diverged"]
    assert r["steps"] < 40


def test_same_seed_same_record():
    cfg = TrainConfig(max_steps=5, num_train=128, num_test=64, val_every=5, device="cpu", stop_at=None)
    task = MQAR(seq_len=16, vocab_size=32, num_kv_pairs=2)
    a, b = (train(task, "attention", ModelConfig(d_model=16), cfg) for _ in range(2))
    assert a["history"] == b["history"]


def test_scored_positions_are_a_fixed_width_table_padded_with_ignored_targets():
    from probe.data import Scored
    targets = torch.full((3, 6), IGNORE)
    targets[0, [1, 4]] = torch.tensor([7, 8])
    targets[1, [0, 2, 5]] = torch.tensor([1, 2, 3])  # the widest row sets M = 3
    scored = Scored(targets)  # row 2 scores nothing
    assert scored.positions.shape == scored.targets.shape == (3, 3)
    assert scored.positions[0, :2].tolist() == [1, 4] and scored.targets[0].tolist() == [7, 8, IGNORE]
    assert scored.positions[1].tolist() == [0, 2, 5] and scored.targets[1].tolist() == [1, 2, 3]
    assert (scored.targets[2] == IGNORE).all()
    assert (targets.gather(1, scored.positions) == scored.targets).all()


def test_training_free_schemes_evaluate_the_same_weights_at_every_length():
    task = MQAR(seq_len=16, vocab_size=32, num_kv_pairs=2, eval_seq_lens=(32,))
    schemes = ("rope", "pi", "rerope")
    r = train(task, "attention", ModelConfig(d_model=16),
              TrainConfig(max_steps=30, val_every=10, batch_size=16, num_train=128, num_test=32, stop_at=None,
                          lr=1e-2, device="cpu", eval_position_schemes=schemes))
    assert set(r["by_scheme"]) == set(schemes) and all(set(v) == {16, 32} for v in r["by_scheme"].values())
    # "rope" reads the weights as they were trained: exactly the record's own numbers
    assert r["by_scheme"]["rope"] == r["by_length"]
    # within the training length PI is RoPE
    assert r["by_scheme"]["pi"][16] == r["by_length"][16]


def test_an_unknown_evaluation_scheme_is_refused():
    from probe.errors import ProbeError
    with pytest.raises(ProbeError, match="eval_position_schemes"):
        TrainConfig(eval_position_schemes=("yarn",)).check()


def test_a_csv_logger_draws_one_loss_and_one_accuracy_curve_per_member_of_a_pack(tmp_path):
    import dataclasses

    import pandas as pd

    from probe.train import RunSpec, fit
    task = MQAR(seq_len=16, vocab_size=32, num_kv_pairs=2, eval_seq_lens=(32,))
    cfg = TrainConfig(max_steps=20, val_every=10, batch_size=16, num_train=64, num_test=16, stop_at=None,
                      device="cpu")
    fit([RunSpec(task, "attention", ModelConfig(d_model=16), dataclasses.replace(cfg, lr=lr))
         for lr in (1e-3, 1e-2)], logger="csv", log_dir=str(tmp_path / "pack"), log_names=["slow", "fast"])
    metrics = pd.read_csv(tmp_path / "pack" / "metrics.csv")
    for name in ("slow", "fast"):
        for curve in ("loss", "accuracy", "accuracy_L32"):  # accuracy_L32: at the evaluation length
            assert metrics[f"{name}/{curve}"].notna().sum() == 2, (name, curve)  # at steps 10 and 20


def test_probe_train_with_a_csv_logger_writes_a_metrics_file(tmp_path, capsys):
    import pandas as pd

    from probe.cli import main
    main(["train", "--task", "mqar", "--arch", "attention", "--seq-len", "16", "--vocab-size", "16",
          "--num-kv-pairs", "2", "--d-model", "8", "--max-steps", "10", "--val-every", "5", "--num-train", "32",
          "--num-test", "8", "--batch-size", "8", "--device", "cpu", "--no-progress", "--logger", "csv",
          "--log-dir", str(tmp_path / "curves")])
    assert f"learning curves (csv) in {tmp_path / 'curves'}" in capsys.readouterr().out
    metrics = pd.read_csv(tmp_path / "curves" / "metrics.csv")
    assert metrics["member0/loss"].notna().sum() == 2 and metrics["member0/accuracy"].notna().sum() == 2


def test_a_finished_pack_leaves_nothing_in_memory():
    """A worker trains pack after pack in one process: each pack's module, weights and data must be gone when fit
    returns, not left in reference cycles for Python's collector to find some time later (on a GPU they piled up
    until later packs ran out of memory)."""
    import weakref

    import lightning as L

    from probe.train import RunSpec, fit

    class Watch(L.Callback):
        refs: list = []

        def on_train_start(self, trainer, pl_module):
            self.refs = [weakref.ref(x) for x in (trainer, pl_module, pl_module.pack, pl_module.pack.stacked[0])]

    watch = Watch()
    task = MQAR(seq_len=16, vocab_size=32, num_kv_pairs=2)
    fit([RunSpec(task, "attention", ModelConfig(d_model=16), TrainConfig(
        lr=lr, max_steps=4, val_every=2, batch_size=8, num_train=32, num_test=8, device="cpu")) for lr in (1e-3, 1e-2)],
        callbacks=[watch])
    assert len(watch.refs) == 4
    assert [r() is None for r in watch.refs] == [True] * 4  # trainer, module, pack, a stacked weight
