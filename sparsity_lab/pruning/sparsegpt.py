"""SparseGPT (Frantar & Alistarh 2023): prune one linear layer and compensate, from its input Hessian alone.

A linear layer y = W x seen on calibration inputs X (tokens x in) is pruned to minimise the reconstruction error
||W Xᵀ - Ŵ Xᵀ||², whose Hessian for every row of W is H = 2 Xᵀ X (accumulated over tokens). OBS says: removing
w_q costs w_q² / [H⁻¹]_qq and the others should move by -w_q H⁻¹ e_q / [H⁻¹]_qq. SparseGPT makes that cheap for
whole matrices by treating the columns in order, left to right: the error of each column is pushed onto the
columns to its right only, so one upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U) gives every step's [H⁻¹]_cc (U_cc²)
and update row (U_c,c: / U_cc), shared by all rows of W. Columns go in blocks of B: inside a block each column
updates the block's later columns at once, and the block's accumulated error updates the rest of the matrix in one
matrix product (lazy batched updates).

Masks are chosen as the columns are reached, by OBS's saliency w_c² / [H_F⁻¹]_cc, where H_F is the Hessian of
the columns not yet processed and [H_F⁻¹]_cc = U_cc² (the reference code's w² / diag(U)²):

- unstructured: at the start of each block of B columns, the lowest `sparsity` share of the block's scores (rows
  x B columns, with the weights as compensated so far) is pruned: adaptive mask selection, as the paper's
  reference code does with B = 128; `pruning.prune.topk_mask` decides (ties: the lower index is kept);
- N:M: when column c starts a group of M, the N highest scores of every row over columns c..c+M-1 are kept, by
  `patterns.masks.nm_mask` (ties: the lower index is kept).

`hessian(x)` builds H from recorded inputs; `sparsegpt_prune(weight, H, pattern)` returns the pruned weight and
its mask; `sequential_sparsegpt(model, inputs, names)` prunes several layers of any model in forward order, each
calibrated with the earlier ones pruned. Everything is float64 inside. With `mask=` the mask is given and only the
compensation runs (the tests' handle on the update itself).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from sparsity_lab.patterns.masks import nm_mask, parse_pattern
from sparsity_lab.pruning.prune import check_sparsity, make_permanent, topk_mask

DEFAULT_BLOCKSIZE = 128
DEFAULT_PERCDAMP = 0.01


def hessian(x: torch.Tensor, previous: torch.Tensor | None = None, seen: int = 0) -> tuple[torch.Tensor, int]:
    """H = 2 XᵀX / n (float64) over the rows (tokens) of `x` (..., in); pass the last call's (H, n) as
    (`previous`, `seen`) to accumulate batches into the running mean. Returns (H, n)."""
    x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    total = seen + x.shape[0]
    if total == 0:
        raise ValueError("no calibration tokens: H needs at least one input row")
    update = 2.0 * x.T @ x
    if previous is None:
        return update / total, total
    return previous * (seen / total) + update / total, total


def damped_inverse_cholesky(h: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP) -> torch.Tensor:
    """Upper U with Uᵀ U = (H + λ I)⁻¹, λ = percdamp * mean(diag H); a ValueError if H + λI is not positive definite."""
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {tuple(h.shape)}")
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    h = h.to(torch.float64).clone()
    diagonal = torch.arange(h.shape[0], device=h.device)
    h[diagonal, diagonal] += percdamp * h.diagonal().mean()
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"H + λI is not positive definite with percdamp={percdamp}; raise percdamp") from err


def sparsegpt_prune(
    weight: torch.Tensor,
    h: torch.Tensor,
    pattern: str = "unstructured",
    sparsity: float = 0.5,
    blocksize: int = DEFAULT_BLOCKSIZE,
    percdamp: float = DEFAULT_PERCDAMP,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune `weight` (out, in) given its input Hessian `h` (in, in): (pruned weight in weight's dtype, mask with
    True = kept). `pattern`: "unstructured" (at `sparsity`, masks chosen per block of `blocksize` columns) or
    "N:M"; `mask`: compensate for this mask instead of choosing one. Inputs that never fired (H_jj = 0) have their
    column zeroed, as in the reference code."""
    if weight.ndim != 2 or h.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"weight must be (out, in) and H (in, in); got {tuple(weight.shape)} and {tuple(h.shape)}")
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    parsed = parse_pattern(pattern)
    if mask is not None:
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean tensor shaped {tuple(weight.shape)}")
    elif parsed.kind == "unstructured":
        check_sparsity(sparsity)
    elif parsed.kind == "nm":
        if weight.shape[1] % parsed.m or blocksize % parsed.m:
            raise ValueError(f"in_features={weight.shape[1]} and blocksize={blocksize} must be multiples of "
                             f"m={parsed.m} for {parsed.name}")
    else:
        raise ValueError(f"SparseGPT chooses unstructured or N:M masks, got pattern {parsed.name!r}")
    w = weight.detach().to(torch.float64).clone()
    h = h.detach().to(device=w.device, dtype=torch.float64).clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = damped_inverse_cholesky(h, percdamp)
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.to(w.device).clone()
    for start in range(0, w.shape[1], blocksize):
        end = min(start + blocksize, w.shape[1])
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        scale = u1.diagonal().pow(2)
        if mask is None and parsed.kind == "unstructured":
            keep[:, start:end] = topk_mask(w1.pow(2) / scale, sparsity)
        errors = torch.zeros_like(w1)
        for i in range(end - start):
            if mask is None and parsed.kind == "nm" and i % parsed.m == 0:
                group = slice(i, i + parsed.m)
                keep[:, start + i: start + i + parsed.m] = nm_mask(w1[:, group].pow(2) / scale[group], parsed.n,
                                                                    parsed.m)
            q = w1[:, i] * keep[:, start + i]
            errors[:, i] = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= errors[:, i: i + 1] * u1[i: i + 1, i:]  # OBS update of the block's later columns
            w1[:, i] = q  # exactly (the update sends it there up to rounding)
        w[:, start:end] = w1
        w[:, end:] -= errors @ u[start:end, end:]  # the lazy update of every later block at once
    return (w * keep).to(weight.dtype), keep


