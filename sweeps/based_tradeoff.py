"""The recall / state-size trade-off (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"): train MQAR at 64-256 tokens, test up to 1024 tokens and 256 pairs, over mixers
whose state is set by a knob (window, feature dimension, d_state) as well as by width.

State size is read off each model (`state_size` at every evaluation length), so the report can place every
trial on the accuracy-vs-state plane and draw each family's Pareto frontier.
"""
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep() -> Sweep:
    return Sweep(
        name="based_tradeoff",
        tasks=[MQAR(seq_len=L, vocab_size=8192, num_kv_pairs=L // 8, eval_seq_lens=(512, 1024),
                    eval_num_kv_pairs=(128, 256)) for L in (64, 128, 256)],
        archs={
            "attention": {},
            "swa32": {"arch": "sliding_window", "window": 32},
            "swa128": {"arch": "sliding_window", "window": 128},
            "based_f8": {"arch": "based", "feature_dim": 8},
            "based_f16": {"arch": "based", "feature_dim": 16},
            "mamba_s16": {"arch": "mamba", "d_state": 16},
            "mamba_s64": {"arch": "mamba", "d_state": 64},
            "gla": {},
            "hyena": {},
        },
        d_models=(64, 128, 256),
        n_layers=2,
        train=TrainConfig(batch_size=128, warmup_steps=100, num_train=100_000, num_test=1_000, val_every=200,
                          stop_at=0.99),
        epochs=32,
        search=SearchSpace(lr=(1e-4, 1e-2)),
        trials_per_cell=3,
    )
