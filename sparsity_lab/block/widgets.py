"""A block-pruning explorer: block size and sparsity controls, the layer's block mask and its accuracy."""

from __future__ import annotations

import copy

from torch import nn

from sparsity_lab._optional import require
from sparsity_lab.block.pruning import prune_blocks
from sparsity_lab.course.data import Digits
from sparsity_lab.course.figures import fixed_size
from sparsity_lab.course.train import evaluate
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.pruning.plots import mask_heatmap


def block_pruning_explorer(model: nn.Module, data: Digits, layer: str = "net.3",
                           block_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)):
    """Dropdown for the block size and a sparsity slider: prunes a copy of `model` by block L2 norm (one-shot),
    shows its test accuracy and the chosen layer's mask."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    size = widgets.Dropdown(options=list(block_sizes), value=block_sizes[len(block_sizes) // 2],
                            description="block size")
    sparsity = widgets.FloatSlider(value=0.75, min=0.0, max=0.95, step=0.05, description="sparsity",
                                   continuous_update=False, readout_format=".0%")
    status = widgets.HTML()
    errors = CallbackErrors({"block size": size, "sparsity": sparsity}, "prune the model in blocks")
    heatmap = go.FigureWidget(fixed_size(mask_heatmap(dict(model.named_modules())[layer].weight != 0), height=420))

    @errors.guard
    def update(change=None) -> None:
        pruned = copy.deepcopy(model)
        masks = prune_blocks(pruned, size.value, sparsity.value)
        accuracy = evaluate(pruned, data.x_test, data.y_test)[1]
        status.value = (f"blocks of <b>{size.value}x{size.value}</b>, <b>{sparsity.value:.0%}</b> dropped: "
                        f"one-shot test accuracy <b>{accuracy:.1%}</b> (pruned layers: {', '.join(sorted(masks))})")
        mask = masks.get(layer)
        if mask is not None:
            heatmap.data[0].z = mask.float().numpy()
            heatmap.layout.title = f"{layer} block mask (dark = kept)"

    size.observe(update, names="value")
    sparsity.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([size, sparsity]), status, errors.output, heatmap])
    box.errors = errors
    return box
