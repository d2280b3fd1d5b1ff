"""Masks and how they are attached to modules.

A mask is a boolean tensor shaped like the weight (True = kept). Masks are attached with
`torch.nn.utils.parametrize`, so the module keeps its dense `weight`, training updates it, and the
pruned entries stay zero in every forward pass until `make_permanent` bakes the mask in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize


def check_sparsity(sparsity: float) -> float:
    """Return `sparsity` as a float, or raise if it is not a fraction in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1) (the share of weights removed), got {sparsity!r}")
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


def ranking_values(scores: torch.Tensor, name: str = "scores") -> torch.Tensor:
    """`scores` checked and detached as float64 with -0.0 made +0.0: the values every mask ranks, so ties are equal.

    float64 holds every float and every integer up to 2**53 exactly (64-bit integers beyond that round).
    """
    check_scores(scores, name=name)
    return scores.detach().to(torch.float64) + 0.0  # -0.0 + 0.0 is +0.0: a radix sort would put -0.0 first


def magnitudes(tensor: torch.Tensor) -> torch.Tensor:
    """|tensor| in float64: exact for integers up to 2**53, where an integer abs() wraps (int8 -128 stays -128)."""
    return tensor.detach().to(torch.float64).abs()


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the largest-|w| entries so that exactly round(sparsity * numel) entries are dropped.

    Ties are broken by position (the lower flat index is kept, the higher dropped first), so the mask is
    deterministic; integer weights rank by their exact magnitude (int8 -128 as 128, the largest).
    """
    return topk_mask(magnitudes(weight), sparsity)


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the highest-scoring entries; drop exactly round(sparsity * numel) of them (ties: the lower flat index
    is kept, the rule of `sparsity_lab.patterns.masks.nm_mask` and the Triton 2:4 compressor)."""
    sparsity = check_sparsity(sparsity)
    flat = ranking_values(scores).reshape(-1)
    n_keep = flat.numel() - round(sparsity * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.sort(flat, descending=True, stable=True).indices[:n_keep]] = True
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
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"module {type(module).__name__} has no tensor {name!r} to mask")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        what = f"a {mask.dtype} tensor" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a boolean torch.Tensor (True = keep) shaped like {name}, got {what}")
    if mask.shape != weight.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but {name} has shape {tuple(weight.shape)}")
    if parametrize.is_parametrized(module, name):
        existing = getattr(module.parametrizations, name)
        if len(existing) == 1 and isinstance(existing[0], Mask):
            # replace the mask in place: removing the parametrization would edit the module's class, which a
            # deep copy of this module shares (and would break)
            existing[0].mask = mask.to(device=weight.device, dtype=torch.bool)
            return module
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


def prunable_layers(model: nn.Module, required: bool = False) -> dict[str, nn.Module]:
    """The Linear and Conv layers of `model`, by qualified name: the layers whose weights we prune (`required`:
    a model without any is a ValueError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    if required and not layers:
        raise ValueError(f"model ({type(model).__name__}) has no prunable layer (nn.Linear, nn.Conv1d, nn.Conv2d)")
    return layers


def sparsity_of(tensor: torch.Tensor) -> float:
    """The fraction of entries that are exactly zero."""
    return float((tensor == 0).sum()) / max(tensor.numel(), 1)


def current_mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The boolean mask attached to `module.<name>` (all True when none is)."""
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, Mask):
                return p.mask.clone()
    return torch.ones_like(getattr(module, name), dtype=torch.bool)


SCOPES = ("global", "layer")


