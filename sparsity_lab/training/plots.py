"""Figures for lecture 08 (2:4 sparse training): the digits study's curves and table, a transposable 2:4 mask,
and the GPU benchmark's speedups and step breakdown (`sparsity_lab.training.bench`)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.figures import WIDGET_WIDTH, cell_font, cell_px
from sparsity_lab.course.figures import titled as _title
from sparsity_lab.semi24.plots import DROPPED, KEPT, format_value

BROKEN = "#e45756"  # a kept entry in a group of 4 that holds more than 2: not 2:4
FINETUNED = "dense -> 2:4 fine-tuned"
RECIPE_COLORS = {"dense": "#4c78a8", "2:4 from scratch": "#f58518", FINETUNED: "#54a24b"}
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac", "#1f3b73", "#8c564b")  # 12 distinct colours: one per part of a step's breakdown


def _go():
    return require("plotly.graph_objects")


def _color(name: str, index: int) -> str:
    return RECIPE_COLORS.get(name, PALETTE[index % len(PALETTE)])


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


# -------------------------------------------------------------------------------------------------- the study
def _recipes(study: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The study's runs grouped by recipe, in the order they first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in study["runs"]:
        groups.setdefault(run["recipe"], []).append(run)
    return groups


def _epochs(recipe: str, length: int, study: Mapping[str, Any]) -> list[int]:
    """Epoch numbers of a curve: 1..length, except fine-tuning, which continues after the dense run's epochs
    (it starts from the trained dense model)."""
    start = study["config"]["epochs"] if recipe == FINETUNED else 0
    return list(range(start + 1, start + length + 1))


def _mean_band(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Per-epoch mean, mean - std and mean + std over seeds (population std; 0 for one seed)."""
    columns = list(zip(*curves, strict=True))
    mean = [statistics.fmean(c) for c in columns]
    std = [statistics.pstdev(c) for c in columns]
    return mean, [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)]


def training_curves(study: Mapping[str, Any], per_seed: bool = False,
                    title: str = "Digits MLP: dense against 2:4 training") -> plotly.graph_objects.Figure:  # noqa: F821
    """Test accuracy (%) and train loss per epoch, one colour per recipe, from `sparse_training_study.study()`:
    the mean over seeds with a ±1 std band, or (`per_seed`) one line per seed. Fine-tuning is drawn after the
    dense epochs it starts from, with its one-shot accuracy (pruned, not yet trained) as a diamond."""
    go = _go()
    subplots = require("plotly.subplots")
    fig = subplots.make_subplots(rows=1, cols=2, subplot_titles=("test accuracy (%)", "train loss"),
                                 horizontal_spacing=0.08)
    for index, (recipe, runs) in enumerate(_recipes(study).items()):
        color = _color(recipe, index)
        for col, key, scale in ((1, "test_accuracy", 100.0), (2, "train_loss", 1.0)):
            curves = [[scale * v for v in run[key]] for run in runs]
            x = _epochs(recipe, len(curves[0]), study)
            first = col == 1
            if per_seed:
                for run, curve in zip(runs, curves, strict=True):
                    fig.add_trace(go.Scatter(x=x, y=curve, mode="lines", line=dict(color=color, width=1.5),
                                             name=recipe, legendgroup=recipe, showlegend=first and run is runs[0],
                                             hovertemplate=f"{recipe}, seed {run['seed']}: %{{y:.3f}}<extra></extra>"),
                                  row=1, col=col)
            else:
                mean, low, high = _mean_band(curves)
                fig.add_trace(go.Scatter(x=x + x[::-1], y=high + low[::-1], fill="toself", mode="lines",
                                         fillcolor=_rgba(color, 0.2), line=dict(width=0), hoverinfo="skip",
                                         legendgroup=recipe, showlegend=False, name=f"{recipe} ± std"),
                              row=1, col=col)
                fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", line=dict(color=color, width=2), name=recipe,
                                         legendgroup=recipe, showlegend=first), row=1, col=col)
        one_shot = [run["one_shot_accuracy"] for run in runs if run.get("one_shot_accuracy") is not None]
        if one_shot:
            fig.add_trace(go.Scatter(x=[study["config"]["epochs"]], y=[100 * statistics.fmean(one_shot)],
                                     mode="markers", marker=dict(symbol="diamond", size=10, color=color),
                                     name=f"{recipe}: one-shot", legendgroup=recipe), row=1, col=1)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title + ("" if per_seed else " (mean over seeds, band = ±1 std)"),
                      template="plotly_white", height=420)
    return fig


