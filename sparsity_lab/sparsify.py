"""`sparsify_(model, config, filter_fn=None)`: the one way to make a model sparse, in PyTorch's in-place idiom.

One frozen config per technique says what to do to each layer it can take:

| config | what each selected layer becomes |
| --- | --- |
| `PruneConfig` | the same layer with a mask attached through ``parametrize`` (any method, any pattern) |
| `Semi24Config` | `Semi24Linear`: 2:4 weight, cuSPARSELt where measured faster than dense (inference) |
| `Int8Config` | `Int8Linear`, or `Int8Semi24Linear` with ``sparse=True`` (int8 weights and activations) |
| `Fp8Config` | `Fp8Linear`, or `Fp8Semi24Linear` with ``sparse=True`` (FP8 e4m3 / e5m2 weights and activations) |
| `BlockSparseConfig` | `BlockSparseLinear`: only the non-zero blocks stored, our Triton kernel (inference) |
| `Semi24TrainingConfig` | `Semi24TrainingLinear`: trains with a 2:4 (transposable) weight |

`filter_fn(module, fqn) -> bool` picks layers among those the config can take (default: all of them). The call
plans every layer first -- masks computed, replacement layers built -- and changes the model only when every
selected layer was accepted, so a refused call (a NaN weight, a shape a pattern cannot tile) leaves the model
exactly as it was. It returns a `Report`: for every layer the config could take, what was done or why not.

Worked example::

    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    >>> report = sparsify_(model, PruneConfig(sparsity=0.5, pattern="2:4"), lambda m, fqn: fqn != "2")
    >>> print(report)
    0  pruned: 2:4 by magnitude
    2  left as it is: filter_fn
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsity_lab.dispatch import Dispatcher
from sparsity_lab.semi24.layer import DEFAULT_DISPATCHER

FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class LayerReport:
    """What `sparsify_` did to one layer (`changed`), in words: the new layer, or why it was left alone."""

    changed: bool
    what: str
    timings: dict[str, float] = field(default_factory=dict)  # ms of each candidate, where the choice was timed


class Report(dict[str, LayerReport]):
    """`sparsify_`'s answer: layer name -> `LayerReport`, for every layer the config could take."""

    @property
    def changed(self) -> list[str]:
        """Names of the layers that were changed."""
        return [name for name, layer in self.items() if layer.changed]

    def __str__(self) -> str:
        width = max((len(name) for name in self), default=0)
        return "\n".join(f"{name:<{width}}  {layer.what}" for name, layer in self.items())


@dataclass(frozen=True)
class _Planned:
    """One accepted layer: what will be done, and the step that does it (which cannot fail)."""

    what: str
    install: Callable[[], nn.Module]


