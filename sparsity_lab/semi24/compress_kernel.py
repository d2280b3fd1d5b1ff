"""Prune to 2:4 by magnitude and compress to CUTLASS's layout in one pass (a Triton kernel).

One read of the dense weight, one write of the kept values and of the metadata: each program loads a
(BLOCK_M, BLOCK_K) tile, ranks the four |w| of every group (the two largest are kept; of equal |w| the lower
index is kept, so an all-zero group keeps positions 0, 1: the rule of `sparsity_lab.patterns.masks.nm_mask`, which
the tests check bit for bit), and writes

* ``values``: (m, k/2), the two kept entries of each group in column order;
* ``meta``: (m, k/16) int16 for 16-bit weights, (m, k/32) int32 for int8, each 4-bit nibble holding the two
  2-bit positions of one group, scattered into the interleaved column-major order CUTLASS's sparse GEMM reads.

The result equals, bit for bit, `torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`
applied to the pruned weight (including its encodings for groups with fewer than two non-zeros). The kernel is
written for Triton 3.x and runs on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsity_lab.semi24 import layout as semi24

SUPPORTED = (torch.float16, torch.bfloat16, torch.int8)  # the cutlass layout's dtypes less float32 (1:2)


def meta_dtype(dtype: torch.dtype) -> torch.dtype:
    """The metadata integer type CUTLASS pairs with a weight dtype (int16 for 16-bit, int32 for int8)."""
    if dtype not in SUPPORTED:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED)
        raise TypeError(f"dense has dtype {dtype}; the 2:4 compressor takes {names}")
    return semi24.meta_dtype(dtype)


def check_dense(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Raise naming the problem when the kernel cannot take a weight of `shape` and `dtype`: not 2-D, a dtype it
    does not take, or sizes that CUTLASS's layout cannot hold (`layout.check_shape`)."""
    if len(shape) != 2:
        raise ValueError(f"dense must be 2-D (out_features, in_features), got shape {tuple(shape)}")
    meta_dtype(dtype)  # raises for a dtype the kernel does not take
    semi24.check_shape(*shape, dtype, "cutlass")


