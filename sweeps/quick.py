"""A few minutes on 2 CPU cores: three mixer families (attention, a gated short/long convolution, Hyena) on
small MQAR, tuned, trained short and tested long.

What `make demo` runs. The same file runs unchanged on a GPU (`probe sweep sweeps/quick.py --device cuda`).
"""
from probe.sweep import SearchSpace, Sweep
from probe.train import TrainConfig
from tasks.mqar import MQAR


def sweep() -> Sweep:
    return Sweep(
        name="quick",
        tasks=[MQAR(seq_len=16, vocab_size=64, num_kv_pairs=2, eval_seq_lens=(32, 64)),
               MQAR(seq_len=32, vocab_size=64, num_kv_pairs=4, eval_seq_lens=(64, 128))],
        archs=["attention", "baseconv", "hyena"],
        d_models=(32, 64),
        n_layers=2,
        train=TrainConfig(batch_size=64, max_steps=1000, warmup_steps=50, num_train=4000, num_test=256,
                          val_every=100, stop_at=0.99),
        # small models on MQAR learn in a sudden transition after a few hundred steps at these rates
        search=SearchSpace(lr=(1e-3, 2e-2)),
        trials_per_cell=2,
        seeds=(0,),
    )
