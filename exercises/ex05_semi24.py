"""Exercise 05: compress a 2:4 sparse matrix to values + 2-bit metadata, and back (the "simple" layout).

Lecture: lectures/05_semi_structured.ipynb. Grade with `sparsity-lab grade ex05`.

A 2-D `dense` matrix is 2:4 sparse when each group of four consecutive entries of a row (columns 4g..4g+3) holds at
most two non-zeros. Write:

`compress_simple(dense) -> (values, meta)`
- `values`: shape (rows, cols // 2), same dtype as `dense`: for each group, its two kept entries, lower position first.
- Each group keeps two positions i0 < i1 (0..3), stored as the 4-bit nibble `i0 | (i1 << 2)`.
  A group with fewer than two non-zeros keeps its non-zeros and fills the free slots from positions 2, then 3
  (skipping one it already keeps): [0, x, 0, 0] keeps (1, 2); [0, 0, 0, x] keeps (2, 3); [0, 0, 0, 0] keeps (2, 3).
  (This is the choice PyTorch's CUTLASS conversion makes.)
- `meta`: torch.uint8, shape (rows, ceil(cols / 8)): byte j of a row holds group 2j in its low four bits and group
  2j + 1 in its high four bits; when a row has an odd number of groups, the last byte's high four bits are 0.
- Raise ValueError if `dense` is not 2-D, if its number of columns is not a multiple of 4, or if some group has
  more than two non-zeros (say which row and columns).
- Do not modify `dense`.

`decompress_simple(values, meta) -> dense`: the exact inverse; entries not kept are 0.

Example: the row [5, 0, 7, 0,  0, 0, 0, 9] has groups keeping (0, 2) -> 0b1000 and (2, 3) -> 0b1110, so
values = [5, 7, 0, 9] and meta = [0b1110_1000] = [232].
"""

import torch


def compress_simple(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2:4 sparse 2-D matrix -> (kept values, packed 2-bit positions), row-major."""
    raise NotImplementedError("ex05: write compress_simple")


def decompress_simple(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """(values, meta) from `compress_simple` -> the dense matrix."""
    raise NotImplementedError("ex05: write decompress_simple")
