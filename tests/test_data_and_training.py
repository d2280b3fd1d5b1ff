"""The digits split is fixed and the seeded models reach their stated accuracy quickly on a CPU."""

import time

import pytest
import torch

from sparsity_lab.course.data import load_digits
from sparsity_lab.course.models import DigitsCNN, DigitsMLP
from sparsity_lab.course.train import evaluate, fit, trained_mlp


def test_split_is_fixed_stratified_and_scaled():
    a, b = load_digits(), load_digits()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1347, 64) and a.x_test.shape == (450, 64)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert torch.bincount(a.y_test).min() >= 43, "stratified: every class keeps about a quarter of its ~180 images"
    assert load_digits(images=True).x_train.shape == (1347, 1, 8, 8)


def test_mlp_reaches_95_percent_in_under_a_minute():
    start = time.perf_counter()
    model = trained_mlp(seed=0, progress=False)
    elapsed = time.perf_counter() - start
    data = load_digits()
    _, accuracy = evaluate(model, data.x_test, data.y_test)
    assert accuracy >= 0.95, f"seeded MLP reached only {accuracy:.3f}"
    assert elapsed < 60, f"training took {elapsed:.1f} s"


def test_training_is_reproducible_from_the_seed():
    first = trained_mlp(seed=3, epochs=2, hidden=32, progress=False)
    second = trained_mlp(seed=3, epochs=2, hidden=32, progress=False)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cnn_reaches_95_percent_in_under_a_minute():
    torch.manual_seed(0)
    data = load_digits(images=True)
    model = DigitsCNN(channels=16)
    start = time.perf_counter()
    history = fit(model, data, epochs=15, seed=0, progress=False)
    assert time.perf_counter() - start < 60
    assert history.test_accuracy[-1] >= 0.95, f"seeded CNN reached only {history.test_accuracy[-1]:.3f}"


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation must be one of"):
        DigitsMLP(activation="swish")
