"""Solution to exercise 08: a masked linear layer with the straight-through estimator."""

import torch


class MaskedLinearSTE(torch.autograd.Function):
    """y = x (W ⊙ mask)ᵀ; backward: exact grad_x, straight-through (unmasked) grad_w."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight_s = weight * mask  # a new tensor: weight and mask stay as they are
        ctx.save_for_backward(x, weight_s)
        return x @ weight_s.T

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight_s = ctx.saved_tensors
        grad_x = grad_y @ weight_s if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            # Straight through: the mask is treated as the identity, so pruned weights get a gradient too.
            grad_w = grad_y.reshape(-1, grad_y.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_w, None


def ste_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked linear product through `MaskedLinearSTE`, differentiable in x and weight."""
    return MaskedLinearSTE.apply(x, weight, mask)
