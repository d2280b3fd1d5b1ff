"""Grader for exercise 02 (N:M mask along a dimension, and the N:M check)."""

import pytest
import torch

EXERCISE = "ex02_nm_mask"

NM = [(2, 4), (1, 4), (4, 8), (3, 5)]


def _weight(*shape: int, seed: int = 0) -> torch.Tensor:
    """Distinct values of both signs (no ties inside a group)."""
    torch.manual_seed(seed)
    return torch.randn(*shape)


@pytest.mark.parametrize(("n", "m"), NM)
def test_keeps_exactly_n_of_every_m_along_the_last_dim(exercise, n, m):
    weight = _weight(6, 4 * m)
    mask = exercise.nm_mask(weight, n, m)
    assert mask.dtype == torch.bool, f"the mask should be torch.bool, got {mask.dtype}"
    assert mask.shape == weight.shape
    per_group = mask.reshape(6, 4, m).sum(-1)
    assert (per_group == n).all(), f"every group of {m} should keep exactly {n}; got counts {per_group.tolist()}"


@pytest.mark.parametrize(("n", "m"), NM)
def test_keeps_the_largest_magnitudes_in_each_group(exercise, n, m):
    weight = _weight(5, 3 * m, seed=1)
    mask = exercise.nm_mask(weight, n, m)
    groups, kept = weight.abs().reshape(-1, m), mask.reshape(-1, m)
    for g, k in zip(groups, kept, strict=True):
        assert g[k].min() > g[~k].max(), f"group {g.tolist()}: kept |w| must all exceed dropped |w|"


def test_uses_magnitude_not_signed_value(exercise):
    weight = torch.tensor([[-9.0, 0.5, 3.0, -0.1]])
    assert exercise.nm_mask(weight, 2, 4).tolist() == [[True, False, True, False]]


def test_groups_along_the_dim_asked_for(exercise):
    weight = _weight(8, 3, seed=2)
    mask = exercise.nm_mask(weight, 2, 4, dim=0)
    assert mask.shape == weight.shape
    assert (mask.reshape(2, 4, 3).sum(1) == 2).all(), "with dim=0, groups are 4 consecutive rows of each column"
    assert torch.equal(mask, exercise.nm_mask(weight.T.contiguous(), 2, 4).T)


def test_works_on_a_conv_weight_along_input_channels(exercise):
    weight = _weight(4, 8, 3, 3, seed=3)
    mask = exercise.nm_mask(weight, 1, 4, dim=1)
    assert mask.shape == weight.shape
    assert (mask.movedim(1, -1).reshape(-1, 4).sum(-1) == 1).all()


@pytest.mark.parametrize(("n", "m"), NM)
def test_hits_sparsity_one_minus_n_over_m(exercise, n, m):
    mask = exercise.nm_mask(_weight(16, 8 * m, seed=4), n, m)
    assert 1 - mask.float().mean().item() == pytest.approx(1 - n / m)


@pytest.mark.parametrize(("shape", "n", "m"), [((4, 10), 2, 4), ((4, 8), 4, 4), ((4, 8), 0, 4), ((4, 8), 5, 4)])
def test_rejects_impossible_requests(exercise, shape, n, m):
    with pytest.raises(ValueError):
        exercise.nm_mask(torch.randn(shape), n, m)


def test_does_not_modify_the_weight(exercise):
    weight = _weight(4, 8)
    before = weight.clone()
    exercise.nm_mask(weight, 2, 4)
    assert torch.equal(weight, before)


def test_agrees_with_the_library(exercise):
    from sparsity_lab.patterns.masks import nm_mask

    weight = _weight(32, 64, seed=5)
    for n, m, dim in [(2, 4, -1), (1, 4, 0), (4, 8, 1)]:
        assert torch.equal(exercise.nm_mask(weight, n, m, dim=dim), nm_mask(weight.abs(), n, m, dim=dim))


def test_is_nm_accepts_n_of_m_and_rejects_more(exercise):
    ok = torch.tensor([[1.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert exercise.is_nm(ok, 2, 4) is True
    assert exercise.is_nm(ok, 1, 4) is False, "the first group has 2 nonzeros, more than 1"
    assert exercise.is_nm(torch.ones(2, 8), 2, 4) is False, "a dense tensor is not 2:4"


def test_is_nm_reads_masks_and_dims(exercise):
    mask = torch.tensor([[True, False, False, True]] * 4)
    assert exercise.is_nm(mask, 2, 4) is True
    assert exercise.is_nm(mask, 2, 4, dim=0) is False, "along dim 0 each group of 4 rows holds 4 True"
    assert exercise.is_nm(mask.T, 2, 4, dim=0) is True


def test_is_nm_is_false_when_the_size_is_not_a_multiple_of_m(exercise):
    assert exercise.is_nm(torch.zeros(3, 6), 2, 4) is False


def test_is_nm_holds_for_your_masks(exercise):
    weight = _weight(8, 16, seed=6)
    assert exercise.is_nm(exercise.nm_mask(weight, 2, 4), 2, 4) is True
    assert exercise.is_nm(weight * exercise.nm_mask(weight, 1, 4), 1, 4) is True
