"""Masks and how they are attached to modules.

A mask is a boolean tensor shaped like the weight (True = kept). Masks are attached with
`torch.nn.utils.parametrize`, so the module keeps its dense `weight`, training updates it, and the
pruned entries stay zero in every forward pass until `make_permanent` bakes the mask in.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


def check_sparsity(sparsity: float) -> float:
    """Return `sparsity` as a float, or raise if it is not a fraction in [0, 1)."""
    value = float(sparsity)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"sparsity must be a fraction in [0, 1) (the share of weights removed), got {sparsity!r}")
    return value


def check_scores(scores: torch.Tensor, like: torch.Tensor | None = None, name: str = "scores") -> None:
    """Raise if `scores` is not a finite floating tensor (shaped like `like`, when given)."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if like is not None and scores.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(scores.shape)} but the weight has shape {tuple(like.shape)}")
    if scores.is_floating_point() and not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains non-finite values (first at index {bad}); saliencies must be finite")


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the largest-|w| entries so that exactly round(sparsity * numel) entries are dropped.

    Ties are broken by position (earlier flat index is dropped first), so the mask is deterministic.
    """
    return topk_mask(weight.detach().abs(), sparsity)


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest-scoring entries; drop exactly round(sparsity * numel) of them (ties: lower index first)."""
    sparsity = check_sparsity(sparsity)
    check_scores(scores)
    flat = scores.detach().reshape(-1).to(torch.float64)
    n_drop = round(sparsity * flat.numel())
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    if n_drop:
        order = torch.sort(flat, stable=True).indices
        mask[order[:n_drop]] = False
    return mask.reshape(scores.shape)


class Mask(nn.Module):
    """Parametrization that multiplies a weight by a fixed boolean mask (kept as a buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> nn.Module:
    """Attach `mask` to `module.<name>` through parametrize; a mask already there is replaced."""
    weight = getattr(module, name)
    if mask.shape != weight.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but {name} has shape {tuple(weight.shape)}")
    if parametrize.is_parametrized(module, name):
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    parametrize.register_parametrization(module, name, Mask(mask.to(weight.device)))
    return module


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight and remove the parametrizations (weights stay zero where pruned)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear and Conv layers of `model`, by qualified name: the layers whose weights we prune."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}


def prune_by_magnitude(model: nn.Module, sparsity: float) -> nn.Module:
    """Mask each prunable layer's weight at `sparsity` by magnitude (per layer), in place."""
    for module in prunable_layers(model).values():
        apply_mask(module, magnitude_mask(module.weight, sparsity))
    return model


def sparsity_of(tensor: torch.Tensor) -> float:
    """The fraction of entries that are exactly zero."""
    return float((tensor == 0).sum()) / max(tensor.numel(), 1)
