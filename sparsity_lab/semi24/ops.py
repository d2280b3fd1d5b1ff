"""The 2:4 matmul as a ``torch.library`` custom op, so ``torch.compile`` traces a swapped model whole.

``torch.ops.sparsity_lab.semi24_linear_t(x, weight, compressed, bias, dispatcher)`` returns D = W · xᵀ (+ b) as a
row-major (N, M) tensor -- the layout cuSPARSELt writes -- and `Semi24Linear` hands ``D.t()`` on as y. Dynamo
sees one opaque op with a fake kernel (shapes only, dynamic M), so a compiled model has no graph break at a 2:4
layer, and Inductor sees the transpose as a view: it fuses it into the ops that follow (bias, GELU, the residual
add, LayerNorm) instead of copying y to row-major, which is the seed's "fuse the transpose into the next ReLU".

Inside the op (real tensors) the same per-shape choice as in eager mode is made: cuSPARSELt (a token count that is
not a multiple of 8 padded with zero rows) where the dispatcher measured it faster, else cuBLAS writing D
directly (``addmm(b, W, xᵀ)``: the same layout, so the choice never changes what the graph downstream reads).
`compressed` is the layer's buffer of cuSPARSELt's packed weight; the op finds the packed weight (its plans and
descriptors) by that buffer's address in `_PACKED`, which holds it only as long as the layer does. An empty
`compressed` (a CPU model, a dtype cuSPARSELt cannot take) always runs dense.

``torch.ops.sparsity_lab.semi24_decode(x, weight, values, meta, bias)`` is a layer's mode "decode" compiled: our
decode kernel at 1-64 tokens, y row-major.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, NamedTuple

import torch

from sparsity_lab.dispatch import Dispatcher

if TYPE_CHECKING:
    from sparsity_lab.semi24.matmul import Semi24Matmul

class Semi24Key(NamedTuple):
    """The problem a dispatcher decision is made for: tokens M, in_features K, out_features N, dtype, backend."""

    M: int
    K: int
    N: int
    dtype: torch.dtype
    backend: str


def tokens_multiple(dtype: torch.dtype) -> int:
    """cuSPARSELt's token-count multiple for the dense operand (int8 measured: 24 is refused)."""
    return 16 if dtype == torch.int8 else 8


_PACKED: weakref.WeakValueDictionary[int, Semi24Matmul] = weakref.WeakValueDictionary()
_DISPATCHERS: weakref.WeakValueDictionary[int, Dispatcher] = weakref.WeakValueDictionary()


def register_packed(matmul: Semi24Matmul) -> None:
    """Let the op find `matmul` (a cuSPARSELt `Semi24Matmul`) by its compressed buffer, while it lives."""
    _PACKED[matmul.packed.compressed.data_ptr()] = matmul


def refresh(matmul: Semi24Matmul, weight: torch.Tensor) -> None:
    """Re-compress a cuSPARSELt `matmul` from `weight` in place (same buffer, so plans stay valid) when the weight
    was changed in place since it was packed (its version counter moved); refuse a weight that is no longer 2:4,
    whose compression would be silently wrong."""
    if matmul.version == weight._version:
        return
    if not matmul.packed.is_24(weight):
        raise ValueError("the 2:4 layer's weight was changed in place and is no longer 2:4 along its rows: prune it "
                         "again (sparsity_lab.semi24.matmul.prune24) before loading it into a Semi24Linear")
    matmul.packed.recompress(weight)
    matmul.version = weight._version


def dispatcher_id(dispatcher: Dispatcher | None) -> int:
    """The op's integer handle for a dispatcher (0: none, always sparse where the kernel can run)."""
    if dispatcher is None:
        return 0
    _DISPATCHERS[id(dispatcher)] = dispatcher
    return id(dispatcher)


def dense_t(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """D = W · xᵀ (+ b) on cuBLAS (or the CPU), row-major (N, M): the op's dense route, in the op's layout."""
    if bias is None:
        return weight @ x.t()
    return torch.addmm(bias[:, None], weight, x.t())


@torch.library.custom_op("sparsity_lab::semi24_linear_t", mutates_args=())
def semi24_linear_t(x: torch.Tensor, weight: torch.Tensor, compressed: torch.Tensor, bias: torch.Tensor | None,
                    dispatcher: int) -> torch.Tensor:
    """D = W · xᵀ (+ bias) for x (M, K) and the 2:4 weight W (N, K): yᵀ, row-major (N, M)."""
    matmul = _PACKED.get(compressed.data_ptr()) if compressed.numel() else None
    m = x.shape[0]
    if matmul is not None and x.dtype == weight.dtype:
        refresh(matmul, weight)
        chosen = _DISPATCHERS.get(dispatcher) if dispatcher else None
        pad = -m % tokens_multiple(x.dtype)  # pad with zero rows to cuSPARSELt's token multiple

        def sparse() -> torch.Tensor:
            if pad:
                return matmul.packed.linear(torch.nn.functional.pad(x, (0, 0, 0, pad)), bias).t()[:, :m].contiguous()
            return matmul.packed.linear(x, bias).t()  # y is column-major: yᵀ is D, contiguous

        if chosen is None:
            return sparse()
        key = Semi24Key(m, weight.shape[1], weight.shape[0], x.dtype, "cusparselt")
        decision = chosen.choose(key, lambda: {"sparse": sparse, "dense": lambda: dense_t(x, weight, bias)})
        if decision.choice == "sparse":
            return sparse()
    return dense_t(x, weight, bias)


@semi24_linear_t.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, compressed: torch.Tensor, bias: torch.Tensor | None,
      dispatcher: int) -> torch.Tensor:
    return x.new_empty((weight.shape[0], x.shape[0]))


@torch.library.custom_op("sparsity_lab::semi24_decode", mutates_args=())
def semi24_decode(x: torch.Tensor, weight: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """y = x Wᵀ (+ bias), row-major (M, N): our decode kernel (`semi24.decode_kernel`) on W's simple-layout
    `values` and `meta` for a CUDA x of 1-64 tokens, so a compiled decode step keeps it; cuBLAS on the pruned
    dense `weight` for anything else (more tokens, the CPU, or empty `values`)."""
    from sparsity_lab.semi24.decode_kernel import MAX_TOKENS, decode_linear

    if x.is_cuda and values.numel() and x.shape[0] <= MAX_TOKENS:
        return decode_linear(x, values, meta, bias)
    return torch.nn.functional.linear(x, weight, bias)


@semi24_decode.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))
