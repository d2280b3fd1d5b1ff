"""The quantized layers' forward as a ``torch.library`` custom op, so ``torch.compile`` traces a model with
int8 or FP8 layers (`Int8Linear`, `Int8Semi24Linear`, `Fp8Linear`, `Fp8Semi24Linear`) whole instead of breaking
the graph at the Triton and cuSPARSELt calls.

``torch.ops.sparsity_lab.quantized_linear(x, weight_q, weight_scale, bias)`` runs the layer that owns `weight_q`
(found by the buffer's address in `_LAYERS`, which holds each layer only as long as it lives) exactly as in eager
mode: quantize x per token, the low-precision matmul (2:4 for the sparse layers), rescale to x's dtype -- or the
dense product in mode "dense". The fake kernel gives the output's shape, x's with the last dimension out_features.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sparsity_lab.quant.layers import QuantizedLinear

_LAYERS: weakref.WeakValueDictionary[int, QuantizedLinear] = weakref.WeakValueDictionary()


def register(layer: QuantizedLinear) -> None:
    """Let the op find `layer` by its quantized weight buffer (call again whenever the buffer moves)."""
    _LAYERS[layer.weight_q.data_ptr()] = layer


@torch.library.custom_op("sparsity_lab::quantized_linear", mutates_args=())
def quantized_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """y = x Wᵀ + b through the quantized layer owning `weight_q` (its eager forward)."""
    layer = _LAYERS.get(weight_q.data_ptr())
    if layer is None or layer.weight_q.data_ptr() != weight_q.data_ptr():
        raise RuntimeError("no quantized layer owns this weight buffer: build the layer with sparsify_(model, "
                           "Int8Config()) or Fp8Config(), and move it with .to() (which re-registers it)")
    return layer.eager_forward(x)


@quantized_linear.register_fake
def _(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
      ) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight_q.shape[0]))
