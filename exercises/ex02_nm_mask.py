"""Exercise 02: an N:M mask, the pattern of sparse tensor cores.

Lecture: lectures/02_patterns.ipynb. Grade with `sparsity-lab grade ex02`.

N:M sparsity keeps at most N of every M consecutive weights along one dimension: 2:4 (50%) is what NVIDIA's
sparse tensor cores run; 1:4 and 2:8 are 75%. Write:

`nm_mask(weight, n, m, dim=-1)`, a boolean mask shaped like `weight` (True = keep) that
- splits `weight` along `dim` into groups of `m` consecutive entries (dim=-1 on a Linear weight (out, in): groups
  of inputs, as the hardware needs) and keeps the `n` largest |w| of every group: exactly n per group;
- raises ValueError when 0 < n < m does not hold, or when the size of `weight` along `dim` is not divisible by m;
- does not modify `weight`.
Ties (equal |w| inside a group) may be broken any way you like; the graders use distinct values.

`is_nm(tensor, n, m, dim=-1)`, True when every group of m consecutive entries along `dim` has at most n
nonzero entries (for a boolean mask: at most n True), and False when the size along `dim` is not a multiple of m.

Hint: `tensor.movedim(dim, -1).reshape(..., size // m, m)` puts every group on the last axis; `torch.topk` or
`torch.argsort` along it finds the entries to keep; undo the reshape and the movedim at the end.
"""

import torch


def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Boolean mask keeping the n largest-magnitude entries of every m consecutive ones along `dim`."""
    raise NotImplementedError("ex02: write nm_mask")


def is_nm(tensor: torch.Tensor, n: int, m: int, dim: int = -1) -> bool:
    """Whether every group of m consecutive entries along `dim` has at most n nonzeros (True entries)."""
    raise NotImplementedError("ex02: write is_nm")
