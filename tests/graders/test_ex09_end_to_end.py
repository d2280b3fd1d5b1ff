"""Grader for exercise 09 (a whole model's predicted time and speed-up from its profile; a LayerNorm over the
columns of a 2:4 layer's D; a decode step's product from the simple 2:4 layout; the GELU from the normal tail)."""

import pytest
import torch
import torch.nn.functional as F

EXERCISE = "ex09_end_to_end"
PROFILE = {"dense GEMM": 20.8, "attention": 2.8, "norms": 3.2, "layout copies": 0.2, "other": 5.8}


def test_worked_example(exercise):
    assert exercise.predicted_forward_ms(PROFILE, 1.4) == pytest.approx(32.8 - 20.8 + 20.8 / 1.4)
    assert exercise.predicted_speedup(PROFILE, 1.4) == pytest.approx(1.2213, abs=1e-4)
    assert exercise.predicted_speedup(PROFILE, 1.4, layout_ms=19.4) == pytest.approx(0.7091, abs=1e-4)
    assert exercise.predicted_speedup(PROFILE, 1.4, sparse_fraction=0.5) == pytest.approx(1.0996, abs=1e-4)


def test_only_the_sparse_share_of_the_gemms_speeds_up(exercise):
    profile = {"dense GEMM": 10.0, "other": 10.0}
    assert exercise.predicted_forward_ms(profile, 2.0) == pytest.approx(15.0)
    assert exercise.predicted_forward_ms(profile, 2.0, sparse_fraction=0.0) == pytest.approx(20.0)
    assert exercise.predicted_forward_ms(profile, 2.0, sparse_fraction=0.4, layout_ms=1.5) == pytest.approx(19.5)
    assert exercise.predicted_speedup(profile, 1e9) == pytest.approx(2.0)  # Amdahl: the rest bounds it


def test_a_slower_gemm_predicts_a_slowdown(exercise):
    assert exercise.predicted_speedup({"dense GEMM": 5.0, "other": 5.0}, 0.5) == pytest.approx(10 / 15)


@pytest.mark.parametrize("kwargs, name", [
    ({"profile": {"other": 1.0}, "gemm_speedup": 1.4}, "dense GEMM"),
    ({"profile": {"dense GEMM": 1.0, "other": -1.0}, "gemm_speedup": 1.4}, "profile"),
    ({"profile": PROFILE, "gemm_speedup": 0.0}, "gemm_speedup"),
    ({"profile": PROFILE, "gemm_speedup": 1.4, "sparse_fraction": 1.5}, "sparse_fraction"),
    ({"profile": PROFILE, "gemm_speedup": 1.4, "layout_ms": -0.1}, "layout_ms"),
])
def test_bad_input_names_the_argument(exercise, kwargs, name):
    with pytest.raises(ValueError, match=name):
        exercise.predicted_forward_ms(**kwargs)


def test_profile_is_not_modified(exercise):
    profile = dict(PROFILE)
    exercise.predicted_speedup(profile, 1.4, layout_ms=2.0)
    assert profile == PROFILE


