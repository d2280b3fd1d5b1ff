"""Benchmarks, one module per topic; each has `main(argv) -> int` and writes a results file
(`sparsity_lab.results`). Run them with `sparsity-lab bench NAME`."""

from __future__ import annotations

import pkgutil


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
