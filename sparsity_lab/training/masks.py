"""Masks for 2:4 training: transposable 4x4 tiles (2:4 along rows and columns), plain row-wise 2:4, and the
(mask, W_s, W_sᵀ) triple one training step uses (on CUDA from one Triton pass, `sparsity_lab.training.kernel`).

A transposable tile keeps two entries in each row *and* each column of every 4x4 tile: one of 90 patterns
(Hubara et al., 2021), the one that keeps the most magnitude, so that W_sᵀ is 2:4 too and the input gradient
dx = dy W_s can run on sparse tensor cores exactly.
"""

from __future__ import annotations

import itertools
from functools import cache

import torch

from sparsity_lab.pruning.prune import magnitudes
from sparsity_lab.semi24.layout import prune as prune_rows

TRANSPOSE_MODES = ("transposable", "recompress")


@cache
def _tile_patterns_cpu() -> torch.Tensor:
    """The 90 4x4 0/1 patterns with exactly two ones in every row and every column, as (90, 16) float64."""
    rows = [r for r in itertools.product((0, 1), repeat=4) if sum(r) == 2]
    tiles = [t for t in itertools.product(rows, repeat=4) if all(sum(col) == 2 for col in zip(*t, strict=True))]
    return torch.tensor(tiles, dtype=torch.float64).reshape(len(tiles), 16)


def tile_patterns(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 90 transposable 2:4 patterns of a 4x4 tile, (90, 16), in a fixed (lexicographic) order."""
    return _tile_patterns_cpu().to(device=device, dtype=dtype)


def _check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf): a 2:4 mask cannot rank them")


def transposable_mask(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask, 2:4 along rows *and* along columns: in each 4x4 tile the one of the 90 patterns that keeps
    the largest sum of |w| (ties: the first pattern in `tile_patterns` order). Both sizes must be multiples of 4."""
    _check_weight(weight)
    rows, cols = weight.shape
    if rows % 4 or cols % 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; a transposable 2:4 mask needs both sizes to be "
                         "multiples of 4 (4x4 tiles)")
    work = torch.float64  # exact for every 16-bit weight; a float32 matmul may run in TF32 on CUDA
    tiles = magnitudes(weight).reshape(rows // 4, 4, cols // 4, 4).permute(0, 2, 1, 3)
    patterns = tile_patterns(weight.device, work)
    best = (tiles.reshape(-1, 16) @ patterns.T).argmax(dim=1)  # argmax returns the first maximum
    chosen = patterns[best].reshape(rows // 4, cols // 4, 4, 4).permute(0, 2, 1, 3)
    return chosen.reshape(rows, cols).bool()


def is_24(mask_or_weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive entries along the last dim has at most 2 non-zeros (True entries)."""
    t = mask_or_weight
    if t.dim() == 0 or t.shape[-1] % 4:
        return False
    return bool(((t != 0).reshape(*t.shape[:-1], -1, 4).sum(-1) <= 2).all())


def is_transposable_24(mask_or_weight: torch.Tensor) -> bool:
    """Whether a 2-D tensor is 2:4 along its rows and along its columns (so its transpose is 2:4 too)."""
    t = mask_or_weight
    return t.dim() == 2 and is_24(t) and is_24(t.T)


def sparse24_mask(weight: torch.Tensor, transpose: str = "transposable") -> torch.Tensor:
    """The training mask for `weight`: transposable 2:4 tiles, or plain 2:4 along rows (``"recompress"``: the
    `patterns.masks.nm_mask` decision through `semi24.layout.prune`, ties kept at the lower index)."""
    if transpose not in TRANSPOSE_MODES:
        raise ValueError(f"transpose must be one of {TRANSPOSE_MODES}, got {transpose!r}")
    if transpose == "transposable":
        return transposable_mask(weight)
    _check_weight(weight)
    return prune_rows(weight.detach())


def masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """weight with dropped entries set to +0 (no -0.0, so compressors see true zeros)."""
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
