"""Exercise 01: Optimal Brain Damage saliency from a Hessian diagonal, and Hutchinson's estimator of that diagonal.

Lecture: lectures/01_pruning_obd.ipynb. Grade with `sparsity-lab grade ex01`.

1. `obd_saliency(weight, hessian_diagonal)`: the OBD saliency s_k = 1/2 * h_kk * w_k^2 of every weight, where h_kk is
   the loss's second derivative with respect to w_k. Rules:
   - return a tensor shaped like `weight`; do not modify the inputs;
   - clamp negative curvature to zero first (use max(h_kk, 0)): a second-order model that predicts no increase
     ranks that weight first for deletion;
   - raise ValueError if the two tensors differ in shape, or if either holds a NaN or an infinity.

2. `hutchinson_diagonal(hvp, n, samples, generator)`: estimate diag(H) of an n x n matrix you can only multiply by,
   through `hvp(v) -> H @ v` (a Hessian-vector product). Hutchinson: for random vectors z with independent entries
   +1 or -1 (Rademacher), E[z * (H z)] = diag(H). Return the mean of z * hvp(z) over `samples` vectors. Rules:
   - draw z with `torch.randint(0, 2, (n,), generator=generator)` mapped to -1/+1, in float64, one per sample;
   - return a float64 tensor of shape (n,);
   - raise ValueError if `samples` < 1 or `n` < 1.
"""

from collections.abc import Callable

import torch


def obd_saliency(weight: torch.Tensor, hessian_diagonal: torch.Tensor) -> torch.Tensor:
    """OBD saliency 1/2 max(h, 0) w^2, shaped like `weight`."""
    raise NotImplementedError("ex01: write obd_saliency")


def hutchinson_diagonal(
    hvp: Callable[[torch.Tensor], torch.Tensor], n: int, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hutchinson's estimate of diag(H) from `samples` Rademacher probes through `hvp`."""
    raise NotImplementedError("ex01: write hutchinson_diagonal")
