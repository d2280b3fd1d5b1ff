"""int8 and the two FP8 formats side by side: their bits, range and steps, every value each can hold, and what
each costs one layer.

int8 (symmetric, as `sparsity_lab.quant.int8` uses it) holds the 255 integers -127..127 with one even step, so its
step relative to a value is 1 / |q|: 1/127 at the top of a channel's range, larger than the value itself below
half a step. An FP8 number holds a sign, an exponent and m mantissa bits: between consecutive powers of two it has
2**m evenly spaced values, so its relative step stays between 2**-(m+1) and 2**-m wherever the values are normal,
from the top of the range down to the smallest normal, about 2**15 (e4m3) or 2**30 (e5m2) times below the largest.
Both are scaled per row the same way (s = max|row| / largest value), so the same channel sits on either grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsity_lab.checks import relative_error
from sparsity_lab.quant.fp8 import FORMATS, dequantize_fp8, fp8_linear_reference, quantize_rows_fp8
from sparsity_lab.quant.int8 import QMAX, dequantize, int8_linear, quantize_per_channel

NAMES = ("int8", *FORMATS)  # int8, e4m3, e5m2
BELOW_LARGEST = (1, 16, 256)  # where `format_rows` reads the relative step: the largest value over these


def grid_values(name: str) -> torch.Tensor:
    """Every finite value format `name` holds, sorted and distinct (+0 and -0 once), in float64: int8's -127..127,
    an FP8 format's values decoded from all 256 bit patterns."""
    if name == "int8":
        return torch.arange(-QMAX, QMAX + 1, dtype=torch.float64)
    if name not in FORMATS:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    values = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(FORMATS[name]).to(torch.float64)
    return torch.unique(values[values.isfinite()])


def relative_step(values: torch.Tensor, at: float) -> float:
    """The gap between the grid's two values around `at` (> 0; the one below if `at` is on the grid), over `at`."""
    if not 0 < at <= float(values.max()):
        raise ValueError(f"at must be in (0, {float(values.max())}], got {at}")
    above = int(torch.searchsorted(values, torch.tensor(at, dtype=torch.float64)))
    return float(values[above] - values[above - 1]) / at


def format_rows() -> list[dict[str, Any]]:
    """One row per format of `NAMES`: its sign / exponent / mantissa bits, how many values it holds, the largest,
    the smallest normal and smallest positive value (from ``torch.finfo`` and the decoded grid), and the relative
    step at the largest value and 16 and 256 times below it (keys ``step_at_max_over_1`` and so on)."""
    rows = []
    for name in NAMES:
        values = grid_values(name)
        largest = float(values.max())
        if name == "int8":
            row = {"format": name, "dtype": "int8", "bits": "8-bit integer", "smallest_normal": None}
        else:
            info = torch.finfo(FORMATS[name])
            mantissa = round(-math.log2(info.eps))
            row = {"format": name, "dtype": str(FORMATS[name]).removeprefix("torch."),
                   "bits": f"1 / {7 - mantissa} / {mantissa}", "smallest_normal": info.smallest_normal}
        row |= {"values": len(values), "largest": largest, "smallest_positive": float(values[values > 0].min()),
                **{f"step_at_max_over_{d}": relative_step(values, largest / d) for d in BELOW_LARGEST}}
        rows.append(row)
    return rows


def quantize_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Each row of `x` scaled to format `name`, rounded onto its grid and scaled back (float32): the values the
    quantized matmul multiplies (int8 through `quant.int8`, FP8 through `quant.fp8`)."""
    if name == "int8":
        return dequantize(*quantize_per_channel(x))
    if name not in FORMATS:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    return dequantize_fp8(*quantize_rows_fp8(x, FORMATS[name]))


def layer_errors(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """What each format of `NAMES` costs the layer y = x Wᵀ + b (x per token, W per channel): the relative error
    (norm of the difference over the norm) of the weight, of the activations and of the output, against the float64
    layer; and, for FP8, how far the float64 reference is from the product of its dequantized operands (exact: 0
    or float64 rounding)."""
    x64, w64 = x.detach().double(), weight.detach().double()
    b64 = None if bias is None else bias.detach().double()
    exact = torch.nn.functional.linear(x64, w64, b64)
    rows = []
    for name in NAMES:
        row: dict[str, Any] = {"format": name, "weight": relative_error(quantize_rows(weight, name), w64),
                               "activations": relative_error(quantize_rows(x, name), x64)}
        if name == "int8":
            q_w, s_w = quantize_per_channel(weight.detach().float())
            out = int8_linear(x.detach().float(), q_w, s_w, None if bias is None else bias.detach().float())
            row["reference_vs_dequantized"] = None
        else:
            q_x, s_x = quantize_rows_fp8(x.detach(), FORMATS[name])
            q_w, s_w = quantize_rows_fp8(weight.detach(), FORMATS[name])
            out = fp8_linear_reference(q_x, s_x, q_w, s_w, b64, torch.float64)
            dequantized = torch.nn.functional.linear(dequantize_fp8(q_x, s_x, torch.float64),
                                                     dequantize_fp8(q_w, s_w, torch.float64), b64)
            row["reference_vs_dequantized"] = relative_error(out, dequantized)
        row["output"] = relative_error(out, exact)
        rows.append(row)
    return rows