def masks_from_scores(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global",
    keep_pruned: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks dropping the lowest scores: `round(sparsity * total)` over all layers ("global") or per layer ("layer").

    Entries False in `keep_pruned` (earlier masks) rank below every score, so a schedule only ever adds zeros.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not scores:
        raise ValueError("scores is empty: expected a dict layer name -> tensor")
    ranked = {}
    for name, s in scores.items():
        check_scores(s, like=keep_pruned[name] if keep_pruned else None, name=f"scores[{name!r}]")
        ranked[name] = s.detach().to(torch.float64)
    if scope == "layer":
        return {name: topk_mask(below_pruned(s, keep_pruned and keep_pruned[name]), sparsity)
                for name, s in ranked.items()}
    flat = torch.cat([s.reshape(-1) for s in ranked.values()])
    kept = torch.cat([keep_pruned[n].reshape(-1) for n in ranked]) if keep_pruned else None
    mask, masks, start = topk_mask(below_pruned(flat, kept), sparsity), {}, 0
    for name, s in ranked.items():
        masks[name] = mask[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


def below_pruned(scores: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """`scores` with the entries not `kept` moved below every other score."""
    if kept is None:
        return scores
    below = torch.nextafter(scores.min(), scores.new_tensor(-math.inf))  # strictly below at any scale of scores
    return torch.where(kept.to(scores.device), scores, below)


def prune_by_scores(
    model: nn.Module, scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global"
) -> nn.Module:
    """Mask the prunable layers of `model` at `sparsity` by `scores` (layer name -> tensor shaped like its weight).

    Weights already masked stay masked (they rank below all others), so repeated calls with growing sparsity
    implement a schedule. In place; returns the model.
    """
    layers = prunable_layers(model, required=True)
    if set(scores) != set(layers):
        raise KeyError(f"scores must name exactly the prunable layers {sorted(layers)}, got {sorted(scores)}")
    for name, module in layers.items():
        check_scores(scores[name], like=module.weight, name=f"scores[{name!r}]")
    current = {name: current_mask(module) for name, module in layers.items()}
    for name, mask in masks_from_scores(scores, sparsity, scope, keep_pruned=current).items():
        apply_mask(layers[name], mask)
    return model


SCHEDULES = ("linear", "cubic")


def sparsity_schedule(final: float, steps: int, kind: str = "cubic", initial: float = 0.0) -> list[float]:
    """Sparsity after each of `steps` rounds from `initial` to `final`: "linear", or "cubic" (Zhu & Gupta 2017:
    big steps first, while many redundant weights remain, small ones near the end)."""
    final, initial = check_sparsity(final), check_sparsity(initial)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
    out = []
    for t in range(1, steps + 1):
        frac = t / steps
        if kind == "cubic":
            frac = 1 - (1 - frac) ** 3
        out.append(initial + (final - initial) * frac)
    return out


def iterative_prune(
    model: nn.Module,
    scorer: Callable[[nn.Module], dict[str, torch.Tensor]],
    schedule: Sequence[float],
    finetune: Callable[[nn.Module], object] | None = None,
    scope: str = "global",
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Prune -> fine-tune rounds: at each sparsity of `schedule`, rescore with `scorer(model)`, prune (pruned weights
    stay pruned), then `finetune(model)` if given. In place; returns one row per round (sparsity, and `evaluate`'s
    numbers measured after the round's fine-tuning)."""
    prunable_layers(model, required=True)
    schedule = [check_sparsity(sparsity) for sparsity in schedule]  # the whole schedule, before any change
    for previous, sparsity in zip(schedule, schedule[1:], strict=False):
        if sparsity < previous:
            raise ValueError(f"schedule must not decrease, got {previous} then {sparsity}")
    rows = []
    for sparsity in schedule:
        prune_by_scores(model, scorer(model), sparsity, scope)
        if finetune is not None:
            finetune(model)
        row = {"sparsity": sparsity}
        if evaluate is not None:
            row.update(evaluate(model))
        rows.append(row)
    return rows


def sparsity_report(model: nn.Module) -> list[dict[str, object]]:
    """Per prunable layer: name, shape, weight count, zeros and sparsity; a last row "total" sums them."""
    rows: list[dict[str, object]] = []
    for name, module in prunable_layers(model).items():
        w = module.weight.detach()
        zeros = int((w == 0).sum())
        rows.append({"layer": name, "shape": tuple(w.shape), "weights": w.numel(), "zeros": zeros,
                     "sparsity": zeros / max(w.numel(), 1)})
    total, zeros = sum(r["weights"] for r in rows), sum(r["zeros"] for r in rows)
    rows.append({"layer": "total", "shape": (), "weights": total, "zeros": zeros, "sparsity": zeros / max(total, 1)})
    return rows


def format_sparsity_report(model: nn.Module) -> str:
    """`sparsity_report` as a fixed-width text table."""
    lines = [f"{'layer':<12} {'shape':<14} {'weights':>8} {'zeros':>8} {'sparsity':>9}"]
    for r in sparsity_report(model):
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['layer']:<12} {shape:<14} {r['weights']:>8} {r['zeros']:>8} {r['sparsity']:>9.1%}")
    return "\n".join(lines)
