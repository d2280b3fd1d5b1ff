"""Exercise 07: symmetric per-channel int8 quantization of a weight, and back.

Lecture: lectures/07_sparsity_quantization.ipynb. Grade with `sparsity-lab grade ex07`.

A linear layer's weight has shape (out_features, in_features); each output channel (row) gets its own scale.
Write `quantize_per_channel(weight)` returning `(q, scale)` so that:
- `scale` is float32 of shape (out_features,) with scale[n] = max_k |weight[n, k]| / 127;
- `q` is torch.int8 shaped like `weight`, q = round(weight / scale) (round half to even, as `torch.round`),
  clamped to [-127, 127] (symmetric: -128 is never used);
- a row of zeros gets scale 0 and q = 0 -- without dividing by zero (no NaN, no warning);
- it raises ValueError when `weight` is not 2-D and TypeError when it is not a floating tensor;
- it does not modify `weight`.
Then write `dequantize(q, scale)` returning the float32 tensor q * scale[:, None].
"""

import torch


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per output channel (row): returns (q, scale)."""
    raise NotImplementedError("ex07: write quantize_per_channel")


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values q * scale[:, None]."""
    raise NotImplementedError("ex07: write dequantize")
