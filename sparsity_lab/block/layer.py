"""Block-sparse weights on the GPU: a BSR weight container, `BlockSparseLinear`, a model swap, and a dispatcher
that runs our Triton kernel where it beats dense and dense everywhere else.

The container holds the same three arrays as `torch.sparse_bsr_tensor` (and `sparsity_lab.formats.matrices.BSR`):
`crow_indices` (block-row pointers), `col_indices` (block column of each stored block) and `values`
(the stored `bs x bs` blocks, contiguous), here with int32 indices and square blocks, the layout the kernel reads.
Weights whose sides are not multiples of the block size are zero-padded up to whole blocks when `pad=True`
(the padding is never read past the logical shape); otherwise they are refused with a clear error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sparsity_lab._optional import triton_available


def _blocks_per_side(shape: tuple[int, int], block_size: int, pad: bool) -> tuple[int, int]:
    rows, cols = shape
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size}")
    if not pad:
        for dim, side in enumerate(shape):
            if side % block_size:
                raise ValueError(
                    f"weight shape {tuple(shape)} is not a multiple of block_size {block_size} in dim {dim} "
                    f"({side} % {block_size} = {side % block_size}); pass pad=True to zero-pad to whole blocks"
                )
    return math.ceil(rows / block_size), math.ceil(cols / block_size)


def block_view(weight: torch.Tensor, block_size: int, pad: bool = False) -> torch.Tensor:
    """`weight` (R, C) as (R/bs, C/bs, bs, bs) blocks (zero-padded to whole blocks when `pad`)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
    n_r, n_c = _blocks_per_side(tuple(weight.shape), block_size, pad)
    padded = F.pad(weight, (0, n_c * block_size - weight.shape[1], 0, n_r * block_size - weight.shape[0]))
    return padded.reshape(n_r, block_size, n_c, block_size).transpose(1, 2)


