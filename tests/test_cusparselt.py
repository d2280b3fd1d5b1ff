"""Our cuSPARSELt binding: the pure-Python parts on the CPU (descriptor shapes, options, plan keys, errors), the rest
on a GPU."""

from __future__ import annotations

import ctypes
import dataclasses
import types

import pytest
import torch

from sparsity_lab.semi24 import cusparselt as cslt


def test_x_is_read_as_it_lies_and_y_is_written_transposed():
    assert cslt.dense_shape(m=16, k=4096) == (16, 4096, 4096)  # x as stored: M x K, row-major
    assert cslt.dense_shape(m=16, k=4096, x_order=cslt.ORDER_COL) == (16, 4096, 16)  # column-major x, in place
    assert cslt.output_shape(m=16, n=1024) == (1024, 16, 16)  # D = yᵀ, N x M row-major: y is the view D.t()


def test_options_are_frozen_checked_and_decide_each_plans_search():
    options = cslt.CusparseLtOptions()
    assert (options.search, options.column_major_x, options.search_column_major_x) == ("library", True, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.search = "time"
    with pytest.raises(ValueError, match="search must be one of"):
        cslt.CusparseLtOptions(search="fastest please")
    assert options.plan_search(cslt.ORDER_ROW) == options.plan_search(cslt.ORDER_COL) == "library"
    unsearched = cslt.CusparseLtOptions(search="time", search_column_major_x=False)
    assert unsearched.plan_search(cslt.ORDER_ROW) == "time" and unsearched.plan_search(cslt.ORDER_COL) == "default"


def test_a_column_major_x_is_read_in_place_only_when_the_options_say_so():
    x = torch.randn(32, 16).t()  # (16, 32), column-major
    assert cslt._reads_column_major(x, cslt.CusparseLtOptions())
    assert not cslt._reads_column_major(x, cslt.CusparseLtOptions(column_major_x=False))
    assert not cslt._reads_column_major(x.contiguous(), cslt.CusparseLtOptions())


def test_plan_keys_separate_every_shape_dtype_bias_order_and_option():
    key = cslt.PlanKey(m=16, k=4096, n=4096, dtype=torch.float16, out_dtype=torch.float16, bias_ptr=0, device=0,
                       x_order=cslt.ORDER_ROW, options=cslt.CusparseLtOptions())
    same = dataclasses.replace(key, options=cslt.CusparseLtOptions())
    assert key == same and hash(key) == hash(same)
    for change in ({"m": 32}, {"k": 8192}, {"n": 1024}, {"dtype": torch.bfloat16}, {"out_dtype": torch.int32},
                   {"bias_ptr": 1234}, {"device": 1}, {"x_order": cslt.ORDER_COL},
                   {"options": cslt.CusparseLtOptions(search="default")},
                   {"options": cslt.CusparseLtOptions(column_major_x=False)},
                   {"options": cslt.CusparseLtOptions(search_column_major_x=False)}):
        assert dataclasses.replace(key, **change) != key, change
    cache = {key: "plan"}
    assert cache[same] == "plan"


def test_compute_type_follows_the_library_version():
    assert cslt.compute_type(torch.float16, (0, 8, 0)) == cslt.compute_type(torch.bfloat16, (0, 8, 0)) == 2  # 32F
    assert cslt.compute_type(torch.int8, (0, 8, 0)) == 0  # 32I
    assert cslt.compute_type(torch.int8, (0, 5, 2)) == 1 and cslt.compute_type(torch.float16, (0, 5, 2)) == 0
    assert cslt.compute_type(torch.float8_e4m3fn, (0, 8, 0)) == cslt.compute_type(torch.float8_e5m2, (0, 8, 0)) == 2
    with pytest.raises(cslt.CusparseLtError, match="FP8 needs cuSPARSELt 0.6"):
        cslt.compute_type(torch.float8_e4m3fn, (0, 5, 2))
    with pytest.raises(TypeError, match="inputs must be one of"):
        cslt.compute_type(torch.float32, (0, 8, 0))


def test_status_codes_raise_with_their_names():
    cslt.check(0, "anything")
    with pytest.raises(cslt.CusparseLtError, match=r"cusparseLtMatmul failed: CUSPARSE_STATUS_INTERNAL_ERROR \(7\)"):
        cslt.check(7, "cusparseLtMatmul")
    with pytest.raises(cslt.CusparseLtError, match="NOT_SUPPORTED"):
        cslt.check(10, "x")


def test_shape_rules_name_the_dimension():
    cslt.check_linear_shapes((16, 4096), (1024, 4096), torch.float16)
    with pytest.raises(ValueError, match=r"x must be \(M, 4096\)"):
        cslt.check_linear_shapes((16, 4095), (1024, 4096), torch.float16)
    with pytest.raises(ValueError, match="out_features N = 1000.*multiple of 16"):
        cslt.check_linear_shapes((16, 4096), (1000, 4096), torch.float16)
    with pytest.raises(ValueError, match="in_features K = 48.*multiple of 32"):
        cslt.check_linear_shapes((16, 48), (64, 48), torch.int8)
    with pytest.raises(ValueError, match="tokens M = 17"):
        cslt.check_linear_shapes((17, 4096), (1024, 4096), torch.float16)
    with pytest.raises(ValueError, match="tokens M = 24.*multiple of 16"):
        cslt.check_linear_shapes((24, 64), (64, 64), torch.int8)
    cslt.check_linear_shapes((24, 64), (64, 64), torch.float16)


def test_missing_library_says_where_it_looked_and_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(cslt, "_LIB", None)
    monkeypatch.setattr(cslt, "library_candidates", lambda: [tmp_path / "libcusparseLt.so.0"])

    def refuse(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    with pytest.raises(cslt.CusparseLtUnavailable, match="not found.*libcusparseLt.so.0.*pip install nvidia-cusp"):
        cslt.load_library()


def test_library_candidates_are_paths():
    assert all(p.name.startswith("libcusparseLt.so") for p in cslt.library_candidates())


def test_cpu_tensors_are_refused_with_the_reason():
    with pytest.raises(cslt.CusparseLtError, match="CUDA devices"):
        cslt.handle(torch.device("cpu"))


def test_opaque_buffers_are_16_byte_aligned():
    assert all(cslt._Opaque().ptr.value % 16 == 0 for _ in range(8))


# ------------------------------------------------------------------------------------------------------------ GPU
def _pruned(n, k, dtype):
    from sparsity_lab.semi24.layout import sparsify

    if dtype == torch.int8:
        return sparsify(torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8))
    return sparsify(torch.randn(n, k, device="cuda", dtype=dtype))


def _relerr(y, ref):
    return float((y.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [16, 256])
def test_linear_matches_dense_with_and_without_bias(dtype, m):
    w = _pruned(512, 1024, dtype)
    x = torch.randn(m, 1024, device="cuda", dtype=dtype)
    b = torch.randn(512, device="cuda", dtype=dtype)
    weight = cslt.Semi24Weight.from_dense(w)
    ref = x.double() @ w.double().t()
    assert _relerr(weight.linear(x), ref) < 1e-2
    assert _relerr(weight.linear(x, bias=b), ref + b.double()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.int32, torch.int8, torch.float16, torch.bfloat16])
def test_int8_outputs_with_alpha(out_dtype):
    w = _pruned(256, 512, torch.int8)
    x = torch.randint(-8, 8, (64, 512), device="cuda", dtype=torch.int8)
    alpha = 1.0 if out_dtype == torch.int32 else 0.05
    y = cslt.Semi24Weight.from_dense(w).linear(x, out_dtype=out_dtype, alpha=alpha)
    ref = (x.double() @ w.double().t()) * alpha
    if out_dtype == torch.int8:
        ref = ref.round().clamp(-128, 127)
    assert y.dtype == out_dtype and _relerr(y, ref) < 1e-2


@pytest.mark.gpu
def test_plans_are_built_once_and_shared_between_weights_of_one_shape():
    cslt.clear_plans()
    x = torch.randn(64, 1024, device="cuda", dtype=torch.float16)
    first = cslt.Semi24Weight.from_dense(_pruned(512, 1024, torch.float16))
    second = cslt.Semi24Weight.from_dense(_pruned(512, 1024, torch.float16))
    first.linear(x)
    second.linear(x)
    assert len(cslt.cached_plans()) == 1


@pytest.mark.gpu
def test_each_options_value_gets_its_own_plans_and_every_one_is_correct():
    cslt.clear_plans()
    w = _pruned(512, 1024, torch.float16)
    x_col = torch.randn(1024, 64, device="cuda", dtype=torch.float16).t()  # (64, 1024) column-major
    ref = x_col.double() @ w.double().t()
    for options in (cslt.CusparseLtOptions(), cslt.CusparseLtOptions(column_major_x=False),
                    cslt.CusparseLtOptions(search="default"), cslt.CusparseLtOptions(search="time")):
        weight = cslt.Semi24Weight.from_dense(w, options=options)
        assert _relerr(weight.linear(x_col), ref) < 1e-2
        assert _relerr(weight.linear(x_col.contiguous()), ref) < 1e-2
    keys = list(cslt.cached_plans())
    assert len(keys) == 7  # column-major x read in place by three of the four, row-major x by all four
    assert {key.x_order for key in keys if not key.options.column_major_x} == {cslt.ORDER_ROW}
    timed = cslt.Semi24Weight.from_dense(w, options=cslt.CusparseLtOptions(search="time"))
    assert timed.plan_for(x_col.contiguous(), torch.float16).timings  # our own search timed each algorithm


@pytest.mark.gpu
def test_linear_records_into_a_cuda_graph():
    w = _pruned(512, 1024, torch.float16)
    weight = cslt.Semi24Weight.from_dense(w)
    static_x = torch.randn(128, 1024, device="cuda", dtype=torch.float16)
    weight.linear(static_x)  # builds the plan outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = weight.linear(static_x)
    fresh = torch.randn_like(static_x)
    static_x.copy_(fresh)
    static_y.fill_(float("nan"))
    graph.replay()
    assert _relerr(static_y, fresh.double() @ w.double().t()) < 1e-2


@pytest.mark.gpu
def test_cusparselt_pruning_and_its_check():
    weight = cslt.Semi24Weight.from_dense(torch.randn(256, 512, device="cuda", dtype=torch.float16), prune=True)
    assert weight.is_24(_pruned(256, 512, torch.float16))
    assert not weight.is_24(torch.randn(256, 512, device="cuda", dtype=torch.float16))


class _FakePlan:
    """What `_Launch` reads off a cuSPARSELt plan, with a Python stand-in for cusparseLtMatmul that records calls."""

    def __init__(self, status: int = 0) -> None:
        self.calls, self.status = [], status
        self.plan, self._handle = cslt._Opaque(), cslt._Opaque()
        self._beta_ref = ctypes.byref(ctypes.c_float(0.0))
        self._workspace_ptr = 4096
        self.key = types.SimpleNamespace(device=0)
        self._lib = types.SimpleNamespace(cusparseLtMatmul=self._matmul)

    def _matmul(self, *args):
        self.calls.append(args)
        return self.status


def _fake_weight(monkeypatch, plan: _FakePlan, n: int = 64, k: int = 32,
                 options: cslt.CusparseLtOptions | None = None) -> cslt.Semi24Weight:
    weight = cslt.Semi24Weight.__new__(cslt.Semi24Weight)
    weight.shape, weight.dtype, weight.options = (n, k), torch.float16, options or cslt.CusparseLtOptions()
    weight.compressed = torch.zeros(8, dtype=torch.uint8)
    weight._calls = {}
    built = []
    monkeypatch.setattr(weight, "plan_for", lambda x, out_dtype, bias: built.append(x.stride()) or plan,
                        raising=False)
    monkeypatch.setattr(cslt, "_current_raw_stream", lambda index: 0xABC0 + index)
    weight.built = built
    return weight


def test_eager_hot_path_is_one_library_call_with_prebuilt_arguments(monkeypatch):
    plan = _FakePlan()
    weight = _fake_weight(monkeypatch, plan)
    x = torch.randn(16, 32, dtype=torch.float16)
    y1, y2 = weight.linear(x), weight.linear(x, alpha=0.5)
    assert weight.built == [(32, 1)], "the plan is looked up once per call signature"
    assert len(plan.calls) == 2 and len(weight._calls) == 1
    for y, args in zip((y1, y2), plan.calls, strict=True):
        assert y.shape == (16, 64) and y.stride() == (1, 16)  # yᵀ written row-major: y is its transposed view
        assert args[4] == x.data_ptr() and args[6] == args[7] == y.data_ptr()
        assert args[3].value == weight.compressed.data_ptr() and args[8].value == plan._workspace_ptr
        assert args[9][0] == 0xABC0  # torch's current raw stream of device 0
    assert next(iter(weight._calls.values())).alpha.value == 0.5
    weight.linear(torch.randn(24, 32, dtype=torch.float16))
    assert weight.built == [(32, 1), (32, 1)] and len(weight._calls) == 2


@pytest.mark.parametrize("column_major_x", [True, False])
def test_a_column_major_x_is_passed_in_place_or_copied_as_the_options_say(monkeypatch, column_major_x):
    plan = _FakePlan()
    weight = _fake_weight(monkeypatch, plan, options=cslt.CusparseLtOptions(column_major_x=column_major_x))
    x = torch.randn(32, 16, dtype=torch.float16).t()  # (16, 32), column-major: a 2:4 layer's output
    weight.linear(x)
    assert weight.built == [(1, 16) if column_major_x else (32, 1)]  # the plan describes x as it is read
    assert (plan.calls[0][4] == x.data_ptr()) == column_major_x


def test_eager_hot_path_raises_the_library_status(monkeypatch):
    weight = _fake_weight(monkeypatch, _FakePlan(status=7))
    with pytest.raises(cslt.CusparseLtError, match="cusparseLtMatmul failed: CUSPARSE_STATUS_INTERNAL_ERROR"):
        weight.linear(torch.randn(8, 32, dtype=torch.float16))
    with pytest.raises(TypeError, match="dtype"):
        weight.linear(torch.randn(8, 32))
