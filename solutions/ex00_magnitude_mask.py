"""Solution to exercise 00: a magnitude mask at a target sparsity."""

import torch


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the largest-magnitude entries of `weight` (True = keep)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    magnitudes = weight.detach().abs().reshape(-1)
    n_prune = round(sparsity * magnitudes.numel())
    keep = torch.zeros_like(magnitudes, dtype=torch.bool)
    # a stable descending sort puts the largest magnitudes first (ties: the lower index first); keep those
    keep[torch.argsort(magnitudes, descending=True, stable=True)[: magnitudes.numel() - n_prune]] = True
    return keep.reshape(weight.shape)
