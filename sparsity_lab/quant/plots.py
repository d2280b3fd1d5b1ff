"""Plots for int8 + 2:4: bytes per weight, the accuracy table, measured speed, and one channel's int8 grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.figures import titled as _title


def _go():
    return require("plotly.graph_objects")


def bytes_per_weight(sizes: Mapping[str, float], title: str = "Bytes stored per dense weight entry"
                     ) -> plotly.graph_objects.Figure:  # noqa: F821
    """One bar per format (e.g. `sparsity_lab.quant.layers.weight_bytes_per_entry()`), labelled with its value."""
    go = _go()
    names = list(sizes)
    fig = go.Figure(go.Bar(x=names, y=[sizes[n] for n in names], text=[f"{sizes[n]:.3g} B" for n in names],
                           textposition="outside"))
    fig.update_layout(title=title, yaxis_title="bytes per entry", template="plotly_white",
                      yaxis_range=[0, 1.2 * max(sizes.values())])
    return fig


def accuracy_table(rows: Sequence[Mapping[str, Any]], title: str = "Digits: test accuracy"
                   ) -> plotly.graph_objects.Figure:  # noqa: F821
    """Grouped bars (%): one group per method, one-shot and fine-tuned (rows from `quant_sparse.accuracy_table`)."""
    go = _go()
    methods = [r["method"] for r in rows]
    fig = go.Figure()
    for column, name in (("one_shot", "one-shot"), ("finetuned", "after fine-tuning")):
        values = [100 * r[column] for r in rows]
        fig.add_trace(go.Bar(x=methods, y=values, name=name, text=[f"{v:.1f}" for v in values],
                             textposition="outside"))
    low = min(min(100 * r["one_shot"], 100 * r["finetuned"]) for r in rows)
    fig.update_layout(title=title, barmode="group", yaxis_title="test accuracy (%)", template="plotly_white",
                      yaxis_range=[max(0.0, low - 10), 101])
    return fig


SPEED_KEYS = ("fp16_dense_linear", "int8_dense_int_mm", "best_int8_24_core", "best_int8_dense_layer",
              "best_int8_24_layer")


def speed_bars(rows: Sequence[Mapping[str, Any]], label: str = "", keys: Sequence[str] = SPEED_KEYS
               ) -> plotly.graph_objects.Figure:  # noqa: F821
    """Milliseconds per shape for each method (rows of the quant_sparse benchmark); the "best_*" keys pick the
    fastest variant of each row (sparse backend, eager or fused epilogue)."""
    go = _go()
    shapes = [f"{r['M']}x{r['K']}x{r['N']}" for r in rows]
    fig = go.Figure()
    for key in keys:
        values = [_pick(r["ms"], key) for r in rows]
        if all(v is None for v in values):
            continue
        fig.add_trace(go.Bar(x=shapes, y=values, name=key))
    fig.update_layout(title=_title("int8 + 2:4 against int8 and fp16 dense", label),
                      legend=dict(orientation="h", x=0, y=-0.3, yanchor="top"), margin=dict(b=140), height=520,
                      barmode="group", xaxis_title="M x K x N (tokens x in x out)", yaxis_title="ms (median)",
                      yaxis_type="log", template="plotly_white")
    return fig


def _pick(ms: Mapping[str, float], key: str) -> float | None:
    if key == "best_int8_dense_layer":
        found = [t for k, t in ms.items() if k.startswith("int8_dense_layer")]
    elif key.startswith("best_int8_24_"):
        layer = key == "best_int8_24_layer"
        found = [t for k, t in ms.items() if k.startswith("int8_24_") and ("layer" in k) == layer]
    else:
        return ms.get(key)
    return min(found) if found else None


def int8_grid(weight_row: torch.Tensor, title: str = "One output channel on its int8 grid"
              ) -> plotly.graph_objects.Figure:  # noqa: F821
    """A weight row against its symmetric int8 reconstruction q * s (s = max|w| / 127), entry by entry."""
    go = _go()
    from sparsity_lab.quant.int8 import dequantize, quantize_per_channel

    row = weight_row.detach().reshape(1, -1).to(torch.float32).cpu()
    q, scale = quantize_per_channel(row)
    back = dequantize(q, scale)[0]
    x = list(range(row.shape[1]))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=row[0].tolist(), mode="markers", name="float weight"))
    fig.add_trace(go.Scatter(x=x, y=back.tolist(), mode="markers", marker_symbol="x", name="int8 * scale"))
    fig.update_layout(title=f"{title} (scale {float(scale[0]):.2e})", xaxis_title="input index",
                      yaxis_title="weight", template="plotly_white")
    return fig
