"""Lecture 01's figures carry their data; the saliency explorer reacts to its controls."""

import pytest
import torch

from sparsity_lab.pruning import obd_plots as plots

ROWS = [{"deleted": 0, "loss": 1e-3, "predicted": 1e-3, "taylor": 1e-3, "retrained_loss": 1e-3, "sparsity": 0.0},
        {"deleted": 10, "loss": 1e-1, "predicted": 2e-3, "taylor": 3e-3, "retrained_loss": 1e-2, "sparsity": 0.5}]


def test_deletion_curves_one_trace_per_method_on_a_log_axis():
    fig = plots.deletion_curves({"OBD": ROWS, "magnitude": ROWS}, key="retrained_loss")
    assert [t.name for t in fig.data] == ["OBD", "magnitude"]
    assert list(fig.data[0].y) == [1e-3, 1e-2] and fig.layout.yaxis.type == "log"


def test_predicted_vs_actual_has_three_curves():
    fig = plots.predicted_vs_actual(ROWS)
    assert [t.name for t in fig.data] == ["actual", "OBD predicted", "full 2nd-order Taylor"]
    assert list(fig.data[1].y) == [1e-3, 2e-3]


def test_estimator_figures():
    exact = {"a": torch.tensor([1.0, 2.0])}
    fig = plots.estimator_scatter({"ggn": {"a": torch.tensor([1.5, 2.5])}}, exact)
    assert list(fig.data[0].y) == [1.5, 2.5] and fig.data[-1].name == "y = x"
    cost = plots.estimator_cost([{"method": "ggn", "seconds": 0.01, "relative_error": 0.1, "correlation": 0.99}])
    assert cost.data[0].text[0].startswith("ggn") and cost.layout.xaxis.type == "log"
    conv = plots.hutchinson_convergence([{"samples": 1, "relative_error": 1.0},
                                         {"samples": 100, "relative_error": 0.1}])
    assert list(conv.data[1].y) == pytest.approx([1.0, 0.1])


def test_sparsity_comparison_in_percent():
    fig = plots.sparsity_comparison({"OBD": ROWS})
    assert list(fig.data[0].x) == [0.0, 50.0]


def test_layer_masks_one_heatmap_per_layer_titled_with_sparsity():
    fig = plots.layer_masks({"a": torch.tensor([[True, False]]), "b": torch.ones(2, 2, dtype=torch.bool)})
    assert len(fig.data) == 2 and fig.data[0].z.tolist() == [[1.0, 0.0]]
    assert [a.text for a in fig.layout.annotations] == ["a 50% pruned", "b 0% pruned"]


def test_saliency_explorer_reacts_to_method_and_sparsity():
    from sparsity_lab.course.data import load_digits
    from sparsity_lab.course.train import trained_mlp
    from sparsity_lab.pruning.obd_widgets import saliency_explorer

    model = trained_mlp(seed=0, epochs=2, hidden=16, progress=False)
    box = saliency_explorer(model, load_digits(), methods=("magnitude", "obd-ggn"))
    (method, slider), status, figure = box.children[0].children, box.children[1], box.children[3]
    slider.value = 0.5
    assert "magnitude" in status.value and "50%" in status.value
    method.value = "obd-ggn"
    assert "obd-ggn" in status.value and "scores took" in status.value
    kept = sum(float(t.z.sum()) for t in figure.data)
    assert kept == pytest.approx(0.5 * (64 * 16 + 16 * 16 + 16 * 10), abs=1)
