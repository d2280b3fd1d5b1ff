"""Figures for lecture 10 (a pretrained transformer pruned): the method x pattern bars, the per-layer sensitivity and
the pairwise-similarity scatter of one pruned model against the dense one. Pure functions: rows in, figure out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.figures import go, titled

METHOD_COLORS = {"magnitude": "#d62728", "wanda": "#1f77b4", "sparsegpt": "#2ca02c"}
MEASURE_LABELS = {
    "spearman": "Spearman ρ of the pairwise similarities (dense = 1)",
    "recall_at_10": "top-10 neighbour recall (dense = 1)",
    "mean_cosine": "mean cosine to the dense embedding (dense = 1)",
    "module_accuracy": "source-module 1-NN accuracy",
    "spearman_drop": "agreement drop 1 − Spearman ρ",
}


def _methods(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def method_pattern_figure(rows: Sequence[dict[str, Any]], measure: str = "spearman",
                          dense: dict[str, Any] | None = None, title: str = "", caption: str = ""
                          ) -> plotly.graph_objects.Figure:  # noqa: F821
    """Bars of `measure` per pattern and method, one-shot and (where the rows have it) after fine-tuning, side by
    side; a dashed line at the dense model's value when `dense` (its row) is given."""
    subplots = require("plotly.subplots")
    if not rows:
        raise ValueError("rows must hold at least one (method, pattern) row")
    if measure not in rows[0]:
        raise ValueError(f"rows have no measure {measure!r}; they have {sorted(rows[0])}")
    stages = [("one-shot", measure)]
    if f"finetuned_{measure}" in rows[0]:
        stages.append(("after the distillation fine-tune", f"finetuned_{measure}"))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    fig = subplots.make_subplots(rows=1, cols=len(stages), subplot_titles=[s for s, _ in stages], shared_yaxes=True)
    for col, (_, key) in enumerate(stages, start=1):
        for method in _methods(rows):
            values = {r["pattern"]: r[key] for r in rows if r["method"] == method}
            fig.add_trace(go().Bar(x=patterns, y=[values.get(p) for p in patterns], name=method,
                                   marker_color=METHOD_COLORS.get(method), showlegend=col == 1,
                                   text=[f"{values[p]:.3f}" if p in values else "" for p in patterns],
                                   textposition="outside"), row=1, col=col)
        if dense is not None and measure in dense:
            fig.add_hline(y=dense[measure], line_dash="dash", line_color="grey", row=1, col=col,
                          annotation_text="dense", annotation_position="bottom right")
    fig.update_yaxes(title_text=MEASURE_LABELS.get(measure, measure), row=1, col=1)
    fig.update_layout(barmode="group", template="plotly_white", height=420,
                      title=titled(title or f"MiniLM at 50%: {measure} by method and pattern", caption))
    return fig


def sensitivity_figure(rows: Sequence[dict[str, Any]], measure: str = "spearman_drop", title: str = "",
                       caption: str = "") -> plotly.graph_objects.Figure:  # noqa: F821
    """Bars of `measure` (by default the agreement drop) for each layer set pruned alone, one colour per method."""
    if not rows:
        raise ValueError("rows must hold at least one sensitivity row")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig = go().Figure()
    for method in _methods(rows):
        values = {r["group"]: r[measure] for r in rows if r["method"] == method}
        fig.add_trace(go().Bar(x=groups, y=[values.get(g) for g in groups], name=method,
                               marker_color=METHOD_COLORS.get(method)))
    pattern = rows[0].get("pattern", "")
    fig.update_layout(barmode="group", template="plotly_white", height=420,
                      yaxis_title=MEASURE_LABELS.get(measure, measure), xaxis_title="pruned alone (the rest dense)",
                      title=titled(title or f"Which layers the damage comes from ({pattern}, one-shot)", caption))
    return fig


def similarity_scatter(dense: torch.Tensor, pruned: torch.Tensor, title: str = "", max_points: int = 4000,
                       seed: int = 0) -> plotly.graph_objects.Figure:  # noqa: F821
    """Pairwise cosine similarities of the pruned model (y) against the dense model's (x), at most `max_points`
    pairs drawn at random; points on the diagonal are pairs the pruned model scores as the dense one does."""
    if dense.shape != pruned.shape or dense.ndim != 1:
        raise ValueError(f"dense and pruned must be 1-D and alike, got {tuple(dense.shape)}, {tuple(pruned.shape)}")
    pick = torch.randperm(len(dense), generator=torch.Generator().manual_seed(seed))[:max_points]
    # plain lists: a FigureWidget holding numpy arrays fails on the browser's replies (plotly compares them with `not`)
    x, y = dense[pick].double().tolist(), pruned[pick].double().tolist()
    low, high = min(min(x), min(y)), max(max(x), max(y))
    fig = go().Figure([go().Scattergl(x=x, y=y, mode="markers", marker=dict(size=3, opacity=0.4), name="pairs"),
                       go().Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dash", color="grey"),
                                    name="pruned = dense")])
    fig.update_layout(template="plotly_white", height=420, width=520, title=title,
                      xaxis_title="cosine similarity, dense", yaxis_title="cosine similarity, pruned")
    return fig
