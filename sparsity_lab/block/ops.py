"""The block-sparse matmul as a ``torch.library`` custom op, so ``torch.compile`` traces a model with
`BlockSparseLinear` layers whole (without it Dynamo traces into the Triton launch and breaks the graph there).

``torch.ops.sparsity_lab.bsr_linear(x, crow_indices, col_indices, blocks, bias, out_features, variant,
max_row_blocks)`` is ``x @ Wᵀ (+ bias)`` for the BSR weight W: our Triton kernel (`block.kernel.bsr_linear`) on CUDA
-- variant "decode" takes the decode kernel (`block.decode_kernel`) at 1-64 tokens, so a compiled decode step keeps
it -- and a dense product of the rebuilt weight elsewhere (the CPU, where the kernel only runs interpreted, for
testing). The fake kernel gives the output's shape, (M, out_features) row-major, for any M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("sparsity_lab::bsr_linear", mutates_args=())
def bsr_linear(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, blocks: torch.Tensor,
               bias: torch.Tensor | None, out_features: int, variant: str, max_row_blocks: int = 0) -> torch.Tensor:
    """y = x Wᵀ (+ bias) for x (M, K) and W given by its BSR arrays (blocks: (nnz, bs, bs)); `max_row_blocks`: the
    most blocks a block-row stores, for the decode kernel's grid (0: counted, one host sync)."""
    if x.is_cuda:
        from sparsity_lab.block.decode_kernel import MAX_TOKENS, bsr_decode_linear
        from sparsity_lab.block.kernel import DEFAULT_VARIANT
        from sparsity_lab.block.kernel import bsr_linear as kernel

        if variant == "decode" and x.shape[0] <= MAX_TOKENS:
            return bsr_decode_linear(x, crow_indices, col_indices, blocks, out_features, bias, max_row_blocks or None)
        variant = DEFAULT_VARIANT if variant == "decode" else variant
        return kernel(x, crow_indices, col_indices, blocks, out_features, bias, variant=variant)
    bs, block_rows = blocks.shape[-1], crow_indices.numel() - 1
    block_cols = -(-x.shape[1] // bs)
    grid = blocks.new_zeros((block_rows, block_cols, bs, bs))
    rows = torch.repeat_interleave(torch.arange(block_rows, device=x.device), crow_indices.diff())
    grid[rows, col_indices.long()] = blocks
    weight = grid.permute(0, 2, 1, 3).reshape(block_rows * bs, block_cols * bs)
    return F.linear(x, weight[:out_features, : x.shape[1]], bias)


@bsr_linear.register_fake
def _(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, blocks: torch.Tensor,
      bias: torch.Tensor | None, out_features: int, variant: str, max_row_blocks: int = 0) -> torch.Tensor:
    return x.new_empty((x.shape[0], out_features))
