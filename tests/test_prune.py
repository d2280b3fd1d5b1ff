"""Masks: exact sparsity, validation, and parametrize-based attachment that survives training."""

import pytest
import torch
from torch import nn

from sparsity_lab import prune


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_magnitude_mask_drops_exactly_the_requested_count(sparsity):
    weight = torch.randn(50, 40)
    mask = prune.magnitude_mask(weight, sparsity)
    assert int((~mask).sum()) == round(sparsity * weight.numel())
    if sparsity > 0:
        assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


def test_ties_are_broken_by_position():
    mask = prune.magnitude_mask(torch.ones(6), 0.5)
    assert mask.tolist() == [False, False, False, True, True, True]


@pytest.mark.parametrize("bad", [-0.01, 1.0, 2.0, float("nan")])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="sparsity must be a fraction in"):
        prune.magnitude_mask(torch.randn(4), bad)


def test_non_finite_scores_are_rejected_with_their_position():
    scores = torch.ones(3, 3)
    scores[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(first at index \[1, 2\]\)"):
        prune.topk_mask(scores, 0.5)


def test_mask_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="mask has shape"):
        prune.apply_mask(nn.Linear(4, 3), torch.ones(4, 3, dtype=torch.bool))


def test_masked_weights_stay_zero_through_training_and_after_make_permanent():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    mask = prune.magnitude_mask(layer.weight, 0.75)
    prune.apply_mask(layer, mask)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(5):
        loss = layer(torch.randn(16, 8)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.all(layer.weight[~mask] == 0)
    assert layer.parametrizations.weight.original[mask].ne(0).all()
    prune.make_permanent(layer)
    assert isinstance(layer.weight, nn.Parameter)
    assert prune.sparsity_of(layer.weight) == pytest.approx(0.75)


def test_prune_by_magnitude_masks_every_prunable_layer():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    prune.prune_by_magnitude(model, 0.5)
    assert [prune.sparsity_of(m.weight) for m in prune.prunable_layers(model).values()] == [0.5, 0.5]
