"""Length extrapolation of position schemes: train at 256 tokens, test up to 16x (4096) on passkey and MQAR.

Two protocols, side by side:
- Trained with the scheme: NoPE, RoPE, ALiBi, xPos, position interpolation and NTK-aware RoPE (both with
  train_len=256, so the positions are interpolated by max_seq_len/train_len = 16 from the first step: "train
  with PI/NTK"), dynamic NTK (scaling grows only past the training length), ReRoPE and leaky ReRoPE (with the
  reference's log-n query scale past train_len), CoCA.
- Trained with RoPE, evaluated with the scheme (how PI, NTK-aware, dynamic NTK, ReRoPE and leaky ReRoPE are
  used in their sources: applied at inference to a model trained with plain RoPE): the `attention` cells
  evaluate their final weights at every length under each scheme too; the record's `by_scheme` holds one
  entry per scheme (RoPE itself included, equal to the record's own numbers).
"""
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR
from tasks.passkey import Passkey

EVAL = (512, 1024, 2048, 4096)


def sweep() -> Sweep:
    return Sweep(
        name="extrapolation",
        tasks=[Passkey(seq_len=256, vocab_size=256, num_digits=5, eval_seq_lens=EVAL),
               MQAR(seq_len=256, vocab_size=8192, num_kv_pairs=16, eval_seq_lens=EVAL)],
        archs={
            "attention_nope": {},
            "attention": {"train": {"eval_position_schemes": ("rope", "pi", "ntk", "ntk_dynamic", "rerope",
                                                               "leaky_rerope")}},
            "attention_alibi": {},
            "attention_xpos": {},
            "attention_pi": {"train_len": 256},
            "attention_ntk": {"train_len": 256},
            "attention_ntk_dynamic": {"train_len": 256},
            "attention_rerope": {"train_len": 256},
            "attention_leaky_rerope": {"train_len": 256},
            "attention_coca": {},
        },
        d_models=(128,),
        n_layers=2,
        train=TrainConfig(batch_size=128, warmup_steps=100, num_train=50_000, num_test=500, val_every=200,
                          stop_at=None),
        epochs=16,
        search=SearchSpace(lr=(1e-4, 1e-2)),
        trials_per_cell=3,
    )
