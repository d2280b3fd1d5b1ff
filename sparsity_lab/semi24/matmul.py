"""2:4 linear layers, y = x Wᵀ (+ b), through several interchangeable backends, each checkable against dense.

Paths (``PATHS``; the first three, ``SPARSE_PATHS``, run a 2:4 kernel and are `Semi24Linear`'s backends):

* ``"cusparselt"``: our ctypes binding (`sparsity_lab.semi24.cusparselt`): plan built and searched once per shape,
  then one cusparseLtMatmul launch per call.
* ``"torch_cslt"``: PyTorch's ``torch._cslt_sparse_mm`` on ``torch._cslt_compress``'s weight (re-plans on
  every call: the slow baseline this course beats).
* ``"cutlass"``: PyTorch's CUTLASS 2:4 kernel (``torch._sparse_semi_structured_linear``) fed with our Triton
  compressor's values and metadata; sm8x GPUs only (PyTorch refuses sm90).
* ``"reference"``: the CPU reference: decompress CUTLASS's values and metadata, then a dense matmul in float32.
* ``"dense"``: cuBLAS/CPU dense matmul with the pruned weight (the baseline every path is compared with).

`prepare(weight, path)` prunes (2:4, magnitude, ties to the lower index) and packs a dense weight once and
returns a `Semi24Matmul` whose ``linear(x, bias)`` runs the chosen path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparsity_lab._optional import triton_available
from sparsity_lab.checks import relative_error

SPARSE_PATHS = ("cusparselt", "torch_cslt", "cutlass")  # the 2:4 kernels (GPU): `Semi24Linear`'s backends
PATHS = (*SPARSE_PATHS, "reference", "dense")


def prune24(weight: torch.Tensor) -> torch.Tensor:
    """2:4 magnitude pruning along rows (ties: lower index first): Triton on CUDA where the kernel takes the dtype
    and shape (16-bit or int8, the cutlass layout's multiples), plain torch otherwise (the same result)."""
    from sparsity_lab.semi24.layout import shape_multiples, sparsify

    fits_kernel = weight.dim() == 2 and weight.dtype in (torch.float16, torch.bfloat16, torch.int8) and all(
        size % multiple == 0 for size, multiple in zip(weight.shape, shape_multiples(weight.dtype), strict=True))
    if weight.is_cuda and fits_kernel and triton_available():
        from sparsity_lab.semi24.compress_kernel import prune_and_compress

        return prune_and_compress(weight, return_pruned=True)[2]
    return sparsify(weight)


def unavailable_reason(path: str, device: torch.device | str, dtype: torch.dtype = torch.float16) -> str | None:
    """Why `path` cannot run on `device` for `dtype` (None when it can)."""
    device = torch.device(device)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path not in SPARSE_PATHS:
        return None
    if device.type != "cuda":
        return f"{path} needs a CUDA GPU; this tensor is on {device}"
    if dtype not in (torch.float16, torch.bfloat16, torch.int8):
        return f"2:4 sparse tensor cores take float16, bfloat16 or int8, not {dtype}"
    if path == "cusparselt":
        from sparsity_lab.semi24.cusparselt import unavailable_reason as library_unavailable

        return library_unavailable()
    if path == "torch_cslt":
        backend = getattr(torch.backends, "cusparselt", None)
        return None if backend is not None and backend.is_available() else "this PyTorch build has no cuSPARSELt"
    major, _ = torch.cuda.get_device_capability(device)
    if major != 8:
        return f"PyTorch's CUTLASS 2:4 kernels run on sm8x only; this GPU is sm{major}x"
    if not triton_available():
        return "the CUTLASS path packs with our Triton compressor: install triton"
    return None


class Semi24Matmul:
    """A pruned 2:4 weight packed for one backend; ``linear(x, bias)`` computes x Wᵀ + b with it."""

    def __init__(self, weight: torch.Tensor, path: str, prune: bool = True) -> None:
        """Prune `weight` (N, K) to 2:4 (unless `prune=False`) and pack it for `path`; raise naming the reason
        when the path cannot run here."""
        reason = unavailable_reason(path, weight.device, weight.dtype)
        if reason:
            raise RuntimeError(f"2:4 path {path!r} is unavailable: {reason}")
        self.path = path
        self.shape = tuple(weight.shape)
        self.dtype = weight.dtype
        self.pruned = prune24(weight) if prune else weight.contiguous()
        self._run: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
        if path == "cusparselt":
            from sparsity_lab.semi24.cusparselt import Semi24Weight

            self.packed = Semi24Weight.from_dense(self.pruned)
            self._run = lambda x, b: self.packed.linear(x, bias=b)
        elif path == "torch_cslt":
            self.packed = torch._cslt_compress(self.pruned)
            self._run = self._torch_cslt
        elif path == "cutlass":
            from sparsity_lab.semi24.compress_kernel import prune_and_compress

            self.values, self.meta = prune_and_compress(self.pruned, prune=False)
            self._run = lambda x, b: torch._sparse_semi_structured_linear(x, self.values, self.meta, bias=b)
        elif path == "reference":
            from torch.sparse._semi_structured_conversions import (
                sparse_semi_structured_from_dense_cutlass,
                sparse_semi_structured_to_dense_cutlass,
            )

            if self.dtype in (torch.float16, torch.bfloat16, torch.int8):  # through the packed form and back
                self.values, self.meta = sparse_semi_structured_from_dense_cutlass(self.pruned.cpu())
                restored = sparse_semi_structured_to_dense_cutlass(self.values, self.meta).to(weight.device)
            else:  # CUTLASS packs float32 as 1:2 (tf32 tensor cores), which a 2:4 weight is not: keep it dense
                restored = self.pruned
            self._run = lambda x, b: _dense_reference(x, restored, b)
        else:
            self._run = lambda x, b: F.linear(x, self.pruned, b)

    def _torch_cslt(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = torch._cslt_sparse_mm(self.packed, x.t(), bias=bias, transpose_result=True)
        return out if out.shape == (x.shape[0], self.shape[0]) else out.t()

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K) Wᵀ + bias through this path, shaped (..., N)."""
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features; the weight {self.shape} takes {self.shape[1]}")
        flat = x.reshape(-1, self.shape[1])
        return self._run(flat, bias).reshape(*x.shape[:-1], self.shape[0])


def _dense_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 (float64 for int8) dense matmul cast back: the yardstick for every 2:4 path."""
    wide = torch.float64 if x.dtype == torch.int8 else torch.float32
    y = x.to(wide) @ weight.to(wide).t()
    if bias is not None:
        y = y + bias.to(wide)
    return y.to(torch.int32 if x.dtype == torch.int8 else x.dtype)


def prepare(weight: torch.Tensor, path: str = "cusparselt", prune: bool = True) -> Semi24Matmul:
    """`Semi24Matmul(weight, path, prune)`: pack a weight once for repeated 2:4 matmuls."""
    return Semi24Matmul(weight, path, prune)


def check_path(path: str, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """Relative error of `path` against the float32 dense product with the same pruned weight."""
    layer = prepare(weight, path)
    return relative_error(layer.linear(x, bias), _dense_reference(x, layer.pruned, bias))
