"""Grader for exercise 01 (OBD saliency from a Hessian diagonal; Hutchinson's estimator)."""

import pytest
import torch

EXERCISE = "ex01_obd"


def _psd(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T / n + torch.diag(torch.rand(n, generator=g, dtype=torch.float64))


def test_obd_saliency_is_half_h_w_squared(exercise):
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    h = torch.tensor([[2.0, 1.0], [0.5, 4.0]])
    torch.testing.assert_close(exercise.obd_saliency(w, h), torch.tensor([[1.0, 2.0], [2.25, 0.5]]))


def test_obd_saliency_clamps_negative_curvature_to_zero(exercise):
    s = exercise.obd_saliency(torch.tensor([2.0, 2.0]), torch.tensor([-3.0, 1.0]))
    torch.testing.assert_close(s, torch.tensor([0.0, 2.0]))


def test_obd_saliency_rejects_shape_mismatch(exercise):
    with pytest.raises(ValueError):
        exercise.obd_saliency(torch.ones(2, 3), torch.ones(3, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_obd_saliency_rejects_non_finite(exercise, bad):
    h = torch.ones(4)
    h[2] = bad
    with pytest.raises(ValueError):
        exercise.obd_saliency(torch.ones(4), h)
    with pytest.raises(ValueError):
        exercise.obd_saliency(h, torch.ones(4))


def test_obd_saliency_agrees_with_the_library_and_leaves_inputs_alone(exercise):
    from sparsity_lab.pruning.saliency import obd_from_diagonal

    w, h = torch.randn(8, 5), torch.randn(8, 5)
    w0, h0 = w.clone(), h.clone()
    torch.testing.assert_close(exercise.obd_saliency(w, h), obd_from_diagonal({"l": w}, {"l": h})["l"])
    assert torch.equal(w, w0) and torch.equal(h, h0)


def test_hutchinson_is_exact_for_a_diagonal_matrix_with_one_probe(exercise):
    d = torch.tensor([1.0, -2.0, 3.5, 0.0], dtype=torch.float64)
    est = exercise.hutchinson_diagonal(lambda v: d * v, 4, samples=1, generator=torch.Generator().manual_seed(0))
    assert est.shape == (4,) and est.dtype == torch.float64
    torch.testing.assert_close(est, d)


def test_hutchinson_probes_are_rademacher_and_counted(exercise):
    seen = []

    def hvp(v):
        seen.append(v.clone())
        return v

    exercise.hutchinson_diagonal(hvp, 50, samples=7, generator=torch.Generator().manual_seed(1))
    assert len(seen) == 7, "one Hessian-vector product per sample"
    probes = torch.stack(seen)
    assert set(probes.unique().tolist()) == {-1.0, 1.0}, "probe entries must be -1 or +1"


def test_hutchinson_error_falls_as_samples_grow(exercise):
    h = _psd(30)
    errors = []
    for samples in (4, 64, 1024):
        est = exercise.hutchinson_diagonal(lambda v: h @ v, 30, samples, torch.Generator().manual_seed(2))
        errors.append(float((est - h.diagonal()).norm() / h.diagonal().norm()))
    assert errors[0] > errors[1] > errors[2], f"relative errors {errors} should fall with more probes"
    assert errors[2] < 0.15


def test_hutchinson_is_reproducible_from_the_generator(exercise):
    h = _psd(10, seed=3)
    a = exercise.hutchinson_diagonal(lambda v: h @ v, 10, 5, torch.Generator().manual_seed(4))
    b = exercise.hutchinson_diagonal(lambda v: h @ v, 10, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("n", "samples"), [(5, 0), (0, 5)])
def test_hutchinson_rejects_bad_counts(exercise, n, samples):
    with pytest.raises(ValueError):
        exercise.hutchinson_diagonal(lambda v: v, n, samples)


def test_hutchinson_on_a_real_hessian_tracks_the_exact_diagonal(exercise):
    from torch import nn

    from sparsity_lab.pruning.hessian import exact_diagonal, flat_hvp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    hvp, n = flat_hvp(model, x, y, "ce")
    est = exercise.hutchinson_diagonal(hvp, n, 300, torch.Generator().manual_seed(0))
    exact = torch.cat([v.reshape(-1) for v in exact_diagonal(model, x, y, "ce").values()])
    assert float(torch.corrcoef(torch.stack([est, exact]))[0, 1]) > 0.9
