"""Figures for lecture 02 (sparsity patterns): mask grids, the study's table, bars, sweep and paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsity_lab._optional import require

MEASURE_LABELS = {
    "accuracy": "test accuracy (%)",
    "loss_increase": "test-loss increase",
    "weight_error": "relative weight error",
    "finetuned_accuracy": "test accuracy after fine-tuning (%)",
    "finetuned_loss_increase": "test-loss increase after fine-tuning",
}
PERCENT = {"accuracy", "finetuned_accuracy"}


def _scale(measure: str) -> float:
    return 100.0 if measure in PERCENT else 1.0


def pattern_masks_figure(
    masks: Mapping[str, torch.Tensor],
    titles: Mapping[str, str] | None = None,
    window: tuple[int, int] | None = None,
    cols: int = 3,
) -> plotly.graph_objects.Figure:  # noqa: F821
    """One heatmap per mask (dark = kept), in a grid; `window` (rows, cols) shows only the top-left corner."""
    go = require("plotly.graph_objects")
    subplots = require("plotly.subplots")
    if not masks:
        raise ValueError("masks must hold at least one mask")
    names = list(masks)
    cols = min(cols, len(names))
    rows = math.ceil(len(names) / cols)
    # Titles may hold two lines (the explorer's: name, then sparsity and accuracy): room for them above each row.
    fig = subplots.make_subplots(rows=rows, cols=cols, subplot_titles=[(titles or {}).get(n, n) for n in names],
                                 horizontal_spacing=0.04, vertical_spacing=min(0.3, 90 / (300 * rows)))
    for i, name in enumerate(names):
        mask = masks[name].detach().reshape(masks[name].shape[0], -1)
        if window is not None:
            mask = mask[: window[0], : window[1]]
        fig.add_trace(go.Heatmap(z=mask.to(torch.float32).numpy(), colorscale="Greys", zmin=0, zmax=1,
                                 showscale=False, name=name), row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_annotations(font_size=13)
    fig.update_layout(height=300 * rows, template="plotly_white", margin=dict(t=70, l=20, r=20, b=20))
    return fig


def _entries(summary: Sequence[dict[str, Any]], sparsity: float) -> list[dict[str, Any]]:
    entries = [e for e in summary if e["sparsity"] == sparsity]
    if not entries:
        raise ValueError(f"the summary has no entries at sparsity {sparsity}")
    return entries


def study_table(
    summary: Sequence[dict[str, Any]], sparsity: float, title: str | None = None
) -> plotly.graph_objects.Figure:  # noqa: F821
    """The study's table at one sparsity: each measure as mean ± std over seeds, one row per pattern."""
    go = require("plotly.graph_objects")
    entries = _entries(summary, sparsity)
    measures = [m for m in MEASURE_LABELS if f"{m}_mean" in entries[0]]

    def cell(entry: dict[str, Any], measure: str) -> str:
        scale, digits = _scale(measure), (1 if measure in PERCENT else 3)
        return f"{scale * entry[f'{measure}_mean']:.{digits}f} ± {scale * entry[f'{measure}_std']:.{digits}f}"

    header = ["pattern", "achieved sparsity", "seeds"] + [MEASURE_LABELS[m] for m in measures]
    columns = [[e["pattern"] for e in entries], [f"{e['achieved_sparsity']:.1%}" for e in entries],
               [e["n_seeds"] for e in entries]] + [[cell(e, m) for e in entries] for m in measures]
    fig = go.Figure(go.Table(header=dict(values=header), cells=dict(values=columns)))
    fig.update_layout(title=title or f"Patterns at {sparsity:.0%} sparsity (mean ± std over seeds)",
                      height=110 + 30 * len(entries), margin=dict(t=50, l=10, r=10, b=10))
    return fig


def study_bars(
    summary: Sequence[dict[str, Any]], sparsity: float, measure: str = "loss_increase", title: str | None = None
) -> plotly.graph_objects.Figure:  # noqa: F821
    """One bar per pattern at `sparsity`: `measure` one-shot and after fine-tuning, error bars = std over seeds."""
    go = require("plotly.graph_objects")
    entries = _entries(summary, sparsity)
    scale = _scale(measure)
    fig = go.Figure()
    finetuned = f"finetuned_{measure}"
    for key, label in ((measure, "one-shot"), (finetuned, "fine-tuned")):
        if f"{key}_mean" not in entries[0]:
            continue
        fig.add_trace(go.Bar(x=[e["pattern"] for e in entries], y=[scale * e[f"{key}_mean"] for e in entries],
                             error_y=dict(type="data", array=[scale * e[f"{key}_std"] for e in entries]), name=label))
    fig.update_layout(title=title or f"{MEASURE_LABELS.get(measure, measure)} at {sparsity:.0%} sparsity",
                      yaxis_title=MEASURE_LABELS.get(measure, measure), barmode="group", template="plotly_white")
    return fig


