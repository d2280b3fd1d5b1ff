"""Sparsity patterns: which entries a mask may remove, from fully free (unstructured) to whole rows.

Every function here takes a score tensor (a saliency such as |w|: higher = more worth keeping) and returns a
boolean mask shaped like it (True = keep). The patterns, from most to least freedom:

- **unstructured**: any entries (`unstructured_mask`, per layer; `global_unstructured_masks`, one budget across
  layers);
- **N:M** along a dimension: at most N kept in every group of M consecutive entries (`nm_mask`, `is_nm`);
- **block**: whole blocks of a given shape, kept or dropped together (`block_mask`, `is_block`);
- **row / column**: whole slices along dim 0 / dim 1 (`row_mask`, `column_mask`, `slice_mask`).

Sparsity: the unstructured masks drop exactly ``round(sparsity * numel)`` entries. The grouped patterns drop
whole groups, so they drop exactly ``round(sparsity * n_groups)`` groups and the *achieved* sparsity is the
nearest multiple of ``1 / n_groups``; `Pattern.achieved_sparsity` says what a mask will achieve before it is
made, and ``strict=True`` turns any difference from ``round(sparsity * numel)`` entries into a ValueError. N:M
fixes sparsity at ``1 - N/M``: asking a `Pattern` for N:M at any other sparsity is a ValueError. Shapes a
pattern cannot tile (a dimension not divisible by M, or by the block) are ValueErrors naming the argument,
the shape and the divisibility needed.

Ties: equal scores (-0.0 equals +0.0) are broken by position, the lower index (flat index, group index or index
inside the group) being kept and the higher dropped first, as in `sparsity_lab.pruning.prune.topk_mask` and the
Triton 2:4 compressor; every mask is deterministic. Scores rank in float64, so integer scores never overflow. Group
scores (rows, columns, blocks) are the sums of their entries' scores (the L1 norm when scores are |w|).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsity_lab.pruning.prune import (
    check_scores,
    check_sparsity,
    magnitudes,
    prunable_layers,
    ranking_values,
    topk_mask,
)

__all__ = [
    "Pattern",
    "block_mask",
    "column_mask",
    "global_unstructured_masks",
    "is_block",
    "is_nm",
    "nm_mask",
    "parse_pattern",
    "pattern_masks",
    "row_mask",
    "slice_mask",
    "unstructured_mask",
]


def _dim(tensor: torch.Tensor, dim: int, name: str = "dim") -> int:
    """`dim` normalised to [0, ndim), or a ValueError naming the shape."""
    if not -tensor.ndim <= dim < tensor.ndim:
        raise ValueError(f"{name}={dim} is out of range for a tensor of shape {tuple(tensor.shape)}")
    return dim % tensor.ndim


def _check_nm(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int)) or isinstance(n, bool) or isinstance(m, bool):
        raise TypeError(f"n and m must be ints, got n={n!r}, m={m!r}")
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < n < m (keep n of every m), got n={n}, m={m}")


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest scores anywhere in the tensor; exactly round(sparsity * numel) entries are dropped."""
    return topk_mask(scores, sparsity)


def global_unstructured_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One budget across tensors: drop the round(sparsity * total) lowest scores wherever they are.

    Layers end up with different sparsities. Ties between tensors are broken by the mapping's order (an
    earlier tensor's entry is kept, a later one dropped first), then by flat index (the lower is kept).
    """
    if not scores:
        raise ValueError("scores must hold at least one tensor")
    for name, tensor in scores.items():
        check_scores(tensor, name=f"scores[{name!r}]")
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in scores.values()])
    keep = topk_mask(flat, sparsity)
    masks, start = {}, 0
    for name, tensor in scores.items():
        masks[name] = keep[start : start + tensor.numel()].reshape(tensor.shape)
        start += tensor.numel()
    return masks


def slice_mask(scores: torch.Tensor, sparsity: float, dim: int) -> torch.Tensor:
    """Drop whole slices along `dim` (the round(sparsity * size) lowest summed scores; ties keep the lower index)."""
    sparsity = check_sparsity(sparsity)
    values = ranking_values(scores)
    dim = _dim(values, dim)
    per_slice = values.movedim(dim, 0).reshape(values.shape[dim], -1).sum(1)
    keep = topk_mask(per_slice, sparsity)
    view = [-1 if i == dim else 1 for i in range(values.ndim)]
    return keep.reshape(view).expand(values.shape).contiguous()


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop whole rows (slices along dim 0: a Linear layer's output neurons, a Conv layer's filters)."""
    return slice_mask(scores, sparsity, dim=0)


