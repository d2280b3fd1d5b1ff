"""Transposable 2:4 pruning in one pass (a Triton kernel): the mask, W_s and W_sᵀ of a 2:4 training step.

Each program loads a block of 4x4 tiles of W, scores all 90 transposable patterns of every tile (|w| summed over
the kept entries: one small matrix product against the 16 x 90 pattern table, in IEEE float32), keeps the best
(ties: the first pattern in `sparsity_lab.training.masks.tile_patterns` order, as in the float64 torch reference;
a near-tie that float32 sums cannot separate may go the other way), and
writes the boolean mask, W_s = W ⊙ mask and W_sᵀ, so a training step reads its weight once instead of running a
chain of torch ops (abs, permute, matmul, argmax, gather, where, transpose-copy) with a host sync for checks
(so it checks nothing itself: non-finite weights get some mask).
Runs on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from sparsity_lab.training.masks import tile_patterns

PATTERNS = 90
PADDED = 128  # the pattern table's width inside the kernel (a power of two); extra columns score -1
SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's constants on `device`: the (16, PADDED) float32 pattern matrix (column j = pattern j), the
    16-bit code of each pattern (bit r*4+c set = tile entry (r, c) kept), and a score bias of -1 on the padding
    columns (a real pattern scores >= 0, so padding is never chosen)."""
    patterns = tile_patterns(dtype=torch.float32)  # (90, 16)
    matrix = torch.zeros(16, PADDED, dtype=torch.float32)
    matrix[:, :PATTERNS] = patterns.T
    codes = torch.zeros(PADDED, dtype=torch.int32)
    codes[:PATTERNS] = (patterns.to(torch.int64) << torch.arange(16)).sum(1).to(torch.int32)
    bias = torch.zeros(PADDED, dtype=torch.float32)
    bias[PATTERNS:] = -1.0
    return matrix.to(device), codes.to(device), bias.to(device)


@triton.jit
def _transposable_prune_24_kernel(
    w_ptr, mask_ptr, ws_ptr, wst_ptr, table_ptr, codes_ptr, bias_ptr, rows, cols, stride_w,
    TILE_ROWS: tl.constexpr, TILE_COLS: tl.constexpr, PADDED: tl.constexpr,
):
    """One program per block of TILE_ROWS x TILE_COLS 4x4 tiles of W::

        w      = W[block]                                   # (4*TILE_ROWS, 4*TILE_COLS)
        tiles  = |w| as (TILES, 16), each tile row-major
        scores = tiles @ table + bias                       # kept magnitude of each of the 90 patterns
        best   = argmax(scores, axis=1)                     # first maximum: the torch reference's tie rule
        keep   = bits of codes[best], laid back as 4x4 tiles
        mask[block] = keep;  W_s[block] = w * keep;  W_sᵀ[blockᵀ] = (w * keep)ᵀ
    """
    BR: tl.constexpr = 4 * TILE_ROWS
    BC: tl.constexpr = 4 * TILE_COLS
    TILES: tl.constexpr = TILE_ROWS * TILE_COLS
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    inside = (r < rows)[:, None] & (c < cols)[None, :]
    w = tl.load(w_ptr + r[:, None] * stride_w + c[None, :], mask=inside, other=0.0)

    # (BR, BC) -> (TILES, 16): one row per 4x4 tile, entries in row-major order inside the tile
    tiles = tl.reshape(tl.permute(tl.reshape(tl.abs(w.to(tl.float32)), (TILE_ROWS, 4, TILE_COLS, 4)),
                                  (0, 2, 1, 3)), (TILES, 16))
    k = tl.arange(0, 16)
    p = tl.arange(0, PADDED)
    table = tl.load(table_ptr + k[:, None] * PADDED + p[None, :])
    scores = tl.dot(tiles, table, input_precision="ieee") + tl.load(bias_ptr + p)[None, :]
    best = tl.argmax(scores, axis=1, tie_break_left=True)
    code = tl.load(codes_ptr + best)
    keep16 = ((code[:, None] >> k[None, :]) & 1) != 0
    keep = tl.reshape(tl.permute(tl.reshape(keep16, (TILE_ROWS, TILE_COLS, 4, 4)), (0, 2, 1, 3)), (BR, BC))

    kept = tl.where(keep, w, tl.zeros_like(w))
    tl.store(mask_ptr + r[:, None] * cols + c[None, :], keep.to(tl.int8), mask=inside)
    tl.store(ws_ptr + r[:, None] * cols + c[None, :], kept, mask=inside)
    tl.store(wst_ptr + c[:, None] * rows + r[None, :], tl.trans(kept), mask=tl.trans(inside))


def transposable_prune(weight: torch.Tensor, tile_rows: int = 8, tile_cols: int = 8
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask, W_s, W_sᵀ) for a 2-D `weight` whose sizes are multiples of 4: the transposable 2:4 mask of
    `sparsity_lab.training.masks.transposable_mask`, the pruned weight, and its transpose (contiguous).
    Each program takes tile_rows x tile_cols 4x4 tiles: 8 x 8 was the fastest of 4x4 .. 16x16 on an H200
    (0.056 ms for a 4096 x 1024 fp16 weight; docs/performance/sparse_training.md)."""
    if weight.dim() != 2 or weight.shape[0] % 4 or weight.shape[1] % 4:
        raise ValueError(f"weight must be 2-D with both sizes multiples of 4, got shape {tuple(weight.shape)}")
    if weight.dtype not in SUPPORTED:
        raise TypeError(f"weight has dtype {weight.dtype}; the kernel takes {SUPPORTED}")
    if tile_rows * tile_cols < 16:
        raise ValueError("tile_rows * tile_cols must be at least 16 (the kernel's matrix product needs 16 rows)")
    weight = weight.detach()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    rows, cols = weight.shape
    mask = torch.empty((rows, cols), dtype=torch.int8, device=weight.device)
    pruned = torch.empty((rows, cols), dtype=weight.dtype, device=weight.device)
    pruned_t = torch.empty((cols, rows), dtype=weight.dtype, device=weight.device)
    table, codes, bias = _tables(weight.device)
    grid = (-(-rows // (4 * tile_rows)), -(-cols // (4 * tile_cols)))
    with torch.cuda.device(weight.device) if weight.is_cuda else contextlib.nullcontext():
        _transposable_prune_24_kernel[grid](weight, mask, pruned, pruned_t, table, codes, bias, rows, cols,
                                            weight.stride(0), TILE_ROWS=tile_rows, TILE_COLS=tile_cols, PADDED=PADDED)
    return mask.view(torch.bool), pruned, pruned_t
