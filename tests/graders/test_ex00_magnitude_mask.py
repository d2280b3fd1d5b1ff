"""Grader for exercise 00 (magnitude mask at a target sparsity)."""

import pytest
import torch

EXERCISE = "ex00_magnitude_mask"

SHAPES = [(7,), (16, 24), (8, 3, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_returns_a_boolean_mask_shaped_like_the_weight(exercise, shape):
    weight = torch.randn(shape)
    mask = exercise.magnitude_mask(weight, 0.5)
    assert mask.dtype == torch.bool, f"the mask should be torch.bool, got {mask.dtype}"
    assert mask.shape == weight.shape


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_prunes_exactly_the_requested_number(exercise, sparsity):
    weight = torch.randn(40, 25)
    mask = exercise.magnitude_mask(weight, sparsity)
    expected = round(sparsity * weight.numel())
    assert int((~mask).sum()) == expected, f"at sparsity {sparsity} expected {expected} pruned entries"


def test_prunes_the_smallest_magnitudes(exercise):
    weight = torch.randn(32, 32)
    mask = exercise.magnitude_mask(weight, 0.7)
    kept, dropped = weight.abs()[mask], weight.abs()[~mask]
    assert kept.min() >= dropped.max(), "every kept |w| must be at least every pruned |w|"


def test_uses_magnitude_not_signed_value(exercise):
    weight = torch.tensor([-10.0, 0.1, 5.0, -0.2])
    mask = exercise.magnitude_mask(weight, 0.5)
    assert mask.tolist() == [True, False, True, False], "large negative weights must be kept"


def test_does_not_modify_the_weight(exercise):
    weight = torch.randn(10, 10)
    before = weight.clone()
    exercise.magnitude_mask(weight, 0.5)
    assert torch.equal(weight, before)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_rejects_sparsity_outside_unit_interval(exercise, bad):
    with pytest.raises(ValueError):
        exercise.magnitude_mask(torch.randn(4, 4), bad)


def test_agrees_with_the_library(exercise):
    from sparsity_lab.pruning.prune import magnitude_mask

    weight = torch.randn(64, 48)
    assert torch.equal(exercise.magnitude_mask(weight, 0.6), magnitude_mask(weight, 0.6))
