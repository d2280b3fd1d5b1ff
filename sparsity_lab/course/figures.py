"""What every figure builder shares: plotly imported lazily, titles that carry a recording's label, and the size
of a widget's figure."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from sparsity_lab._optional import require

# A widget's FigureWidget does not follow its output area's width the way a shown figure does: it is drawn at a
# fixed size. 840 px fits the output area of JupyterLab in a 1280 px wide window with the file browser open
# (about 850 px; 970 px at 1400), so no widget's figure is cut off; side by side, two figures get half each.
WIDGET_WIDTH = 840
HALF_WIDTH = WIDGET_WIDTH // 2


def go() -> ModuleType:
    """`plotly.graph_objects`, imported on first use (plotly is a course dependency)."""
    return require("plotly.graph_objects")


def titled(text: str, caption: str) -> str:
    """A title with the results' label (where and when it was measured) underneath."""
    return text + (f"<br><sup>{caption}</sup>" if caption else "")


def fixed_size(fig: Any, width: int = WIDGET_WIDTH, height: int | None = None) -> Any:
    """`fig` drawn at `width` x `height` px (height: the figure's own, or plotly's default), not autosized."""
    fig.update_layout(width=width, autosize=False, **({"height": height} if height else {}))
    return fig


def cell_px(columns: int, room: int = WIDGET_WIDTH - 140, smallest: int = 8, largest: int = 36) -> int:
    """The side in px of a heatmap's square cells when `columns` of them share `room` px (a widget's width less
    its margins), kept between `smallest` and `largest`."""
    return max(smallest, min(largest, room // max(1, columns)))


def cell_font(cell: int, chars: int, largest: int = 12) -> int | None:
    """A font size (px) at which `chars` characters fit a `cell` px wide cell, or None below 9 px (too small to
    read: leave the text out, hovering still shows it)."""
    size = min(largest, int(cell / (0.62 * max(1, chars) + 0.4)))
    return size if size >= 9 else None
