"""A channel slider over a weight's int8 grid: the float row, its int8 reconstruction, and the error bound."""

from __future__ import annotations

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.figures import fixed_size
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.quant import plots
from sparsity_lab.quant.int8 import dequantize, quantize_per_channel


def int8_channel_explorer(weight: torch.Tensor, columns: int = 64):
    """Pick an output channel of `weight` (out, in): plot its first `columns` entries against int8 * scale and
    report the channel's scale and its largest error in half-steps (<= 1 by construction)."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    weight = weight.detach().float().cpu()
    q, scale = quantize_per_channel(weight)
    error = (weight - dequantize(q, scale)).abs()
    slider = widgets.IntSlider(value=0, min=0, max=weight.shape[0] - 1, description="channel",
                               continuous_update=False)
    status = widgets.HTML()
    errors = CallbackErrors({"channel": slider}, "draw this channel")
    figure = go.FigureWidget(fixed_size(plots.int8_grid(weight[0, :columns]), height=420))

    @errors.guard
    def update(change=None) -> None:
        n = slider.value
        fresh = plots.int8_grid(weight[n, :columns], title=f"channel {n}")
        for trace, new in zip(figure.data, fresh.data, strict=True):
            trace.y = new.y
        figure.layout.title = fresh.layout.title
        half_steps = float(error[n].max() / (scale[n] / 2)) if scale[n] > 0 else 0.0
        status.value = (f"channel <b>{n}</b>: scale {float(scale[n]):.3e}, largest error "
                        f"<b>{half_steps:.3f}</b> half-steps, mean |error| {float(error[n].mean()):.2e}")

    slider.observe(update, names="value")
    update()
    box = widgets.VBox([slider, status, errors.output, figure])
    box.errors = errors
    return box
