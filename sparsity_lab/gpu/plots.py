"""Lecture 04's chart: speedup over dense by kind of sparsity (`sparsity-lab bench gpu_structure`)."""

from __future__ import annotations

from sparsity_lab.course.figures import go as _go
from sparsity_lab.course.figures import titled as _title


def structure_speedups(figures: dict, caption: str = "") -> plotly.graph_objects.Figure:  # noqa: F821
    """Speedup over the dense matmul against sparsity: unstructured (CSR), row-pruned (a smaller dense
    matmul), 2:4 (at 50%), and the ideal 1/(1 - sparsity)."""
    go = _go()
    rows = figures["rows"]
    x = [100 * r["sparsity"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["ideal_speedup"] for r in rows], mode="lines", name="ideal 1/(1-s)",
                             line=dict(dash="dot", color="grey")))
    fig.add_trace(go.Scatter(x=x, y=[r["row_pruned_speedup"] for r in rows], mode="lines+markers",
                             name="row pruning (smaller dense matmul)"))
    fig.add_trace(go.Scatter(x=[100 * r["sparsity"] for r in rows if "csr_speedup" in r],
                             y=[r["csr_speedup"] for r in rows if "csr_speedup" in r], mode="lines+markers",
                             name="unstructured (CSR SpMM)"))
    semi = [r for r in rows if "semi24_speedup" in r]
    if semi:
        fig.add_trace(go.Scatter(x=[100 * r["sparsity"] for r in semi], y=[r["semi24_speedup"] for r in semi],
                                 mode="markers", marker=dict(size=14, symbol="star"), name="2:4 (cuSPARSELt)"))
    fig.add_hline(y=1.0, line_color="black", annotation_text="dense")
    shape = f"{figures['M']}x{figures['K']}x{figures['N']} {figures['dtype']}"
    fig.update_layout(title=_title(f"Speedup over dense by kind of sparsity ({shape})", caption),
                      xaxis_title="sparsity (% of weights removed)", yaxis_title="speedup over dense (log)",
                      yaxis_type="log", template="plotly_white")
    return fig
