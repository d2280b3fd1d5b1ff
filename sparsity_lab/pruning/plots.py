"""Pure plotting functions: data in, plotly figure out (testable without a browser)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsity_lab._optional import require


def _go():
    return require("plotly.graph_objects")


def accuracy_vs_sparsity(
    rows: Sequence[dict[str, float]],
    title: str = "Accuracy after pruning",
    highlight: tuple[float, float] | None = None,
) -> plotly.graph_objects.Figure:  # noqa: F821
    """Accuracy (and fine-tuned accuracy, when the rows have it) against sparsity, in percent; `highlight`
    marks one (sparsity, accuracy) point, as the last trace."""
    go = _go()
    x = [100 * r["sparsity"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[100 * r["accuracy"] for r in rows], mode="lines+markers", name="one-shot"))
    if rows and "finetuned_accuracy" in rows[0]:
        fig.add_trace(
            go.Scatter(x=x, y=[100 * r["finetuned_accuracy"] for r in rows], mode="lines+markers", name="fine-tuned")
        )
    if highlight is not None:
        fig.add_trace(go.Scatter(x=[100 * highlight[0]], y=[100 * highlight[1]], mode="markers", name="selected",
                                 marker=dict(size=14, symbol="star", color="crimson")))
    fig.update_layout(title=title, xaxis_title="sparsity (% of weights removed)", yaxis_title="test accuracy (%)",
                      yaxis_range=[0, 101], template="plotly_white")
    return fig


def mask_heatmap(mask: torch.Tensor, title: str = "mask (dark = kept)") -> plotly.graph_objects.Figure:  # noqa: F821
    """A 2-D mask (or weight) as a heatmap, row 0 at the top."""
    go = _go()
    values = mask.detach().to(torch.float32).reshape(mask.shape[0], -1).cpu().numpy()
    fig = go.Figure(go.Heatmap(z=values, colorscale="Greys", showscale=False))
    fig.update_layout(title=title, yaxis_autorange="reversed", xaxis_title="input", yaxis_title="output",
                      template="plotly_white")
    return fig
