"""Block-sparse weights on the GPU: `BlockSparseLinear`, whose weight is a `sparsity_lab.formats.BSR` with square
blocks, run by our Triton kernel where it beats dense and by dense everywhere else.

The layer keeps the BSR's three arrays as buffers -- `crow_indices` (block-row pointers), `col_indices` (block
column of each stored block) and `values` (the stored ``bs x bs`` blocks, contiguous) -- with int32 indices, the
layout the kernel reads. A weight whose sides are not whole blocks is zero-padded to whole blocks when `pad=True`
(the padding is never read past the layer's features); otherwise it is refused with a clear error. With
``backend="auto"`` a `sparsity_lab.dispatch.Dispatcher` times the kernel's variants against dense once per problem
(`BlockKey`) and keeps the fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from sparsity_lab._optional import triton_available
from sparsity_lab.block import ops  # noqa: F401  (registers torch.ops.sparsity_lab.bsr_linear)
from sparsity_lab.dispatch import Dispatcher
from sparsity_lab.formats.matrices import BSR

BLOCK_BACKENDS = ("auto", "triton", "tma", "pointer", "decode", "dense")
# the fastest of the kernel's variants and dense, call by call (2 warm-up calls, median of 10)
DEFAULT_DISPATCHER = Dispatcher(margin=1.0, warmup=2, reps=10)


class BlockKey(NamedTuple):
    """The problem a dispatcher decision is made for: tokens rounded up to a power of two, the layer's sizes."""

    device: str
    dtype: str
    tokens: int
    out_features: int
    in_features: int
    block_size: int
    blocks: int


