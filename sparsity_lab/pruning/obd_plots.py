"""Figures for lecture 01 (pruning flow and Optimal Brain Damage): pure functions, data in, plotly figure out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sparsity_lab._optional import require


def _go():
    return require("plotly.graph_objects")


def deletion_curves(
    curves: Mapping[str, Sequence[Mapping[str, float]]], key: str = "loss", title: str = "Loss against weights deleted",
    log: bool = True,
) -> plotly.graph_objects.Figure:  # noqa: F821
    """One line per method: `key` (e.g. "loss" or "retrained_loss") against the number of weights deleted."""
    go = _go()
    fig = go.Figure()
    for name, rows in curves.items():
        fig.add_trace(go.Scatter(x=[r["deleted"] for r in rows], y=[r[key] for r in rows], mode="lines+markers",
                                 name=name))
    fig.update_layout(title=title, xaxis_title="weights deleted", yaxis_title=f"training {key.replace('_', ' ')}",
                      yaxis_type="log" if log else "linear", template="plotly_white")
    return fig


def predicted_vs_actual(
    rows: Sequence[Mapping[str, float]], title: str = "OBD: predicted and actual loss"
) -> plotly.graph_objects.Figure:  # noqa: F821
    """Actual loss, OBD's prediction (base + sum of deleted saliencies) and, when present, the full second-order
    Taylor prediction, against weights deleted (log scale)."""
    go = _go()
    x = [r["deleted"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["loss"] for r in rows], mode="lines+markers", name="actual"))
    fig.add_trace(go.Scatter(x=x, y=[r["predicted"] for r in rows], mode="lines+markers", name="OBD predicted"))
    if rows and "taylor" in rows[0]:
        fig.add_trace(go.Scatter(x=x, y=[max(r["taylor"], 1e-30) for r in rows], mode="lines+markers",
                                 name="full 2nd-order Taylor", line=dict(dash="dot")))
    fig.update_layout(title=title, xaxis_title="weights deleted", yaxis_title="training loss", yaxis_type="log",
                      template="plotly_white")
    return fig


def estimator_scatter(
    estimates: Mapping[str, Mapping[str, torch.Tensor]], exact: Mapping[str, torch.Tensor],
    title: str = "Hessian diagonal: estimate against exact",
) -> plotly.graph_objects.Figure:  # noqa: F821
    """Each estimator's diagonal against the exact one, entry by entry (symmetric-log axes would hide the negatives,
    so the axes are linear)."""
    go = _go()
    ref = torch.cat([v.reshape(-1) for v in exact.values()]).double()
    fig = go.Figure()
    for name, diag in estimates.items():
        est = torch.cat([diag[k].reshape(-1) for k in exact]).double()
        fig.add_trace(go.Scattergl(x=ref.tolist(), y=est.tolist(), mode="markers", name=name, marker=dict(size=3)))
    lo, hi = float(ref.min()), float(ref.max())
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(color="black", dash="dash")))
    fig.update_layout(title=title, xaxis_title="exact h_kk", yaxis_title="estimated h_kk", template="plotly_white")
    return fig


def estimator_cost(
    rows: Sequence[Mapping[str, float | str]], title: str = "Cost against accuracy of each estimator"
) -> plotly.graph_objects.Figure:  # noqa: F821
    """Seconds (log x) against relative error to the exact diagonal (y), one labelled point per estimator."""
    go = _go()
    fig = go.Figure(go.Scatter(
        x=[r["seconds"] for r in rows], y=[r["relative_error"] for r in rows], mode="markers+text",
        text=[f"{r['method']} (r={r['correlation']:.3f})" for r in rows], textposition="top center",
        marker=dict(size=12)))
    fig.update_layout(title=title, xaxis_title="seconds (this machine)", yaxis_title="relative error ||ĥ - h|| / ||h||",
                      xaxis_type="log", template="plotly_white")
    return fig


def hutchinson_convergence(
    rows: Sequence[Mapping[str, float]], title: str = "Hutchinson: error against probe vectors"
) -> plotly.graph_objects.Figure:  # noqa: F821
    """Relative error against samples (log-log), with the 1/sqrt(samples) slope through the first point."""
    go = _go()
    n = [r["samples"] for r in rows]
    err = [r["relative_error"] for r in rows]
    fig = go.Figure(go.Scatter(x=n, y=err, mode="lines+markers", name="measured"))
    if rows:
        fig.add_trace(go.Scatter(x=n, y=[err[0] * (n[0] / k) ** 0.5 for k in n], mode="lines", name="∝ 1/√samples",
                                 line=dict(dash="dash")))
    fig.update_layout(title=title, xaxis_title="Rademacher probe vectors", yaxis_title="relative error",
                      xaxis_type="log", yaxis_type="log", template="plotly_white")
    return fig


def sparsity_comparison(
    curves: Mapping[str, Sequence[Mapping[str, float]]], key: str = "loss",
    title: str = "Training loss against sparsity",
) -> plotly.graph_objects.Figure:  # noqa: F821
    """One line per method: `key` against sparsity in percent (log y)."""
    go = _go()
    fig = go.Figure()
    for name, rows in curves.items():
        fig.add_trace(go.Scatter(x=[100 * r["sparsity"] for r in rows], y=[r[key] for r in rows],
                                 mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="sparsity (% of weights removed)", yaxis_title=key.replace("_", " "),
                      yaxis_type="log", template="plotly_white")
    return fig


def layer_masks(masks: Mapping[str, torch.Tensor], title: str = "masks (dark = kept)") -> plotly.graph_objects.Figure:  # noqa: F821
    """Every layer's mask as a heatmap, side by side, each titled with its name and sparsity."""
    go = _go()
    subplots = require("plotly.subplots")
    names = list(masks)
    fig = subplots.make_subplots(rows=1, cols=len(names), subplot_titles=[
        f"{n} {float((~masks[n].bool()).double().mean()):.0%} pruned" for n in names])
    for i, name in enumerate(names, start=1):
        z = masks[name].detach().to(torch.float32).reshape(masks[name].shape[0], -1).numpy()
        fig.add_trace(go.Heatmap(z=z, colorscale="Greys", showscale=False, zmin=0, zmax=1), row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_layout(title=title, template="plotly_white", height=380)
    return fig
