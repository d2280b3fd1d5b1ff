"""int8 + 2:4: masks, layers, the backend seam, the model swap, the accuracy table, and the benchmark's CPU side."""

import copy
import json

import pytest
import torch
from torch import nn

from sparsity_lab.course.results import load_results
from sparsity_lab.quant import bench
from sparsity_lab.quant import layers as qs
from sparsity_lab.quant.int8 import int8_matmul_reference, quantize_per_channel
from sparsity_lab.sparsify import Int8Config, PruneConfig, sparsify_


def test_mask_keeps_the_two_largest_of_every_group_of_four():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 0.0, 0.0, -2.0, 2.0]])
    assert qs.mask_2of4(w).tolist() == [[False, True, True, False, False, False, True, True]]
    w = torch.randn(16, 32)
    mask = qs.mask_2of4(w)
    groups, kept = w.abs().reshape(-1, 4), mask.reshape(-1, 4)
    assert (kept.sum(1) == 2).all()
    assert (groups.masked_fill(~kept, float("inf")).amin(1) >= groups.masked_fill(kept, -1).amax(1)).all()


def test_mask_breaks_ties_by_position():
    assert qs.mask_2of4(torch.ones(1, 4)).tolist() == [[True, True, False, False]]


def test_mask_and_check_reject_bad_shapes_and_name_the_group():
    with pytest.raises(ValueError, match="divisible by 4"):
        qs.mask_2of4(torch.randn(3, 6))
    with pytest.raises(ValueError, match="2-D"):
        qs.mask_2of4(torch.randn(8))
    w = torch.randn(3, 8)
    w = w * qs.mask_2of4(w)
    qs.check_2of4(w)
    w[2, 5] = w[2, 6] = w[2, 7] = w[2, 4] = 1.0
    with pytest.raises(ValueError, match=r"row 2, columns 4\.\.7 hold 4 non-zeros"):
        qs.check_2of4(w)


def _linear(k=32, n=24, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def test_int8_linear_matches_the_float_layer_within_quantization_error():
    lin = _linear()
    layer = qs.Int8Linear.from_linear(lin)
    x = torch.randn(10, 32)
    with torch.no_grad():
        ref = lin(x)
    y = layer(x)
    assert y.shape == ref.shape and float((y - ref).norm() / ref.norm()) < 0.02
    torch.testing.assert_close(layer.dequantized_weight(), lin.weight.detach(), atol=float(
        lin.weight.abs().max()) / 254 + 1e-6, rtol=0)


def test_int8_sparse_linear_is_int8_of_the_pruned_weight():
    lin = _linear(seed=1)
    sparse = qs.Int8Semi24Linear.from_linear(lin)
    qs.check_2of4(sparse.weight_q)
    assert float((sparse.weight_q == 0).float().mean()) >= 0.5
    pruned = _linear(seed=1)
    with torch.no_grad():
        pruned.weight.mul_(qs.mask_2of4(pruned.weight))
    dense = qs.Int8Linear.from_linear(pruned)
    x = torch.randn(3, 5, 32)
    assert torch.equal(sparse(x), dense(x))
    with pytest.raises(ValueError, match="not 2:4"):
        qs.Int8Semi24Linear.from_linear(lin, prune=False)


def test_int8_config_swaps_every_linear_and_says_which_stay_dense():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 6), nn.Linear(6, 3)))
    x = torch.randn(4, 8)
    report = sparsify_(model, Int8Config(sparse=True))
    kinds = [type(m).__name__ for m in model.modules() if isinstance(m, qs.Int8Linear)]
    assert kinds == ["Int8Semi24Linear", "Int8Semi24Linear", "Int8Linear"]  # in_features 6 stays dense
    assert "not a multiple of 4" in report["2.1"].what and report.changed == ["0", "2.0", "2.1"]
    assert model(x).shape == (4, 3)


def test_2of4_masks_for_fine_tuning_then_int8_without_pruning_again():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6), nn.Linear(6, 3))
    report = sparsify_(model, PruneConfig(pattern="2:4"), filter_fn=lambda m, fqn: m.in_features % 4 == 0)
    assert report.changed == ["0", "2"]
    qs.check_2of4(model[0].weight.detach())
    sparsify_(model, Int8Config(sparse=True, prune=False))
    assert isinstance(model[2], qs.Int8Semi24Linear)


