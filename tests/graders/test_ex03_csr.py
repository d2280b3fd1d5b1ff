"""Grader for exercise 03 (CSR arrays from a dense matrix, and the CSR matrix-vector product)."""

import pytest
import torch

EXERCISE = "ex03_csr"

EXAMPLE = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])


def _sparse(rows: int, cols: int, density: float, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random matrix with about `density` of its entries non-zero (normal values, so none is exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows, cols, generator=generator) < density
    return torch.where(keep, torch.randn(rows, cols, generator=generator, dtype=torch.float64), 0.0).to(dtype)


def test_the_example_from_the_exercise(exercise):
    crow, col, values = exercise.csr_from_dense(EXAMPLE)
    assert crow.tolist() == [0, 2, 2, 3], "row pointers: row 0 has 2 entries, row 1 none, row 2 one"
    assert col.tolist() == [0, 2, 1]
    assert values.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int32])
def test_index_arrays_are_int64_and_values_keep_the_dtype(exercise, dtype):
    crow, col, values = exercise.csr_from_dense(EXAMPLE.to(dtype))
    assert crow.dtype == torch.int64 and col.dtype == torch.int64, f"indices: {crow.dtype}, {col.dtype}"
    assert values.dtype == dtype


def test_empty_rows_repeat_the_pointer(exercise):
    dense = torch.zeros(5, 4)
    dense[1, 3], dense[3, 0], dense[3, 2] = 1.0, 2.0, 3.0
    crow, col, values = exercise.csr_from_dense(dense)
    assert crow.tolist() == [0, 0, 1, 1, 3, 3], "rows 0, 2 and 4 are empty"
    assert col.tolist() == [3, 0, 2] and values.tolist() == [1.0, 2.0, 3.0]


def test_all_zero_matrix(exercise):
    crow, col, values = exercise.csr_from_dense(torch.zeros(3, 7))
    assert crow.tolist() == [0, 0, 0, 0]
    assert col.shape == (0,) and values.shape == (0,)


def test_negative_zero_is_not_stored(exercise):
    crow, col, values = exercise.csr_from_dense(torch.tensor([[-0.0, 5.0]]))
    assert crow.tolist() == [0, 1] and col.tolist() == [1]


@pytest.mark.parametrize(("rows", "cols", "density"), [(7, 11, 0.3), (16, 16, 0.05), (1, 9, 1.0), (12, 5, 0.7)])
def test_agrees_with_the_library(exercise, rows, cols, density):
    from sparsity_lab.formats.matrices import CSR

    dense = _sparse(rows, cols, density, seed=rows)
    crow, col, values = exercise.csr_from_dense(dense)
    ours = CSR.from_dense(dense)
    assert torch.equal(crow, ours.crow_indices) and torch.equal(col, ours.col_indices)
    assert torch.equal(values, ours.values)
    rebuilt = CSR(crow, col, values, (rows, cols)).to_dense()  # CSR(...) says what is wrong with malformed arrays
    assert torch.equal(rebuilt, dense), "CSR(crow, col, values, shape) must give the matrix back"


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_rejects_a_tensor_that_is_not_a_matrix(exercise, shape):
    with pytest.raises(ValueError):
        exercise.csr_from_dense(torch.ones(shape))


def test_does_not_modify_the_matrix(exercise):
    dense = _sparse(6, 6, 0.5)
    before = dense.clone()
    exercise.csr_from_dense(dense)
    assert torch.equal(dense, before)


def test_matvec_on_the_example(exercise):
    crow, col, values = torch.tensor([0, 2, 2, 3]), torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 3.0])
    y = exercise.csr_matvec(crow, col, values, torch.tensor([1.0, 10.0, 100.0]))
    assert y.tolist() == [201.0, 0.0, 30.0], "row 0: 1*1 + 2*100; row 1 is empty; row 2: 3*10"


def test_matvec_gives_zero_for_empty_rows_and_all_zero_matrices(exercise):
    crow, col, values = torch.tensor([0, 0, 1, 1]), torch.tensor([2]), torch.tensor([4.0])
    assert exercise.csr_matvec(crow, col, values, torch.ones(3)).tolist() == [0.0, 4.0, 0.0]
    empty = exercise.csr_matvec(torch.zeros(5, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                                torch.zeros(0), torch.ones(3))
    assert empty.tolist() == [0.0] * 4, "an all-zero 4-row matrix times anything is 4 zeros"


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize(("rows", "cols", "density"), [(9, 13, 0.3), (32, 8, 0.05), (5, 5, 1.0)])
def test_matvec_matches_dense(exercise, index_dtype, rows, cols, density):
    from sparsity_lab.formats.matrices import CSR

    dense = _sparse(rows, cols, density, seed=cols)
    csr = CSR.from_dense(dense, index_dtype=index_dtype)
    x = torch.randn(cols, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = exercise.csr_matvec(csr.crow_indices, csr.col_indices, csr.values, x)
    assert y.shape == (rows,) and y.dtype == torch.float64
    torch.testing.assert_close(y, dense @ x, rtol=1e-12, atol=1e-12)


def test_matvec_keeps_the_dtype_and_is_exact_on_integers(exercise):
    dense = torch.tensor([[2, 0, -1], [0, 0, 0], [7, 3, 0]], dtype=torch.int32)
    crow, col = torch.tensor([0, 2, 2, 4]), torch.tensor([0, 2, 0, 1])
    values = torch.tensor([2, -1, 7, 3], dtype=torch.int32)
    x = torch.tensor([1, 2, 3], dtype=torch.int32)
    y = exercise.csr_matvec(crow, col, values, x)
    assert y.dtype == torch.int32 and torch.equal(y, dense @ x)


def test_your_two_functions_work_together(exercise):
    dense = _sparse(20, 30, 0.2, seed=7)
    x = torch.randn(30, dtype=torch.float64)
    y = exercise.csr_matvec(*exercise.csr_from_dense(dense), x)
    torch.testing.assert_close(y, dense @ x, rtol=1e-12, atol=1e-12)


def test_matvec_does_not_modify_its_inputs(exercise):
    arrays = [torch.tensor([0, 1, 3]), torch.tensor([1, 0, 1]), torch.tensor([1.0, 2.0, 3.0]), torch.ones(2)]
    before = [a.clone() for a in arrays]
    exercise.csr_matvec(*arrays)
    assert all(torch.equal(a, b) for a, b in zip(arrays, before, strict=True))
