"""A few minutes on 2 CPU cores: three mixer families (attention, a gated long convolution, Hyena) on small
MQAR, tuned, trained short and tested long.

What `make demo` runs, with a budget under which the classic ordering shows: attention solves every cell, while
the convolutions fall short and fall further at the longer length (Zoology's Figure 2 in miniature). Why these
settings, found by training single models first:
- widths 64 and 96: at width 32 attention never made MQAR's sudden jump within this budget, at any rate tried;
- 4 and 8 pairs in 16 and 32 tokens: dense enough that the lookup, not guessing among a few values, pays, and
  short enough that 800 steps of every cell fit in about three minutes;
- 16,000 training examples (about three epochs): with fewer, attention memorises the training set first and its
  test accuracy creeps up long after the jump;
- learning rates 1.5e-3 to 4e-3 with 100 warmup steps: below that range the jump comes after the budget, above
  it attention can stay on the plateau for good; the convolutions do about as well anywhere in it.
The same file runs unchanged on a GPU (`probe sweep sweeps/quick.py --device cuda`).
"""
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep() -> Sweep:
    return Sweep(
        name="quick",
        tasks=[MQAR(seq_len=16, vocab_size=64, num_kv_pairs=4, eval_seq_lens=(32, 64)),
               MQAR(seq_len=32, vocab_size=64, num_kv_pairs=8, eval_seq_lens=(64, 128))],
        archs=["attention", "baseconv", "hyena"],
        d_models=(64, 96),
        n_layers=2,
        train=TrainConfig(batch_size=64, max_steps=800, warmup_steps=100, num_train=16_000, num_test=256,
                          val_every=50, stop_at=0.99),
        search=SearchSpace(lr=(1.5e-3, 4e-3)),
        trials_per_cell=2,  # too few to prune: the pruner is "auto", so none
        seeds=(0,),
    )
