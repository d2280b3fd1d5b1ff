"""Thin ipywidgets shells around the pure plots: a control, a callback, a FigureWidget."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from sparsity_lab._optional import require
from sparsity_lab.course.data import Digits
from sparsity_lab.course.figures import HALF_WIDTH, fixed_size
from sparsity_lab.course.train import evaluate
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.pruning import plots
from sparsity_lab.pruning.sweeps import pruned_copy


def magnitude_pruning_explorer(model: nn.Module, data: Digits, rows: Sequence[dict[str, float]], layer: str = "net.1"):
    """A sparsity slider that prunes `model` by magnitude, shows its accuracy on the sweep's curve and the
    chosen layer's mask, side by side (half the widget width each)."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    slider = widgets.FloatSlider(value=0.5, min=0.0, max=0.99, step=0.01, description="sparsity",
                                 continuous_update=False, readout_format=".0%")
    status = widgets.HTML()
    errors = CallbackErrors({"sparsity": slider}, "prune the model")
    curve = plots.accuracy_vs_sparsity(rows, title="Accuracy after pruning", highlight=(0.0, 0.0))
    curve.update_layout(legend=dict(x=0.02, y=0.02, xanchor="left", yanchor="bottom", bgcolor="rgba(255,255,255,0.8)"),
                        margin=dict(l=60, r=20, t=60, b=50))
    curve = go.FigureWidget(fixed_size(curve, HALF_WIDTH, 420))
    heatmap = plots.mask_heatmap(dict(model.named_modules())[layer].weight != 0)
    heatmap.update_layout(margin=dict(l=60, r=20, t=60, b=50))
    heatmap = go.FigureWidget(fixed_size(heatmap, HALF_WIDTH, 420))

    @errors.guard
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
    box = widgets.VBox([slider, status, errors.output, widgets.HBox([curve, heatmap])])
    box.errors = errors
    return box
