"""Lecture 02's figures carry their data; the pattern explorer redraws every pattern from the slider."""

import pytest
import torch

from sparsity_lab.patterns import plots
from sparsity_lab.patterns.masks import nm_mask, row_mask

SUMMARY = [
    {"pattern": p, "family": f, "sparsity": s, "achieved_sparsity": s, "n_seeds": 3,
     "accuracy_mean": a, "accuracy_std": 0.01, "loss_increase_mean": d, "loss_increase_std": 0.005,
     "finetuned_loss_increase_mean": d / 4, "finetuned_loss_increase_std": 0.001}
    for p, f, s, a, d in [("unstructured", "unstructured", 0.5, 0.97, 0.01), ("2:4", "N:4", 0.5, 0.96, 0.02),
                          ("unstructured", "unstructured", 0.75, 0.95, 0.06), ("1:4", "N:4", 0.75, 0.92, 0.3)]
]


def test_mask_grid_has_one_heatmap_per_pattern_and_crops_to_the_window():
    scores = torch.rand(16, 8)
    masks = {"2:4": nm_mask(scores, 2, 4), "row": row_mask(scores, 0.5)}
    fig = plots.pattern_masks_figure(masks, titles={"row": "rows!"}, window=(4, 8))
    assert [t.name for t in fig.data] == ["2:4", "row"]
    assert fig.data[0].z.shape == (4, 8)
    assert fig.data[1].z.tolist() == masks["row"][:4].float().tolist()
    assert [a.text for a in fig.layout.annotations] == ["2:4", "rows!"]
    with pytest.raises(ValueError, match="at least one mask"):
        plots.pattern_masks_figure({})


def test_table_shows_mean_and_std_per_pattern():
    fig = plots.study_table(SUMMARY, 0.5)
    cells = fig.data[0].cells.values
    assert list(cells[0]) == ["unstructured", "2:4"]
    assert "96.0 ± 1.0" in cells[3]
    with pytest.raises(ValueError, match="no entries at sparsity 0.9"):
        plots.study_table(SUMMARY, 0.9)


def test_bars_have_one_shot_and_fine_tuned_series_with_error_bars():
    fig = plots.study_bars(SUMMARY, 0.75, "loss_increase")
    one_shot, tuned = fig.data
    assert list(one_shot.x) == ["unstructured", "1:4"] and list(one_shot.y) == pytest.approx([0.06, 0.3])
    assert list(tuned.y) == pytest.approx([0.015, 0.075]) and list(one_shot.error_y.array) == [0.005, 0.005]


def test_sweep_has_a_line_per_family_in_percent():
    fig = plots.study_sweep(SUMMARY, "accuracy")
    assert [t.name for t in fig.data] == ["unstructured", "N:4"]
    assert list(fig.data[1].x) == [50.0, 75.0] and list(fig.data[1].y) == pytest.approx([96.0, 92.0])


def test_paired_differences_mark_what_separates():
    pairs = [{"a": "2:4", "b": "unstructured", "sparsity": 0.5, "measure": m, "diffs": d, "mean": sum(d) / 3,
              "stderr": 0.001, "ci95": 0.004, "separates": s}
             for m, d, s in (("accuracy", [0.0, 0.01, -0.01], False), ("loss_increase", [0.01, 0.012, 0.011], True))]
    fig = plots.paired_differences_figure(pairs)
    dots = [t for t in fig.data if not t.name.endswith("mean")]
    assert [t.marker.color for t in dots] == ["grey", "crimson"]
    assert list(dots[1].y) == [0.01, 0.012, 0.011]
    assert list(dots[0].y) == pytest.approx([0.0, 1.0, -1.0]), "accuracy differences are in percentage points"


def test_explorer_redraws_every_pattern_from_the_slider():
    from sparsity_lab.course.data import load_digits
    from sparsity_lab.course.train import trained_mlp
    from sparsity_lab.patterns.widgets import pattern_explorer, resolve

    assert resolve("N:8", 0.75) == "2:8" and resolve("N:4", 0.0) == "3:4" and resolve("row", 0.5) == "row"
    model = trained_mlp(seed=0, epochs=2, hidden=32, progress=False)
    box = pattern_explorer(model, load_digits(), layer="net.1", window=(16, 64))
    slider, errors, figure, table = box.children
    slider.value = 0.75
    titles = [a.text for a in figure.layout.annotations]
    assert titles[0].startswith("unstructured: 75.0% sparse") and titles[1].startswith("2:8: 75.0% sparse")
    row = figure.data[4].z
    assert row.shape == (16, 64) and set(row.min(1).tolist()) <= {0.0, 1.0}
    assert (row.min(1) == row.max(1)).all(), "row pruning keeps or drops whole rows"
    assert "asked for 75.0%" in table.value and "block 8x8" in table.value
    with pytest.raises(ValueError, match="must be one of the pruned layers"):
        pattern_explorer(model, load_digits(), layer="net.5")
