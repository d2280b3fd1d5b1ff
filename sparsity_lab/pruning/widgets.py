"""Thin ipywidgets shells around the pure plots: a control, a callback, a FigureWidget."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sparsity_lab._optional import require
from sparsity_lab.course.data import Digits
from sparsity_lab.course.train import evaluate
from sparsity_lab.pruning import plots
from sparsity_lab.pruning.sweeps import pruned_copy


def magnitude_pruning_explorer(model: nn.Module, data: Digits, rows: Sequence[dict[str, float]], layer: str = "net.1"):
    """A sparsity slider that prunes `model` by magnitude, shows its accuracy on the sweep's curve and the
    chosen layer's mask."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    slider = widgets.FloatSlider(value=0.5, min=0.0, max=0.99, step=0.01, description="sparsity",
                                 continuous_update=False, readout_format=".0%")
    status = widgets.HTML()
    curve = go.FigureWidget(plots.accuracy_vs_sparsity(rows, highlight=(0.0, 0.0)))
    heatmap = go.FigureWidget(plots.mask_heatmap(dict(model.named_modules())[layer].weight != 0))

    def update(change=None) -> None:
        pruned = pruned_copy(model, slider.value)
        loss, accuracy = evaluate(pruned, data.x_test, data.y_test)
        status.value = f"<b>{slider.value:.0%}</b> sparse: test accuracy <b>{accuracy:.1%}</b>, loss {loss:.3f}"
        curve.data[-1].x, curve.data[-1].y = [100 * slider.value], [100 * accuracy]
        mask = dict(pruned.named_modules())[layer].weight != 0
        heatmap.data[0].z = mask.float().numpy()
        heatmap.layout.title = f"{layer} mask at {slider.value:.0%} (dark = kept)"

    slider.observe(update, names="value")
    update()
    return widgets.VBox([slider, status, widgets.HBox([curve, heatmap])])
