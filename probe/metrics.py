"""Accuracy the way a recall probe needs it: token-level (micro), per example, exact match, per slice.

torchmetrics' MulticlassAccuracy gives the headline number; it must be `average="micro"` (the default
"macro" averages over classes, which is not token accuracy) with `ignore_index=-100`. `ExampleCounts` keeps
per-example (correct, scored) counts of one test set, from which the per-example mean (Zoology's metric), exact
match and every slice follow without a second pass.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric


class ExampleCounts(Metric):
    full_state_update = False

    def __init__(self, num_examples: int):
        super().__init__()
        self.add_state("correct", torch.zeros(num_examples, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("scored", torch.zeros(num_examples, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, example_idx: torch.Tensor, correct: torch.Tensor, scored: torch.Tensor) -> None:
        """example_idx, correct, scored: [B]; correct/scored are counts of scored tokens per example."""
        self.correct.index_add_(0, example_idx, correct.long())
        self.scored.index_add_(0, example_idx, scored.long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.correct, self.scored


def summarise(correct: torch.Tensor, scored: torch.Tensor, slices: dict[str, torch.Tensor]) -> dict:
    """Per-example mean, exact match and accuracy per slice value from per-example counts ([n] each)."""
    seen = scored > 0
    c, s = correct[seen].double(), scored[seen].double()
    out = {
        "per_example_accuracy": (c / s).mean().item() if seen.any() else float("nan"),
        "exact_match": (c == s).double().mean().item() if seen.any() else float("nan"),
        "slices": {},
    }
    for name, labels in slices.items():
        labels = labels[seen]
        per_value = {}
        for value in torch.unique(labels).tolist():
            pick = labels == value
            per_value[int(value)] = {"accuracy": (c[pick].sum() / s[pick].sum()).item(),
                                     "per_example_accuracy": (c[pick] / s[pick]).mean().item(),
                                     "examples": int(pick.sum())}
        out["slices"][name] = per_value
    return out
