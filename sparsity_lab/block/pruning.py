"""Block pruning: keep or drop whole bs x bs blocks of a weight, so that a block-sparse kernel can skip them.

Two ways to choose the blocks:
- saliency: score each block by the L1 or L2 norm of its weights and keep the highest-scoring blocks
  (`block_scores`, `block_mask`, `prune_blocks`);
- learned masks, supermask-style as in PyTorch's superblock work: every block gets a trainable score, the forward
  pass keeps the top-scoring blocks (a hard top-k), and the backward pass treats that top-k as the identity
  (straight-through), so scores and weights are trained together (`attach_block_supermasks`, `learn_block_masks`).

Masks are attached through `sparsity_lab.pruning.prune.apply_mask` (or the `BlockSupermask` parametrization while
learning), so `sparsity_lab.course.train.fit` fine-tunes with them in force and `make_permanent` bakes them in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsity_lab.course.data import Digits
from sparsity_lab.course.train import History, evaluate, fit
from sparsity_lab.formats.matrices import block_view
from sparsity_lab.pruning.prune import apply_mask, check_sparsity, topk_mask

NORMS = ("l1", "l2")


def block_scores(weight: torch.Tensor, block_size: int, norm: str = "l2") -> torch.Tensor:
    """The L1 or L2 norm of each bs x bs block of a 2-D `weight`: a (rows/bs, cols/bs) float tensor."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    blocks = block_view(weight.detach().float(), block_size)
    return blocks.abs().sum((-1, -2)) if norm == "l1" else blocks.pow(2).sum((-1, -2)).sqrt()


def expand_block_mask(block_mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """A (R, C) block mask as the (R*bs, C*bs) element mask it stands for."""
    return block_mask.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)


def block_mask(weight: torch.Tensor, block_size: int, sparsity: float, norm: str = "l2") -> torch.Tensor:
    """Element mask (shaped like `weight`) that drops round(sparsity * n_blocks) whole blocks, lowest norm first."""
    return expand_block_mask(topk_mask(block_scores(weight, block_size, norm), sparsity), block_size)


def block_prunable_layers(model: nn.Module, block_size: int) -> dict[str, nn.Linear]:
    """The Linear layers of `model` whose sides are both multiples of `block_size`, by name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(s % block_size for s in m.weight.shape)}


def _chosen_layers(model: nn.Module, block_size: int, layers: Iterable[str] | None) -> dict[str, nn.Linear]:
    candidates = block_prunable_layers(model, block_size)
    if layers is None:
        if not candidates:
            raise ValueError(f"no Linear layer of the model has sides that are multiples of block_size {block_size}")
        return candidates
    chosen = {}
    for name in layers:
        if name not in candidates:
            raise ValueError(f"layer {name!r} is not a Linear whose sides are multiples of {block_size}; "
                             f"candidates: {sorted(candidates)}")
        chosen[name] = candidates[name]
    return chosen


def prune_blocks(model: nn.Module, block_size: int, sparsity: float, norm: str = "l2",
                 layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Mask, in place, each chosen layer (default: every Linear whose sides are multiples of `block_size`) at
    `sparsity` by block norm; returns the element masks by layer name."""
    masks = {}
    for name, module in _chosen_layers(model, block_size, layers).items():
        masks[name] = block_mask(module.weight, block_size, sparsity, norm)
        apply_mask(module, masks[name])
    return masks