def column_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop whole columns (slices along dim 1: a Linear layer's inputs, a Conv layer's input channels)."""
    if scores.ndim < 2:
        raise ValueError(f"column pruning needs at least 2 dimensions, got scores of shape {tuple(scores.shape)}")
    return slice_mask(scores, sparsity, dim=1)


def _groups(tensor: torch.Tensor, m: int, dim: int, name: str) -> torch.Tensor:
    """`tensor` with `dim` moved last and split into groups of m: shape (..., size // m, m)."""
    dim = _dim(tensor, dim)
    size = tensor.shape[dim]
    if size % m:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}: dim {dim} has size {size}, which is not divisible by m={m}"
        )
    moved = tensor.movedim(dim, -1)
    return moved.reshape(*moved.shape[:-1], size // m, m)


def nm_mask(scores: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Keep the n highest scores in every group of m consecutive entries along `dim` (sparsity 1 - n/m).

    The one N:M decider: `semi24.layout.prune`/`sparsify`, the 2:4 training masks and the Triton compressor keep
    what it keeps, bit for bit. Scores rank as given (pass |w|, exact as `pruning.prune.magnitudes`), in float64.
    Ties keep the lower index inside the group, so an all-zero group keeps its first n entries. For a Linear
    weight (out, in) the default dim=-1 groups along the input dimension, which is what 2:4 sparse tensor cores need.
    """
    _check_nm(n, m)
    values = ranking_values(scores)
    dim = _dim(values, dim)
    groups = _groups(values, m, dim, "scores")
    kept = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]  # stable: lower index first
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, kept, True)
    return keep.flatten(-2).movedim(-1, dim).contiguous()


def _kept(mask_or_tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask_or_tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(mask_or_tensor).__name__}")
    return mask_or_tensor if mask_or_tensor.dtype == torch.bool else mask_or_tensor != 0


def is_nm(mask_or_tensor: torch.Tensor, n: int, m: int, dim: int = -1) -> bool:
    """Whether every group of m consecutive entries along `dim` has at most n kept (True) or nonzero entries.

    False when the size along `dim` is not a multiple of m (such a tensor has no N:M layout).
    """
    _check_nm(n, m)
    kept = _kept(mask_or_tensor)
    dim = _dim(kept, dim)
    if kept.shape[dim] % m:
        return False
    return bool((_groups(kept, m, dim, "mask").sum(-1) <= n).all())


def _check_block(tensor: torch.Tensor, block: Sequence[int], name: str) -> tuple[int, ...]:
    block = tuple(block)
    if len(block) != tensor.ndim or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block):
        raise ValueError(
            f"block must be {tensor.ndim} positive ints (one per dim of {name} of shape {tuple(tensor.shape)}), "
            f"got {block!r}"
        )
    for d, (size, b) in enumerate(zip(tensor.shape, block, strict=True)):
        if size % b:
            raise ValueError(
                f"block {block} does not tile {name} of shape {tuple(tensor.shape)}: dim {d} has size {size}, "
                f"which is not divisible by {b}"
            )
    return block


def _block_view(tensor: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """`tensor` reshaped to (s0/b0, b0, s1/b1, b1, ...), then permuted to (grid..., block...)."""
    split = [v for size, b in zip(tensor.shape, block, strict=True) for v in (size // b, b)]
    nd = tensor.ndim
    return tensor.reshape(split).permute(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2))


def block_mask(scores: torch.Tensor, sparsity: float, block: Sequence[int]) -> torch.Tensor:
    """Drop whole blocks of shape `block` (one size per dim): the round(sparsity * n_blocks) lowest-scoring.

    Blocks tile the tensor from index 0; their score is the sum of their entries' scores; ties keep the
    block with the lower (row-major) grid index (the higher is dropped first).
    """
    sparsity = check_sparsity(sparsity)
    values = ranking_values(scores)
    block = _check_block(values, block, "scores")
    nd = values.ndim
    grid_scores = _block_view(values, block).sum(dim=tuple(range(nd, 2 * nd)))
    keep = topk_mask(grid_scores, sparsity)
    for d, b in enumerate(block):
        keep = keep.repeat_interleave(b, dim=d)
    return keep


def is_block(mask_or_tensor: torch.Tensor, block: Sequence[int]) -> bool:
    """Whether every block of shape `block` is entirely kept or entirely dropped.

    A tensor counts by its nonzeros, so a kept block that holds an exact zero makes this False; pass the mask.
    """
    kept = _kept(mask_or_tensor)
    block = _check_block(kept, block, "mask")
    view = _block_view(kept, block).reshape(*[s // b for s, b in zip(kept.shape, block, strict=True)], -1)
    return bool((view.all(-1) | ~view.any(-1)).all())


_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block\s*(\d+(?:x\d+)*)$")


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern by name, with one `mask(scores, sparsity)` for all kinds.

    kind is "unstructured", "row", "column", "nm" (with n, m and dim) or "block" (with block, a shape).
    Build one with `parse_pattern("2:4")`, `parse_pattern("block 4x4")`, `parse_pattern("row")`...
    """

    kind: str
    n: int | None = None
    m: int | None = None
    dim: int = -1
    block: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        kinds = ("unstructured", "row", "column", "nm", "block")
        if self.kind not in kinds:
            raise ValueError(f"kind must be one of {kinds}, got {self.kind!r}")
        if self.kind == "nm":
            _check_nm(self.n, self.m)
        if self.kind == "block" and (not self.block or not all(isinstance(b, int) and b > 0 for b in self.block)):
            raise ValueError(f"a block pattern needs a block shape of positive ints, got {self.block!r}")

    @property
    def name(self) -> str:
        """'unstructured', 'row', 'column', '2:4', 'block 4x4'."""
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return "block " + "x".join(map(str, self.block))
        return self.kind

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern imposes (1 - n/m for N:M), or None where any sparsity can be asked for."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def _groups(self, shape: Sequence[int]) -> int:
        """How many independently kept/dropped units a tensor of `shape` has under this pattern."""
        numel = int(torch.Size(shape).numel())
        if self.kind == "row":
            return shape[0]
        if self.kind == "column":
            return shape[1]
        if self.kind == "block":
            return numel // int(torch.Size(self.block).numel())
        return numel

    def achieved_sparsity(self, shape: Sequence[int], sparsity: float | None = None) -> float:
        """The sparsity `mask` will produce on a tensor of `shape` when asked for `sparsity`."""
        if self.kind == "nm":
            self._check_nm_sparsity(sparsity)
            return self.fixed_sparsity
        if sparsity is None:
            raise ValueError(f"pattern {self.name!r} needs a sparsity")
        shape = tuple(shape)
        if self.kind == "column" and len(shape) < 2:
            raise ValueError(f"column pruning needs at least 2 dimensions, got shape {shape}")
        groups = self._groups(shape)
        return round(check_sparsity(sparsity) * groups) / groups

    def _check_nm_sparsity(self, sparsity: float | None) -> None:
        if sparsity is not None and abs(check_sparsity(sparsity) - self.fixed_sparsity) > 1e-9:
            raise ValueError(
                f"{self.name} fixes sparsity at 1 - {self.n}/{self.m} = {self.fixed_sparsity:.4g}, "
                f"but sparsity={sparsity!r} was asked for (choose n and m with 1 - n/m = sparsity)"
            )

    def mask(self, scores: torch.Tensor, sparsity: float | None = None, strict: bool = False) -> torch.Tensor:
        """The pattern's mask for `scores` (True = keep).

        `sparsity` may be left out only for N:M. With `strict`, a mask that does not drop exactly
        round(sparsity * numel) entries (a grouped pattern rounding to whole groups) is a ValueError instead.
        """
        if self.kind == "nm":
            self._check_nm_sparsity(sparsity)
            mask = nm_mask(scores, self.n, self.m, dim=self.dim)
        elif sparsity is None:
            raise ValueError(f"pattern {self.name!r} needs a sparsity")
        elif self.kind == "unstructured":
            mask = unstructured_mask(scores, sparsity)
        elif self.kind == "row":
            mask = row_mask(scores, sparsity)
        elif self.kind == "column":
            mask = column_mask(scores, sparsity)
        else:
            mask = block_mask(scores, sparsity, self.block)
        if strict and sparsity is not None:
            wanted, got = round(check_sparsity(sparsity) * mask.numel()), int((~mask).sum())
            if wanted != got:
                raise ValueError(
                    f"pattern {self.name!r} cannot drop exactly {wanted} of {mask.numel()} entries "
                    f"(sparsity={sparsity}) from shape {tuple(mask.shape)}: whole groups only, so it drops {got} "
                    f"(sparsity {got / mask.numel():.4g})"
                )
        return mask


def parse_pattern(spec: str | Pattern) -> Pattern:
    """A `Pattern` from its name: 'unstructured', 'row', 'column', 'N:M' such as '2:4', 'block 4x4' / 'block4x4'."""
    if isinstance(spec, Pattern):
        return spec
    text = str(spec).strip().lower()
    if text in ("unstructured", "row", "column"):
        return Pattern(text)
    if match := _NM.match(text):
        return Pattern("nm", n=int(match.group(1)), m=int(match.group(2)))
    if match := _BLOCK.match(text):
        return Pattern("block", block=tuple(int(v) for v in match.group(1).split("x")))
    raise ValueError(
        f"unknown pattern {spec!r}; use 'unstructured', 'row', 'column', 'N:M' (e.g. '2:4') or 'block RxC'"
    )


def pattern_masks(
    model: nn.Module,
    pattern: str | Pattern,
    sparsity: float | None,
    layers: Iterable[str] | None = None,
    scope: str = "layer",
) -> dict[str, torch.Tensor]:
    """Masks by layer name for `model`'s prunable layers (or those named in `layers`), scored by |w|.

    scope="global" (unstructured only) spends one budget across the layers; "layer" prunes each at `sparsity`.
    A layer the pattern cannot tile is a ValueError naming the layer.
    """
    pattern = parse_pattern(pattern)
    available = prunable_layers(model, required=True)
    names = list(available) if layers is None else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"layers {unknown} are not prunable layers of the model; prunable: {list(available)}")
    scores = {name: magnitudes(available[name].weight) for name in names}
    if scope == "global":
        if pattern.kind != "unstructured":
            raise ValueError(f"scope='global' needs the unstructured pattern, got {pattern.name!r}")
        return global_unstructured_masks(scores, sparsity)
    if scope != "layer":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    masks = {}
    for name, score in scores.items():
        try:
            masks[name] = pattern.mask(score, sparsity)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from err
    return masks
