"""int8 dynamic quantization combined with 2:4 sparsity: layers, a model swap, and the accuracy table (int8 and FP8).

2:4 halves the multiply-adds the tensor cores do and int8 halves the bytes of every operand; together a weight
takes 10/16 of a byte per dense entry (cuSPARSELt's int8 packing) against 2 bytes in fp16, and sparse int8 tensor
cores issue twice the int8 rate. FP8 (`sparsity_lab.quant.fp8`) has the same byte and rate arithmetic.
`Int8Linear` is dense dynamic quantization (`sparsity_lab.quant.int8`); `Int8Semi24Linear` keeps a 2:4 int8 weight
and multiplies through a sparse int8 backend.

The seam: every 2:4 int8 matmul goes through a `SparseInt8Backend` from `SPARSE_INT8_BACKENDS`:

- ``"reference"``: the exact int64 product of the (zero-filled) 2:4 int8 weight; any device, the CPU path;
- ``"cusparselt"`` (the GPU default, `DEFAULT_GPU_BACKEND`): our own binding (`sparsity_lab.semi24.cusparselt`), which
  compresses once and caches the cuSPARSELt plan per shape, so an eager call is one kernel launch;
- ``"torch_cslt"``: PyTorch's own cuSPARSELt ops (`torch._cslt_compress`, `torch._cslt_sparse_mm` with
  ``out_dtype=torch.int32``), which plan the matmul again on every call (the comparison);
- ``"torch_cslt_t"``: the same asking cuSPARSELt for the (M, N) layout directly (``transpose_result=True``).

Another backend plugs in with ``register_backend(SparseInt8Backend(name, compress, matmul, available))``:
``compress(q_w)`` takes the int8 2:4 weight (N, K) and returns any handle, ``matmul(handle, q_x)`` takes int8
activations (M, K) and returns the exact int32 product (M, N). Scales and bias are applied to the int32 result by
`sparsity_lab.quant.int8.rescale` (or, with ``fused=True``, by the Triton kernel in
`sparsity_lab.quant.kernels`). The 2:4 masks are `sparsity_lab.semi24.layout`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsity_lab.quant import ops
from sparsity_lab.quant.int8 import (
    dequantize,
    fused_kernels,
    int8_linear,
    int8_matmul_reference,
    pad_2d,
    quantize_per_channel,
    quantize_per_token,
    rescale,
    round_up,
    use_fused,
)
from sparsity_lab.semi24 import layout as semi24

# ------------------------------------------------------------------------------------------------ 2:4 masks


def _check_2d_groups(weight: torch.Tensor, name: str) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if weight.shape[1] % 4:
        raise ValueError(f"2:4 needs in_features divisible by 4, got {name} of shape {tuple(weight.shape)}")


def mask_2of4(weight: torch.Tensor) -> torch.Tensor:
    """Boolean 2:4 mask: in every group of 4 consecutive inputs of a row keep the 2 largest |w| (ties: lower index);
    `sparsity_lab.semi24.layout.prune` with the (out, in) shape checked."""
    _check_2d_groups(weight, "weight")
    return semi24.prune(weight.detach(), "2:4")


def check_2of4(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise ValueError naming the first group of 4 (row, columns) that has more than 2 nonzeros
    (`sparsity_lab.semi24.layout.check_pattern`)."""
    _check_2d_groups(weight, name)
    semi24.check_pattern(weight, "2:4", name)


# ------------------------------------------------------------------------------------------------ the seam


@dataclass(frozen=True)
class SparseInt8Backend:
    """How to multiply int8 activations by a 2:4 int8 weight: `compress` once, `matmul` per call (exact int32)."""

    name: str
    compress: Callable[[torch.Tensor], Any]
    matmul: Callable[[Any, torch.Tensor], torch.Tensor]
    available: Callable[[], bool]


SPARSE_INT8_BACKENDS: dict[str, SparseInt8Backend] = {}  # the registry: name -> backend


def register_backend(backend: SparseInt8Backend) -> None:
    """Make `backend` selectable by name (replacing one of the same name)."""
    SPARSE_INT8_BACKENDS[backend.name] = backend


def get_backend(name: str) -> SparseInt8Backend:
    """The registered backend `name`; raises naming the known ones."""
    if name not in SPARSE_INT8_BACKENDS:
        raise ValueError(f"unknown sparse int8 backend {name!r}; registered: {sorted(SPARSE_INT8_BACKENDS)}")
    return SPARSE_INT8_BACKENDS[name]


