"""What every explorer widget shares: a callback whose exception shows in the widget itself.

An exception raised in an ipywidgets callback never reaches the cell: JupyterLab files it in its log console,
which students do not open, and the widget just stops redrawing. `CallbackErrors.guard` wraps a callback so that
its exception appears in an output area inside the widget (`CallbackErrors.output`), with the controls' values
and what to do about it; the next call that succeeds clears it.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from sparsity_lab._optional import require


def _describe(control: Any) -> str:
    """A control's value as a student reads it: a choice's label, a number without float noise."""
    label = getattr(control, "label", None)
    if isinstance(label, str) and label:
        return label
    value = getattr(control, "value", control)
    return f"{value:g}" if isinstance(value, float) else str(value)


class CallbackErrors:
    """The error area of one widget and the guard for its callbacks.

    `controls` (name -> control) are named in the message, so that the student knows which settings failed.
    `error` is the exception of the last guarded call (None once a call succeeds): tests read it.
    """

    def __init__(self, controls: Mapping[str, Any] | None = None, what: str = "redraw the figure") -> None:
        widgets = require("ipywidgets")
        self.output = widgets.Output(layout=widgets.Layout(max_width="840px"))
        self.controls = dict(controls or {})
        self.what = what
        self.error: BaseException | None = None

    def settings(self) -> str:
        return ", ".join(f"{name} = {_describe(control)}" for name, control in self.controls.items())

    def show(self, error: BaseException) -> None:
        self.error = error
        where = f" for {self.settings()}" if self.controls else ""
        message = (f"Could not {self.what}{where}:\n    {type(error).__name__}: {error}\n"
                   "The figures still show the last settings that worked. Try other values; if these "
                   "should work, report it with this message and the traceback below.\n\n")
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.output.outputs = ()
        self.output.append_stderr(message + details)

    def clear(self) -> None:
        if self.error is not None or self.output.outputs:
            self.error = None
            self.output.outputs = ()

    def guard(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """`callback`, with any exception it raises shown in `self.output` instead of propagating."""

        @functools.wraps(callback)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                result = callback(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - shown to the student, where they look
                self.show(error)
                return None
            self.clear()
            return result

        return guarded
