"""Lecture 03's widget: a small random matrix and its COO / CSR / BSR arrays, redrawn as you change it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.figures import fixed_size
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.formats import plots
from sparsity_lab.formats.matrices import BSR, COO, CSR, random_sparse

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8, "float64": torch.float64}
INDEX_DTYPES = {"int64": torch.int64, "int32": torch.int32}


def build_formats(shape: Sequence[int], sparsity: float, seed: int, blocksize: tuple[int, int], pattern: str,
                  dtype: torch.dtype = torch.float32,
                  index_dtype: torch.dtype = torch.int64) -> tuple[COO, CSR, BSR]:
    """One random matrix (pruned unstructured, or in whole `blocksize` blocks when pattern is "blocks") as COO,
    CSR and BSR."""
    if pattern not in ("unstructured", "blocks"):
        raise ValueError(f"pattern must be 'unstructured' or 'blocks', got {pattern!r}")
    dense = random_sparse(shape, sparsity, seed, dtype, blocksize if pattern == "blocks" else None)
    return (COO.from_dense(dense, index_dtype), CSR.from_dense(dense, index_dtype),
            BSR.from_dense(dense, blocksize, index_dtype))


def format_explorer(shape: Sequence[int] = (8, 8), blocksizes: Sequence[tuple[int, int]] = ((2, 2), (4, 4), (2, 4)),
                    sparsity: float = 0.75):
    """Sliders for sparsity and seed, and choices of block size, pattern, value and index dtype: the matrix and
    every array of its three formats (with their bytes) redraw on each change. Any setting draws, an empty
    matrix too (100%, or a block pattern that keeps no whole block); an error would show in the widget."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    controls = {
        "sparsity": widgets.FloatSlider(value=sparsity, min=0.0, max=1.0, step=0.05, description="sparsity",
                                        continuous_update=False, readout_format=".0%"),
        "seed": widgets.IntSlider(value=0, min=0, max=20, description="seed", continuous_update=False),
        "blocksize": widgets.Dropdown(options=[(f"{bh}x{bw}", (bh, bw)) for bh, bw in blocksizes],
                                      description="BSR block"),
        "pattern": widgets.ToggleButtons(options=["unstructured", "blocks"], description="pruned",
                                         style={"button_width": "110px"}),
        "dtype": widgets.Dropdown(options=list(DTYPES), description="values"),
        "index_dtype": widgets.Dropdown(options=list(INDEX_DTYPES), description="indices"),
    }

    def draw() -> go.Figure:
        formats = build_formats(shape, controls["sparsity"].value, controls["seed"].value,
                                controls["blocksize"].value, controls["pattern"].value,
                                DTYPES[controls["dtype"].value], INDEX_DTYPES[controls["index_dtype"].value])
        return fixed_size(plots.format_arrays_figure(*formats))

    figure = go.FigureWidget(draw())
    errors = CallbackErrors({"sparsity": controls["sparsity"], "seed": controls["seed"],
                             "BSR block": controls["blocksize"], "pruned": controls["pattern"],
                             "values": controls["dtype"], "indices": controls["index_dtype"]}, "draw this matrix")

    @errors.guard
    def update(change=None) -> None:
        fresh = draw()
        with figure.batch_update():
            for old, new in zip(figure.data, fresh.data, strict=True):
                old.update(new.to_plotly_json(), overwrite=True)
            figure.layout = fresh.layout  # the height follows the table's rows

    for control in controls.values():
        control.observe(update, names="value")
    rows = [widgets.HBox([controls["sparsity"], controls["seed"]]),
            widgets.HBox([controls["blocksize"], controls["pattern"]]),
            widgets.HBox([controls["dtype"], controls["index_dtype"]])]
    box = widgets.VBox([*rows, errors.output, figure])
    box.errors = errors
    return box
