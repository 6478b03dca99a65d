"""MAD's synthetic benchmark (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"):
each task at its baseline setting and at every harder level, one arch per cell, scored by test accuracy.

MAD's protocol, as in its mad-lab configs: each task has a baseline and a list of changes, each change varying
one field from the baseline (vocab size, sequence length, noise fraction, tokens to copy); every setting is
trained from scratch and the best learning rate kept; a task's score is the mean of those best accuracies over
its settings, and an arch's MAD score the mean over the tasks. Models are 2 blocks of [mixer, SwiGLU] at width
128, trained 200 epochs of 12,800 examples (memorization: 256) in batches of 128 and tested on 1,280, at the
training length only.

    task               baseline                              changes (one at a time)
    in_context_recall  vocab 16, L 128                       vocab 32/64/128; L 256/512/1024
    fuzzy_recall       vocab 16, L 128, keys/values <= 3     vocab 32/64/128; L 256/512/1024
    noisy_recall       vocab 32 (16 noise), L 128, 20% noise vocab 48/80/144; L 256/512/1024; noise 40/60/80%
    selective copying  vocab 16, L 256, 16 tokens            vocab 32/64/128; L 512/1024; tokens 32/64/96
    compression        vocab 16, L 32                        vocab 32/64/128; L 64/128/256
    memorization       vocab 256, L 32                       vocab 512/1024/2048/4096/8192

Where this differs from MAD: (1) MAD also shrinks the training set (6,400 .. 800 examples) as a difficulty
level; a Sweep trains every setting of one task on one training config, so those levels are not here (run
this file again with a smaller `num_train` to add them). (2) MAD grids weight decay {0, 0.1} as well as the
learning rate; SearchSpace's lr_grid fixes the trials to the learning rates, so weight decay stays at MAD's
default 0.
(3) MAD trains recall with a language-modelling loss on every next token and tests only the recalls; probe
trains and tests on the same scored positions (the recalls). (4) Compression runs through MAD's autoencoder
(the task asks for it: `Compression.decoder`, probe.model's CompressionDecoder): the mixers encode the sequence
causally, the last position's features are its encoding, and each position is decoded from that plus a fixed
sinusoidal position embedding by MAD's non-expanding MLP. Departures: MAD's generator returns its inputs as the
targets, so it also scores the noise tokens and the final compression token; probe scores the content tokens
only (the noise ignored, as MAD's generator intends; the compression token is given). The decoder's norms are
probe's LayerNorm, not MAD's RMSNorm, and the head has no bias (see tasks/compression.py, probe/model.py).
(5) Selective copying is probe's `copying` task (alphabet vocab - 2, as in MAD), which places the data
tokens uniformly and teacher-forces the answer; see tasks/copying.py.

The MAD score of each arch is the report's "MAD score" section (`probe report sweeps/mad.py -o reports/mad.html`;
computed by probe.report.analysis.mad_scores): per level the best trial's test accuracy (mean over seeds), per task
the mean over its levels, per arch the mean over the tasks; beside it each task's score and each level's accuracy.
"""
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.compression import Compression
from tasks.copying import Copying
from tasks.fuzzy_recall import FuzzyRecall
from tasks.in_context_recall import InContextRecall, NoisyRecall
from tasks.memorization import Memorization


def levels(make, baseline: dict, changes: dict[str, list]) -> list:
    """The baseline setting, then each change applied alone (MAD's make_benchmark_mad_configs)."""
    out = [make(**baseline)]
    for field, values in changes.items():
        out += [make(**{**baseline, field: v}) for v in values]
    return out


def selective_copying(vocab_size: int, seq_len: int, num_tokens: int) -> Copying:
    # MAD's vocabulary holds the data tokens, a blank and a copy token: an alphabet of vocab_size - 2
    return Copying(mode="selective", seq_len=seq_len, num_tokens=num_tokens, vocab_size=vocab_size,
                   alphabet_size=vocab_size - 2)


def noisy_recall(vocab_size: int, seq_len: int, frac_noise: float) -> NoisyRecall:
    return NoisyRecall(vocab_size=vocab_size, seq_len=seq_len, frac_noise=frac_noise, noise_vocab_size=16)


LONGER = [256, 512, 1024]
TASKS = [
    *levels(InContextRecall, dict(vocab_size=16, seq_len=128), dict(vocab_size=[32, 64, 128], seq_len=LONGER)),
    *levels(FuzzyRecall, dict(vocab_size=16, seq_len=128, k_motif_size=3, v_motif_size=3),
            dict(vocab_size=[32, 64, 128], seq_len=LONGER)),
    *levels(noisy_recall, dict(vocab_size=32, seq_len=128, frac_noise=0.2),
            dict(vocab_size=[48, 80, 144], seq_len=LONGER, frac_noise=[0.4, 0.6, 0.8])),
    *levels(selective_copying, dict(vocab_size=16, seq_len=256, num_tokens=16),
            dict(vocab_size=[32, 64, 128], seq_len=[512, 1024], num_tokens=[32, 64, 96])),
    *levels(Compression, dict(vocab_size=16, seq_len=32), dict(vocab_size=[32, 64, 128], seq_len=[64, 128, 256])),
    *levels(Memorization, dict(vocab_size=256, seq_len=32), dict(vocab_size=[512, 1024, 2048, 4096, 8192])),
]


def sweep() -> Sweep:
    return Sweep(
        name="mad",
        tasks=TASKS,
        # MAD's own figures compare attention, Hyena, Mamba, gated linear attention, RWKV-style recurrences and
        # sliding-window attention; probe's closest registered mixers
        archs=["attention", "sliding_window", "hyena", "mamba", "gla", "retnet"],
        d_models=(128,),
        n_layers=2,
        channel_mixer="swiglu",
        train=TrainConfig(batch_size=128, warmup_steps=100, num_train=12_800, num_test=1_280, val_every=500,
                          stop_at=None, weight_decay=0.0),
        epochs=200,
        # MAD gives memorization 256 training examples (compression, at the same length, has the 12,800)
        train_per_task={"memorization": {"num_train": 256}},
        search=SearchSpace(lr_grid=(1e-4, 5e-4, 1e-3)),
        trials_per_cell=3,
        seeds=(0,),
    )
