"""Every lecture widget driven through its controls' range without a browser: each control set to its minimum,
middle and maximum (each option of a choice), no callback fails, and the widget's figures change.

The browser check (tests/browser) moves one control of each widget in a real JupyterLab; this walks all of
them, on small models so that it stays quick. A guarded callback (sparsity_lab.course.widgets) does not raise:
its error lands in `box.errors`, which must stay empty.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

import ipywidgets  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from sparsity_lab.course.data import load_digits  # noqa: E402
from sparsity_lab.course.models import DigitsMLP  # noqa: E402
from sparsity_lab.course.train import fit  # noqa: E402
from sparsity_lab.course.widgets import CallbackErrors  # noqa: E402

SLIDERS = (ipywidgets.IntSlider, ipywidgets.FloatSlider)
CHOICES = (ipywidgets.Dropdown, ipywidgets.ToggleButtons)


@pytest.fixture(scope="module")
def data():
    return load_digits()


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    model = DigitsMLP(hidden=32)
    fit(model, data, epochs=2, seed=0, progress=False)
    return model.eval()


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def _controls(box) -> list:
    return [w for w in _walk(box) if isinstance(w, SLIDERS + CHOICES)]


def _figures(box) -> list:
    return [w for w in _walk(box) if isinstance(w, go.FigureWidget)]


def _state(box) -> str:
    return json.dumps([f.to_plotly_json() for f in _figures(box)], sort_keys=True, default=str)


def _values(control) -> list:
    if isinstance(control, SLIDERS):
        low, high, step = control.min, control.max, control.step
        middle = low + round((high - low) / 2 / step) * step
        return [low, middle, high]
    return list(control._options_values)


def _drive(box, check_errors: bool = True) -> None:
    """Set every control through its range, then back; each control must change some figure."""
    assert _figures(box), "the widget has no figure"
    for control in _controls(box):
        start, changed = control.value, False
        for value in _values(control) + [start]:
            before = _state(box)
            control.value = value
            if check_errors:
                errors = box.errors
                assert errors.error is None, f"{control.description} = {value!r}: {errors.error!r}"
                assert not errors.output.outputs
            changed |= _state(box) != before
        assert changed, f"moving {control.description!r} through {_values(control)} changed no figure"


def _fits(box, width: int = 840) -> None:
    """Every figure has a fixed width within `width` px, or sits beside others that share it."""
    for row in [w for w in _walk(box) if isinstance(w, ipywidgets.HBox)] + [box]:
        figures = [c for c in row.children if isinstance(c, go.FigureWidget)]
        if figures:
            widths = [f.layout.width for f in figures]
            assert all(widths) and sum(widths) <= width, f"figures {widths} px wide, more than {width}"


def test_magnitude_pruning_explorer(model, data):
    from sparsity_lab.pruning.widgets import magnitude_pruning_explorer

    rows = [{"sparsity": s, "accuracy": 0.9 - s / 2, "finetuned_accuracy": 0.95 - s / 4} for s in (0.0, 0.5, 0.9)]
    box = magnitude_pruning_explorer(model, data, rows, layer="net.1")
    _fits(box)
    _drive(box)


def test_saliency_explorer(model, data):
    from sparsity_lab.pruning.obd_widgets import saliency_explorer

    box = saliency_explorer(model, data, methods=("magnitude", "obd-ggn", "random"), samples=2)
    _fits(box)
    _drive(box)


def test_pattern_explorer(model, data):
    from sparsity_lab.patterns.widgets import pattern_explorer

    box = pattern_explorer(model, data, layer="net.1", window=(16, 32))
    _fits(box)
    _drive(box)
    titles = [a.text for a in _figures(box)[0].layout.annotations]
    assert all("<br>" in t for t in titles), "two-line subplot titles: they must not run into one another"


def test_format_explorer_draws_every_setting():
    from sparsity_lab.formats.widgets import format_explorer

    box = format_explorer()
    _fits(box)
    _drive(box)


@pytest.mark.parametrize("blocksize", [(2, 2), (4, 4), (2, 4)])
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.95, 1.0])
def test_format_explorer_edges(blocksize, sparsity):
    """Whole blocks at high sparsity keep no block at all (8x8 in 4x4 blocks at 90%): an empty BSR draws."""
    from sparsity_lab.formats.widgets import format_explorer

    box = format_explorer()
    (sparsity_box, _), (block_box, pattern_box), _ = (row.children for row in box.children[:3])
    block_box.value, pattern_box.value = blocksize, "blocks"
    sparsity_box.value = sparsity
    assert box.errors.error is None, repr(box.errors.error)
    figure = _figures(box)[0]
    block = blocksize[0] * blocksize[1]
    positions = 64 // block
    stored = sum(v is not None for row in figure.data[0].z for v in row)
    assert stored == (positions - round(sparsity * positions)) * block
    assert len(figure.layout.shapes) == stored // block, "one box per stored block"

    cells = [c for column in figure.data[1].cells.values for c in column]
    assert all(" " not in str(c) for c in cells), "a table cell with a space is drawn blank on first draw"


def test_compressor_explorer():
    from sparsity_lab.semi24.widgets import compressor_explorer

    box = compressor_explorer(seed=0)
    _drive(box)
    for figure in _figures(box):
        assert figure.layout.width <= 840


def test_int8_channel_explorer():
    from sparsity_lab.quant.widgets import int8_channel_explorer

    weight = torch.randn(6, 40)
    weight[2] = 0.0  # an all-zero channel: scale 0
    box = int8_channel_explorer(weight, columns=16)
    _fits(box)
    _drive(box)


def test_mask_explorer():
    from sparsity_lab.training.widgets import mask_explorer

    box = mask_explorer(rows=8, cols=8, seed=0)
    _drive(box)
    for figure in _figures(box):
        assert figure.layout.width <= 840


def test_block_pruning_explorer(model, data):
    from sparsity_lab.block.widgets import block_pruning_explorer

    box = block_pruning_explorer(model, data, layer="net.3", block_sizes=(1, 8, 32))
    _drive(box, check_errors=hasattr(box, "errors"))


def test_callback_errors_show_in_the_widget_and_clear_on_success():
    slider = ipywidgets.FloatSlider(value=0.5, description="sparsity")
    errors = CallbackErrors({"sparsity": slider, "block": ipywidgets.Dropdown(options=[("4x4", (4, 4))])},
                            "prune the model")

    @errors.guard
    def update(change=None):
        if slider.value > 0.8:
            raise RuntimeError("cannot reshape tensor of 0 elements")
        return "drawn"

    assert update() == "drawn" and errors.error is None and not errors.output.outputs
    slider.value = 0.9
    assert update() is None and isinstance(errors.error, RuntimeError)
    (shown,) = errors.output.outputs
    assert shown["name"] == "stderr"
    text = shown["text"]
    assert text.startswith("Could not prune the model for sparsity = 0.9, block = 4x4:")
    assert "RuntimeError: cannot reshape tensor of 0 elements" in text and "Traceback" in text
    slider.value = 0.5
    assert update() == "drawn" and errors.error is None and not errors.output.outputs
