"""Grader for exercise 07 (symmetric per-channel int8 quantize / dequantize)."""

import pytest
import torch

EXERCISE = "ex07_int8_quant"


def _weight(rows=12, cols=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * torch.rand(rows, 1, generator=gen) * 5


def test_returns_int8_values_and_float32_scales(exercise):
    w = _weight()
    q, scale = exercise.quantize_per_channel(w)
    assert q.dtype == torch.int8, f"q should be torch.int8, got {q.dtype}"
    assert q.shape == w.shape
    assert scale.dtype == torch.float32, f"scale should be float32, got {scale.dtype}"
    assert scale.shape == (w.shape[0],), "one scale per output channel (row)"


def test_scale_is_row_max_over_127(exercise):
    w = _weight(seed=1)
    _, scale = exercise.quantize_per_channel(w)
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127, rtol=1e-6, atol=0)


def test_values_are_symmetric_and_each_row_reaches_127(exercise):
    w = _weight(seed=2)
    q, _ = exercise.quantize_per_channel(w)
    assert int(q.min()) >= -127 and int(q.max()) <= 127, "use [-127, 127], never -128"
    assert (q.abs().amax(dim=1) == 127).all(), "the largest |w| of each row maps to +-127"
    q_neg, _ = exercise.quantize_per_channel(-w)
    assert torch.equal(q_neg, -q)


def test_rounds_to_nearest(exercise):
    w = _weight(seed=3)
    q, scale = exercise.quantize_per_channel(w)
    assert torch.equal(q, torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))


def test_dequantized_error_is_at_most_half_a_step(exercise):
    w = _weight(seed=4)
    q, scale = exercise.quantize_per_channel(w)
    back = exercise.dequantize(q, scale)
    assert back.dtype == torch.float32 and back.shape == w.shape
    assert ((back - w).abs() <= scale[:, None] / 2 * (1 + 1e-5)).all()


def test_zero_rows_get_scale_zero_and_no_nan(exercise):
    w = _weight(seed=5)
    w[3] = 0
    q, scale = exercise.quantize_per_channel(w)
    assert scale[3] == 0 and (q[3] == 0).all()
    assert torch.isfinite(exercise.dequantize(q, scale)).all()


def test_does_not_modify_the_weight(exercise):
    w = _weight(seed=6)
    before = w.clone()
    exercise.quantize_per_channel(w)
    assert torch.equal(w, before)


@pytest.mark.parametrize("bad, error", [(torch.ones(5), ValueError), (torch.ones(2, 3, 4), ValueError),
                                        (torch.ones(3, 4, dtype=torch.int64), TypeError)])
def test_rejects_bad_inputs(exercise, bad, error):
    with pytest.raises(error):
        exercise.quantize_per_channel(bad)


def test_agrees_with_the_library(exercise):
    from sparsity_lab.quant.int8 import dequantize, quantize_per_channel

    w = _weight(30, 64, seed=7)
    q, scale = exercise.quantize_per_channel(w)
    q_lib, scale_lib = quantize_per_channel(w)
    assert torch.equal(q, q_lib) and torch.equal(scale, scale_lib)
    assert torch.equal(exercise.dequantize(q, scale), dequantize(q_lib, scale_lib))
