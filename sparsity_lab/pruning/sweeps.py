"""Prune a trained model at a series of sparsities and measure each: the data behind accuracy-vs-sparsity plots."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from torch import nn

from sparsity_lab.course.data import Digits
from sparsity_lab.course.train import evaluate, fit
from sparsity_lab.pruning.prune import make_permanent
from sparsity_lab.sparsify import PruneConfig, sparsify_

Pruner = Callable[[nn.Module, float], nn.Module]


def by_magnitude(model: nn.Module, sparsity: float) -> nn.Module:
    """The default pruner: `sparsify_(model, PruneConfig(sparsity))` (magnitude, per layer), returning the model."""
    sparsify_(model, PruneConfig(sparsity=sparsity))
    return model


def pruned_copy(model: nn.Module, sparsity: float, pruner: Pruner = by_magnitude) -> nn.Module:
    """A deep copy of `model` pruned by `pruner` at `sparsity` (masks attached, so it can be fine-tuned)."""
    return pruner(copy.deepcopy(model), sparsity)


def sparsity_sweep(
    model: nn.Module,
    data: Digits,
    sparsities: Iterable[float],
    pruner: Pruner = by_magnitude,
    finetune_epochs: int = 0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Test loss and accuracy of `model` pruned one-shot at each sparsity (and after fine-tuning, if asked)."""
    rows = []
    for sparsity in sparsities:
        pruned = pruned_copy(model, sparsity, pruner)
        loss, accuracy = evaluate(pruned, data.x_test, data.y_test)
        row = {"sparsity": float(sparsity), "loss": loss, "accuracy": accuracy}
        if finetune_epochs:
            fit(pruned, data, epochs=finetune_epochs, seed=seed, progress=False)
            make_permanent(pruned)
            row["finetuned_loss"], row["finetuned_accuracy"] = evaluate(pruned, data.x_test, data.y_test)
        rows.append(row)
    return rows