class _TopKStraightThrough(torch.autograd.Function):
    """Forward: 1 for the top-scoring entries, 0 for the round(sparsity * n) others. Backward: identity."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        return topk_mask(scores, sparsity).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class BlockSupermask(nn.Module):
    """Parametrization `weight -> weight * expand(topk(scores))` with one trainable score per block."""

    def __init__(self, weight: torch.Tensor, block_size: int, sparsity: float, init: str = "norm") -> None:
        super().__init__()
        self.block_size = block_size
        self.sparsity = check_sparsity(sparsity)
        if init == "norm":
            scores = block_scores(weight, block_size, "l2")
            scores = scores / scores.max().clamp_min(1e-12)
        elif init == "uniform":  # superblock's initialisation for tiled scores
            scores = torch.rand(block_view(weight.detach(), block_size).shape[:2], device=weight.device)
        else:
            raise ValueError(f"init must be 'norm' or 'uniform', got {init!r}")
        self.scores = nn.Parameter(scores.to(weight.device))

    def block_mask(self) -> torch.Tensor:
        """The current hard (R, C) block mask (True = kept)."""
        return topk_mask(self.scores.detach(), self.sparsity)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = _TopKStraightThrough.apply(self.scores, self.sparsity)
        return weight * expand_block_mask(mask, self.block_size).to(weight.dtype)


def attach_block_supermasks(model: nn.Module, block_size: int, sparsity: float, init: str = "norm",
                            layers: Iterable[str] | None = None) -> dict[str, BlockSupermask]:
    """Give each chosen layer a `BlockSupermask` (its scores become parameters of the model)."""
    attached = {}
    for name, module in _chosen_layers(model, block_size, layers).items():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        attached[name] = BlockSupermask(module.weight, block_size, sparsity, init)
        parametrize.register_parametrization(module, "weight", attached[name])
    return attached


def harden_supermasks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every BlockSupermask by the fixed element mask it currently selects; returns those masks."""
    masks = {}
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        supermasks = [p for p in module.parametrizations.weight if isinstance(p, BlockSupermask)]
        if supermasks:
            sm = supermasks[0]
            masks[name] = expand_block_mask(sm.block_mask(), sm.block_size)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            apply_mask(module, masks[name])
    return masks


def learn_block_masks(model: nn.Module, data: Digits, block_size: int, sparsity: float, epochs: int = 10,
                      lr: float = 1e-3, init: str = "norm", seed: int = 0, layers: Iterable[str] | None = None,
                      progress: bool = False) -> History:
    """Train weights and block scores together (straight-through top-k), then fix the learned masks in place."""
    attach_block_supermasks(model, block_size, sparsity, init, layers)
    history = fit(model, data, epochs=epochs, lr=lr, seed=seed, progress=progress)
    harden_supermasks(model)
    return history


def accuracy_vs_block_size(model: nn.Module, data: Digits, block_sizes: Sequence[int], sparsity: float,
                           methods: Sequence[str] = ("l2", "learned"), epochs: int = 10, lr: float = 1e-3,
                           seed: int = 0) -> list[dict]:
    """For each method and block size, prune a copy of trained `model` at `sparsity` and fine-tune it `epochs`
    epochs: one-shot and final test accuracy, with the block sparsity really reached."""
    rows = []
    for method in methods:
        if method not in (*NORMS, "learned"):
            raise ValueError(f"methods must be among {(*NORMS, 'learned')}, got {method!r}")
        for bs in block_sizes:
            pruned = copy.deepcopy(model)
            if method == "learned":
                torch.manual_seed(seed)
                attach_block_supermasks(pruned, bs, sparsity)
                one_shot = evaluate(pruned, data.x_test, data.y_test)[1]
                fit(pruned, data, epochs=epochs, lr=lr, seed=seed, progress=False)
                masks = harden_supermasks(pruned)
            else:
                masks = prune_blocks(pruned, bs, sparsity, norm=method)
                one_shot = evaluate(pruned, data.x_test, data.y_test)[1]
                fit(pruned, data, epochs=epochs, lr=lr, seed=seed, progress=False)
            kept = sum(int(m.sum()) for m in masks.values())
            total = sum(m.numel() for m in masks.values())
            rows.append(dict(method=method, block_size=bs, sparsity=1 - kept / total, accuracy=one_shot,
                             finetuned_accuracy=evaluate(pruned, data.x_test, data.y_test)[1],
                             layers=sorted(masks)))
    return rows
