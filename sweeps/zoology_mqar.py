"""Zoology's Figure 2 (Arora et al. 2023): MQAR recall across sequence length and model width.

(seq len, pairs) = (64, 4), (128, 8), (256, 16), (512, 64); d_model 64-512; vocab 8192; 100k train / 3k test
examples; 2 layers, no MLP; up to 64 epochs, stopping at 99% accuracy. Zoology tried four fixed learning rates
per cell; here each cell's learning rate is tuned (4 trials, log-uniform over the same 1e-4..1e-2 range).
RetNet stands in for the RWKV-style recurrence; "based" is the hybrid pattern `baseconv_short,based`.

What bounds its cost: a cell ends once one trial reaches 99% (the others stop there), and a trial whose accuracy
has not risen 0.01 in 8 epochs stops (a plateau an eighth of the budget long; first seen on BaseConv at L 128,
flat at 0.10-0.15 for 20k steps). A late jump after such a plateau would be lost here; `zoology_figure2.py`,
Zoology's protocol, has no plateau rule and shows whether one happens.
"""
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep() -> Sweep:
    return Sweep(
        name="zoology_mqar",
        tasks=[MQAR(seq_len=L, vocab_size=8192, num_kv_pairs=N) for L, N in [(64, 4), (128, 8), (256, 16), (512, 64)]],
        # Zoology's Based mixes a short convolution with Taylor linear attention; the Taylor layer alone cannot
        # bind a key to the value after it (0.09 after 6 epochs at L=256, see BENCHMARKS.md). BaseConv is the
        # form of Zoology's code (feed-through + residual), kernels alternating 3 and long, the long one implicit
        # (Zoology's BaseConv default, which its Figure-2 configs keep)
        archs={"attention": {}, "baseconv": {"arch": "baseconv_short,baseconv_implicit", "form": "zoology"},
               "hyena": {}, "h3": {}, "retnet": {},
               "based": {"arch": "baseconv_short,based"}, "mamba": {}},
        d_models=(64, 128, 256, 512),
        n_layers=2,
        train=TrainConfig(batch_size=256, warmup_steps=100, num_train=100_000, num_test=3_000, val_every=200,
                          stop_at=0.99, weight_decay=0.1),
        epochs=64,
        search=SearchSpace(lr=(1e-4, 1e-2)),
        trials_per_cell=4,
        plateau_epochs=8,
        seeds=(0,),
    )
