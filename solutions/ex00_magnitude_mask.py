"""Solution to exercise 00: a magnitude mask at a target sparsity."""

import torch


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the largest-magnitude entries of `weight` (True = keep)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    magnitudes = weight.detach().abs().reshape(-1)
    n_prune = round(sparsity * magnitudes.numel())
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    # argsort puts the smallest magnitudes first; those are the ones to drop.
    keep[torch.argsort(magnitudes, stable=True)[:n_prune]] = False
    return keep.reshape(weight.shape)
