"""SparseGPT against direct solves: the sequential OBS reference, least squares for a fixed mask, magnitude."""

import pytest
import torch

from sparsity_lab.patterns.masks import is_nm, nm_mask
from sparsity_lab.pruning.prune import magnitude_mask, topk_mask
from sparsity_lab.pruning.sparsegpt import damped_inverse_cholesky, hessian, sparsegpt_prune

D_IN, D_OUT, TOKENS = 32, 6, 200


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, X, H) with correlated inputs, where compensation matters."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(TOKENS, D_IN, generator=generator, dtype=torch.float64)
    x = z + 0.5 * z @ torch.randn(D_IN, D_IN, generator=generator, dtype=torch.float64)
    weight = torch.randn(D_OUT, D_IN, generator=generator, dtype=torch.float64)
    return weight, x, hessian(x)[0]


def _damped(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    return h + percdamp * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)


def _error(weight: torch.Tensor, pruned: torch.Tensor, h: torch.Tensor) -> float:
    """The layer-wise reconstruction error sum_i (w_i - ŵ_i)ᵀ H (w_i - ŵ_i) = 2 ||(W - Ŵ) Xᵀ||² / n."""
    delta = (weight - pruned).double()
    return float(torch.einsum("ij,jk,ik->", delta, h, delta))


