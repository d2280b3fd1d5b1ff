"""Semi24Linear, the dispatcher and the selectable 2:4 matmul paths (CPU here; GPU where marked)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab import dispatch
from sparsity_lab.checks import relative_error
from sparsity_lab.dispatch import Decision, Dispatcher
from sparsity_lab.semi24.layer import DEFAULT_DISPATCHER, Semi24Key, Semi24Linear, capture
from sparsity_lab.semi24.matmul import PATHS, SPARSE_PATHS, check_path, prepare, unavailable_reason
from sparsity_lab.sparsify import Semi24Config, sparsify_


def _groups_are_24(weight: torch.Tensor) -> bool:
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all())


def test_sparse_linear_prunes_to_24_and_computes_the_pruned_linear_on_the_cpu():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    layer = Semi24Linear.from_linear(linear)
    assert _groups_are_24(layer.weight) and (layer.weight != 0).sum() == 128 * 64 // 2
    x = torch.randn(3, 5, 128)
    assert torch.allclose(layer(x), F.linear(x, layer.weight, linear.bias))
    assert "dense (pruned weight)" in layer.last_reason and "CUDA" in layer.last_reason


def test_inputs_that_need_gradients_take_the_dense_path():
    layer = Semi24Linear(torch.randn(64, 64))
    x = torch.randn(4, 64, requires_grad=True)
    layer(x).sum().backward()
    assert "no backward" in layer.last_reason and x.grad is not None and x.grad.shape == (4, 64)
    with torch.no_grad():
        layer(x)
    assert "no backward" not in layer.last_reason


def test_pruning_keeps_the_two_largest_of_each_group():
    weight = torch.tensor([[0.1, -5.0, 3.0, 0.2] * 16] * 64)
    layer = Semi24Linear(weight, backend="cusparselt")
    assert layer.weight[0, :4].tolist() == [0.0, -5.0, 3.0, 0.0]


def test_swap_replaces_linears_it_can_and_says_why_it_kept_others():
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10), nn.Linear(10, 64))
    reference = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    report = sparsify_(model, Semi24Config(), filter_fn=lambda layer, name: name != "3")
    assert isinstance(model[0], Semi24Linear) and isinstance(model[2], nn.Linear) and not isinstance(
        model[2], Semi24Linear)
    assert report.changed == ["0"] and report["0"].what.startswith("Semi24Linear (cusparselt")
    assert "not a multiple of 64" in report["2"].what and not report["2"].changed
    assert report["3"].what == "left as it is: filter_fn"
    assert _groups_are_24(model[0].weight) and torch.equal(model[2].weight, reference[1])
    assert model(torch.randn(4, 128)).shape == (4, 64)


def test_a_swapped_model_has_nothing_left_to_swap():
    model = nn.Sequential(nn.Linear(128, 128))
    sparsify_(model, Semi24Config())
    with pytest.raises(ValueError, match="no layer that Semi24Config can take"):
        sparsify_(model, Semi24Config())


def test_bad_backend_and_shapes_are_named():
    with pytest.raises(ValueError, match="backend must be one of"):
        Semi24Linear(torch.randn(64, 64), backend="magic")
    with pytest.raises(ValueError, match="backend must be one of"):
        Semi24Linear(torch.randn(64, 64), backend="dense")  # a matmul path, but not a 2:4 kernel
    with pytest.raises(ValueError, match="2-D"):
        Semi24Linear(torch.randn(64))


def test_sparse_paths_are_the_2_4_kernels_among_the_matmul_paths():
    assert SPARSE_PATHS == ("cusparselt", "torch_cslt", "cutlass") and set(SPARSE_PATHS) < set(PATHS)
    assert DEFAULT_DISPATCHER.margin == 0.97 and DEFAULT_DISPATCHER.baseline == "dense"


def test_cached_decisions_are_reused_without_measuring():
    dispatcher = Dispatcher()
    key = Semi24Key(16, 4096, 4096, torch.float16, "cusparselt")
    dispatcher.decisions[key] = Decision("dense", "measured: dense", {"sparse": 0.03, "dense": 0.02})

    def fail():
        raise AssertionError("no measurement expected")

    assert dispatcher.choose((16, 4096, 4096, torch.float16, "cusparselt"), fail).choice == "dense"
    assert dispatcher.table() == [{"M": "16", "K": "4096", "N": "4096", "dtype": "torch.float16",
                                   "backend": "cusparselt", "choice": "dense", "sparse_ms": 0.03, "dense_ms": 0.02}]


@pytest.fixture
def measured(monkeypatch):
    """Stands in for the CUDA-event timing: `measured(name=ms, ...)` builds candidates whose calls return their
    time in ms (a function instead of a number is called, and may raise)."""
    monkeypatch.setattr(dispatch, "event_ms", lambda fn, warmup, reps: fn())

    def candidates(**times):
        return lambda: {name: t if callable(t) else (lambda t=t: t) for name, t in times.items()}

    return candidates


def test_a_candidate_must_beat_the_baseline_by_the_margin(measured):
    dispatcher = Dispatcher(margin=0.97)
    assert dispatcher.choose(("a",), measured(sparse=0.98, dense=1.0)).choice == "dense"  # 2% faster: not enough
    decision = dispatcher.choose(("b",), measured(sparse=0.96, dense=1.0))
    assert decision.choice == "sparse" and decision.timings == {"sparse": 0.96, "dense": 1.0}
    assert decision.reason == "measured sparse 0.9600 ms, dense 1.0000 ms: sparse"
    assert set(dispatcher.decisions) == {("a",), ("b",)}
    assert Dispatcher(margin=1.0).choose(("c",), measured(tma=0.5, pointer=0.4, dense=0.45)).choice == "pointer"


def test_a_candidate_that_raises_is_left_out_and_remembered(measured):
    def broken():
        raise RuntimeError("no kernel for this shape")

    decision = Dispatcher().choose(("k",), measured(sparse=broken, dense=1.0))
    assert decision.choice == "dense" and "sparse" not in decision.timings
    assert "no kernel for this shape" in decision.errors["sparse"] and "sparse failed" in decision.reason
    with pytest.raises(RuntimeError, match="no kernel"):
        Dispatcher().choose(("k",), measured(sparse=0.1, dense=broken))  # the baseline must run
    with pytest.raises(ValueError, match="must include the baseline 'dense'"):
        Dispatcher().choose(("k",), measured(sparse=0.1))


def test_nothing_is_measured_or_cached_during_a_graph_capture(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    dispatcher = Dispatcher()

    def fail():
        raise AssertionError("no measurement expected during a capture")

    decision = dispatcher.choose(("k",), fail)
    assert decision.choice == "dense" and "CUDA graph is being captured" in decision.reason
    assert dispatcher.decisions == {}


def test_paths_on_the_cpu_reference_and_dense_agree_with_float32():
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w, x, b = torch.randn(64, 128).to(dtype), torch.randn(8, 128).to(dtype), torch.randn(64).to(dtype)
        assert check_path("reference", w, x, b) < 1e-2
        assert check_path("dense", w, x, b) < 1e-2
    w8, x8 = torch.randint(-8, 8, (64, 128), dtype=torch.int8), torch.randint(-8, 8, (8, 128), dtype=torch.int8)
    assert check_path("reference", w8, x8) == 0.0


def test_reference_path_reads_the_packed_cutlass_form():
    w = torch.randn(64, 128, dtype=torch.float16)
    layer = prepare(w, "reference")
    assert layer.values.shape == (64, 64) and layer.meta.shape == (64, 8) and layer.meta.dtype == torch.int16
    x = torch.randn(2, 3, 128, dtype=torch.float16)
    assert layer.linear(x).shape == (2, 3, 64)


def test_gpu_paths_explain_why_they_cannot_run_here():
    for path in ("cusparselt", "torch_cslt", "cutlass"):
        assert "CUDA" in unavailable_reason(path, "cpu")
        with pytest.raises(RuntimeError, match=f"path '{path}' is unavailable"):
            prepare(torch.randn(64, 128), path)
    assert unavailable_reason("reference", "cpu") is None
    with pytest.raises(ValueError, match="path must be one of"):
        unavailable_reason("fast", "cpu")


def test_relative_error_is_nan_proof():
    assert relative_error(torch.ones(3), torch.ones(3)) == 0.0
    assert not relative_error(torch.tensor([float("nan")]), torch.ones(1)) < 1.0


# ------------------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("path", PATHS)
def test_every_available_path_matches_dense_on_the_gpu(path):
    w = torch.randn(512, 1024, device="cuda", dtype=torch.float16)
    x = torch.randn(256, 1024, device="cuda", dtype=torch.float16)
    b = torch.randn(512, device="cuda", dtype=torch.float16)
    if unavailable_reason(path, "cuda"):
        pytest.skip(unavailable_reason(path, "cuda"))
    assert check_path(path, w, x, b) < 1e-2


@pytest.mark.gpu
def test_swapped_model_matches_its_dense_twin_and_records_decisions():
    model = nn.Sequential(nn.Linear(1024, 2048), nn.GELU(), nn.Linear(2048, 1024)).cuda().half()
    dispatcher = Dispatcher()
    sparsify_(model, Semi24Config(dispatcher=dispatcher))
    x = torch.randn(4, 64, 1024, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        y = model(x)
        ref = F.linear(F.gelu(F.linear(x, model[0].weight, model[0].bias)), model[2].weight, model[2].bias)
    assert relative_error(y, ref) < 1e-2
    assert len(dispatcher.decisions) == 2
    assert all(d.timings["sparse"] > 0 and d.timings["dense"] > 0 for d in dispatcher.decisions.values())
    assert {row["N"] for row in dispatcher.table()} == {"2048", "1024"}


def test_capture_needs_a_cuda_input():
    layer = Semi24Linear(torch.randn(64, 64))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA input"):
        capture(layer, torch.randn(8, 64))


def test_forward_reroutes_when_the_weight_is_replaced():
    layer = Semi24Linear(torch.randn(64, 128), torch.randn(64))
    x = torch.randn(4, 128)
    layer(x)
    layer.weight = nn.Parameter(torch.zeros(64, 128), requires_grad=False)
    assert torch.equal(layer(x), layer.bias.detach().expand(4, 64))


@pytest.mark.gpu
def test_capture_replays_a_swapped_model_with_new_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).cuda().half()
    sparsify_(model, Semi24Config(dispatcher=None))
    x = torch.randn(16, 256, device="cuda", dtype=torch.float16)
    graphed = capture(model, x)
    for _ in range(2):
        x = torch.randn_like(x)
        torch.testing.assert_close(graphed(x), model(x), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="captured for"):
        graphed(torch.randn(8, 256, device="cuda", dtype=torch.float16))
