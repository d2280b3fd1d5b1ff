"""Figures for lecture 09 (whole models end to end): speed-ups per variant, where a forward's time goes, the
Llama-shaped prefill and decode steps, the decode kernels alone, and the layout each module reads and writes.
Pure functions: results rows in (`sparsity-lab bench models`, `models.stream.layouts`), figure out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsity_lab.course.figures import go, titled

CLASS_COLORS = {"dense GEMM": "#1f77b4", "2:4 GEMM": "#2ca02c", "layout copies": "#d62728", "attention": "#9467bd",
                "norms": "#8c564b", "GELU": "#e377c2", "other": "#7f7f7f"}
TARGETS = {"ours 2:4 tuned": 1.18, "ours 2:4 column-major stream tuned": 1.18, "ours int8 2:4": 1.35,
           "ours block 64 90% MLP": 1.45}  # over dense eager
LAYOUT_COLORS = {"row-major": "#1f77b4", "column-major": "#ff7f0e", "strided": "#7f7f7f"}


def _label(row: dict[str, Any]) -> str:
    kept = ", kept row-major" if row.get("streamed") is False else ""  # tune_(stream=) found the stream slower
    return f"{row['variant']} ({'compiled' if row.get('compiled') else 'eager'}{kept})"


def speedup_figure(rows: Sequence[dict[str, Any]], dtype: str = "bfloat16", caption: str = "",
                   title: str = "") -> Any:
    """Horizontal bars: each ViT variant's speed-up over dense eager at `dtype` (1.0 dashed; the project's targets
    as diamonds). `rows`: the recording's ``figures["vit"]``."""
    mine = [r for r in rows if r.get("dtype") == dtype and "ms" in r]
    dense = next((r["ms"] for r in mine if r["variant"] == "dense" and not r.get("compiled")), None)
    if dense is None:
        raise ValueError(f"rows hold no timed dense eager row at dtype {dtype!r}")
    labels = [_label(r) for r in mine]
    ratios = [dense / r["ms"] for r in mine]
    colors = ["#2ca02c" if x >= 1.0 else "#d62728" for x in ratios]
    fig = go().Figure(go().Bar(y=labels, x=ratios, orientation="h", marker_color=colors, name="measured",
                               text=[f"{x:.2f}x ({r['ms']:.1f} ms)" for x, r in zip(ratios, mine, strict=True)],
                               textposition="outside"))
    targets = [(TARGETS[r["variant"]], _label(r)) for r in mine if r["variant"] in TARGETS]
    if targets:
        fig.add_trace(go().Scatter(x=[t for t, _ in targets], y=[lab for _, lab in targets], mode="markers",
                                   marker={"symbol": "diamond", "size": 11, "color": "black"}, name="target"))
    fig.add_vline(x=1.0, line_dash="dash", line_color="grey")
    fig.update_layout(template="plotly_white", height=110 + 34 * len(mine), margin={"l": 260},
                      xaxis_title=f"speed-up over the dense model, eager ({dense:.1f} ms)",
                      yaxis={"autorange": "reversed"},
                      title=titled(title or f"ViT-L/16, batch 128, {dtype}: the whole model", caption))
    return fig


def profile_figure(rows: Sequence[dict[str, Any]], dtype: str = "bfloat16", caption: str = "",
                   title: str = "") -> Any:
    """Stacked bars: CUDA ms per forward by kernel class for each profiled ViT variant at `dtype`."""
    mine = [r for r in rows if r.get("dtype") == dtype and "profile" in r]
    if not mine:
        raise ValueError(f"rows hold no profiled row at dtype {dtype!r}")
    labels = [_label(r) for r in mine]
    fig = go().Figure()
    for kind, color in CLASS_COLORS.items():
        values = [r["profile"].get(kind, 0.0) for r in mine]
        if any(values):
            fig.add_trace(go().Bar(y=labels, x=values, orientation="h", name=kind, marker_color=color,
                                   hovertemplate=f"{kind}: %{{x:.1f}} ms<extra></extra>"))
    fig.update_layout(barmode="stack", template="plotly_white", height=140 + 40 * len(mine), margin={"l": 220},
                      xaxis_title="CUDA time per forward (ms)", yaxis={"autorange": "reversed"},
                      title=titled(title or f"Where a ViT-L forward's time goes ({dtype})", caption))
    return fig


