"""Exercise 06: a block mask from block scores.

Lecture: lectures/06_block_sparsity.ipynb. Grade with `sparsity-lab grade ex06`.

Block pruning keeps or drops whole bs x bs blocks, so that a block-sparse kernel can skip the dropped ones.
Write two functions:

`block_norms(weight, block_size)`: the L2 norm of every bs x bs block of a 2-D `weight` of shape (R, C),
as a float tensor of shape (R / bs, C / bs); entry [i, j] is the norm of weight[i*bs:(i+1)*bs, j*bs:(j+1)*bs].
Raise ValueError when R or C is not a multiple of `block_size`.

`block_mask(weight, block_size, sparsity)`: a boolean mask shaped like `weight` (True = keep) that drops
exactly round(sparsity * number_of_blocks) whole blocks, those with the smallest L2 norm; when norms tie, the
block that comes first in row-major block order is kept (the library's one tie rule: the lower index stays).
Raise ValueError when `sparsity` is not in [0, 1). Do not modify `weight`.

Worked example: a 4 x 8 weight of ones has eight 2 x 2 blocks of equal norm; at sparsity 0.5 the mask keeps the
four blocks of the top block-row and drops the four of the bottom one.

Hint: `weight.reshape(R // bs, bs, C // bs, bs)` puts each block's entries on axes 1 and 3;
`repeat_interleave` turns a block mask back into an element mask.
"""

import torch


def block_norms(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """L2 norm of each block_size x block_size block of `weight`, shape (R / bs, C / bs)."""
    raise NotImplementedError("ex06: write block_norms")


def block_mask(weight: torch.Tensor, block_size: int, sparsity: float) -> torch.Tensor:
    """Boolean element mask keeping the highest-norm blocks of `weight` (True = keep)."""
    raise NotImplementedError("ex06: write block_mask")