def study_sweep(
    summary: Sequence[dict[str, Any]], measure: str = "loss_increase", title: str | None = None
) -> plotly.graph_objects.Figure:  # noqa: F821
    """`measure` against sparsity, one line per pattern family, error bars = std over seeds."""
    go = require("plotly.graph_objects")
    scale = _scale(measure)
    families: dict[str, list[dict[str, Any]]] = {}
    for entry in summary:
        if f"{measure}_mean" in entry:
            families.setdefault(entry["family"], []).append(entry)
    fig = go.Figure()
    for family, entries in families.items():
        entries = sorted(entries, key=lambda e: e["sparsity"])
        if len(entries) < 2:
            continue
        fig.add_trace(go.Scatter(
            x=[100 * e["achieved_sparsity"] for e in entries], y=[scale * e[f"{measure}_mean"] for e in entries],
            error_y=dict(type="data", array=[scale * e[f"{measure}_std"] for e in entries]),
            mode="lines+markers", name=family))
    fig.update_layout(title=title or f"{MEASURE_LABELS.get(measure, measure)} against sparsity",
                      xaxis_title="sparsity (% of pruned layers' weights removed)",
                      yaxis_title=MEASURE_LABELS.get(measure, measure), template="plotly_white")
    return fig


def paired_differences_figure(
    pairs: Sequence[dict[str, Any]], title: str = "Seed-by-seed differences (a − b)"
) -> plotly.graph_objects.Figure:  # noqa: F821
    """One panel per measure: each comparison's per-seed differences (dots) and mean with its 95% interval.

    A comparison whose interval is clear of zero (paired t-test, 5%) separates the patterns: drawn red.
    """
    go = require("plotly.graph_objects")
    subplots = require("plotly.subplots")
    measures = list(dict.fromkeys(p["measure"] for p in pairs))
    if not measures:
        raise ValueError("pairs must hold at least one paired difference")
    cols = min(3, len(measures))  # panels of about 300 px: titles and labels fit, on two lines at most
    rows = math.ceil(len(measures) / cols)
    fig = subplots.make_subplots(rows=rows, cols=cols, horizontal_spacing=0.08, vertical_spacing=0.5 / rows,
                                 subplot_titles=[_wrap(MEASURE_LABELS.get(m, m), 24) for m in measures])
    for index, measure in enumerate(measures):
        row, col = index // cols + 1, index % cols + 1
        scale = _scale(measure)
        for pair in (p for p in pairs if p["measure"] == measure):
            label = f"{pair['a']} − {pair['b']}<br>@{pair['sparsity']:.0%}"
            color = "crimson" if pair["separates"] else "grey"
            fig.add_trace(go.Scatter(x=[label] * len(pair["diffs"]), y=[scale * d for d in pair["diffs"]],
                                     mode="markers", marker=dict(size=6, color=color, opacity=0.5),
                                     showlegend=False, name=label), row=row, col=col)
            fig.add_trace(go.Scatter(x=[label], y=[scale * pair["mean"]], mode="markers",
                                     marker=dict(size=12, symbol="diamond", color=color),
                                     error_y=dict(type="data", array=[scale * pair["ci95"]]),
                                     showlegend=False, name=f"{label} mean"), row=row, col=col)
        fig.add_hline(y=0, line_dash="dot", line_color="black", row=row, col=col)
    fig.update_xaxes(tickangle=0)
    fig.update_annotations(font_size=13)
    fig.update_layout(title=title + "<br><sup>red: the 95% interval excludes 0 (paired t-test)</sup>",
                      template="plotly_white", height=120 + 340 * rows, margin=dict(t=110))
    return fig


def _wrap(text: str, width: int) -> str:
    """`text` broken into lines of at most about `width` characters, at spaces, joined by <br> (plotly's)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)
