"""Block sparsity plots: the kernel's speedup over dense as a heatmap of block size x sparsity, speedup curves
against the ideal 1/density, and accuracy against block size after block pruning."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sparsity_lab._optional import require


def _go():
    return require("plotly.graph_objects")


def speedup_heatmap(rows: Sequence[dict], key: str = "speedup",
                    title: str = "speedup over dense cuBLAS") -> plotly.graph_objects.Figure:  # noqa: F821
    """Heatmap of `row[key]` (e.g. "speedup" or "torch_speedup") with block size down and sparsity across;
    cells above 1 (faster than dense) are blue, below 1 red, each labelled with its value. Colour follows log2 of
    the speedup, so 2x faster and 2x slower are equally far from white and the colourbar reads in "x dense"."""
    go = _go()
    sizes = sorted({r["bs"] for r in rows})
    sparsities = sorted({r["sparsity"] for r in rows})
    cell = {(r["bs"], r["sparsity"]): r.get(key) for r in rows}
    speedups = [[cell.get((bs, sp)) for sp in sparsities] for bs in sizes]
    z = [[math.log2(v) if v else None for v in line] for line in speedups]
    text = [[f"{v:.2f}x" if v is not None else "" for v in line] for line in speedups]
    ticks = list(range(-3, 4))
    colorbar = dict(title="x dense", tickvals=ticks, ticktext=[f"{2.0 ** t:g}x" for t in ticks])
    fig = go.Figure(go.Heatmap(z=z, x=[f"{100 * s:g}%" for s in sparsities], y=[str(b) for b in sizes], text=text,
                               texttemplate="%{text}", colorscale="RdBu", zmid=0.0, zmin=-3, zmax=3,
                               colorbar=colorbar, hoverinfo="text"))
    fig.update_layout(title=title, xaxis_title="block sparsity", yaxis_title="block size", template="plotly_white")
    return fig


def speedup_curves(rows: Sequence[dict], title: str = "speedup against sparsity") -> plotly.graph_objects.Figure:  # noqa: F821
    """Speedup over dense against sparsity, one line per block size for our kernel (solid) and PyTorch's
    bsr_dense_mm (dotted, when the rows have it), with the ideal 1 / density as a grey line."""
    go = _go()
    fig = go.Figure()
    for bs in sorted({r["bs"] for r in rows}):
        line = sorted((r for r in rows if r["bs"] == bs), key=lambda r: r["sparsity"])
        x = [100 * r["sparsity"] for r in line]
        fig.add_trace(go.Scatter(x=x, y=[r["speedup"] for r in line], mode="lines+markers", name=f"ours, {bs}x{bs}"))
        if all("torch_speedup" in r for r in line):
            fig.add_trace(go.Scatter(x=x, y=[r["torch_speedup"] for r in line], mode="lines+markers",
                                     line=dict(dash="dot"), name=f"PyTorch, {bs}x{bs}"))
    ideal = sorted({r["sparsity"] for r in rows})
    fig.add_trace(go.Scatter(x=[100 * s for s in ideal], y=[1 / (1 - s) for s in ideal], mode="lines",
                             line=dict(color="grey", dash="dash"), name="ideal 1/density"))
    entries = len(fig.data)
    fig.update_layout(title=title, xaxis_title="block sparsity (%)", yaxis_title="speedup over dense (x)",
                      yaxis_type="log", template="plotly_white", height=420 + 22 * ((entries + 2) // 3),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0))
    return fig


def accuracy_vs_block_size(rows: Sequence[dict],
                           title: str = "accuracy after block pruning") -> plotly.graph_objects.Figure:  # noqa: F821
    """Fine-tuned (solid) and one-shot (dotted) test accuracy against block size, one colour per method; each
    method's markers and line widths differ, so a line that coincides with another (learned masks start from the
    L2 ones, so their one-shot accuracy can be the same) stays visible beneath it."""
    go = _go()
    fig = go.Figure()
    symbols = ("circle", "diamond-open", "square-open", "x")
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["block_size"])
        x = [r["block_size"] for r in line]
        marker = dict(symbol=symbols[i % len(symbols)], size=10 - 2 * (i % 3))
        width = 4 - 1.5 * (i % 2)
        fig.add_trace(go.Scatter(x=x, y=[100 * r["finetuned_accuracy"] for r in line], mode="lines+markers",
                                 name=f"{method}, fine-tuned", legendgroup=method, marker=marker,
                                 line=dict(width=width)))
        fig.add_trace(go.Scatter(x=x, y=[100 * r["accuracy"] for r in line], mode="lines+markers",
                                 line=dict(dash="dot", width=width), marker=marker, name=f"{method}, one-shot",
                                 legendgroup=method))
    fig.update_layout(title=title, xaxis_title="block size (bs x bs)", yaxis_title="test accuracy (%)",
                      xaxis_type="log", xaxis=dict(tickvals=sorted({r["block_size"] for r in rows})),
                      yaxis_range=[0, 101], template="plotly_white")
    return fig
