"""Lecture 02's widget: one sparsity slider, every pattern's mask on a real layer, and each pattern's accuracy."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from sparsity_lab._optional import require
from sparsity_lab.course.data import Digits
from sparsity_lab.course.figures import fixed_size
from sparsity_lab.course.train import evaluate
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.patterns import plots
from sparsity_lab.patterns.masks import parse_pattern, pattern_masks
from sparsity_lab.patterns.study import LAYERS
from sparsity_lab.pruning.prune import apply_mask

EXPLORER_PATTERNS = ("unstructured", "N:8", "block 4x4", "block 8x8", "row", "column")


def resolve(pattern: str, sparsity: float) -> str:
    """The concrete pattern shown for `pattern` at `sparsity`: 'N:M' becomes the N:M with 1 - N/M nearest it."""
    if pattern.startswith("N:"):
        m = int(pattern[2:])
        n = min(max(round(m * (1.0 - sparsity)), 1), m - 1)
        return f"{n}:{m}"
    return parse_pattern(pattern).name


def prune_at(
    model: nn.Module, pattern: str, sparsity: float, layers: Sequence[str] = LAYERS
) -> tuple[nn.Module, dict]:
    """A copy of `model` with `layers` masked in `pattern` (N:M at its own fixed sparsity), and the masks."""
    pruned = copy.deepcopy(model)
    fixed = parse_pattern(pattern).fixed_sparsity is not None
    masks = pattern_masks(pruned, pattern, None if fixed else sparsity, layers)
    modules = dict(pruned.named_modules())
    for name, mask in masks.items():
        apply_mask(modules[name], mask)
    return pruned, masks


def pattern_explorer(
    model: nn.Module,
    data: Digits,
    layer: str = "net.1",
    patterns: Sequence[str] = EXPLORER_PATTERNS,
    window: tuple[int, int] | None = (64, 64),
    layers: Sequence[str] = LAYERS,
):
    """A sparsity slider: each pattern prunes `layers` of `model` one-shot by |w|; its mask on `layer` (the
    top-left `window`) is drawn with the achieved sparsity and the test accuracy in its title."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    if layer not in layers:
        raise ValueError(f"layer {layer!r} must be one of the pruned layers {list(layers)}")
    slider = widgets.FloatSlider(value=0.5, min=0.0, max=0.875, step=0.125, description="sparsity",
                                 continuous_update=False, readout_format=".1%")
    table = widgets.HTML()
    errors = CallbackErrors({"sparsity": slider}, "prune the model")
    weight = dict(model.named_modules())[layer].weight
    figure = go.FigureWidget(fixed_size(plots.pattern_masks_figure({p: weight != 0 for p in patterns},
                                                                   window=window)))
    dense_loss, dense_accuracy = evaluate(model, data.x_test, data.y_test)

    @errors.guard
    def update(change=None) -> None:
        lines = []
        for i, family in enumerate(patterns):
            name = resolve(family, slider.value)
            pruned, masks = prune_at(model, name, slider.value, layers)
            loss, accuracy = evaluate(pruned, data.x_test, data.y_test)
            mask = masks[layer]
            achieved = 1.0 - float(mask.float().mean())
            shown = mask.reshape(mask.shape[0], -1)
            if window is not None:
                shown = shown[: window[0], : window[1]]
            figure.data[i].z = shown.float().numpy()
            figure.layout.annotations[i].text = f"{name}: {achieved:.1%} sparse,<br>acc {accuracy:.1%}"
            lines.append(f"<tr><td>{name}</td><td>{achieved:.1%}</td><td>{accuracy:.1%}</td>"
                         f"<td>{loss - dense_loss:+.3f}</td></tr>")
        table.value = (f"<b>asked for {slider.value:.1%}</b> (dense: accuracy {dense_accuracy:.1%}, loss "
                       f"{dense_loss:.3f}); one-shot, no fine-tuning<table><tr><th>pattern</th>"
                       f"<th>{layer} sparsity</th><th>test accuracy</th><th>loss increase</th></tr>"
                       + "".join(lines) + "</table>")

    slider.observe(update, names="value")
    update()
    box = widgets.VBox([slider, errors.output, figure, table])
    box.errors = errors
    return box
