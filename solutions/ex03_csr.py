"""Solution to exercise 03: CSR, the compressed sparse row format, and its matrix-vector product."""

import torch


def csr_from_dense(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR arrays (crow_indices, col_indices, values) of the 2-D tensor `dense` (int64 indices)."""
    if dense.ndim != 2:
        raise ValueError(f"dense must be 2-D, got shape {tuple(dense.shape)}")
    stored = dense != 0
    crow_indices = torch.zeros(dense.shape[0] + 1, dtype=torch.int64)
    crow_indices[1:] = stored.sum(1).cumsum(0)
    # nonzero() lists positions row-major: rows ascending, columns ascending within a row, as CSR wants.
    col_indices = stored.nonzero()[:, 1]
    return crow_indices, col_indices, dense[stored]


def csr_matvec(crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               x: torch.Tensor) -> torch.Tensor:
    """y = A @ x for the CSR matrix A = (crow_indices, col_indices, values) and the vector x."""
    rows = crow_indices.numel() - 1
    row_of_entry = torch.repeat_interleave(torch.arange(rows), crow_indices.diff().long())
    products = values * x[col_indices.long()]
    return torch.zeros(rows, dtype=values.dtype).index_add_(0, row_of_entry, products)