def _least_squares(weight: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The best weights on each row's kept support S: ŵ_S = H_SS⁻¹ H_S: w (the exact optimum for that mask)."""
    out = torch.zeros_like(weight)
    for row in range(len(weight)):
        s = keep[row].nonzero().squeeze(1)
        out[row, s] = torch.linalg.solve(h[s][:, s], h[s] @ weight[row])
    return out


def _sequential_reference(weight: torch.Tensor, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """OBS one column at a time, solved directly: fix column c (0 where pruned), then the columns right of it take
    their least-squares best given every fixed column. This is what SparseGPT computes, without Cholesky or blocks."""
    out = weight.clone()
    for row in range(len(weight)):
        w0, w = weight[row], weight[row].clone()
        for c in range(weight.shape[1]):
            if not keep[row, c]:
                w[c] = 0.0
            fixed, free = torch.arange(c + 1), torch.arange(c + 1, weight.shape[1])
            if len(free):
                w[free] = w0[free] - torch.linalg.solve(h[free][:, free], h[free][:, fixed] @ (w[fixed] - w0[fixed]))
        out[row] = w
    return out


@pytest.mark.parametrize("blocksize", [1, 4, 5, 32, 128])
def test_the_lazy_blocked_update_equals_sequential_obs_solved_directly(blocksize):
    weight, _, h = _problem()
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    pruned, mask = sparsegpt_prune(weight, h, mask=keep, blocksize=blocksize, percdamp=0.01)
    assert torch.equal(mask, keep)
    assert float((pruned - _sequential_reference(weight, _damped(h, 0.01), keep)).abs().max()) < 1e-10


def test_one_pruned_weight_in_the_first_column_gets_the_exact_obs_update():
    weight, _, h = _problem(seed=2)
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep[:, 0] = False  # every other column is to its right: SparseGPT's update is OBS's, the optimum
    pruned, _ = sparsegpt_prune(weight, h, mask=keep, percdamp=0.0)
    inverse = torch.linalg.inv(h)
    obs = weight - weight[:, :1] / inverse[0, 0] * inverse[0]  # w - w_q / [H⁻¹]_qq H⁻¹ e_q, row by row
    assert float((pruned - obs).abs().max()) < 1e-9
    assert float((pruned - _least_squares(weight, h, keep)).abs().max()) < 1e-9


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_beats_magnitude_and_closes_most_of_the_gap_to_least_squares(pattern):
    weight, _, h = _problem(seed=3)
    pruned, keep = sparsegpt_prune(weight, h, pattern=pattern, blocksize=16, percdamp=0.01)
    magnitude = magnitude_mask(weight, 0.5) if pattern == "unstructured" else nm_mask(weight.abs(), *map(
        int, pattern.split(":")))
    ours, best = _error(weight, pruned, h), _error(weight, _least_squares(weight, h, keep), h)
    no_update = _error(weight, weight * keep, h)
    assert best <= ours * (1 + 1e-9), "nothing beats least squares on the same mask (or the check is wrong)"
    assert ours < _error(weight, weight * magnitude, h), "SparseGPT must beat magnitude without an update"
    assert ours < no_update
    assert (no_update - ours) / (no_update - best) > 0.5, "the update should close most of the gap to the optimum"


def test_masks_have_the_pattern_and_the_exact_sparsity():
    weight, _, h = _problem(seed=4)
    for pattern, n, m in (("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)):
        pruned, keep = sparsegpt_prune(weight, h, pattern=pattern, blocksize=8)
        assert is_nm(keep, n, m) and int(keep.sum()) == weight.numel() * n // m
        assert torch.equal(pruned != 0, keep)
    pruned, keep = sparsegpt_prune(weight, h, sparsity=0.75, blocksize=8)
    assert int((~keep).sum()) == round(0.75 * weight.numel()) and bool((pruned[~keep] == 0).all())


def test_the_selection_scores_are_w_squared_over_the_cholesky_diagonal_squared():
    weight, _, h = _problem(seed=5)
    u = damped_inverse_cholesky(h, 0.01)
    scores = weight.pow(2) / u.diagonal().pow(2)
    _, keep = sparsegpt_prune(weight, h, sparsity=0.5, blocksize=D_IN)  # one block: chosen before any update
    assert torch.equal(keep, topk_mask(scores, 0.5))
    _, keep = sparsegpt_prune(weight, h, pattern="2:4", blocksize=D_IN)  # the first group sees the original w
    assert torch.equal(keep[:, :4], nm_mask(scores[:, :4], 2, 4))


def test_ties_keep_the_lower_index():
    h = torch.eye(8, dtype=torch.float64)
    weight = torch.ones(2, 8)
    _, keep = sparsegpt_prune(weight, h, pattern="2:4")
    assert keep.tolist() == [[True, True, False, False] * 2] * 2
    _, keep = sparsegpt_prune(weight, h, sparsity=0.5, blocksize=8)
    assert keep.tolist() == [[True] * 8, [False] * 8]


def test_the_hessian_accumulates_batches_and_its_scale_does_not_matter():
    weight, x, h = _problem(seed=6)
    running, seen = hessian(x[:50])
    running, seen = hessian(x[50:], running, seen)
    assert seen == TOKENS and torch.allclose(running, h) and torch.allclose(h, 2 * x.T @ x / TOKENS)
    a, keep_a = sparsegpt_prune(weight, h, pattern="2:4")
    b, keep_b = sparsegpt_prune(weight, 1000.0 * h, pattern="2:4")  # λ is relative to mean(diag H)
    assert torch.equal(keep_a, keep_b) and torch.allclose(a, b)


def test_float32_weights_come_back_float32_from_float64_inside():
    weight, _, h = _problem(seed=7)
    pruned, _ = sparsegpt_prune(weight.float(), h.float(), pattern="2:4")
    reference, _ = sparsegpt_prune(weight, h, pattern="2:4")
    assert pruned.dtype == torch.float32 and float((pruned.double() - reference).abs().max()) < 1e-4


def test_inputs_that_never_fire_have_their_column_zeroed():
    weight, x, _ = _problem(seed=8)
    x[:, 3] = 0.0
    pruned, _ = sparsegpt_prune(weight, hessian(x)[0], pattern="2:4")
    assert torch.isfinite(pruned).all() and bool((pruned[:, 3] == 0).all())


def test_refuses_what_it_cannot_do():
    weight, _, h = _problem()
    with pytest.raises(ValueError, match="shape|H"):
        sparsegpt_prune(weight, h[:8, :8])
    with pytest.raises(ValueError, match="unstructured or N:M"):
        sparsegpt_prune(weight, h, pattern="row")
    with pytest.raises(ValueError, match="multiples of m"):
        sparsegpt_prune(weight, h, pattern="2:4", blocksize=6)
    with pytest.raises(ValueError):
        sparsegpt_prune(weight, h, sparsity=1.0)
    with pytest.raises(ValueError, match="positive definite"):
        damped_inverse_cholesky(-torch.eye(4, dtype=torch.float64), 0.01)


def test_sequential_sparsegpt_calibrates_each_layer_with_the_earlier_ones_pruned():
    from sparsity_lab.pruning.sparsegpt import sequential_sparsegpt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(64, 16)
    before = [p.clone() for p in model.parameters()]
    results = sequential_sparsegpt(model, (x,), ["2", "0"], pattern="2:4", blocksize=8)
    assert list(results) == ["0", "2"], "layers are pruned in the order the forward pass reaches them"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "the model is unchanged"
    first, _ = sparsegpt_prune(model[0].weight, hessian(x)[0], "2:4", blocksize=8)
    assert torch.allclose(results["0"][0], first)
    seen = torch.relu(torch.nn.functional.linear(x, first, model[0].bias))  # what layer 2 sees with layer 0 pruned
    second, _ = sparsegpt_prune(model[2].weight, hessian(seen)[0], "2:4", blocksize=8)
    assert torch.allclose(results["2"][0], second, atol=1e-6)
    with pytest.raises(TypeError, match="nn.Linear"):
        sequential_sparsegpt(model, (x,), ["1"])