class _Stop(Exception):
    """Raised by the recording hook once a layer's input is captured: the rest of the forward pass is not needed."""


@torch.no_grad()
def sequential_sparsegpt(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: Sequence[str],
    pattern: str = "unstructured",
    sparsity: float = 0.5,
    blocksize: int = DEFAULT_BLOCKSIZE,
    percdamp: float = DEFAULT_PERCDAMP,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """SparseGPT on the linear layers `names` of a copy of `model`, in the order `model(*inputs)` reaches them, each
    layer's H taken from its inputs with the earlier layers already pruned (one forward pass per layer, stopped at
    it). Returns name -> (pruned weight, mask); `model` itself is not changed. Every row of a layer's input counts
    as a token (no padding mask: `sparsity_lab.transformer.study` handles padded sentences)."""
    work = make_permanent(copy.deepcopy(model)).eval()
    modules = dict(work.named_modules())
    for name in names:
        if not isinstance(modules.get(name), nn.Linear):
            raise TypeError(f"{name!r} is not an nn.Linear of the model")
    order: list[str] = []
    hooks = [modules[n].register_forward_pre_hook(lambda m, a, n=n: None if n in order else order.append(n))
             for n in names]
    try:
        work(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    captured: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _Stop

    out = {}
    for name in order:
        layer = modules[name]
        hook = layer.register_forward_pre_hook(record)
        try:
            work(*inputs)
        except _Stop:
            pass
        finally:
            hook.remove()
        weight, mask = sparsegpt_prune(layer.weight, hessian(captured.pop())[0], pattern, sparsity, blocksize,
                                       percdamp)
        layer.weight.copy_(weight)  # the copy's later layers see this layer pruned
        out[name] = (weight, mask)
    return out
