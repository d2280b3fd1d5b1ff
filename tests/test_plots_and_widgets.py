"""Plot functions return figures built from their data; widgets wire a slider to them."""

import pytest
import torch

from sparsity_lab.pruning import plots

ROWS = [
    {"sparsity": 0.0, "accuracy": 0.97, "finetuned_accuracy": 0.97},
    {"sparsity": 0.9, "accuracy": 0.40, "finetuned_accuracy": 0.95},
]


def test_accuracy_curve_carries_the_rows_in_percent():
    fig = plots.accuracy_vs_sparsity(ROWS, highlight=(0.9, 0.4))
    one_shot, finetuned, selected = fig.data
    assert list(one_shot.x) == [0.0, 90.0] and list(one_shot.y) == pytest.approx([97.0, 40.0])
    assert list(finetuned.y) == pytest.approx([97.0, 95.0])
    assert selected.name == "selected" and list(selected.x) == [90.0]


def test_mask_heatmap_shows_kept_entries_as_ones():
    mask = torch.tensor([[True, False], [False, True]])
    fig = plots.mask_heatmap(mask)
    assert fig.data[0].z.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_explorer_updates_with_the_slider():
    from sparsity_lab.course.data import load_digits
    from sparsity_lab.course.train import trained_mlp
    from sparsity_lab.pruning.widgets import magnitude_pruning_explorer

    model = trained_mlp(seed=0, epochs=3, hidden=32, progress=False)
    box = magnitude_pruning_explorer(model, load_digits(), ROWS, layer="net.1")
    slider, status, errors, figures = box.children
    curve, heatmap = figures.children
    slider.value = 0.9
    assert "90%" in status.value
    assert list(curve.data[-1].x) == [90.0]
    assert heatmap.data[0].z.mean() == pytest.approx(0.1, abs=0.01)
