"""Numerical checks shared by the matmul paths, the kernels' tests and the benchmarks."""

from __future__ import annotations

import torch


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """‖y − ref‖ / ‖ref‖ in float64; inf when `y` holds NaN or inf (an unwritten, poisoned output never passes),
    and an all-zero reference is not divided by."""
    y64, ref64 = y.detach().to(torch.float64), reference.detach().to(torch.float64)
    if not torch.isfinite(y64).all():
        return float("inf")
    return float((y64 - ref64).norm() / ref64.norm().clamp_min(1e-30))