@dataclass
class BlockSparseMatrix:
    """A (rows, cols) matrix stored as square `block_size` blocks in BSR order (int32 indices)."""

    shape: tuple[int, int]
    block_size: int
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        n_r, n_c = _blocks_per_side(self.shape, self.block_size, pad=True)
        bs = self.block_size
        if self.crow_indices.shape != (n_r + 1,):
            raise ValueError(f"crow_indices must have {n_r + 1} entries, got shape {tuple(self.crow_indices.shape)}")
        if self.values.dim() != 3 or tuple(self.values.shape[1:]) != (bs, bs):
            raise ValueError(f"values must be (nnz, {bs}, {bs}), got shape {tuple(self.values.shape)}")
        if self.col_indices.shape != (self.values.shape[0],):
            raise ValueError(f"col_indices has shape {tuple(self.col_indices.shape)} for {self.values.shape[0]} blocks")
        if self.col_indices.numel() and not (0 <= int(self.col_indices.min()) and int(self.col_indices.max()) < n_c):
            lo, hi = int(self.col_indices.min()), int(self.col_indices.max())
            raise ValueError(f"col_indices must lie in [0, {n_c}), got {lo}..{hi}")
        if int(self.crow_indices[0]) != 0 or int(self.crow_indices[-1]) != self.values.shape[0]:
            raise ValueError(f"crow_indices must run from 0 to nnz={self.values.shape[0]}")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, block_size: int, block_mask: torch.Tensor | None = None,
                   pad: bool = False) -> BlockSparseMatrix:
        """Store the blocks of `weight` that hold a non-zero (or exactly those where `block_mask` is True)."""
        blocks = block_view(weight.detach(), block_size, pad)
        if block_mask is None:
            block_mask = (blocks != 0).flatten(2).any(-1)
        elif block_mask.shape != blocks.shape[:2]:
            raise ValueError(f"block_mask has shape {tuple(block_mask.shape)}, expected {tuple(blocks.shape[:2])} "
                             f"blocks for a {tuple(weight.shape)} weight in blocks of {block_size}")
        block_mask = block_mask.to(device=weight.device, dtype=torch.bool)
        rows, cols = block_mask.nonzero(as_tuple=True)  # row-major order: ascending columns within each row
        crow = torch.zeros(block_mask.shape[0] + 1, dtype=torch.int32, device=weight.device)
        crow[1:] = block_mask.sum(1).cumsum(0)
        return cls(tuple(weight.shape), block_size, crow, cols.to(torch.int32), blocks[rows, cols].contiguous())

    @classmethod
    def from_torch(cls, bsr: torch.Tensor, shape: tuple[int, int] | None = None) -> BlockSparseMatrix:
        """From a `torch.sparse_bsr` tensor with square blocks (interoperates with `Tensor.to_sparse_bsr`)."""
        if bsr.layout != torch.sparse_bsr:
            raise ValueError(f"expected a torch.sparse_bsr tensor, got layout {bsr.layout}")
        values = bsr.values()
        if values.shape[1] != values.shape[2]:
            raise ValueError(f"blocks must be square, got {tuple(values.shape[1:])}")
        return cls(tuple(shape or bsr.shape), int(values.shape[1]), bsr.crow_indices().to(torch.int32),
                   bsr.col_indices().to(torch.int32), values.contiguous())

    def to_torch(self) -> torch.Tensor:
        """As a `torch.sparse_bsr` tensor over the padded shape (whole blocks)."""
        n_r, n_c = _blocks_per_side(self.shape, self.block_size, pad=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse BSR tensor support is in beta")
            return torch.sparse_bsr_tensor(self.crow_indices, self.col_indices, self.values,
                                           size=(n_r * self.block_size, n_c * self.block_size), check_invariants=True)

    def to_dense(self) -> torch.Tensor:
        """The dense (rows, cols) matrix."""
        n_r, n_c = _blocks_per_side(self.shape, self.block_size, pad=True)
        bs = self.block_size
        dense = torch.zeros(n_r, n_c, bs, bs, dtype=self.values.dtype, device=self.values.device)
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(n_r, device=counts.device), counts)
        dense[rows, self.col_indices.long()] = self.values
        return dense.transpose(1, 2).reshape(n_r * bs, n_c * bs)[: self.shape[0], : self.shape[1]]

    def to(self, *args, **kwargs) -> BlockSparseMatrix:
        """Move/convert the values (indices follow the device, stay int32)."""
        values = self.values.to(*args, **kwargs)
        return BlockSparseMatrix(self.shape, self.block_size, self.crow_indices.to(values.device),
                                 self.col_indices.to(values.device), values)

    @property
    def nnz_blocks(self) -> int:
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        """The fraction of block positions that are stored."""
        n_r, n_c = _blocks_per_side(self.shape, self.block_size, pad=True)
        return self.nnz_blocks / max(n_r * n_c, 1)

    def matmul_t(self, x: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "triton",
                 config: dict | None = None) -> torch.Tensor:
        """`x @ self^T (+ bias)`, the Linear product: by the Triton kernel ("triton", "tma", "pointer") or a dense
        matmul ("dense")."""
        if backend == "dense":
            return F.linear(x, self.to_dense().to(x.dtype), bias)
        if backend not in ("triton", "tma", "pointer"):
            raise ValueError(f"backend must be 'triton', 'tma', 'pointer' or 'dense', got {backend!r}")
        from sparsity_lab.block.kernel import DEFAULT_VARIANT, bsr_linear

        variant = DEFAULT_VARIANT if backend == "triton" else backend
        return bsr_linear(x, self.crow_indices, self.col_indices, self.values, self.shape[0], bias, config=config,
                          variant=variant)