def test_backend_seam_routes_the_matmul_and_caches_the_packed_weight():
    calls = {"compress": 0, "matmul": 0}

    def compress(q_w):
        calls["compress"] += 1
        return q_w.clone()

    def matmul(packed, q_x):
        calls["matmul"] += 1
        return int8_matmul_reference(q_x, packed)

    qs.register_backend(qs.SparseInt8Backend("counting", compress, matmul, lambda: True))
    try:
        lin = _linear(seed=2)
        layer = qs.Int8Semi24Linear.from_linear(lin, backend="counting")
        reference = qs.Int8Semi24Linear.from_linear(lin, backend="reference")
        x = torch.randn(6, 32)
        assert torch.equal(layer(x), reference(x)) and torch.equal(layer(x), reference(x))
        assert calls == {"compress": 1, "matmul": 2}
        with torch.no_grad():
            layer.weight_q.mul_(-1)
        layer(x)
        assert calls["compress"] == 2, "a changed weight must be packed again"
    finally:
        del qs.SPARSE_INT8_BACKENDS["counting"]


def test_unknown_or_unavailable_backends_are_refused_clearly():
    with pytest.raises(ValueError, match="registered"):
        qs.get_backend("nope")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="not available"):
            qs.resolve_backend("torch_cslt", torch.device("cpu"))
    assert qs.resolve_backend("auto", torch.device("cpu")).name == "reference"


def test_weight_bytes_shrink_fourfold_less_metadata():
    sizes = qs.weight_bytes_per_entry()
    assert sizes["fp16"] / sizes["int8 2:4"] == 3.2
    assert sizes["int8 2:4"] < sizes["int8"] < sizes["fp16"]


@pytest.fixture(scope="module")
def table():
    return qs.accuracy_table(epochs=8, finetune_epochs=2, hidden=64)


def test_accuracy_table_has_every_method_and_sane_numbers(table):
    assert [r["method"] for r in table] == list(qs.METHODS)
    acc = {r["method"]: r for r in table}
    assert acc["dense"]["one_shot"] > 0.85
    for column in ("one_shot", "finetuned"):
        assert all(0.0 <= r[column] <= 1.0 for r in table)
        assert abs(acc["int8"][column] - acc["dense"][column]) <= 0.03, "int8 dynamic quantization costs little"
        assert abs(acc["int8 + 2:4"][column] - acc["2:4"][column]) <= 0.03
    assert acc["2:4"]["finetuned"] >= acc["2:4"]["one_shot"] - 0.01, "fine-tuning with masks should not hurt"


