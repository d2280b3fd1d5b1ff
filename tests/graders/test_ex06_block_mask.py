"""Grader for exercise 06 (block norms and a block mask at a target sparsity)."""

import pytest
import torch

EXERCISE = "ex06_block_mask"


def test_block_norms_shape_and_values(exercise):
    weight = torch.arange(32, dtype=torch.float32).reshape(4, 8)
    norms = exercise.block_norms(weight, 2)
    assert norms.shape == (2, 4)
    expected = weight[0:2, 2:4].norm()
    assert norms[0, 1].item() == pytest.approx(expected.item()), "entry [i, j] is the norm of block (i, j)"


def test_block_norms_match_a_loop(exercise):
    weight = torch.randn(12, 18)
    norms = exercise.block_norms(weight, 3)
    for i in range(4):
        for j in range(6):
            assert norms[i, j].item() == pytest.approx(weight[3 * i:3 * i + 3, 3 * j:3 * j + 3].norm().item(), rel=1e-5)


def test_block_norms_refuse_shapes_that_are_not_whole_blocks(exercise):
    with pytest.raises(ValueError):
        exercise.block_norms(torch.randn(8, 10), 4)


@pytest.mark.parametrize("shape, bs", [((16, 24), 4), ((8, 8), 8), ((6, 9), 3)])
def test_mask_is_boolean_shaped_like_the_weight(exercise, shape, bs):
    mask = exercise.block_mask(torch.randn(shape), bs, 0.5)
    assert mask.dtype == torch.bool and mask.shape == shape


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_drops_exactly_the_requested_number_of_whole_blocks(exercise, sparsity):
    weight = torch.randn(32, 40)
    mask = exercise.block_mask(weight, 8, sparsity)
    blocks = mask.reshape(4, 8, 5, 8).permute(0, 2, 1, 3).reshape(20, 64)
    assert bool((blocks.all(1) | ~blocks.any(1)).all()), "every block must be kept or dropped as a whole"
    assert int((~blocks.any(1)).sum()) == round(sparsity * 20)


def test_keeps_the_blocks_with_the_largest_norms(exercise):
    weight = torch.randn(24, 24) * 0.01
    weight[8:16, 16:24] += 5.0  # one strong block
    weight[0:8, 0:8] += 3.0  # and a second one
    mask = exercise.block_mask(weight, 8, 7 / 9)
    assert mask[8:16, 16:24].all() and mask[0:8, 0:8].all()
    assert int(mask.sum()) == 2 * 64


def test_uses_the_norm_not_the_signed_sum(exercise):
    weight = torch.ones(4, 8)
    weight[:, 0:4] = -10.0  # large negative block
    mask = exercise.block_mask(weight, 4, 0.5)
    assert mask[:, 0:4].all() and not mask[:, 4:8].any()


def test_ties_keep_the_earlier_block(exercise):
    mask = exercise.block_mask(torch.ones(4, 8), 2, 0.5)
    kept_blocks = mask[::2, ::2]
    assert kept_blocks.tolist() == [[True, True, True, True], [False, False, False, False]]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
def test_rejects_sparsity_outside_unit_interval(exercise, bad):
    with pytest.raises(ValueError):
        exercise.block_mask(torch.randn(8, 8), 4, bad)


def test_does_not_modify_the_weight(exercise):
    weight = torch.randn(16, 16)
    before = weight.clone()
    exercise.block_mask(weight, 4, 0.5)
    assert torch.equal(weight, before)


def test_agrees_with_the_library(exercise):
    from sparsity_lab.block.pruning import block_mask, block_scores

    weight = torch.randn(48, 64)
    assert torch.allclose(exercise.block_norms(weight, 16), block_scores(weight, 16, "l2"))
    assert torch.equal(exercise.block_mask(weight, 16, 0.6), block_mask(weight, 16, 0.6))
