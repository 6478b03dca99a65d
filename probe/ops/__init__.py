"""probe.ops: each op's plain PyTorch reference beside its Triton kernel, behind one dispatch rule.

    probe/ops/<op>/reference.py   the op's contract: its equation, in plain PyTorch (the tests' oracle)
    probe/ops/<op>/kernel.py      its Triton kernel, forward and backward
    probe/ops/<op>/__init__.py    the op as mixers and models call it
    probe/ops/dispatch.py         which of the two runs (kernel on CUDA for fp32/bf16/fp16, else the reference;
                                  PROBE_OPS=ref|triton forces one)

Every kernel packs: under torch.func.vmap (K models trained as one, probe.pack) it folds the model dimension into
its own leading dimension, so the K members cost one launch. tests/test_ops.py checks every op of OPS against
its reference, generated from this registry.
"""
from .attention import causal_attention, causal_attention_ref, causal_attention_serves
from .cross_entropy import cross_entropy, cross_entropy_ref
from .dispatch import backend
from .embedding import embedding, embedding_ref
from .gla import gla, gla_ref
from .layer_norm import group_norm, group_norm_ref, layer_norm, layer_norm_ref
from .linear_attention import linear_attention, linear_attention_ref
from .long_conv import long_conv, long_conv_ref
from .rotary import rotary, rotary_ref
from .selective_scan import selective_scan, selective_scan_ref, selective_scan_step
from .short_conv import short_conv, short_conv_ref, short_conv_step
from .simplicial import simplicial_attention, simplicial_attention_ref, simplicial_window_attend
from .taylor_attention import taylor_attention, taylor_attention_ref

#: op name -> (the op, its reference)
OPS = {
    "embedding": (embedding, embedding_ref),
    "layer_norm": (layer_norm, layer_norm_ref),
    "group_norm": (group_norm, group_norm_ref),
    "cross_entropy": (cross_entropy, cross_entropy_ref),
    "rotary": (rotary, rotary_ref),
    "selective_scan": (selective_scan, selective_scan_ref),
    "linear_attention": (linear_attention, linear_attention_ref),
    "gla": (gla, gla_ref),
    "short_conv": (short_conv, short_conv_ref),
    "long_conv": (long_conv, long_conv_ref),
    "taylor_attention": (taylor_attention, taylor_attention_ref),
    "causal_attention": (causal_attention, causal_attention_ref),
    "simplicial_attention": (simplicial_attention, simplicial_attention_ref),
}

__all__ = ["OPS", "backend", "causal_attention", "causal_attention_ref", "causal_attention_serves",
           "cross_entropy", "cross_entropy_ref", "embedding", "embedding_ref", "gla", "gla_ref",
           "group_norm", "group_norm_ref", "layer_norm", "layer_norm_ref",
           "linear_attention", "linear_attention_ref", "long_conv", "long_conv_ref", "rotary", "rotary_ref",
           "selective_scan", "selective_scan_ref", "selective_scan_step",
           "short_conv", "short_conv_ref", "short_conv_step", "simplicial_attention", "simplicial_attention_ref",
           "simplicial_window_attend", "taylor_attention", "taylor_attention_ref"]
