"""The OBD reproduction machinery on a tiny converged net: L-BFGS, deletion curves, predictions, estimator tables."""

import pytest
import torch
from torch import nn

from sparsity_lab.course.data import load_digits
from sparsity_lab.pruning import obd_study
from sparsity_lab.pruning.saliency import saliency


@pytest.fixture(scope="module")
def setting():
    d = load_digits()
    x, y = d.x_train[:600].double(), d.y_train[:600]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    start = obd_study.loss_of(model, x, y, "mse")
    history = obd_study.train_lbfgs(model, x, y, loss="mse", steps=300)
    return model, x, y, [start, *history]


def test_lbfgs_drives_the_squared_error_down_and_keeps_masks(setting):
    model, x, y, history = setting
    assert history[-1] < 0.1 * history[0]
    masked = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    masked.load_state_dict(model.state_dict())
    from sparsity_lab import PruneConfig, sparsify_

    sparsify_(masked, PruneConfig(sparsity=0.5))
    obd_study.train_lbfgs(masked, x, y, steps=20)
    assert (masked[0].weight == 0).float().mean() == 0.5


def test_obd_beats_magnitude_beats_random_one_shot(setting):
    model, x, y, _ = setting
    counts = [0, 30, 60, 120]  # of 592 weights: 5%, 10%, 20%
    curves = {m: obd_study.deletion_curve(model, x, y, saliency(model, m, x, y, loss="mse"), counts, "mse")
              for m in ("obd-lecun", "magnitude", "random")}
    for i in range(1, len(counts)):
        assert curves["obd-lecun"][i]["loss"] < curves["magnitude"][i]["loss"] < curves["random"][i]["loss"]
    assert curves["obd-lecun"][0]["loss"] == pytest.approx(obd_study.loss_of(model, x, y, "mse"))


def test_predicted_increase_tracks_small_deletions_and_taylor_adds_the_rest(setting):
    model, x, y, _ = setting
    scores = saliency(model, "obd-lecun", x, y, loss="mse")  # the paper's diagonal (never negative)
    rows = obd_study.deletion_curve(model, x, y, scores, [0, 60, 300], "mse", taylor=True)
    base = rows[0]["base"]
    small = rows[1]
    actual, predicted, taylor = (small[k] - base for k in ("loss", "predicted", "taylor"))
    assert predicted >= 0 and actual == pytest.approx(taylor, rel=0.5, abs=1e-6)
    assert actual == pytest.approx(predicted, rel=0.5, abs=1e-6)
    big = rows[2]
    assert big["loss"] - base > 2 * (big["predicted"] - base), "the quadratic model should fail for large deletions"


def test_retraining_lowers_the_loss_after_deletion(setting):
    model, x, y, _ = setting
    rows = obd_study.deletion_curve(model, x, y, saliency(model, "magnitude"), [200], "mse", retrain_steps=20)
    assert rows[0]["retrained_loss"] < rows[0]["loss"]


def test_iterative_deletion_recomputes_and_only_adds_zeros(setting):
    model, x, y, _ = setting
    rows = obd_study.iterative_deletion_curve(model, x, y, "obd-ggn", [100, 300], loss="mse")
    assert [r["deleted"] for r in rows] == [100, 300]
    with pytest.raises(ValueError, match="counts must increase"):
        obd_study.iterative_deletion_curve(model, x, y, "obd-ggn", [300, 100], loss="mse")


def test_counts_outside_the_model_are_rejected(setting):
    model, x, y, _ = setting
    with pytest.raises(ValueError, match="counts must lie in"):
        obd_study.deletion_curve(model, x, y, saliency(model, "magnitude"), [10_000])


def test_estimator_table_and_hutchinson_convergence(setting):
    model, x, y, _ = setting
    rows = {r["method"]: r for r in obd_study.estimator_table(model, x[:64], y[:64], "mse", hutchinson_samples=50)}
    assert rows["exact"]["relative_error"] == 0.0 and rows["exact"]["correlation"] == pytest.approx(1.0)
    assert rows["ggn"]["correlation"] > 0.99 and rows["lecun"]["correlation"] > 0.95
    assert all(r["seconds"] > 0 for r in rows.values())
    conv = obd_study.hutchinson_convergence(model, x[:64], y[:64], [4, 400], seeds=2)
    assert conv[1]["relative_error"] < conv[0]["relative_error"] / 3
