"""Grader for exercise 05 (2:4 compression in the simple layout: values + packed 2-bit metadata)."""

import pytest
import torch

from sparsity_lab.semi24 import layout as semi24

EXERCISE = "ex05_semi24"


def sparse_matrix(rows: int, cols: int, dtype: torch.dtype = torch.float32, fewer: bool = False,
                  seed: int = 0) -> torch.Tensor:
    """A random 2:4 matrix (exactly two non-zeros per group, or fewer when `fewer`)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g) * 20
    weight = weight.to(dtype) if dtype.is_floating_point else weight.round().clamp(-127, 127).to(dtype)
    weight = torch.where(weight == 0, torch.ones((), dtype=dtype), weight)  # no accidental zeros
    mask = semi24.prune(torch.rand(rows, cols, generator=g))
    if fewer:
        mask &= torch.rand(rows, cols, generator=g) < 0.5
        mask[1] = False
    return torch.where(mask, weight, torch.zeros((), dtype=dtype))


def test_shapes_and_dtypes(exercise):
    dense = sparse_matrix(6, 16, torch.float16)
    values, meta = exercise.compress_simple(dense)
    assert values.shape == (6, 8) and values.dtype == torch.float16, "values: (rows, cols // 2), dense's dtype"
    assert meta.shape == (6, 2) and meta.dtype == torch.uint8, "meta: uint8 (rows, ceil(cols / 8))"


def test_the_docstring_example(exercise):
    values, meta = exercise.compress_simple(torch.tensor([[5.0, 0, 7, 0, 0, 0, 0, 9]]))
    assert values.tolist() == [[5.0, 7.0, 0.0, 9.0]]
    assert meta.tolist() == [[0b1110_1000]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8])
def test_full_groups_match_the_library(exercise, dtype):
    dense = sparse_matrix(8, 32, dtype, seed=1)
    values, meta = exercise.compress_simple(dense)
    ref_values, ref_meta = semi24.compress(dense, layout="simple")
    assert torch.equal(values, ref_values), "kept values, lower position first, group after group"
    assert torch.equal(meta, ref_meta), "nibble i0 | i1 << 2; group 2j in the low half of byte j"


def test_groups_with_fewer_than_two_non_zeros_fill_from_positions_2_and_3(exercise):
    dense = sparse_matrix(8, 32, fewer=True, seed=2)
    values, meta = exercise.compress_simple(dense)
    ref_values, ref_meta = semi24.compress(dense, layout="simple")
    assert torch.equal(meta, ref_meta), "a group with fewer than two non-zeros fills its slots from positions 2, 3"
    assert torch.equal(values, ref_values)


def test_odd_number_of_groups_leaves_the_last_high_nibble_zero(exercise):
    dense = sparse_matrix(3, 12, seed=3)
    values, meta = exercise.compress_simple(dense)
    assert meta.shape == (3, 2) and (meta[:, 1] >> 4).eq(0).all()
    assert torch.equal(meta, semi24.compress(dense, layout="simple")[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_round_trip_is_exact(exercise, dtype):
    dense = sparse_matrix(5, 20, dtype, fewer=True, seed=4)
    back = exercise.decompress_simple(*exercise.compress_simple(dense))
    assert back.dtype == dtype and torch.equal(back, dense)


def test_decompress_reads_the_librarys_format(exercise):
    dense = sparse_matrix(7, 28, fewer=True, seed=5)
    values, meta = semi24.compress(dense, layout="simple")
    assert torch.equal(exercise.decompress_simple(values, meta), dense)


def test_rejects_a_matrix_that_is_not_2_to_4(exercise):
    dense = sparse_matrix(4, 16, seed=6)
    dense[2, 4:7] = 1.0
    with pytest.raises(ValueError, match="2"):
        exercise.compress_simple(dense)


@pytest.mark.parametrize("shape", [(4, 6), (16,), (2, 4, 4)])
def test_rejects_bad_shapes(exercise, shape):
    with pytest.raises(ValueError):
        exercise.compress_simple(torch.zeros(shape))


def test_does_not_modify_the_input(exercise):
    dense = sparse_matrix(4, 16, fewer=True, seed=7)
    before = dense.clone()
    exercise.compress_simple(dense)
    assert torch.equal(dense, before)
