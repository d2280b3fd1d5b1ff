"""2:4 training on the digits MLP: from scratch against dense, and a trained dense model fine-tuned into 2:4.

Every run uses the fixed split and seeded initialisation; the classifier head (256 -> 10, ten outputs are not a
multiple of 4) stays dense, as is usual for 2:4 training.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

import torch

from sparsity_lab.course.data import load_digits
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.course.train import evaluate, fit
from sparsity_lab.sparsify import Semi24TrainingConfig, sparsify_
from sparsity_lab.training.layer import sparse24_layers
from sparsity_lab.training.masks import is_24, is_transposable_24

HEAD = ("net.5",)  # DigitsMLP's classifier


@dataclass
class Run:
    """One training run: per-epoch curves and the final test accuracy."""

    recipe: str
    seed: int
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    one_shot_accuracy: float | None = None  # fine-tuning only: accuracy right after pruning, before training
    layers_24: list[str] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1]


def _check_24(model: torch.nn.Module) -> list[str]:
    """The names of the 2:4 layers, after checking each still holds its pattern (transposable where asked)."""
    layers = sparse24_layers(model)
    for name, layer in layers.items():
        weight = layer.sparse_weight()
        ok = is_transposable_24(weight) if layer.transpose == "transposable" else is_24(weight)
        if not ok:
            raise AssertionError(f"layer {name} lost its {layer.transpose} 2:4 pattern during training")
    return sorted(layers)


def sparsify_hidden(model: DigitsMLP, **layer_kwargs) -> None:
    """Swap the hidden layers of a DigitsMLP (not its classifier) to 2:4 training layers; kwargs: the config's."""
    sparsify_(model, Semi24TrainingConfig(**layer_kwargs), filter_fn=lambda module, fqn: fqn not in HEAD)


def train_dense(seed: int, epochs: int = 30, hidden: int = 256, progress: bool = False) -> tuple[Run, DigitsMLP]:
    """The dense baseline: DigitsMLP trained from `seed`."""
    torch.manual_seed(seed)
    model = DigitsMLP(hidden=hidden)
    history = fit(model, load_digits(), epochs=epochs, seed=seed, progress=progress)
    return Run("dense", seed, history.train_loss, history.test_accuracy), model


def train_sparse_from_scratch(seed: int, epochs: int = 30, hidden: int = 256, progress: bool = False,
                              **layer_kwargs) -> Run:
    """2:4 from the first step: the same initialisation as `train_dense`, hidden layers swapped before training."""
    torch.manual_seed(seed)
    model = DigitsMLP(hidden=hidden)
    sparsify_hidden(model, **layer_kwargs)
    history = fit(model, load_digits(), epochs=epochs, seed=seed, progress=progress)
    return Run("2:4 from scratch", seed, history.train_loss, history.test_accuracy, layers_24=_check_24(model))


def finetune_into_sparse(dense: DigitsMLP, seed: int, epochs: int = 10, progress: bool = False,
                         **layer_kwargs) -> Run:
    """A trained dense model pruned to 2:4 (one shot, then fine-tuned with 2:4 training for `epochs`)."""
    model = DigitsMLP(hidden=dense.net[1].out_features)
    model.load_state_dict(dense.state_dict())
    sparsify_hidden(model, **layer_kwargs)
    data = load_digits()
    one_shot = evaluate(model, data.x_test, data.y_test)[1]
    history = fit(model, data, epochs=epochs, lr=3e-4, seed=seed, progress=progress)
    return Run("dense -> 2:4 fine-tuned", seed, history.train_loss, history.test_accuracy, one_shot,
               _check_24(model))


def study(seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 30, finetune_epochs: int = 10, progress: bool = True,
          **layer_kwargs) -> dict[str, object]:
    """Dense, 2:4 from scratch and dense -> 2:4 fine-tuning over `seeds`: every run, and a summary per recipe
    (mean and standard deviation of the final test accuracy; the gap to dense in points)."""
    runs: list[Run] = []
    from sparsity_lab.course.train import _progress

    with _progress(len(seeds) * 3, progress, "2:4 training study") as bar:
        for seed in seeds:
            dense_run, dense_model = train_dense(seed, epochs)
            runs.append(dense_run)
            runs.append(train_sparse_from_scratch(seed, epochs, **layer_kwargs))
            runs.append(finetune_into_sparse(dense_model, seed, finetune_epochs, **layer_kwargs))
            if bar is not None:
                bar.update(3)
    summary = {}
    for recipe in dict.fromkeys(r.recipe for r in runs):
        finals = [r.final_accuracy for r in runs if r.recipe == recipe]
        summary[recipe] = {"mean": statistics.fmean(finals), "std": statistics.pstdev(finals), "n": len(finals)}
    dense_mean = summary["dense"]["mean"]
    for recipe in summary:
        summary[recipe]["gap_points"] = 100 * (dense_mean - summary[recipe]["mean"])
    return {"config": {"seeds": list(seeds), "epochs": epochs, "finetune_epochs": finetune_epochs,
                       **{k: v for k, v in layer_kwargs.items() if isinstance(v, (str, int, float))}},
            "runs": [asdict(r) | {"final_accuracy": r.final_accuracy} for r in runs], "summary": summary}
