"""int8 dynamic quantization: scales, error bounds, exact integer matmuls, rescaling, bad inputs."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsity_lab.quant import int8 as q


def _weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * torch.rand(rows, 1, generator=gen) * 10


def test_scale_is_row_max_over_127_and_the_max_maps_to_127():
    w = _weights(6, 20, 0)
    q_w, scale = q.quantize_per_channel(w)
    assert q_w.dtype == torch.int8 and q_w.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (6,)
    assert torch.equal(scale, w.abs().amax(1) / 127)
    assert torch.equal(q_w.abs().amax(1), torch.full((6,), 127, dtype=torch.int8))


@given(rows=st.integers(1, 8), cols=st.integers(1, 40), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_round_to_nearest_error_is_at_most_half_a_step(rows, cols, seed, dtype):
    w = _weights(rows, cols, seed).to(dtype)
    q_w, scale = q.quantize_per_channel(w)
    assert int(q_w.abs().max()) <= 127
    error = (w.double() - q.dequantize(q_w, scale, torch.float64)).abs()
    step = scale.double()[:, None]
    # half a step, plus float32 rounding of x / scale (relative 2**-23 of at most 127 steps)
    assert (error <= step * (0.5 + 127 * 2.0**-22)).all()


def test_symmetric_quantization_is_odd():
    w = _weights(5, 17, 1)
    q_pos, s_pos = q.quantize_per_channel(w)
    q_neg, s_neg = q.quantize_per_channel(-w)
    assert torch.equal(q_neg, -q_pos) and torch.equal(s_neg, s_pos)


def test_zero_rows_get_scale_zero_and_dequantize_to_zero_without_nan():
    w = _weights(4, 8, 2)
    w[1] = 0
    w[3] = 0
    q_w, scale = q.quantize_per_channel(w)
    assert scale[1] == 0 and scale[3] == 0 and (scale[[0, 2]] > 0).all()
    assert (q_w[[1, 3]] == 0).all()
    back = q.dequantize(q_w, scale)
    assert torch.isfinite(back).all() and (back[[1, 3]] == 0).all()


def test_tiny_rows_do_not_overflow():
    w = torch.full((2, 4), 1e-40)  # subnormal: max/127 underflows towards 0
    q_w, scale = q.quantize_per_channel(w)
    assert torch.isfinite(scale).all() and int(q_w.abs().max()) <= 127


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.ones(3, 4, dtype=torch.int32), TypeError, "floating"),
        (torch.ones(4), ValueError, "2-D"),
        (torch.ones(2, 3, 4), ValueError, "2-D"),
        (torch.ones(3, 0), ValueError, "at least one entry"),
        (torch.tensor([[1.0, float("nan")]]), ValueError, "non-finite"),
        (torch.tensor([[1.0], [float("inf")]]), ValueError, r"index \[1, 0\]"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        q.quantize_per_channel(bad)


def test_per_token_quantization_of_no_tokens_gives_empty_scales():
    q_x, s_x = q.quantize_per_token(torch.zeros(0, 8))
    assert q_x.shape == (0, 8) and s_x.shape == (0,)


def test_dequantize_checks_its_scale():
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\)"):
        q.dequantize(torch.zeros(3, 2, dtype=torch.int8), torch.ones(2))
    with pytest.raises(TypeError, match="torch.int8"):
        q.dequantize(torch.zeros(3, 2), torch.ones(3))


def _random_int8(*shape, seed=0, low=-127, high=128):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 12, 10), (33, 64, 24)])
def test_integer_matmul_is_exact_against_float64_of_the_dequantized_operands(m, k, n):
    x, w = _weights(m, k, 3), _weights(n, k, 4)
    q_x, s_x = q.quantize_per_token(x)
    q_w, s_w = q.quantize_per_channel(w)
    acc = q.int8_matmul_reference(q_x, q_w)
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    assert torch.equal(acc.long(), (q_x.double() @ q_w.double().T).long())
    expected = q.dequantize(q_x, s_x, torch.float64) @ q.dequantize(q_w, s_w, torch.float64).T
    got = acc.double() * s_x.double()[:, None] * s_w.double()[None, :]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_integer_matmul_does_not_overflow_at_the_extremes():
    k = 4096
    a = torch.full((2, k), -127, dtype=torch.int8)
    w = torch.full((3, k), 127, dtype=torch.int8)
    assert (q.int8_matmul_reference(a, w) == -127 * 127 * k).all()
    assert (q.int_mm(a, w) == -127 * 127 * k).all()


def test_int_mm_agrees_with_the_reference_on_the_cpu():
    a, w = _random_int8(20, 24, seed=1), _random_int8(16, 24, seed=2)
    assert torch.equal(q.int_mm(a, w), q.int8_matmul_reference(a, w))


def test_int_mm_shape_constraints_on_cuda_are_padded():
    assert q.int_mm_shape(5, 12, 10, "cuda") == (17, 16, 16)
    assert q.int_mm_shape(4096, 4096, 4096, "cuda") == (4096, 4096, 4096)
    assert q.int_mm_shape(5, 12, 10, "cpu") == (5, 12, 10)


@pytest.mark.parametrize(
    "a, w, error, match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int8), TypeError, "a must be torch.int8"),
        (torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2, 4, dtype=torch.int8), ValueError, "same K"),
        (torch.zeros(3, dtype=torch.int8), torch.zeros(2, 3, dtype=torch.int8), ValueError, "2-D"),
    ],
)
def test_matmuls_reject_bad_operands(a, w, error, match):
    for matmul in (q.int8_matmul_reference, q.int_mm):
        with pytest.raises(error, match=match):
            matmul(a, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rescale_applies_both_scales_and_the_bias(dtype):
    acc = _random_int8(4, 6, seed=5).to(torch.int32) * 100
    s_x, s_w, bias = torch.rand(4), torch.rand(6), torch.randn(6)
    y = q.rescale(acc, s_x, s_w, bias, dtype=dtype)
    assert y.dtype == dtype and y.shape == (4, 6)
    expected = acc.double() * s_x.double()[:, None] * s_w.double()[None, :] + bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=1e-5)
    torch.testing.assert_close(q.rescale(acc, s_x, s_w).double(), expected - bias.double(), rtol=1e-6, atol=1e-5)


def test_rescale_checks_shapes():
    acc = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"scales must be \(2,\) and \(3,\)"):
        q.rescale(acc, torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="bias"):
        q.rescale(acc, torch.ones(2), torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="int32"):
        q.rescale(acc.float(), torch.ones(2), torch.ones(3))


def test_int8_linear_is_close_to_the_float_layer_and_keeps_leading_dims():
    x, w, b = torch.randn(2, 7, 32), torch.randn(16, 32), torch.randn(16)
    q_w, s_w = q.quantize_per_channel(w)
    y = q.int8_linear(x, q_w, s_w, b)
    assert y.shape == (2, 7, 16) and y.dtype == x.dtype
    ref = x @ w.T + b
    assert float((y - ref).norm() / ref.norm()) < 0.02
    assert torch.equal(q.int8_linear(x, q_w, s_w, b, backend="int_mm"), y)
    with pytest.raises(ValueError, match="backend"):
        q.int8_linear(x, q_w, s_w, b, backend="nope")
    with pytest.raises(ValueError, match="features"):
        q.int8_linear(torch.randn(3, 31), q_w, s_w, b)


@pytest.mark.gpu
def test_int_mm_on_the_gpu_pads_awkward_shapes_and_is_exact():
    a, w = _random_int8(5, 12, seed=6), _random_int8(10, 12, seed=7)
    got = q.int_mm(a.cuda(), w.cuda())
    assert torch.equal(got.cpu(), q.int8_matmul_reference(a, w))
    with pytest.raises(ValueError, match="M > 16"):
        q.int_mm(a.cuda(), w.cuda(), pad=False)


@pytest.mark.gpu
def test_int8_linear_on_the_gpu_matches_the_cpu_reference():
    x, w, b = torch.randn(40, 64), torch.randn(24, 64), torch.randn(24)
    q_w, s_w = q.quantize_per_channel(w)
    cpu = q.int8_linear(x, q_w, s_w, b)
    gpu = q.int8_linear(x.cuda(), q_w.cuda(), s_w.cuda(), b.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_float64_values_beyond_float32_are_refused_not_zeroed():
    x = torch.tensor([[1.0, -2.0], [1e39, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"beyond float32's range \(first at index \[1, 0\]"):
        q.quantize_per_token(x)
    values, scales = q.quantize_per_token(torch.tensor([[3.0e38, -1.0]], dtype=torch.float64))
    assert torch.isfinite(scales).all() and values[0, 0] == 127
