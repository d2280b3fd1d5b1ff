"""Exercise 00: a magnitude mask at a target sparsity.

Lecture: lectures/00_tour.ipynb. Grade with `sparsity-lab grade ex00`.

Magnitude pruning keeps the weights with the largest absolute value. Write `magnitude_mask` so that:
- it returns a boolean tensor shaped like `weight` (True = keep, False = prune);
- exactly round(sparsity * weight.numel()) entries are False, and they are the smallest |w|;
- it raises ValueError when `sparsity` is not in [0, 1);
- it does not modify `weight`.
"""

import torch


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the largest-magnitude entries of `weight` (True = keep)."""
    raise NotImplementedError("ex00: write magnitude_mask")
