"""Figures for lecture 03 (storage formats): a small matrix with its COO / CSR / BSR arrays, bytes per format
against sparsity, and the CPU crossover chart (`sparsity-lab bench formats_cpu`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsity_lab._optional import require
from sparsity_lab.formats.matrices import BSR, COO, CSR


def _title(text: str, caption: str) -> str:
    """A title with the results' label (where and when it was measured) underneath."""
    return text + (f"<br><sup>{caption}</sup>" if caption else "")


def _percent(sparsity: float) -> str:
    """0.995 -> '99.5%' (the category label of a sparsity on the x axes)."""
    return f"{100 * sparsity:.10g}%"


def _number(value: float, dtype: torch.dtype) -> str:
    return f"{value:.2f}" if dtype.is_floating_point else str(int(value))


NBSP = "\u00a0"  # plotly draws a table cell holding a space blank when its figure is first drawn off screen
CONTENTS_WIDTH = 60  # characters per line of the contents column: fits it at the explorer's 840 px


def _contents(tensor: torch.Tensor, limit: int) -> str:
    """An array as text, at most `limit` entries ("…" after them); floats with 2 decimals, blocks nested."""
    return "[" + ", ".join(_items(tensor, limit)) + (", …" if tensor.shape[0] > limit else "") + "]"


def _items(tensor: torch.Tensor, limit: int) -> list[str]:
    """The first `limit` entries of an array as text, in pieces joined by ", ": one per entry, or for the blocks
    of a BSR values array one per row of a block ("[[a b]", "[c d]]"), so that lines can break inside a block."""
    if tensor.ndim == 3:  # (blocks, bh, bw)
        pieces = []
        for block in tensor[:limit].tolist():
            rows = ["[" + " ".join(_number(v, tensor.dtype) for v in row) + "]" for row in block]
            rows[0], rows[-1] = "[" + rows[0], rows[-1] + "]"
            pieces += rows
        return pieces
    return [_number(v, tensor.dtype) for v in tensor[:limit].tolist()]


def _lines(tensor: torch.Tensor, limit: int, width: int = CONTENTS_WIDTH) -> list[str]:
    """`_contents` broken between entries into lines of about `width` characters, each without a plain space
    (NBSP instead): the table draws them as they are, on first draw too."""
    items = _items(tensor, limit) + (["…"] if tensor.shape[0] > limit else [])
    lines = ["["]
    for i, item in enumerate(items):
        piece = item + ("]" if i == len(items) - 1 else ",")
        if len(lines[-1]) > 1 and len(lines[-1]) + 1 + len(piece) > width:
            lines.append(piece)
        else:
            lines[-1] += ("" if lines[-1] == "[" else " ") + piece
    if not items:
        lines[-1] += "]"
    return [line.replace(" ", NBSP) for line in lines]


def _array_rows(coo: COO, csr: CSR, bsr: BSR) -> list[tuple[str, str, torch.Tensor]]:
    bh, bw = bsr.blocksize
    return [("COO", "row (indices[0])", coo.indices[0]), ("COO", "col (indices[1])", coo.indices[1]),
            ("COO", "values", coo.values), ("CSR", "crow_indices", csr.crow_indices),
            ("CSR", "col_indices", csr.col_indices), ("CSR", "values", csr.values),
            (f"BSR {bh}x{bw}", "crow_indices", bsr.crow_indices), (f"BSR {bh}x{bw}", "col_indices", bsr.col_indices),
            (f"BSR {bh}x{bw}", "values (blocks)", bsr.values)]