def _reference_compress(q_w: torch.Tensor) -> torch.Tensor:
    check_2of4(q_w, "q_w")
    return q_w.contiguous()


register_backend(SparseInt8Backend(
    "reference", _reference_compress, lambda q_w, q_x: int8_matmul_reference(q_x, q_w), lambda: True))

# cuSPARSELt int8: the sparse operand needs rows and columns in multiples of 32, the dense one multiples of 16
# (torch.sparse.SparseSemiStructuredTensorCUSPARSELT._DTYPE_SHAPE_CONSTRAINTS[torch.int8]).
CSLT_SPARSE_MULTIPLE = 32
CSLT_DENSE_MULTIPLE = 16


@dataclass(frozen=True)
class _CsltWeight:
    packed: torch.Tensor
    n: int
    k: int
    n_pad: int
    k_pad: int


def _cslt_available() -> bool:
    backend = getattr(torch.backends, "cusparselt", None)
    return torch.cuda.is_available() and backend is not None and backend.is_available()


def _cslt_compress(q_w: torch.Tensor) -> _CsltWeight:
    check_2of4(q_w, "q_w")
    n, k = q_w.shape
    n_pad, k_pad = round_up(n, CSLT_SPARSE_MULTIPLE), round_up(k, CSLT_SPARSE_MULTIPLE)
    padded = pad_2d(q_w.contiguous(), n_pad, k_pad)  # zero groups are valid 2:4 groups
    return _CsltWeight(torch._cslt_compress(padded), n, k, n_pad, k_pad)


def _cslt_matmul(weight: _CsltWeight, q_x: torch.Tensor, transpose_result: bool) -> torch.Tensor:
    m = q_x.shape[0]
    if q_x.shape[1] != weight.k:
        raise ValueError(f"q_x has {q_x.shape[1]} features but the weight expects {weight.k}")
    m_pad = round_up(max(m, 1), CSLT_DENSE_MULTIPLE)
    q_x = pad_2d(q_x.contiguous(), m_pad, weight.k_pad)
    out = torch._cslt_sparse_mm(weight.packed, q_x.T, out_dtype=torch.int32, transpose_result=transpose_result)
    out = out if transpose_result else out.T  # (M_pad, N_pad) either way
    return out[:m, : weight.n]


register_backend(SparseInt8Backend(
    "torch_cslt", _cslt_compress, lambda w, x: _cslt_matmul(w, x, transpose_result=False), _cslt_available))
register_backend(SparseInt8Backend(
    "torch_cslt_t", _cslt_compress, lambda w, x: _cslt_matmul(w, x, transpose_result=True), _cslt_available))


# Our own binding (semi24.cusparselt): compressed once, its plan built and searched once per shape, then one
# cusparseLtMatmul launch per call (int8 x int8 -> int32, exact). W is padded to multiples of 32 (the binding's
# int8 rule; zero groups are valid 2:4 groups), x to a multiple of 16 tokens; y comes back as a column-major view.
BINDING_SPARSE_MULTIPLE = 32
BINDING_TOKEN_MULTIPLE = 16  # cuSPARSELt refuses int8 dense operands of 24 or 40 rows (measured on an H100)


@dataclass(frozen=True)
class _BindingWeight:
    weight: Any  # sparsity_lab.semi24.cusparselt.Semi24Weight
    n: int
    k: int
    k_pad: int


def _binding_available() -> bool:
    from sparsity_lab.semi24 import cusparselt

    return torch.cuda.is_available() and cusparselt.unavailable_reason() is None


def _binding_compress(q_w: torch.Tensor) -> _BindingWeight:
    from sparsity_lab.semi24 import cusparselt

    check_2of4(q_w, "q_w")
    n, k = q_w.shape
    k_pad = round_up(k, BINDING_SPARSE_MULTIPLE)
    padded = pad_2d(q_w.contiguous(), round_up(n, BINDING_SPARSE_MULTIPLE), k_pad)
    return _BindingWeight(cusparselt.Semi24Weight.from_dense(padded), n, k, k_pad)