def test_layer_norm_columns_worked_example(exercise):
    d = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    torch.testing.assert_close(exercise.layer_norm_columns(d, eps=0.0), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    out = exercise.layer_norm_columns(d, torch.tensor([2.0, 1.0]), torch.tensor([0.0, 10.0]), eps=0.0)
    torch.testing.assert_close(out, torch.tensor([[-2.0, -2.0], [11.0, 11.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_layer_norm_columns_is_layer_norm_of_the_tokens_in_ds_layout(exercise, dtype):
    gen = torch.Generator().manual_seed(0)
    d = (torch.randn(48, 37, generator=gen) * 3 + 2).to(dtype)
    weight, bias = torch.rand(48, generator=gen).to(dtype), torch.randn(48, generator=gen).to(dtype)
    before = d.clone()
    out = exercise.layer_norm_columns(d, weight, bias)
    assert out.shape == (48, 37) and out.dtype == dtype and out.is_contiguous()
    reference = F.layer_norm(d.double().t(), (48,), weight.double(), bias.double(), 1e-5).t()
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), reference, rtol=tolerance, atol=tolerance)
    assert torch.equal(d, before)


@pytest.mark.parametrize("args, name", [
    ((torch.zeros(4),), r"\bd\b"),
    ((torch.zeros(4, 3), torch.ones(3)), "weight"),
    ((torch.zeros(4, 3), None, torch.ones(4, 1)), "bias"),
    ((torch.zeros(4, 3), None, None, -1.0), "eps"),
])
def test_layer_norm_columns_names_the_bad_argument(exercise, args, name):
    with pytest.raises(ValueError, match=name):
        exercise.layer_norm_columns(*args)


def test_matvec_simple_worked_example(exercise):
    values, meta = torch.tensor([[5.0, 7.0, 0.0, 9.0]]), torch.tensor([[232]], dtype=torch.uint8)
    torch.testing.assert_close(exercise.matvec_simple(torch.arange(1.0, 9.0)[None], values, meta),
                               torch.tensor([[98.0]]))


@pytest.mark.parametrize("tokens, n, k, dtype", [(1, 16, 64, torch.float32), (3, 5, 12, torch.float64),
                                                 (8, 7, 40, torch.bfloat16)])
def test_matvec_simple_is_x_times_the_dense_weight(exercise, tokens, n, k, dtype):
    from sparsity_lab.semi24 import layout

    gen = torch.Generator().manual_seed(k)
    w = layout.sparsify(torch.randn(n, k, generator=gen)).to(dtype)
    w[0, :4] = 0  # an empty group: its nibble still names two positions
    w[-1, 4:8] = torch.tensor([0.0, 0.0, 0.0, 2.0]).to(dtype)  # a group with one non-zero
    values, meta = layout.compress(w, "simple")
    x = torch.randn(tokens, k, generator=gen).to(dtype)
    before = (x.clone(), values.clone(), meta.clone())
    y = exercise.matvec_simple(x, values, meta)
    assert y.shape == (tokens, n) and y.dtype == dtype
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(y.double(), x.double() @ w.double().t(), rtol=tolerance, atol=tolerance)
    assert all(torch.equal(a, b) for a, b in zip((x, values, meta), before, strict=True))


@pytest.mark.parametrize("args, name", [
    ((torch.ones(8), torch.ones(1, 4), torch.zeros(1, 1, dtype=torch.uint8)), "x"),
    ((torch.ones(1, 6), torch.ones(1, 3), torch.zeros(1, 1, dtype=torch.uint8)), "x"),
    ((torch.ones(1, 8), torch.ones(1, 3), torch.zeros(1, 1, dtype=torch.uint8)), "values"),
    ((torch.ones(1, 8), torch.ones(1, 4), torch.zeros(1, 1, dtype=torch.int16)), "meta"),
    ((torch.ones(1, 8), torch.ones(2, 4), torch.zeros(1, 1, dtype=torch.uint8)), "meta"),
])
def test_matvec_simple_names_the_bad_argument(exercise, args, name):
    with pytest.raises(ValueError, match=name):
        exercise.matvec_simple(*args)


def test_gelu_from_tail_worked_example(exercise):
    y = exercise.gelu_from_tail(torch.tensor([-6.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([-5.9195e-09, 0.0, 0.8413447], dtype=torch.float64), rtol=1e-4,
                               atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_gelu_from_tail_is_x_phi_x(exercise, dtype):
    x = torch.linspace(-8, 8, 1601, dtype=torch.float64).to(dtype).reshape(1601, 1).expand(1601, 2)
    before = x.clone()
    y = exercise.gelu_from_tail(x)
    exact = x.double() * 0.5 * torch.special.erfc(-x.double() * 0.5**0.5)
    assert y.shape == x.shape and y.dtype == dtype and torch.equal(x, before)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(y.double(), exact, rtol=tolerance, atol=0.0)  # relative: tiny tails too


def test_gelu_from_tail_keeps_the_negative_tail_in_float32(exercise):
    """Where 0.5 x (1 + erf(x / sqrt 2)) cancels in float32 (0 below -5.5), the tail form keeps every digit."""
    x = torch.tensor([-4.5, -5.0, -6.0, -9.0])
    exact = x.double() * 0.5 * torch.special.erfc(-x.double() * 0.5**0.5)
    assert (F.gelu(x) == 0).sum() >= 2  # what the usual formula gives
    torch.testing.assert_close(exercise.gelu_from_tail(x).double(), exact, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("x", [torch.arange(4), [1.0, 2.0]])
def test_gelu_from_tail_names_the_bad_argument(exercise, x):
    with pytest.raises(ValueError, match="x"):
        exercise.gelu_from_tail(x)