def format_arrays_figure(coo: COO, csr: CSR, bsr: BSR, title: str | None = None,
                         limit: int = 48) -> plotly.graph_objects.Figure:  # noqa: F821
    """The matrix as a heatmap (stored values written in, BSR's stored blocks outlined) above a table of every
    array of its COO, CSR and BSR forms with its dtype, length and bytes (`limit` entries shown per array; a long
    array goes on over the rows below its own, whose other cells are empty). No table cell holds a plain space
    (NBSP instead: see `NBSP`). An empty matrix (nothing stored) draws empty arrays."""
    go = require("plotly.graph_objects")
    subplots = require("plotly.subplots")
    if not coo.shape == csr.shape == bsr.shape:
        raise ValueError(f"the three formats must hold one matrix, got shapes {coo.shape}, {csr.shape}, {bsr.shape}")
    dense = csr.to_dense().to(torch.float64)
    stored = torch.zeros(csr.shape, dtype=torch.bool)
    stored[csr.row_indices(), csr.col_indices] = True
    z = [[float(v) if s else None for v, s in zip(row, keep, strict=True)]
         for row, keep in zip(dense.tolist(), stored.tolist(), strict=True)]
    text = [[_number(v, csr.dtype) if v is not None else "" for v in row] for row in z]
    table: list[list[Any]] = [[], [], [], [], [], []]
    for fmt, name, tensor in _array_rows(coo, csr, bsr):
        for i, line in enumerate(_lines(tensor, limit)):
            first = i == 0
            for column, value in enumerate((fmt.replace(" ", NBSP), name.replace(" ", NBSP),
                                            str(tensor.dtype).removeprefix("torch."), tensor.shape[0],
                                            tensor.numel() * tensor.element_size())):
                table[column].append(value if first else "")
            table[5].append(line)
    rows, cols = csr.shape
    heat = max(160, 34 * rows)  # px: square cells of about 34 px, room for their 2-decimal values
    listed = 28 + 20 * len(table[5]) + 10
    fig = subplots.make_subplots(rows=2, cols=1, row_heights=[heat, listed], vertical_spacing=40 / (heat + listed),
                                 specs=[[{"type": "heatmap"}], [{"type": "table"}]])
    fig.add_trace(go.Heatmap(z=z, text=text, texttemplate="%{text}", colorscale="RdBu", zmid=0, showscale=False,
                             xgap=1, ygap=1, hoverongaps=False, name="matrix"), row=1, col=1)
    fig.add_trace(go.Table(
        columnwidth=[1.1, 1.7, 0.9, 0.8, 0.7, 7],
        header=dict(values=["format", "array", "dtype", "length", "bytes", "contents"], align="left"),
        cells=dict(values=table, align="left", height=20)), row=2, col=1)
    bh, bw = bsr.blocksize
    for block_row, block_col in zip(bsr.block_row_indices().tolist(), bsr.col_indices.tolist(), strict=True):
        fig.add_shape(type="rect", x0=block_col * bw - 0.5, x1=(block_col + 1) * bw - 0.5, y0=block_row * bh - 0.5,
                      y1=(block_row + 1) * bh - 0.5, line=dict(color="black", width=2), row=1, col=1)
    # square cells: the x axis keeps to its own columns (constrain) instead of widening its range
    fig.update_yaxes(autorange="reversed", dtick=1, scaleanchor="x", constrain="domain", row=1, col=1)
    fig.update_xaxes(dtick=1, side="top", range=[-0.5, cols - 0.5], constrain="domain", row=1, col=1)
    summary = (f"{rows}x{cols} {str(csr.dtype).removeprefix('torch.')}, {csr.nnz} stored "
               f"({1 - csr.density:.0%} sparse); bytes: dense {csr.dense_nbytes}, COO {coo.nbytes}, CSR {csr.nbytes}, "
               f"BSR {bsr.nbytes}<br>(boxes: its {bsr.n_blocks} stored {bh}x{bw} blocks)")
    fig.update_layout(title=_title(title or "One matrix, three formats", summary), height=150 + heat + 40 + listed,
                      template="plotly_white", margin=dict(t=130, l=30, r=20, b=10))
    return fig


