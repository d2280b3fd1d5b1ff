"""The weights of one 2:4 training step: (mask, W_s, W_sᵀ as the input gradient uses it), from the one-pass
Triton kernel on CUDA where it can run (`training.kernel`), else from the torch masks of `training.masks`.

Kept apart from `masks` so that the kernel (which builds its pattern table from `masks`) and the masks never
import each other.
"""

from __future__ import annotations

import torch

from sparsity_lab._optional import triton_available
from sparsity_lab.training.masks import masked, sparse24_mask


def _transpose_24(weight_s: torch.Tensor) -> torch.Tensor:
    """W_sᵀ pruned again to 2:4 along its rows (``transpose="recompress"``; Triton where it can run)."""
    from sparsity_lab.semi24.matmul import prune24

    return prune24(weight_s.T.contiguous())


def sparse_pair(weight: torch.Tensor, mask: torch.Tensor | None, transpose: str = "transposable"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask, W_s, W_sᵀ as the input gradient uses it) for one training step. `mask=None` computes the mask
    from |W| (on CUDA with the one-pass Triton kernel for transposable masks); otherwise `mask` is applied."""
    weight = weight.detach()
    if mask is None and transpose == "transposable" and weight.is_cuda and triton_available() \
            and weight.dtype in (torch.float16, torch.bfloat16, torch.float32):
        from sparsity_lab.training.kernel import transposable_prune

        return transposable_prune(weight)
    if mask is None:
        mask = sparse24_mask(weight, transpose)
    weight_s = masked(weight, mask)
    weight_t = weight_s.T.contiguous() if transpose == "transposable" else _transpose_24(weight_s)
    return mask, weight_s, weight_t
