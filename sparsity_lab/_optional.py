"""Import course-only dependencies lazily, with an error that says which extra provides them."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str = "course") -> ModuleType:
    """Import `module` or raise ImportError naming the `sparsity_lab[extra]` that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module!r} is needed here but is not installed; install it with "
            f"`pip install \"sparsity_lab[{extra}]\"` (or `pip install {module.split('.')[0]}`)."
        ) from err


def triton_interpreting() -> bool:
    """Whether Triton's kernels run in its CPU interpreter (TRITON_INTERPRET=1, read when Triton is imported)."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    """Whether Triton can be imported (the optional dependency of every Triton kernel in the package)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
