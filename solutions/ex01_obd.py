"""Reference solution for exercise 01 (OBD saliency and Hutchinson's diagonal estimator)."""

from collections.abc import Callable

import torch


def obd_saliency(weight: torch.Tensor, hessian_diagonal: torch.Tensor) -> torch.Tensor:
    """OBD saliency 1/2 max(h, 0) w^2, shaped like `weight`."""
    if weight.shape != hessian_diagonal.shape:
        raise ValueError(f"hessian_diagonal has shape {tuple(hessian_diagonal.shape)}, weight {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("hessian_diagonal", hessian_diagonal)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} holds non-finite values")
    return 0.5 * hessian_diagonal.clamp(min=0) * weight.pow(2)


def hutchinson_diagonal(
    hvp: Callable[[torch.Tensor], torch.Tensor], n: int, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hutchinson's estimate of diag(H) from `samples` Rademacher probes through `hvp`."""
    if samples < 1 or n < 1:
        raise ValueError(f"samples and n must be >= 1, got samples={samples}, n={n}")
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(samples):
        z = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
        total += z * hvp(z).to(torch.float64)
    return total / samples
