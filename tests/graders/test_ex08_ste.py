"""Grader for exercise 08 (a masked linear autograd Function with the straight-through estimator)."""

import pytest
import torch

EXERCISE = "ex08_ste"


def _problem(tokens=6, features=8, out=4, seed=0, dtype=torch.float32, batch=None):
    """x, a weight, its 2:4 mask (along rows, as sparse tensor cores need) and an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    lead = (tokens,) if batch is None else (batch, tokens)
    x = torch.randn(*lead, features, generator=gen, dtype=dtype)
    weight = torch.randn(out, features, generator=gen, dtype=dtype)
    groups = weight.abs().reshape(out, -1, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    grad_y = torch.randn(*lead, out, generator=gen, dtype=dtype)
    return x, weight, mask.reshape(out, features), grad_y


def _grads(fn, x, weight, mask, grad_y):
    """y and the gradients of (y * grad_y).sum() for x and weight."""
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y = fn(x, weight, mask)
    y.backward(grad_y)
    return y.detach(), x.grad, weight.grad


def _masked_autograd(x, weight, mask):
    return x @ (weight * mask).T


def test_is_an_autograd_function_whose_forward_is_the_masked_product(exercise):
    x, weight, mask, _ = _problem()
    y = exercise.MaskedLinearSTE.apply(x, weight, mask)
    assert issubclass(exercise.MaskedLinearSTE, torch.autograd.Function)
    assert y.shape == (6, 4), f"y should be (tokens, out_features) = (6, 4), got {tuple(y.shape)}"
    torch.testing.assert_close(y, x @ (weight * mask).T)


def test_ste_linear_calls_the_function(exercise):
    x, weight, mask, _ = _problem(seed=1)
    w = weight.clone().requires_grad_()
    y = exercise.ste_linear(x, w, mask)
    torch.testing.assert_close(y, x @ (weight * mask).T)
    assert y.grad_fn is not None and "MaskedLinearSTE" in type(y.grad_fn).__name__, \
        "ste_linear should return MaskedLinearSTE.apply(x, weight, mask)"


def test_grad_x_is_the_exact_gradient_through_the_masked_weight(exercise):
    problem = _problem(seed=2)
    _, grad_x, _ = _grads(exercise.ste_linear, *problem)
    _, expected, _ = _grads(_masked_autograd, *problem)
    torch.testing.assert_close(grad_x, expected)


def test_grad_w_is_straight_through_not_masked(exercise):
    x, weight, mask, grad_y = _problem(seed=3)
    _, _, grad_w = _grads(exercise.ste_linear, x, weight, mask, grad_y)
    _, _, masked = _grads(_masked_autograd, x, weight, mask, grad_y)
    assert grad_w is not None and grad_w.shape == weight.shape
    torch.testing.assert_close(grad_w, grad_y.T @ x)
    torch.testing.assert_close(grad_w[mask], masked[mask], msg="kept weights: the same gradient as plain autograd")
    assert (masked[~mask] == 0).all() and (grad_w[~mask] != 0).all(), \
        "pruned weights must get dyᵀx too (plain autograd would give them 0): do not mask grad_w"


def test_gradcheck_on_x_in_float64(exercise):
    x, weight, mask, _ = _problem(tokens=3, seed=4, dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda inp: exercise.ste_linear(inp, weight, mask), (x,))


@pytest.mark.parametrize("batch", [1, 3])
def test_works_for_3d_inputs(exercise, batch):
    x, weight, mask, grad_y = _problem(tokens=5, seed=5, batch=batch)
    y, grad_x, grad_w = _grads(exercise.ste_linear, x, weight, mask, grad_y)
    assert y.shape == (batch, 5, 4), f"y should be (batch, tokens, out) = {(batch, 5, 4)}, got {tuple(y.shape)}"
    torch.testing.assert_close(y, x @ (weight * mask).T)
    assert grad_x.shape == x.shape and grad_w.shape == weight.shape
    torch.testing.assert_close(grad_x, grad_y @ (weight * mask))
    torch.testing.assert_close(grad_w, torch.einsum("bto,bti->oi", grad_y, x),
                               msg="grad_w sums grad_yᵀ x over the batch and the tokens")


def test_does_not_modify_weight_or_mask(exercise):
    x, weight, mask, grad_y = _problem(seed=6)
    w = weight.clone().requires_grad_()
    mask_before = mask.clone()
    exercise.ste_linear(x, w, mask).backward(grad_y)
    assert torch.equal(mask, mask_before) and mask.dtype == torch.bool, "the mask must not change"
    assert torch.equal(w.detach(), weight), "the weight must not change"


def test_agrees_with_the_library(exercise):
    from sparsity_lab.training.layer import sparse24_linear
    from sparsity_lab.training.masks import transposable_mask

    x, weight, _, grad_y = _problem(tokens=16, features=16, out=8, seed=7)
    mask = transposable_mask(weight)
    _, grad_x, grad_w = _grads(exercise.ste_linear, x, weight, mask, grad_y)
    _, lib_x, lib_w = _grads(lambda a, w, m: sparse24_linear(a, w, None, m), x, weight, mask, grad_y)
    torch.testing.assert_close(grad_x, lib_x)
    torch.testing.assert_close(grad_w, lib_w)
