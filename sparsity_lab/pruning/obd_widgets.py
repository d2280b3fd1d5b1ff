"""Lecture 01's explorer: pick a saliency and a sparsity, see loss, accuracy, the estimator's cost and every mask."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from sparsity_lab._optional import require
from sparsity_lab.course.data import Digits
from sparsity_lab.course.figures import fixed_size
from sparsity_lab.course.train import evaluate
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.pruning import obd_plots as plots
from sparsity_lab.pruning.obd_study import timed
from sparsity_lab.pruning.prune import current_mask, prunable_layers, prune_by_scores
from sparsity_lab.pruning.saliency import saliency


class SaliencyCache:
    """Scores of `model` per saliency method, computed on first use on the training split, with the seconds taken."""

    def __init__(self, model: nn.Module, data: Digits, loss: str = "ce", samples: int = 100) -> None:
        self.model, self.data, self.loss, self.samples = model, data, loss, samples
        self.scores: dict[str, dict[str, torch.Tensor]] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, method: str) -> dict[str, torch.Tensor]:
        if method not in self.scores:
            x = self.data.x_train.to(next(self.model.parameters()).dtype)
            self.scores[method], self.seconds[method] = timed(saliency, self.model, method, x, self.data.y_train,
                                                              loss=self.loss, samples=self.samples)
        return self.scores[method]


def pruned_by(model: nn.Module, scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> nn.Module:
    """A copy of `model` pruned at `sparsity` by `scores`."""
    return prune_by_scores(copy.deepcopy(model), scores, sparsity, scope)


def saliency_explorer(
    model: nn.Module, data: Digits, methods: Sequence[str] = ("magnitude", "random", "wanda", "obd-ggn", "obd-lecun"),
    loss: str = "ce", scope: str = "global", samples: int = 100,
):
    """A saliency dropdown and a sparsity slider over `model`: test loss and accuracy, the estimator's cost, and a
    heatmap of every layer's mask (global pruning lets the layers' sparsities differ)."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    cache = SaliencyCache(model, data, loss=loss, samples=samples)
    method = widgets.Dropdown(options=list(methods), value=methods[0], description="saliency")
    slider = widgets.FloatSlider(value=0.8, min=0.0, max=0.99, step=0.01, description="sparsity",
                                 continuous_update=False, readout_format=".0%")
    status = widgets.HTML()
    errors = CallbackErrors({"saliency": method, "sparsity": slider}, "prune the model")
    masks = {name: current_mask(m) for name, m in prunable_layers(model).items()}
    figure = go.FigureWidget(fixed_size(plots.layer_masks(masks)))

    @errors.guard
    def update(change=None) -> None:
        scores = cache(method.value)
        pruned = pruned_by(model, scores, slider.value, scope)
        dtype = next(model.parameters()).dtype
        test_loss, accuracy = evaluate(pruned, data.x_test.to(dtype), data.y_test)
        status.value = (f"<b>{method.value}</b> at <b>{slider.value:.0%}</b>: test accuracy <b>{accuracy:.1%}</b>, "
                        f"test cross-entropy {test_loss:.3f}; scores took {cache.seconds[method.value]:.3f} s")
        new = plots.layer_masks({n: current_mask(m) for n, m in prunable_layers(pruned).items()})
        with figure.batch_update():
            for trace, fresh in zip(figure.data, new.data, strict=True):
                trace.z = fresh.z
            for annotation, fresh in zip(figure.layout.annotations, new.layout.annotations, strict=True):
                annotation.text = fresh.text

    method.observe(update, names="value")
    slider.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([method, slider]), status, errors.output, figure])
    box.errors = errors
    return box
