"""Saliencies: how much each weight matters, as scores shaped like the weights (higher = keep).

Every function returns a dict layer name -> tensor shaped like that layer's weight, over the layers of
`sparsity_lab.pruning.prune.prunable_layers`, ready for `sparsity_lab.pruning.prune.prune_by_scores`:

- `magnitude`: |w|;  `random`: uniform noise (the baseline any saliency must beat);
- `obd`: Optimal Brain Damage (LeCun, Denker & Solla 1989), s_k = 1/2 h_kk w_k^2, with the Hessian diagonal from
  any estimator of `sparsity_lab.pruning.hessian` (exact, the paper's Levenberg-Marquardt recursion, Gauss-Newton,
  Hutchinson, empirical Fisher);
- `obs_saliency` / `obs_prune`: Optimal Brain Surgeon (Hassibi & Stork 1993) on one small layer, with its full
  Hessian block: s_q = w_q^2 / (2 [H^-1]_qq), and the update of the surviving weights that compensates each deletion;
- `wanda`: |W_ij| * ||X_j||_2 (Sun et al. 2023), the input activation norms taken from calibration data.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsity_lab.pruning.hessian import hessian_diagonal, layer_hessian, weight_params
from sparsity_lab.pruning.prune import apply_mask, check_scores, magnitudes, prunable_layers

Scores = dict[str, torch.Tensor]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach() for name, module in prunable_layers(model).items()}


def magnitude(model: nn.Module) -> Scores:
    """|w| for every prunable weight (float64 for integer weights, whose abs() would wrap at the minimum)."""
    return {name: w.abs().clone() if w.is_floating_point() else magnitudes(w) for name, w in _weights(model).items()}


def random(model: nn.Module, seed: int = 0) -> Scores:
    """Uniform random scores in [0, 1) from `seed`: deletion at random."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=generator, dtype=w.dtype) for name, w in _weights(model).items()}


def obd_from_diagonal(weights: dict[str, torch.Tensor], diagonal: dict[str, torch.Tensor]) -> Scores:
    """OBD saliency 1/2 max(h_kk, 0) w_k^2 per weight.

    Negative curvature estimates (Hutchinson's noise, or a true saddle direction) are clamped to zero: a
    second-order model that predicts no increase puts that weight first in line, as the paper's formula would.
    """
    if set(weights) != set(diagonal):
        raise KeyError(f"weights have layers {sorted(weights)} but the diagonal has {sorted(diagonal)}")
    scores = {}
    for name, w in weights.items():
        h = diagonal[name]
        check_scores(h, like=w, name=f"hessian diagonal of {name!r}")
        scores[name] = 0.5 * h.clamp(min=0) * w.detach().pow(2)
    return scores


def obd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, hessian: str = "ggn", loss: str = "ce", **options
) -> Scores:
    """Optimal Brain Damage saliencies with the Hessian diagonal estimated by `hessian` on (x, y)."""
    return obd_from_diagonal(_weights(model), hessian_diagonal(model, x, y, method=hessian, loss=loss, **options))


def predicted_increase(scores: Scores, deleted: dict[str, torch.Tensor]) -> float:
    """OBD's prediction of the loss increase: the sum of the saliencies of the deleted (True) weights."""
    return float(sum(scores[name][deleted[name]].sum() for name in scores))


def _obs_inverse(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, loss: str, damping: float):
    h = layer_hessian(model, layer, x, y, loss).to(torch.float64)
    h = h + damping * h.diagonal().mean().clamp(min=1e-12) * torch.eye(h.shape[0], dtype=h.dtype)
    try:
        chol = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"the Hessian block of layer {layer!r} is not positive definite with damping {damping}; "
                         "raise `damping` or choose the output layer (whose block is always PSD)") from err
    return prunable_layers(model)[layer].weight.detach(), torch.cholesky_inverse(chol)


