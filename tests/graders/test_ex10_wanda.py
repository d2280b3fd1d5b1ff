"""Grader for exercise 10 (Wanda's scores and masks for one linear layer)."""

import pytest
import torch

EXERCISE = "ex10_wanda"

WEIGHT = torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 6.0, -1.0, 1.0]])
X = torch.tensor([[3.0, 0.0, 1.0, 2.0], [4.0, 1.0, 0.0, 0.0]])


def _layer(out_features: int, in_features: int, tokens: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random weight and inputs whose features have very different scales (so activations matter)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    scale = torch.logspace(-1, 1, in_features)[torch.randperm(in_features, generator=generator)]
    return weight, torch.randn(tokens, in_features, generator=generator) * scale


def test_the_worked_example(exercise):
    assert torch.allclose(exercise.wanda_scores(WEIGHT, X), torch.tensor([[5.0, 2.0, 3.0, 8.0], [2.5, 6.0, 1.0, 2.0]]))
    assert exercise.wanda_mask(WEIGHT, X, 0.5).tolist() == [[True, False, False, True], [True, True, False, False]]
    assert exercise.wanda_mask(WEIGHT, X, nm=(1, 2)).tolist() == [[True, False, False, True],
                                                                    [False, True, False, True]]


def test_scores_are_magnitude_times_input_norm(exercise):
    weight, x = _layer(6, 10)
    expected = weight.abs() * x.norm(dim=0)
    scores = exercise.wanda_scores(weight, x)
    assert scores.shape == weight.shape
    assert torch.allclose(scores, expected, rtol=1e-5), "score_ij should be |W_ij| * ||X_j||_2"


def test_scores_treat_every_leading_dimension_as_tokens(exercise):
    weight, x = _layer(5, 8, tokens=24, seed=1)
    batched = x.reshape(4, 6, 8)  # (batch, sequence, features): 24 tokens
    assert torch.allclose(exercise.wanda_scores(weight, batched), exercise.wanda_scores(weight, x), rtol=1e-5)


def test_scores_agree_with_the_library(exercise):
    from sparsity_lab.pruning.saliency import wanda

    weight, x = _layer(12, 16, seed=2)
    linear = torch.nn.Linear(16, 12, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    assert torch.allclose(exercise.wanda_scores(weight, x), wanda(linear, x)[""], rtol=1e-5)


def test_scores_reject_inputs_of_the_wrong_width(exercise):
    weight, x = _layer(4, 8)
    with pytest.raises(ValueError):
        exercise.wanda_scores(weight, x[:, :6])


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_mask_drops_the_same_count_in_every_row(exercise, sparsity):
    weight, x = _layer(7, 16, seed=3)
    mask = exercise.wanda_mask(weight, x, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    dropped = (~mask).sum(dim=1)
    assert (dropped == round(sparsity * 16)).all(), f"each row should drop {round(sparsity * 16)}; got {dropped}"


def test_mask_keeps_the_highest_scores_of_each_row(exercise):
    weight, x = _layer(9, 20, seed=4)
    scores, mask = weight.abs() * x.norm(dim=0), exercise.wanda_mask(weight, x, 0.6)
    for row_scores, row_mask in zip(scores, mask, strict=True):
        assert row_scores[row_mask].min() > row_scores[~row_mask].max()


def test_mask_compares_within_rows_not_across_the_layer(exercise):
    weight = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.1, 0.2, 0.3, 0.4]])
    mask = exercise.wanda_mask(weight, torch.ones(3, 4), 0.5)
    assert mask.tolist() == [[False, False, True, True], [False, False, True, True]], \
        "a layer-wide ranking would empty the second row; Wanda prunes every output row by the same share"


def test_mask_follows_the_activations_not_only_the_weights(exercise):
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    x = torch.tensor([[100.0, 1.0, 1.0, 1.0]])  # input 0 is large: its small weight still matters most
    assert exercise.wanda_mask(weight, x, 0.5).tolist() == [[True, False, False, True]]


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_keeps_exactly_n_highest_of_every_group(exercise, n, m):
    weight, x = _layer(6, 4 * m, seed=5)
    scores, mask = weight.abs() * x.norm(dim=0), exercise.wanda_mask(weight, x, nm=(n, m))
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    groups, kept = scores.reshape(-1, m), mask.reshape(-1, m)
    assert (kept.sum(1) == n).all(), f"every group of {m} inputs should keep exactly {n}"
    for g, k in zip(groups, kept, strict=True):
        assert g[k].min() > g[~k].max()


def test_masks_agree_with_the_library(exercise):
    from sparsity_lab.transformer.study import wanda_layer_mask

    weight, x = _layer(16, 32, seed=6)
    linear = torch.nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    assert torch.equal(exercise.wanda_mask(weight, x, 0.5), wanda_layer_mask(linear, x, "unstructured"))
    assert torch.equal(exercise.wanda_mask(weight, x, nm=(2, 4)), wanda_layer_mask(linear, x, "2:4"))


@pytest.mark.parametrize("nm", [(4, 4), (0, 4), (3, 2), (2, 3)])
def test_nm_rejects_impossible_requests(exercise, nm):
    weight, x = _layer(4, 8)
    with pytest.raises(ValueError):
        exercise.wanda_mask(weight, x, nm=nm)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_mask_rejects_sparsities_outside_0_1(exercise, sparsity):
    weight, x = _layer(4, 8)
    with pytest.raises(ValueError):
        exercise.wanda_mask(weight, x, sparsity)


def test_nothing_is_modified(exercise):
    weight, x = _layer(4, 8)
    before = weight.clone(), x.clone()
    exercise.wanda_mask(weight, x, 0.5)
    exercise.wanda_mask(weight, x, nm=(2, 4))
    assert torch.equal(weight, before[0]) and torch.equal(x, before[1])