def test_accuracy_table_starts_from_a_given_model_without_changing_it(table):
    from sparsity_lab.course.data import load_digits
    from sparsity_lab.course.models import DigitsMLP
    from sparsity_lab.course.train import fit

    torch.manual_seed(0)
    base = DigitsMLP(hidden=64)
    fit(base, load_digits(), epochs=8, seed=0, progress=False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    rows = qs.accuracy_table(epochs=8, finetune_epochs=2, hidden=64, base=base)
    assert rows == table, "the same trained model gives the same table"
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_accuracy_table_rejects_unknown_models():
    with pytest.raises(ValueError, match="mlp"):
        qs.accuracy_table(model="resnet")


# --------------------------------------------------------------------------- benchmark, CPU side


def test_parse_shapes():
    assert bench.parse_shapes("8192x8192x8192, 16x32x48") == [(8192, 8192, 8192), (16, 32, 48)]
    for bad in ("8192x8192", "axbxc", "0x4x4"):
        with pytest.raises(ValueError, match="MxKxN"):
            bench.parse_shapes(bad)


def test_benchmark_cpu_run_checks_then_times_and_writes_a_results_file(tmp_path):
    out = tmp_path / "qs.json"
    code = bench.main(["--device", "cpu", "--shapes", "20x32x16", "--out", str(out), "--warmup-ms", "1",
                       "--rep-ms", "2"])
    assert code == 0
    results = load_results(out)
    assert results.name == "quant_sparse_cpu"
    figures = results.figures
    assert figures["all_correct"] is True and figures["targets"] == []
    (row,) = figures["rows"]
    assert (row["M"], row["K"], row["N"]) == (20, 32, 16)
    assert row["checks"] == {"int8_dense_reference": True, "int8_24_reference": True,
                             "int8_dense_layer": True, "int8_24_layer_reference": True}
    assert set(row["ms"]) == {"int8_dense_reference", "int8_24_reference", "float_dense_linear",
                              "int8_dense_layer", "int8_24_layer_reference"}
    assert all(t > 0 for t in row["ms"].values())
    assert row["speedup"]["core_int8_24_vs_int8_dense"] > 0
    assert max(row["layer_relerr_vs_dequantized"].values()) < bench.LAYER_RTOL
    assert json.loads(out.read_text())["environment"]["device"].startswith("CPU")


def test_benchmark_refuses_unknown_backends(tmp_path):
    assert bench.main(["--device", "cpu", "--backends", "nope", "--out", str(tmp_path / "x.json")]) == 2


def test_summary_judges_the_targets_on_int32_cores_and_falls_back_to_bf16_out():
    rows = [{"M": 8192, "K": 8192, "N": 8192, "speedup": {"core_int8_24_vs_int8_dense": 2.06},
             "best_core_int8_24": "int8_24_torch_cslt"},
            {"M": 4096, "K": 4096, "N": 4096, "speedup": {"core_int8_24_bf16out_vs_int8_dense": 0.54}},
            {"M": 512, "K": 4096, "N": 4096, "speedup": {}}]
    verdicts = bench.summarize(rows)
    assert [(v["shape"], v["met"], v["basis"]) for v in verdicts] == [
        ("8192x8192x8192", True, "int32 out"), ("4096x4096x4096", False, "bf16 out")]
    assert verdicts[0]["backend"] == "int8_24_torch_cslt"


def test_speedups_pick_the_best_exact_core_and_keep_bf16_out_apart():
    row = {"ms": {"int8_dense_int_mm": 1.2, "int8_24_torch_cslt": 0.6, "int8_24_torch_cslt_t": 0.8,
                  "int8_24_cslt_bf16out": 0.5, "fp16_dense_linear": 2.0, "int8_dense_layer": 1.9,
                  "int8_dense_layer_fused": 1.6, "int8_24_layer_torch_cslt": 1.1,
                  "int8_24_layer_torch_cslt_fused": 1.0},
           "graph_ms": {"int8_dense_int_mm": 1.1, "int8_24_torch_cslt": 0.55},
           "b2b_ms": {"int8_dense_int_mm": 1.0, "int8_24_torch_cslt": 0.8}, "speedup": {}}
    bench.add_speedups(row)
    assert row["best_core_int8_24"] == "int8_24_torch_cslt"
    assert row["best_layer_int8_24"] == "int8_24_layer_torch_cslt_fused"
    assert row["speedup"] == pytest.approx({
        "core_int8_24_vs_int8_dense": 2.0, "graph_core_int8_24_vs_int8_dense": 2.0,
        "b2b_core_int8_24_vs_int8_dense": 1.25,
        "core_int8_24_bf16out_vs_int8_dense": 2.4, "layer_int8_24_vs_float_dense": 2.0,
        "layer_int8_24_vs_int8_dense": 1.6})


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cusparselt", "torch_cslt", "torch_cslt_t"])
@pytest.mark.parametrize("m, k, n", [(20, 64, 40), (64, 128, 96)])
def test_cusparselt_backends_are_exact(backend, m, k, n):
    w = torch.randn(n, k)
    q_w, _ = quantize_per_channel(w * qs.mask_2of4(w))
    q_x = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    impl = qs.get_backend(backend)
    got = impl.matmul(impl.compress(q_w.cuda()), q_x.cuda())
    assert torch.equal(got.cpu().to(torch.int32), int8_matmul_reference(q_x, q_w))


@pytest.mark.gpu
def test_int8_sparse_linear_on_the_gpu_matches_the_cpu_reference():
    lin = _linear(k=64, n=40, seed=3)
    layer = qs.Int8Semi24Linear.from_linear(lin)
    x = torch.randn(33, 64).half().float()  # values fp16 can hold, so both devices quantize the same numbers
    cpu = layer(x)
    gpu = layer.cuda()(x.cuda().half())
    torch.testing.assert_close(gpu.float().cpu(), cpu, rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- plots


def test_plots_carry_their_data():
    from sparsity_lab.quant import plots

    fig = plots.bytes_per_weight(qs.weight_bytes_per_entry())
    assert list(fig.data[0].x) == ["fp16", "int8", "fp16 2:4", "int8 2:4"]
    rows = [{"method": "dense", "one_shot": 0.97, "finetuned": 0.98}, {"method": "2:4", "one_shot": 0.9,
                                                                      "finetuned": 0.96}]
    one_shot, tuned = plots.accuracy_table(rows).data
    assert list(one_shot.y) == pytest.approx([97.0, 90.0]) and list(tuned.y) == pytest.approx([98.0, 96.0])
    speed = [{"M": 8, "K": 8, "N": 8, "ms": {"fp16_dense_linear": 1.0, "int8_dense_int_mm": 0.5,
                                             "int8_24_torch_cslt": 0.4, "int8_24_torch_cslt_t": 0.3,
                                             "int8_24_layer_torch_cslt": 0.9, "int8_dense_layer": 1.2,
                                             "int8_dense_layer_fused": 0.7}}]
    fig = plots.speed_bars(speed, label="recorded on X")
    by_name = {t.name: list(t.y) for t in fig.data}
    assert by_name["best_int8_24_core"] == [0.3] and by_name["best_int8_24_layer"] == [0.9]
    assert by_name["best_int8_dense_layer"] == [0.7] and "recorded on X" in fig.layout.title.text
    speed[0]["ms"] = {"fp16_dense_linear": 1.0}
    assert [t.name for t in plots.speed_bars(speed).data] == ["fp16_dense_linear"]
    grid = plots.int8_grid(torch.tensor([1.0, -0.5, 0.25, 0.0]))
    assert list(grid.data[1].y) == pytest.approx([1.0, -64 / 127, 32 / 127, 0.0])


def test_channel_explorer_follows_the_slider():
    from sparsity_lab.quant.widgets import int8_channel_explorer

    weight = torch.randn(5, 16)
    weight[3] *= 100
    box = int8_channel_explorer(weight, columns=8)
    slider, status, errors, figure = box.children
    slider.value = 3
    assert "channel <b>3</b>" in status.value
    assert list(figure.data[0].y) == pytest.approx(weight[3, :8].tolist())


def test_cnn_swap_touches_only_the_linear_head():
    from sparsity_lab.course.models import DigitsCNN

    torch.manual_seed(0)
    cnn = DigitsCNN(channels=4)
    swapped, dense_int8 = copy.deepcopy(cnn), copy.deepcopy(cnn)
    sparsify_(swapped, Int8Config(sparse=True))
    sparsify_(dense_int8, Int8Config(sparse=False))
    assert [type(m).__name__ for m in swapped.head if isinstance(m, nn.Module) and hasattr(m, "weight_q")] == [
        "Int8Semi24Linear", "Int8Semi24Linear"]
    assert isinstance(swapped.features[0], nn.Conv2d)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        ref = dense_int8(x)
    assert swapped(x).shape == ref.shape == (5, 10)


# --------------------------------------------------------------------------- cuSPARSELt glue, emulated on the CPU


def _fake_cslt_compress(dense):
    return dense.clone()  # the emulation keeps the (padded) dense int8 weight as its "packed" form


def _fake_cslt_sparse_mm(packed, dense_b, bias=None, alpha=None, out_dtype=None, transpose_result=False, **_):
    """torch._cslt_sparse_mm's contract: (rows of A, cols of B) = A @ B, scaled per row by alpha, in out_dtype,
    transposed (contiguous) when transpose_result."""
    acc = packed.to(torch.int64) @ dense_b.to(torch.int64)
    out = acc.double() * alpha.double()[:, None] if alpha is not None else acc
    out = out.to(out_dtype or packed.dtype)
    return out.T.contiguous() if transpose_result else out


@pytest.fixture
def emulated_cslt(monkeypatch):
    monkeypatch.setattr(torch, "_cslt_compress", _fake_cslt_compress)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", _fake_cslt_sparse_mm)
    names = []
    for transpose in (False, True):
        name = f"emu_cslt_{int(transpose)}"
        qs.register_backend(qs.SparseInt8Backend(
            name, qs._cslt_compress, lambda w, x, t=transpose: qs._cslt_matmul(w, x, transpose_result=t),
            lambda: True))
        names.append(name)
    yield names
    for name in names:
        del qs.SPARSE_INT8_BACKENDS[name]


@pytest.mark.parametrize("m, k, n", [(1, 4, 1), (20, 40, 24), (32, 64, 64)])
def test_cslt_glue_pads_transposes_and_slices_back(emulated_cslt, m, k, n):
    w = torch.randn(n, k)
    q_w, _ = quantize_per_channel(w * qs.mask_2of4(w))
    q_x = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    for name in emulated_cslt:
        backend = qs.get_backend(name)
        packed = backend.compress(q_w)
        assert packed.packed.shape[0] % 32 == 0 and packed.packed.shape[1] % 32 == 0
        got = backend.matmul(packed, q_x)
        assert got.shape == (m, n) and torch.equal(got.to(torch.int32), int8_matmul_reference(q_x, q_w))


class _FakeSemi24Weight:
    """Stands in for cusparselt.Semi24Weight on the CPU: same checks, y returned as a transposed view."""

    def __init__(self, dense):
        self.dense, self.shape = dense, tuple(dense.shape)

    @classmethod
    def from_dense(cls, dense):
        from sparsity_lab.semi24.cusparselt import check_linear_shapes

        check_linear_shapes((16, dense.shape[1]), tuple(dense.shape), dense.dtype)
        qs.check_2of4(dense)
        return cls(dense)

    def linear(self, x, out_dtype=None):
        from sparsity_lab.semi24.cusparselt import check_linear_shapes

        check_linear_shapes(tuple(x.shape), self.shape, x.dtype)
        assert out_dtype == torch.int32
        return (self.dense.to(torch.int64) @ x.to(torch.int64).T).to(torch.int32).T


@pytest.mark.parametrize("m, k, n", [(1, 4, 1), (20, 40, 24), (32, 64, 64)])
def test_binding_glue_pads_to_the_binding_rules_and_slices_back(monkeypatch, m, k, n):
    from sparsity_lab.semi24 import cusparselt

    monkeypatch.setattr(cusparselt, "Semi24Weight", _FakeSemi24Weight)
    w = torch.randn(n, k)
    q_w, _ = quantize_per_channel(qs.semi24.sparsify(w))
    q_x = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    backend = qs.get_backend("cusparselt")
    packed = backend.compress(q_w)
    assert packed.weight.shape[0] % 32 == 0 and packed.weight.shape[1] % 32 == 0
    got = backend.matmul(packed, q_x)
    assert got.shape == (m, n) and torch.equal(got.to(torch.int32), int8_matmul_reference(q_x, q_w))
    with pytest.raises(ValueError, match="expects"):
        backend.matmul(packed, q_x[:, :-1] if k > 1 else torch.zeros(m, 2, dtype=torch.int8))


def test_binding_is_the_default_gpu_backend():
    assert qs.DEFAULT_GPU_BACKEND == "cusparselt" and bench.SPARSE_BACKENDS[0] == "cusparselt"
    assert "torch_cslt" in bench.SPARSE_BACKENDS


def test_benchmark_gpu_branches_run_on_an_emulated_cusparselt(emulated_cslt):
    args = bench.build_parser().parse_args(["--warmup-ms", "1", "--rep-ms", "2"])
    row, cores = bench.run_shape(32, 64, 32, torch.device("cpu"), emulated_cslt, args)
    assert row["correct"], row
    assert set(row["checks"]) == {"int8_dense_reference", "int8_24_emu_cslt_0", "int8_24_emu_cslt_1",
                                  "int8_24_cslt_bf16out", "int8_24_cslt_alpha_bf16out", "int8_dense_layer",
                                  "int8_24_layer_emu_cslt_0", "int8_24_layer_emu_cslt_1"}
    assert set(cores) == {"int8_dense_reference", "int8_24_emu_cslt_0", "int8_24_emu_cslt_1",
                          "int8_24_cslt_bf16out", "int8_24_cslt_alpha_bf16out"}
    assert row["best_core_int8_24"] in ("int8_24_emu_cslt_0", "int8_24_emu_cslt_1")
    assert {"core_int8_24_vs_int8_dense", "core_int8_24_bf16out_vs_int8_dense"} <= set(row["speedup"])


def test_benchmark_reports_a_backend_that_raises_and_goes_on(emulated_cslt, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA_R_32I output not supported")

    monkeypatch.setattr(torch, "_cslt_sparse_mm", broken)
    args = bench.build_parser().parse_args(["--warmup-ms", "1", "--rep-ms", "2"])
    row, _ = bench.run_shape(32, 64, 32, torch.device("cpu"), emulated_cslt, args)
    assert "not supported" in row["errors"]["int8_24_emu_cslt_0"]
    assert not row["correct"], "no sparse core ran, so the row cannot count as checked"
    assert "int8_dense_reference" in row["ms"]
