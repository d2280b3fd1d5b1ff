"""Solution to exercise 06: a block mask from block scores."""

import torch


def block_norms(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """L2 norm of each block_size x block_size block of `weight`, shape (R / bs, C / bs)."""
    rows, cols = weight.shape
    if rows % block_size or cols % block_size:
        raise ValueError(f"weight shape {tuple(weight.shape)} is not a multiple of block_size {block_size}")
    blocks = weight.detach().float().reshape(rows // block_size, block_size, cols // block_size, block_size)
    return blocks.pow(2).sum(dim=(1, 3)).sqrt()


def block_mask(weight: torch.Tensor, block_size: int, sparsity: float) -> torch.Tensor:
    """Boolean element mask keeping the highest-norm blocks of `weight` (True = keep)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    norms = block_norms(weight, block_size)
    flat = norms.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    # A stable descending sort keeps row-major order among equal norms, so the earlier block is kept.
    keep[torch.argsort(flat, descending=True, stable=True)[: flat.numel() - round(sparsity * flat.numel())]] = True
    keep = keep.reshape(norms.shape)
    return keep.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