def bytes_chart(rows: Sequence[Mapping[str, Any]], title: str | None = None,
                caption: str = "") -> plotly.graph_objects.Figure:  # noqa: F821
    """Bytes against sparsity (log y) for each format, from `formats.storage_sweep` rows: COO and CSR (same for any
    pattern), BSR on an unstructured and on a block-pruned matrix, and dense as the baseline."""
    go = require("plotly.graph_objects")
    if not rows:
        raise ValueError("rows must hold at least one measurement (see sparsity_lab.formats.matrices.storage_sweep)")
    sparsities = sorted({r["sparsity"] for r in rows})
    x = [_percent(s) for s in sparsities]
    lines = [("COO", "coo", "unstructured"), ("CSR", "csr", "unstructured"),
             ("BSR, unstructured mask", "bsr", "unstructured"), ("BSR, block mask", "bsr", "blocks")]
    fig = go.Figure()
    for name, fmt, pattern in lines:
        picked = {r["sparsity"]: r["nbytes"] for r in rows if r["format"] == fmt and r["pattern"] == pattern}
        if picked:
            fig.add_trace(go.Scatter(x=[_percent(s) for s in sparsities if s in picked],
                                     y=[picked[s] for s in sparsities if s in picked], mode="lines+markers", name=name))
    fig.add_trace(go.Scatter(x=x, y=[rows[0]["dense_nbytes"]] * len(x), mode="lines", name="dense",
                             line=dict(color="black", dash="dash")))
    fig.update_layout(title=_title(title or "Bytes per format, indices included", caption),
                      xaxis_title="sparsity", yaxis_title="bytes", yaxis_type="log", template="plotly_white",
                      xaxis=dict(type="category", categoryorder="array", categoryarray=x))
    return fig


def crossover_chart(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None,
                    crossover: Mapping[str, Mapping[str, Any]] | None = None, title: str | None = None,
                    caption: str = "") -> plotly.graph_objects.Figure:  # noqa: F821
    """Median time against sparsity (log y), one line per method, dense dashed as the baseline; each method's
    crossover (the first sparsity at which it beats dense, from `bench.formats_cpu.crossovers`) is a star and
    named in the legend."""
    go = require("plotly.graph_objects")
    if not any(r["method"] == "dense" for r in rows):
        raise ValueError("rows must include the 'dense' baseline")
    labels = labels or {}
    palette = require("plotly.colors").qualitative.Plotly
    sparsities = sorted({r["sparsity"] for r in rows})
    x = [_percent(s) for s in sparsities]
    fig = go.Figure()
    sparse_methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]
    for method in ["dense", *sparse_methods]:
        line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        name = labels.get(method, method)
        crossing = (crossover or {}).get(method, {}).get("sparsity")
        if method == "dense":
            style = dict(color="black", dash="dash", width=3)
        else:
            name += f" — beats dense from {_percent(crossing)}" if crossing is not None else " — never beats dense"
            style = dict(color=palette[sparse_methods.index(method) % len(palette)])
        fig.add_trace(go.Scatter(x=[_percent(r["sparsity"]) for r in line], y=[r["ms"] for r in line],
                                 mode="lines+markers", name=name, line=style, legendgroup=method))
        if crossing is not None:
            at = next(r for r in line if r["sparsity"] == crossing)
            fig.add_trace(go.Scatter(x=[_percent(crossing)], y=[at["ms"]], mode="markers", showlegend=False,
                                     marker=dict(symbol="star", size=16, color=style["color"],
                                                 line=dict(width=1, color="black")),
                                     legendgroup=method, name=f"{labels.get(method, method)} crossover"))
    fig.update_layout(title=_title(title or "Sparse x dense matmul against dense on the CPU", caption),
                      xaxis_title="sparsity of W (random unstructured)", yaxis_title="median time (ms)",
                      yaxis_type="log", template="plotly_white", height=520,
                      xaxis=dict(type="category", categoryorder="array", categoryarray=x))
    return fig