def llama_figure(rows: Sequence[dict[str, Any]], caption: str = "", title: str = "") -> Any:
    """Grouped bars: speed-up over dense (eager over eager, compiled over compiled) per Llama-shaped phase and batch,
    one bar per variant and dtype."""
    timed = [r for r in rows if "ms" in r]
    if not timed:
        raise ValueError("rows hold no timed Llama row")
    def key(r: dict[str, Any]) -> tuple:
        return r["dtype"], r["phase"], r["batch"], bool(r.get("compiled"))

    dense = {key(r): r["ms"] for r in timed if r["variant"] == "dense"}
    block_dense = {key(r): r["ms"] for r in timed if r["variant"] == "dense block-pruned"}
    fig = go().Figure()
    for dtype in dict.fromkeys(r["dtype"] for r in timed):
        for variant in ("ours 2:4", "ours 2:4 column-major stream", "ours fp8 2:4", "ours block 64 90% MLP"):
            mine = [r for r in timed if r["dtype"] == dtype and r["variant"] == variant]
            xs, ys = [], []
            for r in mine:
                base = block_dense.get(key(r), dense.get(key(r))) if "block" in variant else dense.get(key(r))
                if base:
                    how = ", compiled" if r.get("compiled") else ""
                    xs.append(f"{r['phase'].split(' (')[0]}, batch {r['batch']}{how}")
                    ys.append(base / r["ms"])
            if xs:
                fig.add_trace(go().Bar(x=xs, y=ys, name=f"{variant}, {dtype}", text=[f"{y:.2f}x" for y in ys],
                                       textposition="outside"))
    fig.add_hline(y=1.0, line_dash="dash", line_color="grey")
    fig.update_layout(barmode="group", template="plotly_white", height=420, yaxis_title="speed-up over dense",
                      title=titled(title or "Llama-3-8B-shaped decoder: prefill (2048 tokens) and decode steps",
                                   caption))
    return fig


def layout_figure(tables: dict[str, dict[str, tuple[str, str]]], caption: str = "", title: str = "") -> Any:
    """A grid per model (`tables`: name -> a `models.stream.layouts` table): for each module, the layout it reads
    and the one it writes, coloured (row-major, column-major, strided), so a module that reads what the one before
    it did not write -- a copy -- stands out."""
    if not tables or not any(tables.values()):
        raise ValueError("tables hold no module's layouts")
    codes = {name: i for i, name in enumerate(LAYOUT_COLORS)}
    modules = list(dict.fromkeys(module for table in tables.values() for module in table))
    columns = [f"{name}: {side}" for name in tables for side in ("reads", "writes")]
    z = [[codes.get(layout) for table in tables.values() for layout in table.get(module, ("", ""))]
         for module in modules]
    text = [[layout for table in tables.values() for layout in table.get(module, ("", ""))] for module in modules]
    steps = len(LAYOUT_COLORS)
    scale = [[bound, color] for i, color in enumerate(LAYOUT_COLORS.values())
             for bound in (i / steps, (i + 1) / steps)]
    fig = go().Figure(go().Heatmap(z=z, x=columns, y=modules, text=text, texttemplate="%{text}", zmin=-0.5,
                                   zmax=steps - 0.5, colorscale=scale, showscale=False, xgap=2, ygap=2,
                                   hovertemplate="%{y}, %{x}: %{text}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=120 + 30 * len(modules), margin={"l": 160},
                      yaxis={"autorange": "reversed"},
                      title=titled(title or "The layout each module reads and writes", caption))
    return fig


DECODE_KERNELS = {"dense_ms": "cuBLAS, dense", "cusparselt_ms": "cuSPARSELt 2:4",
                  "ours_tensor_ms": "ours: W rebuilt for tensor cores",
                  "ours_cuda_ms": "ours: W as it lies, CUDA cores"}


def decode_kernel_figure(rows: Sequence[dict[str, Any]], tokens: int = 1, caption: str = "", title: str = "") -> Any:
    """Grouped bars: µs per call of each kernel (cuBLAS, cuSPARSELt, our two decode kernels) at each of the
    decoder's linear shapes for `tokens` rows of x, from CUDA graphs. `rows`: the recording's
    ``figures["decode_kernels"]``."""
    mine = [r for r in rows if r.get("batch") == tokens and "dense_ms" in r]
    if not mine:
        raise ValueError(f"rows hold no decode-kernel row at {tokens} tokens")
    shapes = [r["phase"].split(" x ", 1)[1].replace(" -> ", " → ") for r in mine]  # "K → N"
    fig = go().Figure()
    for key, name in DECODE_KERNELS.items():
        if any(key in r for r in mine):
            us = [r[key] * 1e3 if key in r else None for r in mine]
            fig.add_trace(go().Bar(x=shapes, y=us, name=name, text=[f"{u:.1f}" if u else "" for u in us],
                                   textposition="outside"))
    fig.update_layout(barmode="group", template="plotly_white", height=420, xaxis_title="in → out features",
                      yaxis_title="µs per call (from a CUDA graph, W read from memory)",
                      title=titled(title or f"A decode step's linears at {tokens} token{'s' * (tokens > 1)}",
                                   caption))
    return fig
