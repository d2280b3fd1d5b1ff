"""Exercise 08: a masked linear layer that still learns its pruned weights (the straight-through estimator).

Lecture: lectures/08_sparse_training.ipynb. Grade with `sparsity-lab grade ex08`.

Training with a 2:4 weight multiplies by W_s = W ⊙ mask in the forward pass. Plain autograd of that product gives
the weight gradient (dyᵀ x) ⊙ mask: pruned weights get no gradient, never grow, and the mask can never change its
mind. The straight-through estimator (STE) treats the masking as the identity in the backward pass: every weight,
kept or pruned, gets dyᵀ x, so a pruned weight that *should* matter grows until a recomputed mask keeps it. That
needs a custom `torch.autograd.Function`, because autograd alone would differentiate through the mask.

Write `MaskedLinearSTE`, a subclass of `torch.autograd.Function`, with two static methods:

`forward(ctx, x, weight, mask)` with x of shape (..., in_features) (2-D (tokens, in_features) or 3-D
(batch, tokens, in_features)), weight of shape (out_features, in_features) and a boolean mask shaped like
weight (True = kept). It returns y = x @ (weight * mask).T, shape (..., out_features), and saves what backward
needs with `ctx.save_for_backward(...)`.

`backward(ctx, grad_y)` returns one gradient per input of forward, in order:
- grad_x = grad_y @ (weight * mask): the exact input gradient (the masked weight was used, so it flows back);
- grad_w = grad_yᵀ x summed over every leading dimension (tokens, and batch for 3-D x), shape (out, in), and
  **not** masked: the straight-through gradient;
- None for the mask (a boolean tensor has no gradient).

Then write `ste_linear(x, weight, mask)`, which returns `MaskedLinearSTE.apply(x, weight, mask)`.

Neither function may modify `weight` or `mask`.
Hint: flatten x and grad_y to 2-D with `.reshape(-1, features)` for grad_w; `grad_y @ W_s` works on any number
of leading dimensions. `torch.autograd.gradcheck` on x (in float64) checks your grad_x; it cannot check grad_w,
which is deliberately not the true gradient.
"""

import torch


class MaskedLinearSTE(torch.autograd.Function):
    """y = x (W ⊙ mask)ᵀ; backward: exact grad_x, straight-through (unmasked) grad_w."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("ex08: write MaskedLinearSTE.forward")

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        raise NotImplementedError("ex08: write MaskedLinearSTE.backward")


def ste_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked linear product through `MaskedLinearSTE`, differentiable in x and weight."""
    raise NotImplementedError("ex08: write ste_linear")