def obs_saliency(
    model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", damping: float = 1e-4
) -> torch.Tensor:
    """OBS saliency w_q^2 / (2 [H^-1]_qq) of each weight of one layer (full Hessian block, damped by
    `damping` times its mean diagonal), shaped like the weight."""
    weight, inverse = _obs_inverse(model, layer, x, y, loss, damping)
    return (weight.reshape(-1).double().pow(2) / (2 * inverse.diagonal())).reshape(weight.shape).to(weight.dtype)


def obs_prune(
    model: nn.Module, layer: str, count: int, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
    damping: float = 1e-4,
) -> list[float]:
    """Delete `count` weights of `layer` one at a time by OBS, updating the survivors each time; in place, with a mask.

    Each step removes q = argmin w_q^2 / (2 [H^-1]_qq), moves the others by -w_q H^-1 e_q / [H^-1]_qq and shrinks
    H^-1 by the rank-one update that removes coordinate q. The Hessian is computed once, at the start (as in the
    paper). Returns the predicted increase after each deletion (cumulative).
    """
    weight, inverse = _obs_inverse(model, layer, x, y, loss, damping)
    if not 0 <= count <= weight.numel():
        raise ValueError(f"count must be in [0, {weight.numel()}] for layer {layer!r}, got {count}")
    w = weight.reshape(-1).double().clone()
    alive = torch.ones_like(w, dtype=torch.bool)
    predicted, total = [], 0.0
    for _ in range(count):
        diag = inverse.diagonal()
        s = torch.where(alive, w.pow(2) / (2 * diag.clamp(min=1e-30)), torch.inf)
        q = int(s.argmin())
        total += float(s[q])
        w -= w[q] / inverse[q, q] * inverse[:, q]
        w[q] = 0.0
        inverse = inverse - torch.outer(inverse[:, q], inverse[q, :]) / inverse[q, q]
        alive[q] = False
        predicted.append(total)
    module = prunable_layers(model)[layer]
    with torch.no_grad():
        weight_params(model)[layer].copy_(w.reshape(weight.shape).to(weight.dtype))
    apply_mask(module, alive.reshape(weight.shape))
    return predicted


@torch.no_grad()
def wanda(model: nn.Module, x: torch.Tensor) -> Scores:
    """Wanda scores |W_ij| * ||X_j||_2: ||X_j|| is the norm of input feature j over the calibration batch x."""
    norms: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in prunable_layers(model).items():
        if not isinstance(module, nn.Linear):
            raise TypeError(f"wanda handles nn.Linear layers only; layer {name!r} is {type(module).__name__}")
        handles.append(module.register_forward_hook(
            lambda mod, inputs, output, name=name: norms.__setitem__(name, inputs[0].reshape(-1, mod.in_features)
                                                                   .norm(dim=0))))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: w.abs() * norms[name].to(w.dtype) for name, w in _weights(model).items()}


def saliency(model: nn.Module, method: str, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
             loss: str = "ce", seed: int = 0, samples: int = 100) -> Scores:
    """Scores by name: "magnitude", "random", "wanda" (needs x) or "obd-<estimator>" (needs x, y), e.g. "obd-ggn";
    `seed` drives "random" and Hutchinson's probes, `samples` is Hutchinson's number of probes."""
    if method == "magnitude":
        return magnitude(model)
    if method == "random":
        return random(model, seed=seed)
    if x is None:
        raise ValueError(f"saliency {method!r} needs data x (and y for OBD)")
    if method == "wanda":
        return wanda(model, x)
    if method.startswith("obd-") and y is not None:
        hessian = method.removeprefix("obd-")
        options = {"samples": samples, "seed": seed} if hessian == "hutchinson" else {}
        return obd(model, x, y, hessian=hessian, loss=loss, **options)
    raise ValueError(f"unknown saliency {method!r} (or y missing for OBD); choose from {METHODS}")


METHODS = ("magnitude", "random", "wanda", "obd-exact", "obd-lecun", "obd-ggn", "obd-hutchinson", "obd-fisher")
