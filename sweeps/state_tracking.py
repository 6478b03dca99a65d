"""State tracking (Merrill et al. 2024, "The Illusion of State in State-Space Models"; Grazzi et al. 2024,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues"): word problems trained short, tested long.

Protocol: for each group (parity, Z5 addition, S3, S5) train on word problems of 64 elements, scored at every
position (so training already covers every length up to 64), then test at 2x, 4x and 8x that length. An arch
that really tracks the state keeps its accuracy past the training length; one that learnt a length-bound
shortcut (attention, Merrill et al.) or cannot represent the group's transitions (a diagonal recurrence with
positive decay on parity; any diagonal one on S3 and S5) falls towards chance, 1/|G|, with length. The
per-length accuracy is the report's main figure; the `length` slice is one value here (lengths do not vary).

Models have an MLP after every mixer, since the state must be read out through a nonlinearity (parity of a
count). Two layers at widths 64 and 128, each cell's learning rate tuned. Grazzi et al.'s negative-eigenvalue
variants (Mamba and DeltaNet with eigenvalues in [-1, 1]) are not in probe's registry yet; the archs here are
the baselines they are compared against.
"""
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.state_tracking import StateTracking

GROUPS = [dict(group="parity"), dict(group="modular", modulus=5), dict(group="S3"), dict(group="S5")]


def task(**group) -> StateTracking:
    order = StateTracking(**group).order
    return StateTracking(seq_len=64, vocab_size=order + 1, eval_seq_lens=(128, 256, 512), **group)


def sweep() -> Sweep:
    return Sweep(
        name="state_tracking",
        tasks=[task(**g) for g in GROUPS],
        archs=["attention", "attention_nope", "mamba", "mamba2", "gla", "retnet", "hyena"],
        d_models=(64, 128),
        n_layers=2,
        channel_mixer="mlp",
        train=TrainConfig(batch_size=128, warmup_steps=200, num_train=50_000, num_test=1_000, val_every=250,
                          stop_at=0.99),
        epochs=20,
        search=SearchSpace(lr=(1e-4, 3e-3)),
        trials_per_cell=4,
        seeds=(0,),
    )
