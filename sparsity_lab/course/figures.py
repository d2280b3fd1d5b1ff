"""What every figure builder shares: plotly imported lazily, and titles that carry a recording's label."""

from __future__ import annotations

from types import ModuleType

from sparsity_lab._optional import require


def go() -> ModuleType:
    """`plotly.graph_objects`, imported on first use (plotly is a course dependency)."""
    return require("plotly.graph_objects")


def titled(text: str, caption: str) -> str:
    """A title with the results' label (where and when it was measured) underneath."""
    return text + (f"<br><sup>{caption}</sup>" if caption else "")
