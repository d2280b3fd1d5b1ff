"""Exercise 03: CSR, the compressed sparse row format, and its matrix-vector product.

Lecture: lectures/03_formats.ipynb. Grade with `sparsity-lab grade ex03`.

CSR stores the non-zero entries of a (rows, cols) matrix row by row, in three arrays:
- `values` (nnz,): the non-zero entries, row by row, left to right within each row;
- `col_indices` (nnz,): the column of each of them;
- `crow_indices` (rows + 1,): row pointers: row i's entries are `values[crow_indices[i]:crow_indices[i + 1]]`,
  so `crow_indices[0] == 0`, `crow_indices[-1] == nnz`, and an empty row repeats the pointer before it.

For example [[1, 0, 2], [0, 0, 0], [0, 3, 0]] has crow_indices [0, 2, 2, 3], col_indices [0, 2, 1] and
values [1, 2, 3]. Write:

`csr_from_dense(dense)` -> (crow_indices, col_indices, values) for a 2-D tensor `dense`:
- an entry is stored when it is != 0 (so -0.0, which equals 0, is not);
- both index arrays are torch.int64; `values` keeps the dtype of `dense`;
- an all-zero matrix gives crow_indices of rows + 1 zeros and empty col_indices and values;
- raises ValueError when `dense` is not 2-D; does not modify `dense`.

`csr_matvec(crow_indices, col_indices, values, x)` -> y = A @ x, where A is the CSR matrix and x a vector with one
entry per column of A:
- y has one entry per row (len(crow_indices) - 1), in the dtype of `values`; a row with no entry gives 0;
- works with int64 and with int32 index arrays; does not modify its inputs.

Hints: `dense != 0` and `.nonzero()` list the stored positions row by row; counting them per row (`.sum(1)`) and a
`cumsum` give crow_indices. For the product, `torch.repeat_interleave(torch.arange(rows), crow_indices.diff())`
gives every entry's row, `values * x[col_indices]` the products, and `torch.zeros(rows).index_add_(0, row,
products)` sums them per row. A Python loop over the rows works too: try it without one.
"""

import torch


def csr_from_dense(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR arrays (crow_indices, col_indices, values) of the 2-D tensor `dense` (int64 indices)."""
    raise NotImplementedError("ex03: write csr_from_dense")


def csr_matvec(crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               x: torch.Tensor) -> torch.Tensor:
    """y = A @ x for the CSR matrix A = (crow_indices, col_indices, values) and the vector x."""
    raise NotImplementedError("ex03: write csr_matvec")
