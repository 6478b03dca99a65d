"""A faithful replica of Zoology's Figure 2 (Arora et al. 2023): MQAR recall across sequence length and width,
with Zoology's own protocol (its `iclr24_zoology_figure2` configs), to set probe's numbers beside the paper's.

Zoology's grid, as its configs define it:
- (seq len, pairs) = (64, 4), (128, 8), (256, 16), (512, 64); batch 512 / 512 / 256 / 128; vocab 8192;
  100k train / 3k test examples; keys and queries drawn with power_a = 0.01, no random non-query tokens.
- d_model 64, 128, 256, 512; 2 layers; no MLP (an identity state mixer).
- Four fixed learning rates, np.logspace(-4, -2, 4) = 1e-4, 4.6e-4, 2.15e-3, 1e-2: a grid, not tuned.
- Up to 64 epochs, stopping once test accuracy passes 0.99.
- attention: 1 head, learned absolute positions, dropout 0.1 on the attention weights.
- hyena: the reference operator (one long implicit filter between two gates).
- rwkv: RWKV's time mixer; probe has no RWKV, and RetNet stands in (a decaying linear recurrence).
- base_conv: Zoology's BaseConv (feed-through and residual), kernels alternating 3 and long over the layers; the
  long convolution implicit (`ImplicitLongConvolution`: BaseConv's `implicit_long_conv` defaults to True and
  the configs do not set it).
- h3: d_state = L ("makes it mathematically equivalent to Hyena"), head_dim 2.
- based: Zoology's hybrid of a short (3) BaseConv and Based (Taylor feature map, feature_dim 8, 1 head).
- mamba: Mamba's defaults.

Where probe departs, and why (each moves a point; none is tuned away):
- Learned positions live in the attention mixer (added to its input), not at the model's embedding; Zoology
  adds them once after the embedding. With 2 layers the second attention layer gets its own table here.
- Zoology's model applies dropout 0.1 to the embeddings; probe's model has no embedding dropout.
- Schedule: Zoology steps a cosine per epoch with no warmup and evaluates every epoch; probe steps the same
  cosine per step (no warmup here) and evaluates every epoch's worth of steps. AdamW with weight decay 0.1 on
  matrices only (Zoology's later trainer: 0.1 on every parameter).
- Training in bf16-mixed on CUDA (Zoology: fp32).
- RWKV is replaced by RetNet (above).
- A cell ends once one learning rate passes 0.99 (`end_cell_at_target`): the others stop there, pruned, where
  Zoology trains each to its own end. The figure's point, the best over the four, is the same.

`zoology_mqar.py` is probe's own version of the same grid: each cell's learning rate tuned by Optuna over the
same range, the default mixers, warmup 100 steps, evaluation every 200 steps.
"""
from probe.sweep import SEQ_LEN, SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR

GRID = [(64, 4), (128, 8), (256, 16), (512, 64)]
BATCH = {64: 512, 128: 512, 256: 256, 512: 128}
NUM_TRAIN = 100_000


def sweep() -> Sweep:
    return Sweep(
        name="zoology_figure2",
        tasks=[MQAR(seq_len=L, vocab_size=8192, num_kv_pairs=N, power_a=0.01, random_non_queries=False)
               for L, N in GRID],
        archs={
            "attention": {"arch": "attention_learned", "n_heads": 1, "dropout": 0.1},
            "hyena": {},
            "retnet": {},
            "baseconv": {"arch": "baseconv_short,baseconv_implicit", "form": "zoology"},
            "h3": {"d_state": SEQ_LEN, "head_dim": 2},
            "based": {"arch": "baseconv_short,based", "form": "zoology", "feature_dim": 8, "n_heads": 1},
            "mamba": {},
        },
        d_models=(64, 128, 256, 512),
        n_layers=2,
        train=TrainConfig(warmup_steps=0, weight_decay=0.1, num_train=NUM_TRAIN, num_test=3_000, stop_at=0.99),
        # Zoology's batch sizes per length, and an evaluation once per epoch at each
        train_per_seq_len={L: {"batch_size": b, "val_every": NUM_TRAIN // b} for L, b in BATCH.items()},
        epochs=64,
        search=SearchSpace(lr_grid=(1e-4, 4.6415888336127786e-4, 2.1544346900318823e-3, 1e-2)),
        trials_per_cell=4,
        pruner="none",
        seeds=(0,),
    )