@triton.jit
def _prune_compress_24_kernel(
    w_ptr, values_ptr, meta_ptr, pruned_ptr, m, k, stride_wm,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PRUNE: tl.constexpr, INT8_META: tl.constexpr,
    STORE_PRUNED: tl.constexpr,
):
    """One program per (BLOCK_M, BLOCK_K) tile of W::

        x0, x1, x2, x3 = the four entries of every group of 4 columns
        if PRUNE: keep the two of largest |x| (equal |x|: the lower index), zero the others
        (idx0, idx1) = positions of the two kept entries, CUTLASS's encoding (table below)
        values[tile] = (x[idx0], x[idx1]) per group
        meta[CUTLASS's place for (row, word)] = sum over the word's groups of (idx0 | idx1 << 2) << 4 * group

    The encoding, from the non-zero pattern m0..m3 of a group (PyTorch's
    ``sparse_semi_structured_from_dense_cutlass``, whose Espresso-minimised expressions are the code below):

        pattern  x x . .  x . x .  x . . x  . x x .  . x . x  . . x x   x . . .  . x . .  . . x .  . . . x  . . . .
        idx0     0        0        0        1        1        2         0        1        2        2        2
        idx1     1        2        3        2        3        3         2        2        3        3        3

    (a group with fewer than two non-zeros still names two positions; their values are zeros). The readable
    reference of the metadata's placement is `sparsity_lab.semi24.layout.cutlass_meta_offsets`.
    """
    GROUPS: tl.constexpr = BLOCK_K // 4
    NIBBLES: tl.constexpr = 8 if INT8_META else 4  # groups per metadata element
    META_COLS: tl.constexpr = GROUPS // NIBBLES
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < m
    w = tl.load(w_ptr + rows[:, None] * stride_wm + cols[None, :], mask=row_ok[:, None] & (cols < k)[None, :])

    # the four entries of each group: x{j} = w[:, 4g + j]
    even, odd = tl.split(tl.reshape(w, (BLOCK_M, GROUPS, 2, 2)))
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    if PRUNE:
        a0 = tl.abs(x0.to(tl.float32))
        a1 = tl.abs(x1.to(tl.float32))
        a2 = tl.abs(x2.to(tl.float32))
        a3 = tl.abs(x3.to(tl.float32))
        # how many entries outrank each one (larger |w|, or equal |w| at a lower index); keep rank < 2
        r0 = (a1 > a0).to(tl.int32) + (a2 > a0).to(tl.int32) + (a3 > a0).to(tl.int32)
        r1 = (a0 >= a1).to(tl.int32) + (a2 > a1).to(tl.int32) + (a3 > a1).to(tl.int32)
        r2 = (a0 >= a2).to(tl.int32) + (a1 >= a2).to(tl.int32) + (a3 > a2).to(tl.int32)
        r3 = (a0 >= a3).to(tl.int32) + (a1 >= a3).to(tl.int32) + (a2 >= a3).to(tl.int32)
        zero = tl.zeros_like(x0)
        x0 = tl.where(r0 < 2, x0, zero)
        x1 = tl.where(r1 < 2, x1, zero)
        x2 = tl.where(r2 < 2, x2, zero)
        x3 = tl.where(r3 < 2, x3, zero)
        if STORE_PRUNED:  # the pruned dense weight too (for cuSPARSELt's compressor and dense fallbacks)
            back = tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), (BLOCK_M, BLOCK_K))
            tl.store(pruned_ptr + rows[:, None] * k + cols[None, :], back,
                     mask=row_ok[:, None] & (cols < k)[None, :])

    # CUTLASS's encoding of the non-zero pattern (PyTorch's sparse_semi_structured_from_dense_cutlass)
    m0 = x0 != 0
    m1 = x1 != 0
    m3 = x3 != 0
    expr0 = m0 & m1
    expr1 = (~m0) & m1
    expr2 = (~m0) & (~m1)
    idx0 = expr1.to(tl.int32) | (expr2.to(tl.int32) << 1)
    idx1 = (expr0 | expr2 | m3).to(tl.int32) | ((expr1 | (~m1)).to(tl.int32) << 1)
    v0 = tl.where(idx0 == 0, x0, tl.where(idx0 == 1, x1, tl.where(idx0 == 2, x2, x3)))
    v1 = tl.where(idx1 == 0, x0, tl.where(idx1 == 1, x1, tl.where(idx1 == 2, x2, x3)))

    half_cols = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    kept = tl.reshape(tl.join(v0, v1), (BLOCK_M, BLOCK_K // 2))
    tl.store(values_ptr + rows[:, None] * (k // 2) + half_cols[None, :], kept,
             mask=row_ok[:, None] & (half_cols < k // 2)[None, :])

    # pack NIBBLES consecutive groups into one metadata element (disjoint bits: the sum is an OR)
    shift = (tl.arange(0, GROUPS) % NIBBLES) * 4
    nibbles = (idx0 | (idx1 << 2)) << shift[None, :]
    meta = tl.sum(tl.reshape(nibbles, (BLOCK_M, META_COLS, NIBBLES)), axis=2)

    # scatter into CUTLASS's reordered (ColumnMajorInterleaved<2>, 2x2-swizzled) metadata layout
    GROUP_ROWS: tl.constexpr = 16 if INT8_META else 32
    INTERWEAVE: tl.constexpr = 2 if INT8_META else 4
    meta_cols = pid_k * META_COLS + tl.arange(0, META_COLS)
    r = rows[:, None]
    c = meta_cols[None, :]
    dst_r = r // GROUP_ROWS * GROUP_ROWS + (r % 8) * INTERWEAVE + (r % GROUP_ROWS) // 8
    swap = ((dst_r % 2 == 0) & (c % 2 == 1)).to(tl.int32) - ((dst_r % 2 == 1) & (c % 2 == 0)).to(tl.int32)
    dst_r = dst_r + swap
    dst_c = c - swap
    offsets = (dst_c // 2) * m * 2 + dst_r * 2 + dst_c % 2
    if INT8_META:
        meta = meta.to(tl.int32)
    else:
        meta = meta.to(tl.int16)
    tl.store(meta_ptr + offsets, meta, mask=row_ok[:, None] & (meta_cols < k // (4 * NIBBLES))[None, :])


def _block_k(cols: int, wanted: int) -> int:
    block = wanted
    while block > 32 and cols % block:
        block //= 2
    return block


def prune_and_compress(
    dense: torch.Tensor, prune: bool = True, block_m: int = 16, block_k: int = 128, num_warps: int = 2,
    return_pruned: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Prune `dense` (out_features, in_features) to 2:4 by magnitude (unless `prune=False`: it must be 2:4
    already) and return CUTLASS's ``(values, meta)`` -- plus the pruned dense weight when `return_pruned` --
    in one Triton launch."""
    dtype_meta = meta_dtype(dense.dtype)
    check_dense(tuple(dense.shape), dense.dtype)
    if dense.stride(1) != 1:
        dense = dense.contiguous()
    m, k = dense.shape
    nibbles = 8 if dtype_meta == torch.int32 else 4
    values = torch.empty((m, k // 2), dtype=dense.dtype, device=dense.device)
    meta = torch.empty((m, k // (4 * nibbles)), dtype=dtype_meta, device=dense.device)
    block_k = _block_k(k, block_k)
    if block_k < 4 * nibbles:
        raise ValueError(f"block_k={block_k} must hold at least {4 * nibbles} columns (one metadata element)")
    store_pruned = return_pruned and prune
    pruned = torch.empty_like(dense, memory_format=torch.contiguous_format) if store_pruned else values
    grid = ((m + block_m - 1) // block_m, (k + block_k - 1) // block_k)
    _prune_compress_24_kernel[grid](
        dense, values, meta, pruned, m, k, dense.stride(0),
        BLOCK_M=block_m, BLOCK_K=block_k, PRUNE=prune, INT8_META=dtype_meta == torch.int32,
        STORE_PRUNED=store_pruned, num_warps=num_warps,
    )
    if return_pruned:
        return values, meta, pruned if store_pruned else dense
    return values, meta