class BlockSparseLinear(nn.Module):
    """A Linear layer whose weight is stored block-sparse. `backend`: "auto" (the dispatcher times the kernel's
    variants against dense once per problem and keeps the fastest; at 1-64 tokens the split-K decode kernel too),
    "triton" (the kernel, its default variant), "tma" / "pointer" (one variant), "decode" (`block.decode_kernel`,
    at most 64 tokens) or "dense" (F.linear on the rebuilt dense weight).

    Made for inference: the stored blocks are buffers, not parameters. With gradients enabled and an input that
    requires them, the dense path runs so autograd reaches `x` (and the bias).
    """

    def __init__(self, weight: BSR, bias: torch.Tensor | None = None, backend: str = "auto",
                 dispatcher: Dispatcher | None = None, shape: tuple[int, int] | None = None) -> None:
        """`weight`: a BSR with square blocks; `shape`: the layer's (out_features, in_features) when the weight was
        zero-padded to whole blocks (default: the weight's shape)."""
        super().__init__()
        if backend not in BLOCK_BACKENDS:
            raise ValueError(f"backend must be one of {BLOCK_BACKENDS}, got {backend!r}")
        if not isinstance(weight, BSR):
            raise TypeError(f"weight must be a sparsity_lab.formats.BSR, got {type(weight).__name__}")
        bs = weight.block_size
        self.out_features, self.in_features = shape or weight.shape
        for name, features, side in (("out_features", self.out_features, weight.shape[0]),
                                     ("in_features", self.in_features, weight.shape[1])):
            if -(-features // bs) * bs != side:
                raise ValueError(f"{name}={features} does not fit a weight of {side} in blocks of {bs}: the weight "
                                 "must be the layer's features zero-padded to whole blocks")
        self.block_size = bs
        self.backend = backend
        self._sparse_backend = backend if backend != "dense" else "auto"  # what mode "sparse" runs
        self.dispatcher = dispatcher or DEFAULT_DISPATCHER
        counts = weight.crow_indices.diff()
        self.max_row_blocks = int(counts.max()) if counts.numel() else 0  # the decode kernel's grid
        self.register_buffer("crow_indices", weight.crow_indices.to(torch.int32))
        self.register_buffer("col_indices", weight.col_indices.to(torch.int32))
        self.register_buffer("values", weight.values)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self._dense_cache: tuple | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int, pad: bool = False, backend: str = "auto",
                    dispatcher: Dispatcher | None = None) -> BlockSparseLinear:
        """Keep the blocks of `linear.weight` that hold a non-zero (prune first, e.g. `block_pruning`)."""
        weight = BSR.from_dense(linear.weight.detach(), block_size, index_dtype=torch.int32, pad=pad)
        return cls(weight, linear.bias, backend, dispatcher, tuple(linear.weight.shape))

    @property
    def weight_bsr(self) -> BSR:
        """The stored weight as a BSR (checked again: sorted unique blocks, row pointers that never decrease)."""
        bs = self.block_size
        padded = ((self.crow_indices.numel() - 1) * bs, -(-self.in_features // bs) * bs)
        return BSR(self.crow_indices, self.col_indices, self.values, padded)

    @property
    def n_blocks(self) -> int:
        """Stored blocks."""
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        """The fraction of block positions that are stored."""
        return self.weight_bsr.density

    TUNE_MODES = ("dense", "sparse", "decode")  # what `sparsity_lab.dispatch.tune_` chooses among

    @property
    def mode(self) -> str:
        """"dense" when the layer runs F.linear on the rebuilt weight (backend "dense"), "decode" for the decode
        kernel wherever it fits (1-64 tokens; the sparse backend elsewhere), else "sparse" (the backend the layer was
        built with); `tune_` sets it."""
        return self.backend if self.backend in ("dense", "decode") else "sparse"

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in self.TUNE_MODES:
            raise ValueError(f"mode must be one of {self.TUNE_MODES}, got {value!r}")
        self.backend = value if value in ("dense", "decode") else self._sparse_backend
        if value == "dense":
            self.dense_weight()  # built here, eagerly: the compiled dense path reads it (see `_compiled_forward`)

    def dense_weight(self) -> torch.Tensor:
        """The dense (out_features, in_features) weight, rebuilt once per storage and cached (the dense operand)."""
        tag = (self.values.data_ptr(), self.values.dtype, self.values.device, self.values._version)
        if self._dense_cache is None or self._dense_cache[0] != tag:
            self._dense_cache = (tag, self.weight_bsr.to_dense()[: self.out_features, : self.in_features])
        return self._dense_cache[1]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202  (nn.Module's signature)
        """After ``.to()`` / ``.half()``: the dense weight is rebuilt from the moved blocks (in mode "dense" now,
        since compiled graphs read it; otherwise at its next use)."""
        super()._apply(fn, recurse)
        self._dense_cache = None
        if self.backend == "dense":
            self.dense_weight()
        return self

    def run(self, x2d: torch.Tensor, backend: str) -> torch.Tensor:
        """The product on a 2-D input by the named backend."""
        bias = self.bias.to(x2d.dtype) if self.bias is not None else None
        if backend == "dense":
            return F.linear(x2d, self.dense_weight().to(x2d.dtype), bias)
        if backend == "decode":
            from sparsity_lab.block.decode_kernel import bsr_decode_linear

            return bsr_decode_linear(x2d, self.crow_indices, self.col_indices, self.values.to(x2d.dtype),
                                     self.out_features, bias, self.max_row_blocks)
        if backend not in ("triton", "tma", "pointer"):
            raise ValueError(f"backend must be 'triton', 'tma', 'pointer', 'decode' or 'dense', got {backend!r}")
        from sparsity_lab.block.kernel import DEFAULT_VARIANT, bsr_linear

        variant = DEFAULT_VARIANT if backend == "triton" else backend
        return bsr_linear(x2d, self.crow_indices, self.col_indices, self.values.to(x2d.dtype), self.out_features,
                          bias, variant=variant)

    @staticmethod
    def _decode_fits(x2d: torch.Tensor) -> bool:
        """Whether the decode kernel takes this input: a CUDA input of 1-64 tokens, Triton installed."""
        if not (x2d.is_cuda and triton_available()):
            return False
        from sparsity_lab.block.decode_kernel import MAX_TOKENS

        return x2d.shape[0] <= MAX_TOKENS

    def dispatch_key(self, x2d: torch.Tensor) -> BlockKey:
        """The dispatcher's key for this 2-D input: its device and dtype, the tokens rounded up to a power of two."""
        tokens = 1 << max(x2d.shape[0] - 1, 0).bit_length()
        return BlockKey(str(x2d.device), str(x2d.dtype), tokens, self.out_features, self.in_features,
                        self.block_size, self.n_blocks)

    def choose_backend(self, x2d: torch.Tensor) -> str:
        """What ``backend="auto"`` runs for this 2-D input: "dense" on the CPU or without Triton (the kernel needs a
        GPU; Triton's interpreter is for testing), else the dispatcher's choice among "pointer", "tma" (where the
        input allows it) and "dense"."""
        if x2d.device.type != "cuda" or not triton_available():
            return "dense"

        def candidates() -> dict[str, Callable[[], torch.Tensor]]:
            from sparsity_lab.block.kernel import tma_supported

            names = ["pointer", "dense"] + (["tma"] if tma_supported(x2d, self.out_features) else [])
            names += ["decode"] if self._decode_fits(x2d) else []
            return {name: lambda name=name: self.run(x2d, name) for name in names}

        with torch.no_grad():
            return self.dispatcher.choose(self.dispatch_key(x2d), candidates).choice

    def _compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What ``torch.compile`` traces: the custom op `block.ops.bsr_linear` (our kernel; backend "auto" runs its
        default variant, as the dispatcher cannot measure inside a trace; "decode" the decode kernel at 1-64
        tokens), or dense for backend "dense" and for
        inputs that need grad."""
        from sparsity_lab.block.kernel import DEFAULT_VARIANT

        x2d = x.reshape(-1, self.in_features)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.backend == "dense" or (torch.is_grad_enabled() and x.requires_grad):
            # the weight rebuilt eagerly (when the mode was set, or by the last eager call): rebuilding it here
            # would check the BSR with host syncs, a graph break in every layer
            weight = self._dense_cache[1] if self._dense_cache is not None else self.dense_weight()
            return F.linear(x2d, weight.to(x.dtype), bias).reshape(*x.shape[:-1], self.out_features)
        variant = DEFAULT_VARIANT if self.backend in ("auto", "triton") else self.backend
        y = torch.ops.sparsity_lab.bsr_linear(x2d, self.crow_indices, self.col_indices, self.values.to(x.dtype),
                                              bias, self.out_features, variant, self.max_row_blocks)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        if torch.compiler.is_compiling():
            return self._compiled_forward(x)
        x2d = x.reshape(-1, self.in_features)
        backend = self.backend
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            backend = "dense"
        elif backend == "auto" or (backend == "decode" and not self._decode_fits(x2d)):
            backend = self.choose_backend(x2d)
        return self.run(x2d, backend).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}, "
                f"density={self.density:.3f}, backend={self.backend}")
