"""Reproducing Optimal Brain Damage (LeCun, Denker & Solla 1989) on the digits MLP.

The paper's two findings, measured here:
(1) at the same number of deleted parameters, OBD raises the training loss less than magnitude, and both less than
    random (`deletion_curve`, with and without retraining);
(2) OBD's predicted increase, the sum of the deleted saliencies, tracks the actual increase for small deletions and
    departs from it for large ones (the `predicted` column of `deletion_curve`).

The paper's setting is a squared-error loss and a well-converged tanh network; `paper_model` trains one in float64
with full-batch L-BFGS (`train_lbfgs`). `estimator_table` and `hutchinson_convergence` measure how good and how
costly each Hessian-diagonal estimator is against the exact diagonal.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch import nn

from sparsity_lab.course.data import load_digits
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.pruning.hessian import (
    exact_diagonal,
    hessian_diagonal,
    hessian_vector_product,
    hutchinson_diagonal,
    model_loss,
    weight_params,
)
from sparsity_lab.pruning.prune import current_mask, prunable_layers, prune_by_scores
from sparsity_lab.pruning.saliency import Scores, predicted_increase, saliency


def train_lbfgs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse", steps: int = 300,
    tolerance: float = 1e-10,
) -> list[float]:
    """Full-batch L-BFGS (strong Wolfe) on the mean `loss`, masks kept; returns the loss after each outer step.

    Converges far tighter than SGD, which OBD needs: its saliency assumes the gradient is zero.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=20, history_size=50, line_search_fn="strong_wolfe",
                                  tolerance_grad=tolerance, tolerance_change=tolerance * 1e-3)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        value = model_loss(model(x), y, loss)
        value.backward()
        return value

    history = []
    model.train()
    for _ in range(steps // 20 + (steps % 20 > 0)):
        optimizer.step(closure)
        with torch.no_grad():
            history.append(float(model_loss(model(x), y, loss)))
        if len(history) > 1 and abs(history[-2] - history[-1]) <= tolerance * max(history[-1], 1e-30):
            break
    return history


def paper_model(hidden: int = 32, seed: int = 0, steps: int = 2000, loss: str = "mse") -> nn.Module:
    """A float64 tanh `DigitsMLP` trained to convergence by full-batch L-BFGS on the training split (paper setting)."""
    data = load_digits()
    torch.manual_seed(seed)
    model = DigitsMLP(hidden=hidden, activation="tanh").double()
    train_lbfgs(model, data.x_train.double(), data.y_train, loss=loss, steps=steps)
    return model.eval()


@torch.no_grad()
def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    """The mean `loss` of `model` on (x, y)."""
    return float(model_loss(model(x), y, loss))


def _count_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def deletion_curve(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, scores: Scores, counts: Sequence[int], loss: str = "mse",
    retrain_steps: int = 0, taylor: bool = False,
) -> list[dict[str, float]]:
    """Delete the `k` lowest-scoring weights (globally) for each k in `counts`; per k the training loss, the loss
    OBD predicts (base + sum of deleted `scores`, meaningful for OBD scores), the full second-order prediction
    (`taylor`, one Hessian-vector product each) and the loss after `retrain_steps` of L-BFGS with the mask held
    (when asked). The model itself is not changed."""
    total = _count_weights(model)
    base = loss_of(model, x, y, loss)
    rows = []
    for k in counts:
        if not 0 <= k < total:
            raise ValueError(f"counts must lie in [0, {total}) (the number of weights), got {k}")
        pruned = prune_by_scores(copy.deepcopy(model), scores, k / total)
        deleted = {n: ~current_mask(m) for n, m in prunable_layers(pruned).items()}
        row = {"deleted": k, "loss": loss_of(pruned, x, y, loss), "base": base,
               "predicted": base + predicted_increase(scores, deleted)}
        if taylor:
            row["taylor"] = base + taylor_increase(model, x, y, deleted, loss)
        if retrain_steps:
            train_lbfgs(pruned, x, y, loss=loss, steps=retrain_steps)
            row["retrained_loss"] = loss_of(pruned, x, y, loss)
        rows.append(row)
    return rows


def taylor_increase(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, deleted: dict[str, torch.Tensor], loss: str = "mse"
) -> float:
    """The second-order Taylor prediction g.dw + 1/2 dw^T H dw of deleting the `deleted` (True) weights, dw = -w there:
    what OBD's diagonal sum leaves out is the gradient term and the off-diagonal terms."""
    weights = {n: m.weight.detach() for n, m in prunable_layers(model).items()}
    step = {n: torch.where(deleted[n], -w, torch.zeros_like(w)) for n, w in weights.items()}
    params = list(weight_params(model).values())
    grads = torch.autograd.grad(model_loss(model(x), y, loss), params)
    hv = hessian_vector_product(model, x, y, step, loss)
    linear = sum(float((g * step[n]).sum()) for g, n in zip(grads, step, strict=True))
    return linear + 0.5 * sum(float((hv[n] * step[n]).sum()) for n in step)


def iterative_deletion_curve(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, counts: Sequence[int], loss: str = "ce",
    samples: int = 100,
) -> list[dict[str, float]]:
    """Delete weights in rounds, up to each k in `counts` (increasing), recomputing the saliency `method` on the
    pruned model before every round (no retraining): the training loss after each round."""
    total = _count_weights(model)
    pruned = copy.deepcopy(model)
    rows, previous = [], 0
    for k in counts:
        if not previous <= k < total:
            raise ValueError(f"counts must increase within [0, {total}), got {k} after {previous}")
        previous = k
        prune_by_scores(pruned, saliency(pruned, method, x, y, loss=loss, samples=samples), k / total)
        rows.append({"deleted": k, "loss": loss_of(pruned, x, y, loss)})
    return rows


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds it took)."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).to(torch.float64) for v in d.values()])


def compare_diagonals(estimate: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> dict[str, float]:
    """Pearson correlation and relative error ||h_hat - h|| / ||h|| of an estimated diagonal against the exact one."""
    a, b = _flat(estimate), _flat(exact)
    correlation = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return {"correlation": correlation, "relative_error": float((a - b).norm() / b.norm()),
            "negative_fraction": float((a < 0).double().mean())}


def estimator_table(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
    methods: Sequence[str] = ("exact", "lecun", "ggn", "hutchinson", "fisher"), hutchinson_samples: int = 100,
) -> list[dict[str, float | str]]:
    """Per estimator: seconds, correlation and relative error against the exact diagonal, share of negative entries."""
    exact, exact_seconds = timed(exact_diagonal, model, x, y, loss)
    rows = []
    for method in methods:
        if method == "exact":
            diag, seconds = exact, exact_seconds
        else:
            options = {"samples": hutchinson_samples} if method == "hutchinson" else {}
            diag, seconds = timed(hessian_diagonal, model, x, y, method, loss, **options)
        rows.append({"method": method, "seconds": seconds, **compare_diagonals(diag, exact)})
    return rows


def hutchinson_convergence(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: Sequence[int], loss: str = "mse", seeds: int = 3,
) -> list[dict[str, float]]:
    """Relative error of Hutchinson's diagonal against the exact one as the number of probe vectors grows
    (mean over `seeds` seeds): it falls like 1/sqrt(samples)."""
    exact = exact_diagonal(model, x, y, loss)
    rows = []
    for n in samples:
        errors = [compare_diagonals(hutchinson_diagonal(model, x, y, loss, samples=n, seed=s), exact)["relative_error"]
                  for s in range(seeds)]
        rows.append({"samples": n, "relative_error": sum(errors) / len(errors)})
    return rows
