"""A transposable-mask explorer: a random weight's 2:4 mask over 4x4 tiles (or plain 2:4 rows) and its transpose,
with the fraction of Σ|w| each kind of mask keeps."""

from __future__ import annotations

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.semi24 import layout as semi24
from sparsity_lab.training import plots
from sparsity_lab.training.masks import transposable_mask

MASKS = ("transposable", "plain 2:4 rows")


def example_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A seeded (rows, cols) weight of normal values rounded to one decimal (short enough to read in a cell)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 10).round() / 10


def masks_of(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both masks of `weight`: transposable 2:4 tiles (`sparse_training`) and plain 2:4 rows (`semi24.prune`)."""
    return {"transposable": transposable_mask(weight), "plain 2:4 rows": semi24.prune(weight)}


def mask_explorer(rows: int = 8, cols: int = 8, seed: int = 0, largest: int = 32):
    """Sliders for the weight's shape (multiples of 4, up to `largest`) and seed, a toggle between the two masks:
    redraws the mask and its transpose, and reports the kept fraction of Σ|w| of both masks."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")

    def slider(name: str, value: int) -> widgets.IntSlider:
        return widgets.IntSlider(value=value, min=4, max=largest, step=4, description=name, continuous_update=False)

    rows_box, cols_box = slider("rows", rows), slider("cols", cols)
    seed_box = widgets.IntSlider(value=seed, min=0, max=50, description="seed", continuous_update=False)
    kind_box = widgets.ToggleButtons(options=list(MASKS), value=MASKS[0], description="mask")
    status = widgets.HTML()
    figure = go.FigureWidget()
    errors = CallbackErrors({"rows": rows_box, "cols": cols_box, "seed": seed_box, "mask": kind_box},
                            "draw the masks")

    @errors.guard
    def update(change=None) -> None:
        weight = example_weight(rows_box.value, cols_box.value, seed_box.value)
        masks = masks_of(weight)
        fresh = plots.mask_tiles_figure(weight, masks[kind_box.value], title=f"{kind_box.value} mask")
        with figure.batch_update():
            figure.data = []
            figure.add_traces(fresh.data)
            figure.layout = fresh.layout
        kept = {name: plots.kept_magnitude(weight, mask) for name, mask in masks.items()}
        cost = 100 * (kept["plain 2:4 rows"] - kept["transposable"])
        status.value = (f"{rows_box.value} x {cols_box.value}, seed {seed_box.value}: transposable keeps "
                        f"<b>{kept['transposable']:.1%}</b> of Σ|w|, plain 2:4 rows keep "
                        f"<b>{kept['plain 2:4 rows']:.1%}</b>: transposability costs <b>{cost:.1f}</b> points "
                        "here, and buys a transpose that is 2:4 too.")

    for box in (rows_box, cols_box, seed_box, kind_box):
        box.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([rows_box, cols_box, seed_box]), kind_box, status, errors.output, figure])
    box.errors = errors
    return box
