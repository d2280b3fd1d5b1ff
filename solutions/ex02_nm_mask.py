"""Solution to exercise 02: an N:M mask, the pattern of sparse tensor cores."""

import torch


def _groups(tensor: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """`tensor` with `dim` moved last and cut into groups of m: shape (..., size // m, m)."""
    moved = tensor.movedim(dim, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Boolean mask keeping the n largest-magnitude entries of every m consecutive ones along `dim`."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
    size = weight.shape[dim]
    if size % m:
        raise ValueError(f"weight of shape {tuple(weight.shape)} has size {size} along dim {dim}, not divisible by {m}")
    groups = _groups(weight.detach().abs(), m, dim)
    # Sorting each group ascending puts the m - n smallest magnitudes first: those are dropped.
    drop = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
    return keep.reshape(*keep.shape[:-2], -1).movedim(-1, dim)


def is_nm(tensor: torch.Tensor, n: int, m: int, dim: int = -1) -> bool:
    """Whether every group of m consecutive entries along `dim` has at most n nonzeros (True entries)."""
    if tensor.shape[dim] % m:
        return False
    nonzero = tensor if tensor.dtype == torch.bool else tensor != 0
    return bool((_groups(nonzero, m, dim).sum(-1) <= n).all())
