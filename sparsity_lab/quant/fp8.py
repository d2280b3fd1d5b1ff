"""FP8 with and without 2:4 sparsity: the two formats, per-token and per-channel scales, and the FP8 layers.

An FP8 number keeps a sign, an exponent and a mantissa in one byte:

| format | torch dtype | sign / exponent / mantissa bits | largest | smallest normal | relative step |
| --- | --- | --- | --- | --- | --- |
| e4m3 | ``float8_e4m3fn`` | 1 / 4 / 3 | 448 | 2**-6 | 2**-3 |
| e5m2 | ``float8_e5m2`` | 1 / 5 / 2 | 57344 | 2**-14 | 2**-2 |

Unlike int8's evenly spaced grid, the steps grow with the magnitude, so the relative rounding error (half a step:
2**-4 for e4m3, 2**-3 for e5m2) is the same across the range; a row's scale only has to bring its largest entry to
the format's largest value. Dynamic quantization here: s_x = max|x_row| / FMAX for every token, s_w = max|w_row| /
FMAX for every output channel, q = fp8(clamp(x / s, -FMAX, FMAX)) (round to nearest, ties to even), and::

    y = s_x[:, None] * s_w[None, :] * (q_x q_wᵀ) + b

`Fp8Semi24Linear` keeps a 2:4 FP8 weight; on a GPU one forward is three kernels:

1. `quant.kernels.quantize_per_token_fp8`: one Triton pass over x writes q_x (M, K) and s_x;
2. cuSPARSELt's FP8 2:4 matmul through our binding (`semi24.cusparselt`): D = W_q · q_xᵀ, (N, M), accumulated
   in float32 and written in bfloat16 (a rounding of 2**-9, far below FP8's 2**-4; half the bytes of float32);
3. `quant.kernels.rescale`: y = D.t() * s_x[:, None] * s_w[None, :] + b written row-major in x's dtype, the
   re-layout of the column-major D done in the same pass. (cuSPARSELt 0.8 refuses its per-channel alpha vector
   for FP8, so both scales are applied here.)

`Fp8Linear` is dense FP8: ``torch._scaled_mm`` with the same rowwise scales (the baseline sparsity must beat). On
the CPU, and as the reference, both compute the float64 product of the FP8 values (exact: every product of two
FP8 numbers fits a float64 mantissa).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsity_lab.quant import ops
from sparsity_lab.quant.int8 import fused_kernels, pad_2d, round_up, use_fused
from sparsity_lab.quant.layers import QuantizedLinear, check_2of4, mask_2of4

FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
BACKENDS = ("auto", "reference", "cusparselt", "scaled_mm")
SPARSE_MULTIPLE = 32  # cuSPARSELt's 8-bit rule for the structured operand's rows and columns
TOKEN_MULTIPLE = 16  # and for the dense operand's rows (tokens)


def fp8_dtype(format: str) -> torch.dtype:  # noqa: A002  (the word users know)
    """The torch dtype of an FP8 format name ("e4m3" or "e5m2")."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    return FORMATS[format]