class Dispatcher:
    """Chooses, per problem, among the Triton kernel's two variants ("tma", "pointer") and dense cuBLAS by timing
    each once on the GPU (after the kernel's own autotuning).

    The key is (device, dtype, tokens rounded up to a power of two, out, in, block size, stored blocks);
    choices are cached, so each distinct problem is timed once. On the CPU the answer is always "dense"
    (the kernel needs a GPU; Triton's interpreter is for testing).
    """

    def __init__(self, repeats: int = 10) -> None:
        self.repeats = repeats
        self.choices: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self.errors: dict[tuple, str] = {}

    def key(self, layer: BlockSparseLinear, x: torch.Tensor) -> tuple:
        tokens = 1 << max(x.shape[0] - 1, 0).bit_length()
        return (str(x.device), str(x.dtype), tokens, layer.out_features, layer.in_features, layer.block_size,
                layer.nnz_blocks)

    def _time(self, fn) -> float:
        """Median milliseconds of one call, timed call by call after two warm-up calls (so the host-side launch
        work a call costs in an eager model is counted, as it is where the GPU waits on the host)."""
        for _ in range(2):
            fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(self.repeats):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return sorted(times)[len(times) // 2]

    def choose(self, layer: BlockSparseLinear, x: torch.Tensor) -> str:
        """'tma', 'pointer' or 'dense' for this layer and this 2-D input."""
        if x.device.type != "cuda" or not triton_available():
            return "dense"
        key = self.key(layer, x)
        if key not in self.choices:
            from sparsity_lab.block.kernel import tma_supported

            candidates = ["pointer", "dense"] + (["tma"] if tma_supported(x, layer.out_features) else [])
            timings = {}
            with torch.no_grad():
                for backend in candidates:
                    try:
                        timings[backend] = self._time(lambda b=backend: layer.run(x, b))
                    except Exception as err:  # a variant that cannot build here is skipped, and remembered
                        self.errors[key, backend] = repr(err)
            self.timings[key] = timings
            self.choices[key] = min(timings, key=timings.get)
        return self.choices[key]


DISPATCHER = Dispatcher()


BACKENDS = ("auto", "triton", "tma", "pointer", "dense")


class BlockSparseLinear(nn.Module):
    """A Linear layer whose weight is stored block-sparse. `backend`: "auto" (the dispatcher times the kernel's
    variants against dense once per problem and keeps the fastest), "triton" (the kernel, its default variant),
    "tma" / "pointer" (one variant) or "dense" (F.linear on the rebuilt dense weight).

    Made for inference: the stored blocks are buffers, not parameters. With gradients enabled and an input that
    requires them, the dense path runs so autograd reaches `x` (and the bias).
    """

    def __init__(self, weight: BlockSparseMatrix, bias: torch.Tensor | None = None, backend: str = "auto",
                 dispatcher: Dispatcher | None = None) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.out_features, self.in_features = weight.shape
        self.block_size = weight.block_size
        self.backend = backend
        self.dispatcher = dispatcher or DISPATCHER
        self.register_buffer("crow_indices", weight.crow_indices)
        self.register_buffer("col_indices", weight.col_indices)
        self.register_buffer("values", weight.values)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self._dense_cache: tuple | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int, pad: bool = False, backend: str = "auto",
                    dispatcher: Dispatcher | None = None) -> BlockSparseLinear:
        """Keep the blocks of `linear.weight` that hold a non-zero (prune first, e.g. `block_pruning`)."""
        weight = BlockSparseMatrix.from_dense(linear.weight.detach(), block_size, pad=pad)
        return cls(weight, linear.bias, backend, dispatcher)

    @property
    def weight_bsr(self) -> BlockSparseMatrix:
        return BlockSparseMatrix((self.out_features, self.in_features), self.block_size, self.crow_indices,
                                 self.col_indices, self.values)

    @property
    def nnz_blocks(self) -> int:
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        return self.weight_bsr.density

    def dense_weight(self) -> torch.Tensor:
        """The dense weight, rebuilt once per storage and cached (the dense fallback's operand)."""
        tag = (self.values.data_ptr(), self.values.dtype, self.values.device, self.values._version)
        if self._dense_cache is None or self._dense_cache[0] != tag:
            self._dense_cache = (tag, self.weight_bsr.to_dense())
        return self._dense_cache[1]

    def run(self, x2d: torch.Tensor, backend: str) -> torch.Tensor:
        """The product on a 2-D input by the named backend."""
        bias = self.bias.to(x2d.dtype) if self.bias is not None else None
        if backend == "dense":
            return F.linear(x2d, self.dense_weight().to(x2d.dtype), bias)
        if backend not in ("triton", "tma", "pointer"):
            raise ValueError(f"backend must be 'triton', 'tma', 'pointer' or 'dense', got {backend!r}")
        from sparsity_lab.block.kernel import DEFAULT_VARIANT, bsr_linear

        variant = DEFAULT_VARIANT if backend == "triton" else backend
        return bsr_linear(x2d, self.crow_indices, self.col_indices, self.values.to(x2d.dtype), self.out_features,
                          bias, variant=variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        x2d = x.reshape(-1, self.in_features)
        backend = self.backend
        if torch.is_grad_enabled() and (x.requires_grad or (self.bias is not None and self.bias.requires_grad)):
            backend = "dense"
        elif backend == "auto":
            backend = self.dispatcher.choose(self, x2d)
        return self.run(x2d, backend).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}, "
                f"density={self.density:.3f}, backend={self.backend}")
