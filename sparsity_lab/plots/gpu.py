"""Plots of the GPU measurements (results files from `sparsity-lab bench semi24` and `bench gpu_structure`)."""

from __future__ import annotations

from collections.abc import Sequence

from sparsity_lab._optional import require


def _go():
    return require("plotly.graph_objects")


def _title(text: str, caption: str) -> str:
    """A title with the results' label (where and when it was measured) underneath."""
    return text + (f"<br><sup>{caption}</sup>" if caption else "")


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
    fig.update_layout(title=_title(title or f"2:4 speedup over dense, {dtype}", caption),
                      xaxis_title="tokens M", yaxis_title="speedup (dense time / 2:4 time)", xaxis_type="log",
                      template="plotly_white")
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