def _versus_dense(entry: Mapping[str, float]) -> str:
    """A recipe's mean accuracy minus dense's, in signed points ("gap_points" counts the other way)."""
    return f"{0.0 - entry['gap_points']:+.2f}"  # 0.0 - x: no "-0.00" for dense itself


def final_accuracy_bars(summary: Mapping[str, Mapping[str, float]],
                        title: str = "Final test accuracy per recipe") -> plotly.graph_objects.Figure:  # noqa: F821
    """One bar per recipe of `study()["summary"]`: mean final test accuracy (%), error bar = std over seeds,
    labelled with mean ± std and the difference to dense in points (negative: below dense)."""
    go = _go()
    recipes = list(summary)
    means = [100 * summary[r]["mean"] for r in recipes]
    stds = [100 * summary[r]["std"] for r in recipes]
    text = [f"{m:.2f} ± {s:.2f}" + (f"<br>{_versus_dense(summary[r])} points vs dense" if r != "dense" else "")
            for r, m, s in zip(recipes, means, stds, strict=True)]
    fig = go.Figure(go.Bar(x=recipes, y=means, error_y=dict(type="data", array=stds), text=text,
                           textposition="outside", marker_color=[_color(r, i) for i, r in enumerate(recipes)]))
    low = min(m - s for m, s in zip(means, stds, strict=True))
    fig.update_layout(title=title + f" (n = {summary[recipes[0]]['n']} seeds)", yaxis_title="test accuracy (%)",
                      yaxis_range=[max(0.0, low - 4), 101], template="plotly_white")
    return fig


def study_table(study: Mapping[str, Any], title: str = "2:4 training study") -> plotly.graph_objects.Figure:  # noqa: F821
    """The study's summary as a table: per recipe, seeds, final accuracy mean ± std, the difference to dense in
    points (negative: below dense), epochs, and (fine-tuning) the mean one-shot accuracy before training."""
    go = _go()
    summary, groups, config = study["summary"], _recipes(study), study["config"]
    recipes = list(summary)

    def one_shot(recipe: str) -> str:
        values = [r["one_shot_accuracy"] for r in groups[recipe] if r.get("one_shot_accuracy") is not None]
        return f"{100 * statistics.fmean(values):.2f}" if values else "—"

    epochs = [f"{config['epochs']} + {config['finetune_epochs']}" if r == FINETUNED else str(config["epochs"])
              for r in recipes]
    columns = [recipes, [summary[r]["n"] for r in recipes],
               [f"{100 * summary[r]['mean']:.2f} ± {100 * summary[r]['std']:.2f}" for r in recipes],
               [_versus_dense(summary[r]) for r in recipes], epochs, [one_shot(r) for r in recipes]]
    header = ["recipe", "seeds", "final test accuracy (%)", "vs dense (points)", "epochs",
              "one-shot accuracy (%)"]
    fig = go.Figure(go.Table(header=dict(values=header), cells=dict(values=columns)))
    fig.update_layout(title=title, height=110 + 30 * len(recipes), margin=dict(t=50, l=10, r=10, b=10))
    return fig


