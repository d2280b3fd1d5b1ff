"""A 2:4 compressor explorer: a small weight, its mask, kept values and metadata bits in both layouts."""

from __future__ import annotations

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.semi24 import layout as semi24
from sparsity_lab.semi24 import plots

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int8": torch.int8}


def example_weight(dtype: torch.dtype, seed: int = 0, rows: int | None = None, cols: int | None = None
                   ) -> torch.Tensor:
    """A random weight of the smallest shape the cutlass layout takes for `dtype` (small integers, easy to read)."""
    row_multiple, col_multiple = semi24.shape_multiples(dtype)
    g = torch.Generator().manual_seed(seed)
    shape = (rows or row_multiple, cols or max(col_multiple, 32))
    return torch.randint(-9, 10, shape, generator=g).to(dtype)


def compressor_explorer(seed: int = 0, show_rows: int = 6, show_cols: int = 32):
    """Pick a dtype and a seed: see the weight's 2:4 groups (1:2 for float32; the first `show_rows` rows and
    `show_cols` columns, big enough to read), the kept values, the simple layout's metadata bits (first
    `show_rows` rows) and the cutlass metadata buffer in memory order."""
    widgets = require("ipywidgets")
    go = require("plotly.graph_objects")
    dtype_box = widgets.Dropdown(options=list(DTYPES), value="float16", description="dtype")
    seed_box = widgets.IntSlider(value=seed, min=0, max=20, description="seed", continuous_update=False)
    status = widgets.HTML()
    groups = go.FigureWidget()
    simple = go.FigureWidget()
    cutlass = go.FigureWidget()
    errors = CallbackErrors({"dtype": dtype_box, "seed": seed_box}, "compress this weight")

    @errors.guard
    def update(change=None) -> None:
        dtype = DTYPES[dtype_box.value]
        weight = example_weight(dtype, seed_box.value)
        pattern = "1:2" if dtype == torch.float32 else "2:4"
        mask = semi24.prune(weight, pattern)
        pruned = torch.where(mask, weight, torch.zeros((), dtype=dtype))
        values, meta_simple = semi24.compress(pruned, "simple")
        _, meta_cutlass = semi24.compress(pruned, "cutlass")
        rows, cols = weight.shape
        for target, fig in [
            (groups, plots.groups_heatmap(weight[:show_rows, :show_cols], mask[:show_rows, :show_cols],
                                          f"{dtype_box.value}: first {min(show_rows, rows)} of {rows} rows"
                                          + (f", {show_cols} of {cols} columns" if cols > show_cols else "")
                                          + f", {pattern} mask")),
            (simple, plots.simple_meta_bits(meta_simple[:show_rows], cols // 4)),
            (cutlass, plots.cutlass_storage(rows, meta_cutlass.shape[1], meta_cutlass.dtype, meta_cutlass)),
        ]:
            with target.batch_update():
                target.data = []
                target.add_traces(fig.data)
                target.layout = fig.layout
        kept = ", ".join(plots.format_value(v) for v in values[0].double().tolist())
        simple_row = " ".join(format(int(b), "08b") for b in meta_simple[0])
        status.value = (f"<b>{dtype_box.value}</b> {rows} x {cols}: row 0 keeps <code>[{kept}]</code>; "
                        f"its simple metadata bytes <code>{simple_row}</code>; cutlass metadata "
                        f"{meta_cutlass.dtype} {tuple(meta_cutlass.shape)}, decompresses exactly: "
                        f"<b>{torch.equal(semi24.decompress(*semi24.compress(pruned)), pruned)}</b>")

    dtype_box.observe(update, names="value")
    seed_box.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([dtype_box, seed_box]), status, errors.output, groups, simple, cutlass])
    box.errors = errors
    return box
