"""`row_major(y)`: a 2:4 layer's column-major output copied to row-major at copy bandwidth (Triton).

Why: cuSPARSELt computes D = W · xᵀ, so a 2:4 layer's y = D.t() is column-major. Elementwise ops and the next
2:4 layer read it as it lies, but a residual add, a LayerNorm or attention want y row-major, and PyTorch's own
``y.contiguous()`` of such a view is a strided copy (measured about 0.6 TB/s inside timm's ViT-L on an H200). This
kernel moves one (BLOCK_M x BLOCK_N) tile per program: it loads the tile from D with unit stride along M (coalesced),
and Triton turns it around through shared memory so the store is unit stride along N (coalesced too).

Layout, for y (M, N) with strides (1, M), i.e. D = yᵀ row-major (N, M):

    read   D[n, m] at n * M + m   (a tile: BLOCK_N rows of D, BLOCK_M contiguous elements each)
    write  y[m, n] at m * N + n   (the same tile: BLOCK_M rows of y, BLOCK_N contiguous elements each)

Reference: ``y.contiguous()``. Benchmark: `sparsity-lab bench models` profiles the copies inside whole models.
"""

from __future__ import annotations

import torch

from sparsity_lab._optional import triton_available, triton_interpreting

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _row_major_kernel(d_ptr, y_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = (m[:, None] < M) & (n[None, :] < N)
        tile = tl.load(d_ptr + n[None, :].to(tl.int64) * M + m[:, None], mask=inside)  # unit stride along m
        tl.store(y_ptr + m[:, None].to(tl.int64) * N + n[None, :], tile, mask=inside)  # unit stride along n


def is_column_major(y: torch.Tensor) -> bool:
    """Whether y (M, N) is the transposed view of a row-major (N, M) tensor: strides (1, M)."""
    return y.dim() == 2 and y.stride() == (1, y.shape[0]) and y.shape[0] > 1 and y.shape[1] > 1


def row_major(y: torch.Tensor, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """y (M, N) as a row-major tensor: the Triton tile copy for a column-major y on the GPU (or on the CPU
    under ``TRITON_INTERPRET=1``), ``y.contiguous()`` for anything else. Bit-exact: values are only moved."""
    if not is_column_major(y) or not triton_available() or (not y.is_cuda and not triton_interpreting()):
        return y.contiguous()
    return _launch(y, block_m, block_n)


def _launch(y: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """One `_row_major_kernel` over a column-major y: the row-major copy."""
    m, n = y.shape
    out = torch.empty((m, n), dtype=y.dtype, device=y.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _row_major_kernel[grid](y, out, m, n, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
    return out