# -------------------------------------------------------------------------------------------------- masks
def kept_magnitude(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """The fraction of Σ|w| that `mask` keeps: what a magnitude mask maximises, so the cost of a constraint on
    the mask (transposable tiles against plain 2:4 rows) is the drop of this number."""
    magnitude = weight.detach().abs().double()
    total = float(magnitude.sum())
    return float((magnitude * mask).sum()) / total if total else 1.0


def _broken_groups(mask: torch.Tensor) -> torch.Tensor:
    """True on every entry of a group of 4 consecutive entries of a row that keeps more than 2."""
    rows, cols = mask.shape
    over = mask.reshape(rows, cols // 4, 4).sum(-1, keepdim=True) > 2
    return over.expand(rows, cols // 4, 4).reshape(rows, cols)


def _mask_panel(weight: torch.Tensor, mask: torch.Tensor, font: int | None) -> dict[str, Any]:
    """Heatmap arguments for one panel: dropped 0, kept 1, kept in a group that breaks 2:4 2; values as text
    (at `font` px; None: hover only, the cells are too small to write in)."""
    z = mask.to(torch.float32) * (1 + _broken_groups(mask).to(torch.float32))
    text = [[format_value(v) for v in row] for row in weight.detach().double().tolist()]
    return dict(z=z.tolist(), text=text, texttemplate="%{text}" if font else None, textfont=dict(size=font or 9),
                zmin=0, zmax=2, colorscale=[[0, DROPPED], [0.5, KEPT], [1, BROKEN]], showscale=False, xgap=1,
                ygap=1, hovertemplate="row %{y}, column %{x}: %{text}<extra></extra>")


def _verdict(mask: torch.Tensor) -> str:
    groups = mask.numel() // 4
    broken = int(_broken_groups(mask).sum()) // 4
    return "2:4 along rows ✓" if not broken else f"NOT 2:4: {broken} of {groups} groups keep > 2"


def mask_tiles_figure(weight: torch.Tensor, mask: torch.Tensor, title: str | None = None
                      ) -> plotly.graph_objects.Figure:  # noqa: F821
    """A weight's 2:4 mask (left) and the mask of its transpose (right), cell by cell: kept blue, dropped grey,
    kept entries of a group of 4 that keeps more than 2 red (the transpose of a plain 2:4 mask is not 2:4); 4x4
    tiles outlined. Both sizes must be multiples of 4. The title gives the kept fraction of Σ|w|.

    Square cells as large as a widget's width allows (values written in them where they fit), both panels
    top-aligned with their own title: the figure has a fixed size, at most `WIDGET_WIDTH` wide."""
    go = _go()
    if mask.shape != weight.shape or weight.dim() != 2 or weight.shape[0] % 4 or weight.shape[1] % 4:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must be one 2-D shape whose "
                         "sizes are multiples of 4 (4x4 tiles)")
    mask = mask.bool()
    rows, cols = mask.shape
    left, right, gap, top, bottom = 70, 20, 90, 110, 60  # px: y titles and ticks, between the panels, titles
    cell = cell_px(rows + cols, room=WIDGET_WIDTH - left - right - gap)
    text = [format_value(v) for v in weight.detach().double().reshape(-1).tolist()]
    lengths = sorted(map(len, text))  # sized for 90% of the values: one long one (1e-05) does not blank the rest
    font = cell_font(cell, lengths[int(0.9 * (len(lengths) - 1))]) if weight.numel() <= 512 else None
    plot_w, plot_h = (rows + cols) * cell + gap, max(rows, cols) * cell
    fig = go.Figure()
    split = cols * cell / plot_w  # the left panel's share of the plotting width
    panels = (("", weight, mask, [0, split], "row (output)", "column (input)", f"W ⊙ mask<br>{_verdict(mask)}"),
              ("2", weight.T, mask.T, [split + gap / plot_w, 1], "row of Wᵀ (input)", "column of Wᵀ (output)",
               f"(W ⊙ mask)ᵀ<br>{_verdict(mask.T)}"))
    for axis, w, m, domain, y_title, x_title, panel_title in panels:
        n_rows, n_cols = m.shape
        fig.add_trace(go.Heatmap(**_mask_panel(w, m, font), xaxis=f"x{axis}", yaxis=f"y{axis}"))
        y_domain = [1 - n_rows * cell / plot_h, 1]
        fig.update_layout({f"xaxis{axis}": dict(domain=domain, anchor=f"y{axis}", range=[-0.5, n_cols - 0.5],
                                                title_text=x_title, dtick=4),
                           f"yaxis{axis}": dict(domain=y_domain, anchor=f"x{axis}", range=[n_rows - 0.5, -0.5],
                                                title_text=y_title, dtick=4)})
        x_ref, y_ref = f"x{axis}", f"y{axis}"
        for x in range(4, n_cols, 4):
            fig.add_shape(type="line", x0=x - 0.5, x1=x - 0.5, y0=-0.5, y1=n_rows - 0.5, xref=x_ref, yref=y_ref,
                          line=dict(width=3, color="black"))
        for y in range(4, n_rows, 4):
            fig.add_shape(type="line", x0=-0.5, x1=n_cols - 0.5, y0=y - 0.5, y1=y - 0.5, xref=x_ref, yref=y_ref,
                          line=dict(width=3, color="black"))
        fig.add_annotation(text=panel_title, x=sum(domain) / 2, y=1, xref="paper", yref="paper", xanchor="center",
                           yanchor="bottom", showarrow=False, font=dict(size=13), yshift=4)
    kept = kept_magnitude(weight, mask)
    fig.update_layout(title=dict(text=(title or "a 2:4 mask and its transpose") + f" — keeps {kept:.1%} of Σ|w|",
                                 font=dict(size=15)),
                      template="plotly_white", autosize=False, width=left + right + plot_w,
                      height=top + bottom + plot_h, margin=dict(l=left, r=right, t=top, b=bottom))
    return fig


# -------------------------------------------------------------------------------------------------- GPU
def training_speedup(rows: Sequence[Mapping[str, Any]], label: str = "",
                     title: str = "2:4 training step (forward + backward) against dense"
                     ) -> plotly.graph_objects.Figure:  # noqa: F821
    """Speedup (dense ms / 2:4 ms) of each variant per token count, one panel per dtype, from the benchmark's
    rows; the grey line at 1.0 is the dense block. `label` (the results' `.label`) says where it was measured."""
    go = _go()
    subplots = require("plotly.subplots")
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig = subplots.make_subplots(rows=1, cols=max(1, len(dtypes)), subplot_titles=dtypes, shared_yaxes=True)
    for col, dtype in enumerate(dtypes, start=1):
        for index, variant in enumerate(variants):
            picked = sorted((r for r in rows if r["dtype"] == dtype and r["variant"] == variant),
                            key=lambda r: r["tokens"])
            fig.add_trace(go.Bar(x=[f"{r['tokens']} tokens" for r in picked], y=[r["speedup"] for r in picked],
                                 text=[f"{r['speedup']:.2f}x" for r in picked], textposition="outside",
                                 customdata=[[r["dense_ms"], r["sparse_ms"]] for r in picked],
                                 hovertemplate="dense %{customdata[0]:.3f} ms, 2:4 %{customdata[1]:.3f} ms"
                                               "<extra></extra>",
                                 name=variant, legendgroup=variant, showlegend=col == 1,
                                 marker_color=PALETTE[index % len(PALETTE)]), row=1, col=col)
        fig.add_hline(y=1.0, line_color="grey", line_dash="dash", annotation_text="dense", row=1, col=col)
    fig.update_yaxes(title_text="speedup over dense", row=1, col=1)
    fig.update_layout(title=_title(title, label), barmode="group", template="plotly_white", height=440)
    return fig


def step_breakdown(breakdown: Sequence[Mapping[str, Any]], label: str = "", skip: Sequence[str] = (),
                   title: str = "Where a step's time goes") -> plotly.graph_objects.Figure:  # noqa: F821
    """Stacked bars, a dense and a 2:4 bar for every (dtype, tokens): one segment per part of the step, each
    timed on its own (mask and compression exist only in 2:4: `dense_ms` None). Totals on top. Parts whose name
    contains one of `skip` are left out: a breakdown may time alternatives (e.g. the fixed-mask variant of a
    part) that one step does not run together, and a stack must add only the parts of one step."""
    go = _go()
    cases = list(dict.fromkeys((r["dtype"], r["tokens"]) for r in breakdown))
    parts = [p for p in dict.fromkeys(r["part"] for r in breakdown) if not any(s in p for s in skip)]
    cell = {(r["dtype"], r["tokens"], r["part"]): r for r in breakdown}
    x = [[f"{d} {t}" for d, t in cases for _ in (0, 1)], ["dense", "2:4"] * len(cases)]

    def times(part: str) -> list[float | None]:
        out = []
        for dtype, tokens in cases:
            row = cell.get((dtype, tokens, part), {})
            out += [row.get("dense_ms"), row.get("sparse_ms")]
        return out

    fig = go.Figure()
    for index, part in enumerate(parts):
        fig.add_trace(go.Bar(x=x, y=times(part), name=part, marker_color=PALETTE[index % len(PALETTE)],
                             hovertemplate=f"{part}: %{{y:.3f}} ms<extra></extra>"))
    totals = [sum(v or 0.0 for v in column) for column in zip(*(times(p) for p in parts), strict=True)]
    fig.add_trace(go.Scatter(x=x, y=totals, mode="text", text=[f"{t:.2f} ms" for t in totals],
                             textposition="top center", showlegend=False, name="total"))
    fig.update_layout(title=_title(title, label), barmode="stack", yaxis_title="ms (each part timed alone)",
                      template="plotly_white", height=480)
    return fig