def _linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ``nn.Linear`` layers (masked ones included: their masked weight is what gets converted)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _check_model(model: nn.Module, config: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(config, "plan") or not hasattr(config, "candidates"):
        raise TypeError(f"config must be one of sparsity_lab's configs (e.g. Semi24Config()), got {config!r}")


def _set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def sparsify_(model: nn.Module, config: object, filter_fn: FilterFn | None = None) -> Report:
    """Apply `config` to the layers of `model` that it can take and `filter_fn(module, fqn)` selects, in place.

    All or nothing: every selected layer is planned before any is changed; a refused layer raises a ValueError
    naming it and the model is left untouched. Returns a `Report` (layer name -> what was done or why not)."""
    _check_model(model, config)
    candidates = config.candidates(model)
    if not candidates:
        raise ValueError(f"model has no layer that {type(config).__name__} can take "
                         f"({config.takes}); nothing was changed")
    selected = {fqn: m for fqn, m in candidates.items() if filter_fn is None or filter_fn(m, fqn)}
    plans = config.plan(model, selected)
    report = Report()
    for fqn in candidates:
        plan = plans.get(fqn)
        if isinstance(plan, _Planned):
            _set_submodule(model, fqn, plan.install())
            report[fqn] = LayerReport(True, plan.what)
        else:
            report[fqn] = LayerReport(False, f"left as it is: {plan or 'filter_fn'}")
    return report


def _plan_each(layers: dict[str, nn.Module], plan_one: Callable[[str, nn.Module], _Planned | str]
               ) -> dict[str, _Planned | str]:
    """Plan layer by layer; an error is re-raised naming the layer (nothing has been changed yet)."""
    plans: dict[str, _Planned | str] = {}
    for fqn, module in layers.items():
        try:
            plans[fqn] = plan_one(fqn, module)
        except (ValueError, TypeError, RuntimeError) as err:
            raise type(err)(f"layer {fqn!r}: {err}; nothing was changed") from err
    return plans


def _check_finite(fqn: str, module: nn.Module) -> None:
    weight = module.weight.detach()
    if weight.is_floating_point() and not torch.isfinite(weight).all():
        raise ValueError("its weight holds NaN or inf, which cannot be ranked")


# ------------------------------------------------------------------------------------------------- pruning
@dataclass(frozen=True)
class PruneConfig:
    """Mask weights through ``parametrize`` (training continues; `prune.make_permanent` bakes the masks in).

    `method`: a saliency of `sparsity_lab.pruning.saliency.METHODS` ("magnitude", "random", "wanda", "obd-ggn", ...),
    or "sparsegpt" (layer by layer in the order the model reaches them, each from its inputs with the earlier layers
    pruned; the kept weights are updated too; unstructured or N:M, unmasked linear layers); data-driven methods
    need `data` = (x,) for Wanda and SparseGPT (the model's inputs) or (x, y) for OBD. `pattern`: any
    `patterns.parse_pattern` spec ("unstructured", "2:4", "4:8", "block 4x4", "row", "column"). `scope`: "layer"
    prunes each layer at `sparsity`; "global" spends one budget across the layers (unstructured only). Weights
    already masked stay masked, so repeated calls with growing sparsity form a schedule."""

    sparsity: float | None = 0.5
    pattern: str = "unstructured"
    method: str = "magnitude"
    scope: str = "layer"
    data: tuple[torch.Tensor, ...] | None = None
    seed: int = 0
    takes = "Linear and Conv2d layers with a weight"

    def candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        from sparsity_lab.pruning.prune import prunable_layers

        return prunable_layers(model)

    def plan(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, _Planned | str]:
        from sparsity_lab.patterns.masks import parse_pattern
        from sparsity_lab.pruning.prune import apply_mask, below_pruned, current_mask, masks_from_scores
        from sparsity_lab.pruning.saliency import METHODS, saliency

        if self.method not in (*METHODS, "sparsegpt"):
            raise ValueError(f"method must be one of {(*METHODS, 'sparsegpt')}, got {self.method!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        pattern = parse_pattern(self.pattern)
        if not layers:
            return {}
        if self.scope == "global" and pattern.kind != "unstructured":
            raise ValueError(f"scope='global' needs the unstructured pattern, got {pattern.name!r}")
        _plan_each(layers, lambda fqn, m: _check_finite(fqn, m) or "")
        if self.method == "sparsegpt":
            return self._plan_sparsegpt(model, layers, pattern)
        x, y = (*self.data, None)[:2] if self.data is not None else (None, None)
        scores = saliency(model, self.method, x, y, seed=self.seed)
        scores = {fqn: scores[fqn] for fqn in layers}
        pruned = {fqn: current_mask(module) for fqn, module in layers.items()}  # stays pruned
        if pattern.kind == "unstructured":
            masks = masks_from_scores(scores, self.sparsity, self.scope, keep_pruned=pruned)
        else:
            masks = _plan_each(scores, lambda fqn, s: pattern.mask(below_pruned(s.double(), pruned[fqn]),
                                                                   self.sparsity))
        what = f"pruned: {pattern.name} by {self.method}" + (" (one global budget)" if self.scope == "global" else "")
        return {fqn: _Planned(what, lambda m=layers[fqn], k=mask: apply_mask(m, k)) for fqn, mask in masks.items()}

    def _plan_sparsegpt(self, model: nn.Module, layers: dict[str, nn.Module], pattern: object
                        ) -> dict[str, _Planned | str]:
        """SparseGPT solved on a copy of the model (`pruning.sparsegpt.sequential_sparsegpt`); installing writes each
        layer's updated weight and attaches its mask."""
        from torch.nn.utils import parametrize

        from sparsity_lab.pruning.prune import apply_mask
        from sparsity_lab.pruning.sparsegpt import sequential_sparsegpt

        if self.data is None or self.scope != "layer" or pattern.kind not in ("unstructured", "nm"):
            raise ValueError("method='sparsegpt' needs data=(inputs, ...), scope='layer' and an unstructured or N:M "
                             f"pattern; got data={'given' if self.data is not None else None}, scope={self.scope!r}, "
                             f"pattern={pattern.name!r}")

        def check(fqn: str, module: nn.Module) -> str:
            if not isinstance(module, nn.Linear) or parametrize.is_parametrized(module, "weight"):
                raise ValueError("method='sparsegpt' rewrites the weights of unmasked nn.Linear layers only")
            return ""

        _plan_each(layers, check)
        solved = sequential_sparsegpt(model, tuple(self.data), list(layers), pattern.name, self.sparsity)

        def install(module: nn.Module, weight: torch.Tensor, mask: torch.Tensor) -> nn.Module:
            with torch.no_grad():
                module.weight.copy_(weight)
            return apply_mask(module, mask)

        what = f"pruned: {pattern.name} by sparsegpt (kept weights updated)"
        return {fqn: _Planned(what, lambda m=layers[fqn], w=solved[fqn][0], k=solved[fqn][1]: install(m, w, k))
                if fqn in solved else "not reached by model(*data)" for fqn in layers}


# ---------------------------------------------------------------------------------------- linear layer swaps
class _LinearSwap:
    """What the configs that turn each ``nn.Linear`` into another layer share: which layers they take, and a plan
    that checks the config, skips the layers `unfit` names a reason for, refuses non-finite weights and builds
    every replacement before anything is installed."""

    takes = "nn.Linear layers"

    def candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        return _linear_layers(model)

    def check(self) -> None:
        """Raise a ValueError naming the field when the config itself is wrong."""

    def unfit(self, linear: nn.Module) -> str | None:
        """Why this layer is left as it is (None: it is converted)."""
        return None

    def convert(self, linear: nn.Module) -> tuple[str, nn.Module]:
        """(what was done, the new layer) for an accepted layer; must not change `linear`."""
        raise NotImplementedError

    def plan(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, _Planned | str]:
        self.check()

        def plan_one(fqn: str, linear: nn.Module) -> _Planned | str:
            reason = self.unfit(linear)
            if reason:
                return reason
            _check_finite(fqn, linear)
            what, layer = self.convert(linear)
            return _Planned(what, lambda: layer)

        return _plan_each(layers, plan_one)


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# -------------------------------------------------------------------------------------------------- 2:4
@dataclass(frozen=True)
class Semi24Config(_LinearSwap):
    """2:4 inference: each ``nn.Linear`` becomes a `Semi24Linear` (weight pruned to 2:4 by magnitude, frozen).

    `backend`: "cusparselt" (ours), "torch_cslt" or "cutlass" (PyTorch's, to compare); `dispatcher` measures
    sparse against dense per shape at first use and runs whichever is faster (None: always sparse where the
    kernel can run). Sizes must be multiples of 64; other layers are left as they are, with the reason."""

    backend: str = "cusparselt"
    dispatcher: Dispatcher | None = field(default_factory=lambda: DEFAULT_DISPATCHER)

    def check(self) -> None:
        from sparsity_lab.semi24.matmul import SPARSE_PATHS

        _check_choice("backend", self.backend, SPARSE_PATHS)

    def unfit(self, linear: nn.Module) -> str | None:
        if linear.in_features % 64 or linear.out_features % 64:
            return f"{linear.in_features}x{linear.out_features} is not a multiple of 64"
        return None

    def convert(self, linear: nn.Module) -> tuple[str, nn.Module]:
        from sparsity_lab.semi24.layer import Semi24Linear

        layer = Semi24Linear.from_linear(linear, backend=self.backend, dispatcher=self.dispatcher)
        return f"Semi24Linear ({self.backend}{', dispatched' if self.dispatcher is not None else ''})", layer


# ------------------------------------------------------------------------------------------------- int8
@dataclass(frozen=True)
class Int8Config(_LinearSwap):
    """Symmetric int8 dynamic quantization of each ``nn.Linear`` (per-channel weights, per-token activations);
    with `sparse`, int8 2:4 (`Int8Semi24Linear`; `prune=False` requires weights already 2:4). `backend` picks
    the integer matmul ("auto", see `quant.layers`); `fused` runs the Triton quantize and rescale kernels (None:
    on CUDA inputs where Triton is installed)."""

    sparse: bool = True
    backend: str = "auto"
    fused: bool | None = None
    prune: bool = True

    def convert(self, linear: nn.Module) -> tuple[str, nn.Module]:
        from sparsity_lab.quant.layers import Int8Linear, Int8Semi24Linear

        if self.sparse and linear.in_features % 4 == 0:
            layer = Int8Semi24Linear.from_linear(linear, backend=self.backend, fused=self.fused, prune=self.prune)
            return "Int8Semi24Linear (int8 2:4)", layer
        why = f" (in_features={linear.in_features} is not a multiple of 4: dense int8)" if self.sparse else ""
        return "Int8Linear" + why, Int8Linear.from_linear(linear, backend=self.backend, fused=self.fused)


@dataclass(frozen=True)
class Fp8Config(_LinearSwap):
    """FP8 dynamic quantization of each ``nn.Linear`` (`format` "e4m3" or "e5m2"; per-channel weights, per-token
    activations); with `sparse`, FP8 2:4 (`Fp8Semi24Linear`, cuSPARSELt on the GPU; `prune=False` requires weights
    already 2:4). `backend`: "auto" (the GPU kernels on CUDA, the float64 reference elsewhere) or "reference";
    `fused` quantizes with the Triton kernel (None: on CUDA inputs where Triton is installed)."""

    format: str = "e4m3"
    sparse: bool = True
    backend: str = "auto"
    fused: bool | None = None
    prune: bool = True

    def check(self) -> None:
        from sparsity_lab.quant.fp8 import FORMATS

        _check_choice("format", self.format, tuple(FORMATS))
        _check_choice("backend", self.backend, ("auto", "reference"))

    def unfit(self, linear: nn.Module) -> str | None:
        if self.sparse and linear.in_features % 4:
            return f"in_features={linear.in_features} is not a multiple of 4 (2:4 groups)"
        return None

    def convert(self, linear: nn.Module) -> tuple[str, nn.Module]:
        from sparsity_lab.quant.fp8 import Fp8Linear, Fp8Semi24Linear

        if self.sparse:
            layer = Fp8Semi24Linear.from_linear(linear, self.format, self.backend, self.fused, prune=self.prune)
            return f"Fp8Semi24Linear ({self.format} 2:4)", layer
        return f"Fp8Linear ({self.format})", Fp8Linear.from_linear(linear, self.format, self.backend, self.fused)


# ------------------------------------------------------------------------------------------------- block
@dataclass(frozen=True)
class BlockSparseConfig(_LinearSwap):
    """Block-sparse inference: each ``nn.Linear`` whose sides are multiples of `block_size` and whose stored-block
    density is at most `max_density` becomes a `BlockSparseLinear` (prune blocks first, e.g. `block.pruning`).
    `backend`: "auto" (the dispatcher keeps the fastest of the kernel's variants and dense), "triton", "tma",
    "pointer" or "dense"."""

    block_size: int = 64
    max_density: float = 0.7
    backend: str = "auto"

    def check(self) -> None:
        from sparsity_lab.block.layer import BLOCK_BACKENDS

        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if not 0.0 <= self.max_density <= 1.0:
            raise ValueError(f"max_density must be in [0, 1], got {self.max_density!r}")
        _check_choice("backend", self.backend, BLOCK_BACKENDS)

    def unfit(self, linear: nn.Module) -> str | None:
        if any(side % self.block_size for side in linear.weight.shape):
            return f"{tuple(linear.weight.shape)} is not a multiple of block {self.block_size}"
        out_blocks, in_blocks = (side // self.block_size for side in linear.weight.shape)
        nonzero = (linear.weight.detach() != 0).reshape(out_blocks, self.block_size, in_blocks, self.block_size)
        density = float(nonzero.any(dim=3).any(dim=1).float().mean())  # the blocks BSR would store
        if density > self.max_density:
            return f"block density {density:.2f} is above max_density={self.max_density}"
        return None

    def convert(self, linear: nn.Module) -> tuple[str, nn.Module]:
        from sparsity_lab.block.layer import BlockSparseLinear

        layer = BlockSparseLinear.from_linear(linear, self.block_size, backend=self.backend)
        return f"BlockSparseLinear (block {self.block_size}, density {layer.density:.2f})", layer


# ------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class Semi24TrainingConfig(_LinearSwap):
    """2:4 training: each ``nn.Linear`` (sizes multiples of 4) becomes a `Semi24TrainingLinear` holding its weight:
    `mask` "dynamic" (recomputed from |W| every step) or "fixed"; `transpose` "transposable" or "recompress";
    `srste_decay` SR-STE's λ; `backend` "auto", "dense" or "cusparselt"."""

    mask: str = "dynamic"
    transpose: str = "transposable"
    srste_decay: float = 0.0
    backend: str = "auto"

    def unfit(self, linear: nn.Module) -> str | None:
        if linear.in_features % 4 or linear.out_features % 4:
            return f"{linear.in_features}x{linear.out_features} is not a multiple of 4"
        return None

    def convert(self, linear: nn.Module) -> tuple[str, nn.Module]:
        from sparsity_lab.training.layer import Semi24TrainingLinear

        layer = Semi24TrainingLinear.from_linear(linear, mask=self.mask, transpose=self.transpose,
                                                 srste_decay=self.srste_decay, backend=self.backend)
        return f"Semi24TrainingLinear ({self.mask} mask, {self.transpose})", layer