def _binding_matmul(weight: _BindingWeight, q_x: torch.Tensor) -> torch.Tensor:
    m = q_x.shape[0]
    if q_x.shape[1] != weight.k:
        raise ValueError(f"q_x has {q_x.shape[1]} features but the weight expects {weight.k}")
    m_pad = round_up(max(m, 1), BINDING_TOKEN_MULTIPLE)
    if m_pad != m or weight.k_pad != weight.k or not q_x.is_contiguous():
        q_x = pad_2d(q_x.contiguous(), m_pad, weight.k_pad)
    out = weight.weight.linear(q_x, out_dtype=torch.int32)
    return out if out.shape == (m, weight.n) else out[:m, : weight.n]


register_backend(SparseInt8Backend("cusparselt", _binding_compress, _binding_matmul, _binding_available))
DEFAULT_GPU_BACKEND = "cusparselt"


def resolve_backend(name: str, device: torch.device) -> SparseInt8Backend:
    """'auto' -> DEFAULT_GPU_BACKEND on CUDA, 'reference' elsewhere; any name must be registered and available."""
    if name == "auto":
        name = DEFAULT_GPU_BACKEND if device.type == "cuda" else "reference"
    backend = get_backend(name)
    if not backend.available():
        raise RuntimeError(f"sparse int8 backend {name!r} is not available on this machine (it needs cuSPARSELt)")
    return backend


# ------------------------------------------------------------------------------------------------ layers


class QuantizedLinear(nn.Module):
    """What every quantized linear layer shares (int8 here, FP8 in `sparsity_lab.quant.fp8`): a quantized weight
    ``weight_q`` with per-channel ``weight_scale`` and a ``bias`` as buffers, a `mode` that `tune_` may set to
    "dense", and one custom op (`sparsity_lab.quant.ops`) that ``torch.compile`` traces instead of the kernels.
    A subclass sets `TUNE_MODES` ("dense" and its quantized mode, the default), builds the buffers and gives
    `dequantized_weight` and `quantized_forward`."""

    TUNE_MODES: tuple[str, str] = ("dense", "quantized")  # what `sparsity_lab.dispatch.tune_` chooses among

    def __init__(self, in_features: int, out_features: int, bias: bool, weight_dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._mode = self.TUNE_MODES[1]
        self._dense_cache: tuple | None = None
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=weight_dtype))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        ops.register(self)

    def quantize_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, per-channel scale) of a float weight (out, in) in this layer's format."""
        raise NotImplementedError

    def load_float_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Quantize a float weight (out, in) per output channel into this layer's buffers."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must be ({self.out_features}, {self.in_features}), got {tuple(weight.shape)}")
        q, scale = self.quantize_weight(weight.detach())
        self.weight_q.copy_(q)
        self.weight_scale.copy_(scale)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias.detach())

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202  (nn.Module's signature)
        """After ``.to()`` / ``.cuda()``: the buffers moved, so the compiled path's op must find them anew."""
        super()._apply(fn, recurse)
        ops.register(self)
        return self

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        ops.register(self)  # a copy has buffers of its own

    @property
    def mode(self) -> str:
        """The quantized product (``TUNE_MODES[1]``, default) or "dense" (``F.linear`` with the dequantized weight,
        in the input's dtype: where the quantized path is slower in a model, `tune_` sets this)."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in self.TUNE_MODES:
            raise ValueError(f"mode must be one of {self.TUNE_MODES}, got {value!r}")
        self._mode = value

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the quantized matmul really uses: q_w * s_w."""
        raise NotImplementedError

    def quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize x, the low-precision matmul, rescale to x's dtype."""
        raise NotImplementedError

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x Wᵀ + b with the dequantized weight and the bias in x's dtype (cached until they change): mode "dense"."""
        tag = (x.dtype, self.weight_q.device, self.weight_q.data_ptr(), self.weight_q._version,
               self.weight_scale._version, None if self.bias is None else self.bias._version)
        if self._dense_cache is None or self._dense_cache[0] != tag:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            self._dense_cache = (tag, self.dequantized_weight().to(x.dtype), bias)
        return torch.nn.functional.linear(x, self._dense_cache[1], self._dense_cache[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # one opaque op: no graph break at the Triton and matmul kernels
            return torch.ops.sparsity_lab.quantized_linear(x, self.weight_q, self.weight_scale, self.bias)
        return self.eager_forward(x)

    def eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward in eager mode (also what the compiled path's custom op runs): `quantized_forward`, or the
        dense product in mode "dense"."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features but the layer expects {self.in_features}")
        if self._mode == "dense":
            return self.dense_forward(x)
        return self.quantized_forward(x)


class Int8Linear(QuantizedLinear):
    """Linear layer with a per-channel int8 weight and per-token dynamic int8 activations (inference only).

    `fused=True` quantizes the activations and rescales the int32 product with the Triton kernels of
    `sparsity_lab.quant.kernels` (one pass over memory each) instead of eager PyTorch ops; the default (None)
    does so on CUDA inputs where Triton is installed (`int8.use_fused`).
    """

    TUNE_MODES = ("dense", "int8")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, backend: str = "auto",
                 fused: bool | None = None) -> None:
        self.backend, self.fused = backend, fused
        super().__init__(in_features, out_features, bias, torch.int8)

    def quantize_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_per_channel(weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str = "auto", fused: bool | None = None) -> Int8Linear:
        """Quantize an nn.Linear (masked or not: its effective weight is used)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, backend, fused)
        layer.load_float_weight(linear.weight.detach().float(), linear.bias)
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the integer matmul really uses: q_w * s_w."""
        return dequantize(self.weight_q, self.weight_scale)

    def quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize x per token, the integer matmul, rescale to x's dtype."""
        return int8_linear(x, self.weight_q, self.weight_scale, self.bias, backend=self.backend, fused=self.fused)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend!r}"
                + (f", fused={self.fused}" if self.fused is not None else ""))


