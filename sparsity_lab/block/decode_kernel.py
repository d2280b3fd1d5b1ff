"""`bsr_decode_linear(x, crow, col, blocks)`: y = x Wᵀ for a block-sparse weight at decode sizes (1-64 tokens).

Why: at a few tokens the product reads the stored blocks once and does little arithmetic; what limits it is how many
of the GPU's cores read at once. `block.kernel` gives each program a whole block-row (N / bs programs: 64 for
N = 4096, block 64), too few to fill an H200 at decode sizes. Here each program takes `CHUNK` stored blocks of one
block-row (split-K over the row's blocks) and adds its partial product into a float32 y with atomics (where one
chunk holds every block of a row, the program writes y in x's dtype with the bias instead: one kernel, no atomics):

    program (r, s, t):  blocks j = crow[r] + s * CHUNK ... min(crow[r] + (s + 1) * CHUNK, crow[r + 1]) - 1
                        acc[m, :] = sum_j x[m, col[j] * bs : (col[j] + 1) * bs] @ blocks[j]ᵀ    (tokens of tile t)
                        y32[m, r * bs : (r + 1) * bs] += acc                                     (atomic add)
    y = (y32 + bias) in x's dtype

Reference: ``x @ W.t()`` with W rebuilt dense. Tested in Triton's interpreter on the CPU
(tests/test_block_decode_kernel.py); `BlockSparseLinear`'s dispatcher times it beside the other variants and dense
at 1-64 tokens ("decode").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsity_lab._optional import triton_interpreting

MAX_TOKENS = 64
# Block-rows of at most this many stored blocks get one program each (no atomics); longer rows are split in chunks
# of SPLIT_CHUNK. Measured on an H200 at Llama-3-8B's MLP shapes at 90% (docs/performance/block_sparse.md):
# 10-14 blocks per row ran fastest direct, 34 per row (K = 14336) fastest in chunks of 4.
DIRECT_UP_TO, SPLIT_CHUNK = 16, 4


@triton.jit
def _bsr_decode_kernel(x_ptr, crow_ptr, col_ptr, blk_ptr, bias_ptr, y_ptr, M, N, K, CHUNK: tl.constexpr,
                       BS: tl.constexpr, BLOCK_M: tl.constexpr, DIRECT: tl.constexpr, HAS_BIAS: tl.constexpr,
                       WIDEN: tl.constexpr):
    r, s, t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, end = tl.load(crow_ptr + r), tl.load(crow_ptr + r + 1)
    first = start + s * CHUNK
    last = tl.minimum(first + CHUNK, end)
    m = t * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.arange(0, BS)
    m_ok = m < M
    acc = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    for j in range(first, last):
        k = tl.load(col_ptr + j) * BS + b
        x = tl.load(x_ptr + m[:, None].to(tl.int64) * K + k[None, :], mask=m_ok[:, None] & (k[None, :] < K),
                    other=0.0)
        w = tl.load(blk_ptr + j * (BS * BS) + b[None, :] * BS + b[:, None])  # block[j]ᵀ: (in, out); < 2**31 values
        if WIDEN:  # Triton's CPU interpreter multiplies bf16 bit patterns as integers in tl.dot: widen there
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(x, w, acc)
    n = r * BS + b
    y = y_ptr + m[:, None].to(tl.int64) * N + n[None, :]
    if DIRECT:  # one program per block-row and token tile: y written once, bias added, in y's dtype
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (n[None, :] < N))
    elif first < last:
        tl.atomic_add(y, acc, mask=m_ok[:, None] & (n[None, :] < N))


def bsr_decode_linear(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, blocks: torch.Tensor,
                      out_features: int, bias: torch.Tensor | None = None, max_row_blocks: int | None = None,
                      chunk: int | None = None) -> torch.Tensor:
    """y = x Wᵀ (+ bias), (M, out_features), for x (M <= 64, K) and the BSR weight (crow, col, blocks (nnz, bs, bs));
    `max_row_blocks`: the most blocks any block-row stores (computed when not given: one host sync); `chunk`: blocks
    per program (at least `max_row_blocks`: one program per block-row writes y directly, no atomics; None:
    `DIRECT_UP_TO`)."""
    if x.dim() != 2 or blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        raise ValueError(f"x must be (M, K) and blocks (nnz, bs, bs), got {tuple(x.shape)}, {tuple(blocks.shape)}")
    if x.shape[0] > MAX_TOKENS:
        raise ValueError(f"{x.shape[0]} tokens: the decode kernel is for at most {MAX_TOKENS}")
    if blocks.dtype != x.dtype:
        raise TypeError(f"x and blocks must share a dtype, got {x.dtype} and {blocks.dtype}")
    m, k = x.shape
    bs, block_rows = blocks.shape[-1], crow_indices.numel() - 1
    if max_row_blocks is None:
        max_row_blocks = int(crow_indices.diff().max()) if block_rows else 0
    if chunk is None:
        chunk = max_row_blocks if max_row_blocks <= DIRECT_UP_TO else SPLIT_CHUNK
    block_m = 16
    grid = (block_rows, max(triton.cdiv(max_row_blocks, chunk), 1), triton.cdiv(m, block_m))
    direct = grid[1] == 1
    y = (torch.empty if direct else torch.zeros)((m, out_features), dtype=x.dtype if direct else torch.float32,
                                                  device=x.device)
    widen = x.dtype == torch.bfloat16 and triton_interpreting()
    _bsr_decode_kernel[grid](x.contiguous(), crow_indices, col_indices, blocks.contiguous(),
                             blocks if bias is None else bias, y, m, out_features, k, CHUNK=chunk, BS=bs,
                             BLOCK_M=block_m, DIRECT=direct, HAS_BIAS=bias is not None and direct, WIDEN=widen,
                             num_warps=4)
    if direct:
        return y
    if bias is not None:
        y += bias.to(torch.float32)
    return y.to(x.dtype)
