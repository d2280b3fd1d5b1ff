"""Figures for 2:4 sparsity: the groups of a weight, metadata bits in both layouts, CUTLASS's reordering, memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.figures import cell_font, cell_px
from sparsity_lab.course.figures import titled as _title
from sparsity_lab.semi24 import layout as semi24

KEPT, DROPPED = "#4c78a8", "#e6e6e6"


def _go():
    return require("plotly.graph_objects")


def format_value(x: float) -> str:
    """A weight entry as short text: integers plainly, others with 2 significant digits."""
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2g}"


def groups_heatmap(weight: torch.Tensor, mask: torch.Tensor, title: str = "2:4 groups (blue = kept)"
                   ) -> plotly.graph_objects.Figure:  # noqa: F821
    """A 2-D weight cell by cell: kept entries blue, dropped grey, every value written (where the cells are wide
    enough to read it; hovering shows it always), groups of 4 outlined. Square cells, sized to fit a widget."""
    go = _go()
    rows, cols = weight.shape
    text = [[format_value(v) for v in row] for row in weight.detach().double().tolist()]
    cell = cell_px(cols)
    font = cell_font(cell, max((len(t) for row in text for t in row), default=1))
    fig = go.Figure(go.Heatmap(z=mask.to(torch.float32).tolist(), text=text, texttemplate="%{text}" if font else None,
                               textfont=dict(size=font or 9), zmin=0, zmax=1,
                               colorscale=[[0, DROPPED], [1, KEPT]], showscale=False, xgap=1, ygap=1,
                               hovertemplate="row %{y}, column %{x}: %{text}<extra></extra>"))
    for g in range(1, cols // 4):
        fig.add_vline(x=4 * g - 0.5, line_width=3, line_color="black")
    margin = dict(l=70, r=20, t=70, b=60)
    fig.update_layout(title=title, xaxis_title="column (input)", yaxis_title="row (output)", template="plotly_white",
                      width=margin["l"] + margin["r"] + cell * cols, height=margin["t"] + margin["b"] + cell * rows,
                      autosize=False, margin=margin, xaxis=dict(dtick=4, range=[-0.5, cols - 0.5]),
                      yaxis=dict(autorange="reversed", dtick=1 if rows <= 8 else None))
    return fig


def simple_meta_bits(meta: torch.Tensor, groups: int, title: str = "simple layout: metadata bits"
                     ) -> plotly.graph_objects.Figure:  # noqa: F821
    """The uint8 metadata of the simple layout as bits, most significant first in every byte, each 2-bit field
    labelled with the group and slot it encodes (i0: first kept position, i1: second)."""
    go = _go()
    rows, nbytes = meta.shape
    z, text, labels = [], [], []
    for byte in range(nbytes):
        for bit in range(7, -1, -1):
            group = 2 * byte + bit // 4
            slot = "i1" if bit % 4 >= 2 else "i0"
            labels.append(f"g{group} {slot} b{bit % 2}" if group < groups else f"pad b{bit}")  # labels are unique
    for r in range(rows):
        row = [(int(meta[r, b]) >> bit) & 1 for b in range(nbytes) for bit in range(7, -1, -1)]
        z.append([(i // 2) % 2 + 0.35 * v for i, v in enumerate(row)])  # fields alternate shades, 1s darker
        text.append([str(v) for v in row])
    cell = cell_px(len(labels), largest=30)
    font = cell_font(cell, 1)
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}" if font else None, textfont=dict(size=font or 9),
                               x=labels, colorscale="Blues", showscale=False, xgap=1, ygap=1, zmin=-0.2, zmax=1.6,
                               hovertemplate="row %{y}, %{x}: %{text}<extra></extra>"))
    for byte in range(1, nbytes):
        fig.add_vline(x=8 * byte - 0.5, line_width=3, line_color="black")
    margin = dict(l=60, r=20, t=60, b=80)  # b: the field labels, turned
    fig.update_layout(title=title, yaxis_autorange="reversed", yaxis_title="row", template="plotly_white",
                      width=margin["l"] + margin["r"] + cell * len(labels),
                      height=margin["t"] + margin["b"] + 28 * rows, autosize=False, margin=margin,
                      xaxis_tickangle=-60, xaxis_tickfont_size=10)
    return fig


def cutlass_storage(rows: int, words: int, meta_dtype: torch.dtype, meta: torch.Tensor | None = None,
                    title: str | None = None) -> plotly.graph_objects.Figure:  # noqa: F821
    """CUTLASS's metadata buffer in memory order, 16 bytes per line: each slot names the row-major word
    (row, word) stored there, coloured by its row; with `meta`, hovering shows the word's bits."""
    go = _go()
    offsets = semi24.cutlass_meta_offsets(rows, words, meta_dtype).reshape(-1)
    per_line = 16 // torch.empty((), dtype=meta_dtype).element_size()
    source = torch.empty_like(offsets)
    source[offsets] = torch.arange(rows * words)
    flat = meta.reshape(-1) if meta is not None else None
    bits = 8 * torch.empty((), dtype=meta_dtype).element_size()
    z, text, hover = [], [], []
    for start in range(0, rows * words, per_line):
        line = source[start:start + per_line].tolist()
        z.append([s // words for s in line])
        text.append([f"r{s // words} w{s % words}" for s in line])
        if flat is not None:
            hover.append([format(int(flat[start + i]) & (2**bits - 1), f"0{bits}b") for i in range(len(line))])
    trace = dict(z=z, text=text, texttemplate="%{text}", colorscale="Turbo", showscale=False, xgap=1, ygap=1)
    if hover:
        trace.update(customdata=hover,
                     hovertemplate="word %{x} of line %{y}: %{text}<br>%{customdata}<extra></extra>")
    fig = go.Figure(go.Heatmap(**trace))
    name = str(meta_dtype).removeprefix("torch.")
    fig.update_layout(title=title or (f"CUTLASS metadata in memory: {rows} x {words} {name} words<br>"
                                      "<sup>16 bytes per line; each slot names the row-major word stored there</sup>"),
                      yaxis_autorange="reversed", xaxis_title="word within the 16-byte line",
                      yaxis_title="16-byte line", template="plotly_white", height=140 + 26 * len(z),
                      width=min(840, 140 + 90 * per_line), autosize=False, margin=dict(t=80))
    return fig


def memory_bars(rows: Sequence[dict[str, float]], title: str = "Bytes of a 2:4 weight against dense"
                ) -> plotly.graph_objects.Figure:  # noqa: F821
    """Stacked bars per (dtype, layout): bytes of values and of metadata, next to the dense weight's bytes.
    Each row: dtype, layout, dense_bytes, values_bytes, meta_bytes."""
    go = _go()
    labels = [f"{r['dtype']} {r['layout']}" for r in rows]
    fig = go.Figure([
        go.Bar(x=labels, y=[r["dense_bytes"] for r in rows], name="dense", offsetgroup="dense", marker_color=DROPPED),
        go.Bar(x=labels, y=[r["values_bytes"] for r in rows], name="values", offsetgroup="2:4", marker_color=KEPT),
        go.Bar(x=labels, y=[r["meta_bytes"] for r in rows], name="metadata", offsetgroup="2:4",
               base=[r["values_bytes"] for r in rows], marker_color="#f58518",
               text=[f"{(r['values_bytes'] + r['meta_bytes']) / r['dense_bytes']:.1%}" for r in rows],
               textposition="outside"),
    ])
    fig.update_layout(title=title, yaxis_title="bytes", template="plotly_white", barmode="group")
    return fig


def speedup_by_shape(rows: Sequence[dict], dtype: str = "float16", title: str | None = None,
                     caption: str = "") -> plotly.graph_objects.Figure:  # noqa: F821
    """Speedup over cuBLAS dense (dense time / 2:4 time) against tokens M, one line per layer size (K -> N):
    our binding (solid), PyTorch's own 2:4 ``F.linear`` (dotted), and the dispatcher (dashed); 1.0 = dense."""
    go = _go()
    fig = go.Figure()
    picked = [r for r in rows if r["dtype"] == dtype]
    sizes = sorted({(r["K"], r["N"]) for r in picked if r["M"] != 8192 or (r["K"], r["N"]) != (8192, 8192)})
    for k, n in sizes:
        line = sorted((r for r in picked if (r["K"], r["N"]) == (k, n)), key=lambda r: r["M"])
        ms = [r["M"] for r in line]
        fig.add_trace(go.Scatter(x=ms, y=[r["speedup"] for r in line], mode="lines+markers",
                                 name=f"ours {k}->{n}", legendgroup=f"{k}{n}"))
        fig.add_trace(go.Scatter(x=ms, y=[r["dense_ms"] / r["dispatch_ms"] for r in line], mode="lines",
                                 line=dict(dash="dash"), name=f"dispatcher {k}->{n}", legendgroup=f"{k}{n}"))
        if all("torch_linear_ms" in r for r in line):
            fig.add_trace(go.Scatter(x=ms, y=[r["dense_ms"] / r["torch_linear_ms"] for r in line], mode="lines",
                                     line=dict(dash="dot"), name=f"PyTorch 2:4 {k}->{n}", legendgroup=f"{k}{n}"))
    cube = [r for r in picked if (r["M"], r["K"], r["N"]) == (8192, 8192, 8192)]
    if cube:
        fig.add_trace(go.Scatter(x=[8192], y=[cube[0]["speedup"]], mode="markers", name="ours 8192³",
                                 marker=dict(size=12, symbol="star")))
    fig.add_hline(y=1.0, line_color="grey", annotation_text="dense (cuBLAS)")
    # 3 lines per layer size: a legend beside the plot would need scrolling, one below wraps into rows (of 3)
    legend_rows = (len(fig.data) + 2) // 3
    fig.update_layout(title=_title(title or f"2:4 speedup over dense, {dtype}", caption),
                      xaxis_title="tokens M", yaxis_title="speedup (dense time / 2:4 time)", xaxis_type="log",
                      template="plotly_white", height=460 + 22 * legend_rows,
                      legend=dict(orientation="h", x=0, y=-0.2, yanchor="top"), margin=dict(b=90 + 22 * legend_rows))
    return fig


def eager_vs_graph(
    rows: Sequence[dict], dtype: str = "float16", caption: str = ""
) -> plotly.graph_objects.Figure:  # noqa: F821
    """Per-call time of 20 back-to-back eager calls against the same calls replayed from a CUDA graph, for our
    binding and for dense, by shape: the gap is host (launch) overhead."""
    go = _go()
    picked = [r for r in rows if r["dtype"] == dtype]
    labels = [f"{r['M']}x{r['K']}x{r['N']}" for r in picked]
    fig = go.Figure()
    for key, name in (("ours_loop_ms", "ours, eager"), ("ours_graph_ms", "ours, CUDA graph"),
                      ("dense_loop_ms", "dense, eager"), ("dense_graph_ms", "dense, CUDA graph")):
        if all(key in r for r in picked):
            fig.add_trace(go.Bar(x=labels, y=[1000 * r[key] for r in picked], name=name))
    fig.update_layout(title=_title(f"eager vs CUDA-graph replay, {dtype}", caption),
                      xaxis_title="M x K x N", yaxis_title="µs per call", yaxis_type="log", barmode="group",
                      template="plotly_white")
    return fig


COMPRESSOR_NAMES = {
    "copy_ms": "copy of the weight (floor)",
    "ours_triton_prune_compress_ms": "ours: Triton prune + compress",
    "ours_triton_compress_only_ms": "ours: Triton compress (pre-pruned)",
    "torch_semi_structured_tile_ms": "PyTorch _sparse_semi_structured_tile",
    "ours_cusparselt_compress_ms": "ours: cuSPARSELt compress",
    "torch_cslt_compress_ms": "PyTorch _cslt_compress",
    "torch_to_sparse_semi_structured_ms": "PyTorch to_sparse_semi_structured",
}


def compressor_times(compressors: dict, caption: str = "") -> plotly.graph_objects.Figure:  # noqa: F821
    """Milliseconds to prune and pack one weight to 2:4, ours against PyTorch's, with a plain copy as the floor."""
    go = _go()
    keys = [k for k in COMPRESSOR_NAMES if k in compressors]
    fig = go.Figure(go.Bar(x=[compressors[k] for k in keys], y=[COMPRESSOR_NAMES[k] for k in keys],
                           orientation="h", text=[f"{compressors[k]:.3f} ms" for k in keys], textposition="auto"))
    size = compressors.get("size", "?")
    fig.update_layout(title=_title(f"2:4 compression of a {size}x{size} float16 weight", caption),
                      xaxis_title="ms (log)", xaxis_type="log", yaxis_autorange="reversed", template="plotly_white")
    return fig