class Int8Semi24Linear(Int8Linear):
    """Int8Linear whose weight is 2:4 sparse; the matmul goes through a `SparseInt8Backend` (see the module doc)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, backend: str = "auto",
                 fused: bool | None = None) -> None:
        super().__init__(in_features, out_features, bias, backend, fused)
        self._packed: tuple[tuple, Any] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str = "auto", fused: bool | None = None,
                    prune: bool = True) -> Int8Semi24Linear:
        """Quantize an nn.Linear to int8 2:4: with `prune`, impose a 2:4 magnitude mask first; without, the
        weight must already be 2:4 (else ValueError naming the group)."""
        weight = linear.weight.detach().float()
        if prune:
            _check_2d_groups(weight, "weight")
            weight = semi24.sparsify(weight)
        else:
            check_2of4(weight)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, backend, fused)
        layer.load_float_weight(weight, linear.bias)
        return layer.to(linear.weight.device)

    def packed_weight(self, backend: SparseInt8Backend) -> Any:
        """The weight compressed for `backend`, cached until the weight or the device changes."""
        key = (backend.name, self.weight_q.device, self.weight_q.data_ptr(), self.weight_q._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, backend.compress(self.weight_q))
        return self._packed[1]

    def quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = resolve_backend(self.backend, x.device)
        flat = x.reshape(-1, self.in_features)
        kernels = fused_kernels() if use_fused(self.fused, x) else None
        if kernels is not None:
            q_x, s_x = kernels.quantize_per_token(flat)
        else:
            q_x, s_x = quantize_per_token(flat, check_finite=x.device.type != "cuda")
        acc = backend.matmul(self.packed_weight(backend), q_x)
        if kernels is not None:
            y = kernels.rescale(acc, s_x, self.weight_scale, self.bias, dtype=x.dtype)
        else:
            y = rescale(acc, s_x, self.weight_scale, self.bias, dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


# ------------------------------------------------------------------------------------------------ accuracy


METHODS = ("dense", "2:4", "int8", "int8 + 2:4", "fp8", "fp8 + 2:4", "fp8 e5m2")  # "fp8" is e4m3 (`method_config`)


def _linear_with_groups_of_4(module: nn.Module, fqn: str) -> bool:
    """The layers 2:4 applies to in the accuracy table: linears whose in_features is a multiple of 4."""
    return isinstance(module, nn.Linear) and module.in_features % 4 == 0


def method_config(method: str) -> tuple[bool, object | None]:
    """(starts from the 2:4-pruned model, the `sparsify_` config or None) of one of `METHODS`: "fp8" is e4m3; FP8
    runs the float64 reference, which the GPU kernels are checked against, so no FP8 hardware is needed; the
    2:4 variants quantize the pruned weights without pruning again."""
    from sparsity_lab.sparsify import Fp8Config, Int8Config

    configs = {
        "dense": (False, None),
        "2:4": (True, None),
        "int8": (False, Int8Config(sparse=False)),
        "int8 + 2:4": (True, Int8Config(sparse=True, prune=False)),
        "fp8": (False, Fp8Config(format="e4m3", sparse=False, backend="reference")),
        "fp8 + 2:4": (True, Fp8Config(format="e4m3", sparse=True, backend="reference", prune=False)),
        "fp8 e5m2": (False, Fp8Config(format="e5m2", sparse=False, backend="reference")),
    }
    if method not in configs:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return configs[method]


def method_model(method: str, dense: nn.Module, pruned: nn.Module,
                 filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """The model `method` names: `dense` or the 2:4-`pruned` model itself, or a quantized copy of one (the linears
    `filter_fn` picks; the originals are left untouched)."""
    from copy import deepcopy

    from sparsity_lab.sparsify import sparsify_

    on_pruned, config = method_config(method)
    model = pruned if on_pruned else dense
    if config is None:
        return model
    model = deepcopy(model)
    sparsify_(model, config, filter_fn=filter_fn)
    return model


def accuracy_table(model: str = "mlp", seed: int = 0, epochs: int = 20, finetune_epochs: int = 5,
                   hidden: int = 128, progress: bool = False, base: nn.Module | None = None) -> list[dict[str, Any]]:
    """Test accuracy of every method of `METHODS` (dense, 2:4, int8 and FP8 e4m3 each alone and with 2:4, FP8 e5m2
    alone) on digits models, one-shot and after fine-tuning.

    One model is trained (`epochs`), or `base` (a trained model of kind `model`, left untouched) is used;
    "one_shot" applies 2:4 masks and/or int8 or FP8 dynamic quantization to it directly.
    "finetuned" trains `finetune_epochs` more: the dense model (a control, same extra epochs) and the 2:4-masked
    model (masks held fixed); int8 and FP8 are then applied post-training to each. For the CNN only its linear
    layers are pruned and quantized (the convolutions stay float).
    """
    from copy import deepcopy

    from sparsity_lab.course.data import load_digits
    from sparsity_lab.course.models import DigitsCNN, DigitsMLP
    from sparsity_lab.course.train import evaluate, fit
    from sparsity_lab.sparsify import PruneConfig, sparsify_

    if model not in ("mlp", "cnn"):
        raise ValueError(f"model must be 'mlp' or 'cnn', got {model!r}")
    data = load_digits(images=model == "cnn")
    if base is None:
        torch.manual_seed(seed)
        base = DigitsMLP(hidden=hidden) if model == "mlp" else DigitsCNN()
        fit(base, data, epochs=epochs, seed=seed, progress=progress)
    base = deepcopy(base).eval()

    def every_method(dense_model: nn.Module, sparse_model: nn.Module) -> dict[str, float]:
        return {name: evaluate(method_model(name, dense_model, sparse_model), data.x_test, data.y_test)[1]
                for name in METHODS}

    pruned = deepcopy(base)
    sparsify_(pruned, PruneConfig(pattern="2:4"), filter_fn=_linear_with_groups_of_4)
    one_shot = every_method(base, pruned)
    tuned = deepcopy(base)
    fit(tuned, data, epochs=finetune_epochs, seed=seed + 1, progress=progress)
    fit(pruned, data, epochs=finetune_epochs, seed=seed + 1, progress=progress)
    finetuned = every_method(tuned, pruned)
    return [{"method": name, "one_shot": one_shot[name], "finetuned": finetuned[name]} for name in METHODS]


def weight_bytes_per_entry() -> dict[str, float]:
    """Bytes stored per dense weight entry: fp16 2, int8 and FP8 (e4m3 or e5m2) 1, and cuSPARSELt's 2:4 packing of
    each: half the values plus 2 bits of metadata per kept value, i.e. numel * 9/16 elements for 16-bit types and
    numel * 10/16 bytes for 8-bit ones (int8 and FP8 alike)."""
    return {"fp16": 2.0, "int8": 1.0, "fp8": 1.0, "fp16 2:4": 2.0 * 9 / 16, "int8 2:4": 1.0 * 10 / 16,
            "fp8 2:4": 1.0 * 10 / 16}


def tensor_core_rate() -> dict[str, float]:
    """Multiply-adds per second of Hopper's tensor cores relative to fp16 dense (H100 SXM datasheet: fp16 989
    TFLOP/s, int8 1979 TOP/s, FP8 1979 TFLOP/s in either format, 2:4 sparse twice each): what each format can gain
    at most, where a matmul is bound by its arithmetic."""
    return {"fp16": 1.0, "int8": 2.0, "fp8": 2.0, "fp16 2:4": 2.0, "int8 2:4": 4.0, "fp8 2:4": 4.0}
