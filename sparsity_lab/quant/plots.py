"""Plots for int8 and FP8 with 2:4: bytes per weight, the accuracy table, measured speed (int8 and FP8), one
channel's int8 grid and the int8 and FP8 grids it can sit on."""

from __future__ import annotations

import math
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


def value_grids(weight_row: torch.Tensor, names: Sequence[str] = ("int8", "e4m3", "e5m2"),
                title: str = "One channel's |w| and the values each format can give it"
                ) -> plotly.graph_objects.Figure:  # noqa: F821
    """The positive values of each format scaled to the channel (s = max|w| / the format's largest value; the
    sign is symmetric), as ticks on a log axis from the channel's smallest nonzero |w| to its largest, with the
    channel's |w| underneath: int8's even steps crowd the top of a log axis, FP8's spread evenly along it."""
    go = _go()
    from sparsity_lab.quant.number_formats import grid_values

    magnitudes = weight_row.detach().reshape(-1).abs().to(torch.float64).cpu()
    largest = float(magnitudes.max())
    if largest == 0:
        raise ValueError("the channel is all zeros: it has no scale to draw grids for")
    smallest = float(magnitudes[magnitudes > 0].min())
    fig = go.Figure()
    for name in names:
        values = grid_values(name)
        levels = values[values > 0] * (largest / float(values.max()))
        shown = levels[levels >= smallest / 2]
        fig.add_trace(go.Scatter(x=shown.tolist(), y=[name] * len(shown), mode="markers", name=name,
                                 marker=dict(symbol="line-ns-open", size=14),
                                 hovertemplate=f"{name}: %{{x:.3g}}<extra></extra>"))
    weights = magnitudes[magnitudes > 0]
    fig.add_trace(go.Scatter(x=weights.tolist(), y=["|w|"] * len(weights), mode="markers", name="|w| of the channel",
                             marker=dict(symbol="circle-open", size=7), hovertemplate="|w| %{x:.3g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_type="log", xaxis_title="magnitude (log scale)", template="plotly_white",
                      yaxis=dict(categoryorder="array", categoryarray=["|w|", *reversed(list(names))]),
                      showlegend=False, height=320)
    return fig


FP8_SPEED_NAMES = {"bf16 dense": "bf16 dense (F.linear)", "fp8 dense torch": "FP8 dense (torch._scaled_mm)",
                   "torchao fp8 2:4": "torchao FP8 2:4", "ours fp8 2:4": "ours FP8 2:4"}
_COLORS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")  # one per variant, in both panels


def fp8_speed_bars(rows: Sequence[Mapping[str, Any]], label: str = "", names: Mapping[str, str] = FP8_SPEED_NAMES
                   ) -> plotly.graph_objects.Figure:  # noqa: F821
    """Milliseconds per shape of each FP8 benchmark variant in `names` (rows of `quant.fp8_bench`), eager and
    compiled side by side; each bar's text is its speed-up over bf16 dense in the same mode. A variant not timed
    (torchao absent, a compile that failed) is left out of that panel."""
    go = _go()
    subplots = require("plotly.subplots")
    shapes = [f"{r['M']}x{r['K']}x{r['N']}" for r in rows]
    fig = subplots.make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                                 subplot_titles=("eager", "torch.compile"))
    in_legend: set[str] = set()  # each variant once, where it first appears
    for col, mode in ((1, "ms"), (2, "compiled_ms")):
        for index, (key, name) in enumerate(names.items()):
            times = [r.get(mode, {}).get(key) for r in rows]
            if all(t is None for t in times):
                continue
            speedups = [None if t is None or "bf16 dense" not in r.get(mode, {}) else r[mode]["bf16 dense"] / t
                        for r, t in zip(rows, times, strict=True)]
            fig.add_trace(go.Bar(x=shapes, y=times, name=name, legendgroup=key, showlegend=key not in in_legend,
                                 marker_color=_COLORS[index % len(_COLORS)],
                                 text=["" if v is None else f"{v:.2f}x" for v in speedups], textposition="outside",
                                 textangle=-90, textfont_size=10, cliponaxis=False,
                                 hovertemplate=f"{name}: %{{y:.3f}} ms<extra></extra>"), row=1, col=col)
            in_legend.add(key)
    timed = [t for r in rows for mode in ("ms", "compiled_ms") for k, t in r.get(mode, {}).items() if k in names]
    fig.update_layout(title=_title("FP8 2:4 against bf16 dense, FP8 dense and torchao (bar text: over bf16 dense)",
                                   label),
                      legend=dict(orientation="h", x=0, y=-0.42, yanchor="top"), margin=dict(b=150, t=110),
                      height=560, barmode="group", template="plotly_white", uniformtext=dict(minsize=9, mode="show"))
    if timed:  # room above the tallest bar for its text
        fig.update_yaxes(range=[math.log10(min(timed) / 1.3), math.log10(max(timed) * 2.5)])
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="ms (median)", col=1)
    fig.update_xaxes(title_text="M x K x N (tokens x in x out)")
    return fig