def quantize_rows_fp8(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of a 2-D float tensor to FP8 with its own scale: s = max|row| / FMAX (float32), q = fp8(clamp(row /
    s, -FMAX, FMAX)); a zero row gets s = 0 and q = 0. Per token for activations, per channel for weights."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if dtype not in FORMATS.values():
        raise TypeError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: rows need at least one entry to have a scale")
    fmax = torch.finfo(dtype).max
    x = x.float()
    # a 0-d tensor on x's device, not a Python number: CUDA divides by a scalar as a * (1/b), at times one bit off
    scale = x.abs().amax(dim=1) / torch.full((), fmax, device=x.device)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (x / safe[:, None]).clamp(-fmax, fmax).to(dtype), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Back to floats: q * scale[:, None] (the values the FP8 matmul really multiplies)."""
    if q.dim() != 2 or q.dtype not in FORMATS.values() or scale.shape != (q.shape[0],):
        raise ValueError(f"q must be a 2-D FP8 tensor and scale ({q.shape[0]},), got {q.dtype} {tuple(q.shape)} "
                         f"and {tuple(scale.shape)}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return (q.to(compute) * scale.to(compute)[:, None]).to(dtype)


def fp8_linear_reference(q_x: torch.Tensor, s_x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor,
                         bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """s_x[:, None] * s_w[None, :] * (q_x q_wᵀ) + b in float64 (the product of FP8 values is exact), cast to
    `dtype`: the CPU path and what the GPU kernels are checked against."""
    acc = q_x.to(torch.float64) @ q_w.to(torch.float64).T
    y = acc * s_x.to(torch.float64)[:, None] * s_w.to(torch.float64)[None, :]
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(dtype)


def _quantize_tokens(x: torch.Tensor, dtype: torch.dtype, fused: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token FP8 of x (M, K): the Triton kernel where `use_fused`, else `quantize_rows_fp8`."""
    if use_fused(fused, x):
        return fused_kernels().quantize_per_token_fp8(x, dtype)
    return quantize_rows_fp8(x, dtype)


class Fp8Linear(QuantizedLinear):
    """Linear layer with a per-channel FP8 weight and per-token dynamic FP8 activations (inference only).

    `backend`: "scaled_mm" (``torch._scaled_mm`` with rowwise scales, GPUs of compute capability 8.9 and later),
    "reference" (float64, any device) or "auto" (scaled_mm on CUDA, reference elsewhere). `fused`: quantize x with
    the Triton kernel (None: on CUDA where Triton is installed)."""

    TUNE_MODES = ("dense", "fp8")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "e4m3",  # noqa: A002
                 backend: str = "auto", fused: bool | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.format, self.backend, self.fused = format, backend, fused
        super().__init__(in_features, out_features, bias, fp8_dtype(format))

    def quantize_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_rows_fp8(weight, self.weight_q.dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "e4m3", backend: str = "auto",  # noqa: A002
                    fused: bool | None = None) -> Fp8Linear:
        """Quantize an nn.Linear to FP8 (masked or not: its effective weight is used)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, format, backend, fused)
        layer.load_float_weight(linear.weight.detach().float(), linear.bias)
        return layer.to(linear.weight.device)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202  (nn.Module's signature)
        """``.half()`` or ``.to(dtype)`` casts every floating buffer, FP8 ones too: cast them back (FP8 -> 16 or 32
        bits -> FP8 is exact) and keep the scales float32."""
        super()._apply(fn, recurse)
        fp8 = fp8_dtype(self.format)
        if self.weight_q.dtype != fp8 or self.weight_scale.dtype != torch.float32:
            self.weight_q, self.weight_scale = self.weight_q.to(fp8), self.weight_scale.float()
            ops.register(self)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_fp8(self.weight_q, self.weight_scale)

    def _backend(self, x: torch.Tensor, gpu: str) -> str:
        name = self.backend if self.backend != "auto" else (gpu if x.is_cuda else "reference")
        if name not in ("reference", gpu):
            raise ValueError(f"{type(self).__name__} runs backend 'reference' or {gpu!r}, got {name!r}")
        return name

    def quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        q_x, s_x = _quantize_tokens(flat, self.weight_q.dtype, self.fused)
        if self._backend(x, "scaled_mm") == "reference":
            y = fp8_linear_reference(q_x, s_x, self.weight_q, self.weight_scale, self.bias, x.dtype)
        else:
            y = self._scaled_mm(q_x, s_x, x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _scaled_mm(self, q_x: torch.Tensor, s_x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """torch._scaled_mm with rowwise scales (bfloat16 out, which rowwise scaling needs; M padded to 16)."""
        m = q_x.shape[0]
        m_pad = round_up(max(m, 1), TOKEN_MULTIPLE)
        if m_pad != m:
            q_x, s_x = pad_2d(q_x, m_pad, q_x.shape[1]), torch.nn.functional.pad(s_x, (0, m_pad - m))
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        y = torch._scaled_mm(q_x, self.weight_q.t(), scale_a=s_x[:, None], scale_b=self.weight_scale[None, :],
                             bias=bias, out_dtype=torch.bfloat16)
        return y[:m].to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format!r}, "
                f"backend={self.backend!r}" + (f", fused={self.fused}" if self.fused is not None else ""))


class Fp8Semi24Linear(Fp8Linear):
    """Fp8Linear whose weight is 2:4 sparse: cuSPARSELt's FP8 2:4 matmul on the GPU ("cusparselt", the "auto"
    choice on CUDA), the float64 reference elsewhere (see the module doc for the three kernels)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "e4m3",  # noqa: A002
                 backend: str = "auto", fused: bool | None = None) -> None:
        super().__init__(in_features, out_features, bias, format, backend, fused)
        self._packed: tuple[tuple, Any] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "e4m3", backend: str = "auto",  # noqa: A002
                    fused: bool | None = None, prune: bool = True) -> Fp8Semi24Linear:
        """Quantize an nn.Linear to FP8 2:4: with `prune`, impose a 2:4 magnitude mask first; without, the weight
        must already be 2:4 (else ValueError naming the group). FP8 rounding keeps every zero a zero."""
        weight = linear.weight.detach().float()
        if prune:
            weight = weight * mask_2of4(weight)
        else:
            check_2of4(weight)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, format, backend, fused)
        layer.load_float_weight(weight, linear.bias)
        return layer.to(linear.weight.device)

    def packed_weight(self) -> Any:
        """The weight compressed by cuSPARSELt (padded to multiples of 32), cached until the weight changes."""
        from sparsity_lab.semi24 import cusparselt

        key = (self.weight_q.device, self.weight_q.data_ptr(), self.weight_q._version)
        if self._packed is None or self._packed[0] != key:
            n, k = self.weight_q.shape
            padded = pad_2d(self.weight_q.contiguous(), round_up(n, SPARSE_MULTIPLE), round_up(k, SPARSE_MULTIPLE))
            self._packed = (key, cusparselt.Semi24Weight.from_dense(padded))
        return self._packed[1]

    def quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        q_x, s_x = _quantize_tokens(flat, self.weight_q.dtype, self.fused)
        if self._backend(x, "cusparselt") == "reference":
            y = fp8_linear_reference(q_x, s_x, self.weight_q, self.weight_scale, self.bias, x.dtype)
            return y.reshape(*x.shape[:-1], self.out_features)
        weight = self.packed_weight()
        m, k_pad = q_x.shape[0], weight.shape[1]
        m_pad = round_up(max(m, 1), TOKEN_MULTIPLE)
        if (m_pad, k_pad) != tuple(q_x.shape):
            q_x = pad_2d(q_x, m_pad, k_pad)
        out_dtype = torch.float32 if x.dtype == torch.float32 else torch.bfloat16
        d = weight.linear(q_x, out_dtype=out_dtype)[:m, : self.out_features]
        y = fused_kernels().rescale(d, s_x, self.weight_scale, self.bias, dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)
