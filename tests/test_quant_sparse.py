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
    assert sizes["fp8"] == sizes["int8"] == 1.0 and sizes["fp8 2:4"] == sizes["int8 2:4"] == 10 / 16


def test_fp8_runs_at_the_int8_rate_and_2_4_doubles_every_rate():
    rates = qs.tensor_core_rate()
    assert set(rates) == set(qs.weight_bytes_per_entry())
    assert rates["fp16"] == 1.0 and rates["fp8"] == rates["int8"] == 2.0
    for name in ("fp16", "int8", "fp8"):
        assert rates[f"{name} 2:4"] == 2 * rates[name]


def test_method_model_quantizes_a_copy_and_keeps_the_2_4_zeros():
    from sparsity_lab.quant.fp8 import Fp8Linear, Fp8Semi24Linear

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    pruned = copy.deepcopy(dense)
    sparsify_(pruned, PruneConfig(pattern="2:4"))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    assert qs.method_model("dense", dense, pruned) is dense and qs.method_model("2:4", dense, pruned) is pruned
    kinds = {"int8": qs.Int8Linear, "int8 + 2:4": qs.Int8Semi24Linear, "fp8": Fp8Linear, "fp8 + 2:4": Fp8Semi24Linear,
             "fp8 e5m2": Fp8Linear}
    x = torch.randn(5, 16)
    for method, kind in kinds.items():
        model = qs.method_model(method, dense, pruned)
        assert type(model[0]) is kind and type(model[2]) is kind, method
        source = pruned if "2:4" in method else dense
        if "2:4" in method:  # quantized without pruning again: exactly the pruned model's zeros
            qs.check_2of4(model[0].weight_q.float())
            assert torch.equal(model[0].dequantized_weight() == 0, source[0].weight.detach() == 0), method
        with torch.no_grad():
            assert float((model(x) - source(x)).norm() / source(x).norm()) < 0.1, method
    assert qs.method_model("fp8", dense, pruned)[0].format == "e4m3"
    assert qs.method_model("fp8 e5m2", dense, pruned)[0].weight_q.dtype == torch.float8_e5m2
    only_first = qs.method_model("fp8", dense, pruned, filter_fn=lambda m, fqn: fqn == "0")
    assert isinstance(only_first[0], Fp8Linear) and type(only_first[2]) is nn.Linear
    assert type(dense[0]) is nn.Linear and all(torch.equal(v, dense.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="fp8 \\+ 2:4"):
        qs.method_model("fp4", dense, pruned)


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
        assert abs(acc["fp8"][column] - acc["dense"][column]) <= 0.03, "FP8 e4m3 costs little"
        assert abs(acc["fp8 + 2:4"][column] - acc["2:4"][column]) <= 0.03
        assert abs(acc["fp8 e5m2"][column] - acc["dense"][column]) <= 0.05
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
    assert list(fig.data[0].x) == ["fp16", "int8", "fp8", "fp16 2:4", "int8 2:4", "fp8 2:4"]
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


def test_fp8_speed_bars_are_built_from_the_recorded_file():
    from sparsity_lab.quant import plots

    recorded = load_results("fp8_gpu")
    rows = recorded.figures["rows"]
    fig = plots.fp8_speed_bars(rows, label=recorded.label)
    assert recorded.label in fig.layout.title.text
    by_panel = {(t.xaxis, t.legendgroup): t for t in fig.data}
    assert set(by_panel) == {(axis, key) for axis in ("x", "x2") for key in plots.FP8_SPEED_NAMES}
    for (axis, key), trace in by_panel.items():
        mode = "ms" if axis == "x" else "compiled_ms"
        assert list(trace.y) == [r[mode][key] for r in rows]
        assert list(trace.x) == [f"{r['M']}x{r['K']}x{r['N']}" for r in rows]
        assert list(trace.text) == [f"{r[mode]['bf16 dense'] / r[mode][key]:.2f}x" for r in rows]
        assert trace.showlegend == (axis == "x") and trace.name == plots.FP8_SPEED_NAMES[key]
    eager_8192 = by_panel["x", "ours fp8 2:4"].text[0]
    assert eager_8192 == f"{rows[0]['speedup']['ours fp8 2:4 over bf16 dense']:.2f}x"
    without_torchao = [{**r, "ms": {k: v for k, v in r["ms"].items() if "torchao" not in k}} for r in rows]
    traces = {(t.xaxis, t.legendgroup): t for t in plots.fp8_speed_bars(without_torchao).data}
    assert ("x", "torchao fp8 2:4") not in traces and traces["x2", "torchao fp8 2:4"].showlegend


def test_value_grids_scale_each_format_to_the_channel():
    from sparsity_lab.quant import plots
    from sparsity_lab.quant.number_formats import grid_values

    row = torch.tensor([0.5, -0.01, 0.2, 0.0, -0.001])
    fig = plots.value_grids(row)
    traces = {t.name: t for t in fig.data}
    assert list(traces) == ["int8", "e4m3", "e5m2", "|w| of the channel"]
    assert sorted(traces["|w| of the channel"].x) == pytest.approx([0.001, 0.01, 0.2, 0.5])
    int8 = list(traces["int8"].x)
    assert max(int8) == pytest.approx(0.5) and int8[0] == pytest.approx(0.5 / 127)  # all 127 levels above 0.0005
    e4m3 = grid_values("e4m3")
    expected = [v * 0.5 / 448 for v in e4m3.tolist() if v > 0 and v * 0.5 / 448 >= 0.0005]
    assert list(traces["e4m3"].x) == pytest.approx(expected)
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="all zeros"):
        plots.value_grids(torch.zeros(4))


def test_the_fp8_benchmark_parses_the_lectures_options_and_needs_fp8_tensor_cores():
    from sparsity_lab.quant import fp8_bench

    args = fp8_bench.build_parser().parse_args(["--warmup-ms", "10", "--rep-ms", "50"])
    assert (args.warmup_ms, args.rep_ms, args.no_compile) == (10.0, 50.0, False)
    if not torch.cuda.is_available():
        assert not fp8_bench.gpu_available()


# --------------------------------------------------------------------------- number formats


def test_grids_hold_every_value_of_each_format():
    from sparsity_lab.quant import number_formats as nf

    int8, e4m3, e5m2 = (nf.grid_values(n) for n in nf.NAMES)
    assert len(int8) == 255 and int8.min() == -127 and torch.all(int8.diff() == 1)
    assert len(e4m3) == 253 and float(e4m3.max()) == 448 and float(e4m3[e4m3 > 0].min()) == 2.0**-9  # 2 NaNs, -0
    assert len(e5m2) == 247 and float(e5m2.max()) == 57344 and float(e5m2[e5m2 > 0].min()) == 2.0**-16  # ±inf too
    assert torch.all(e4m3.diff() > 0) and torch.equal(e4m3, -e4m3.flip(0))
    assert torch.equal(e4m3.to(torch.float8_e4m3fn).double(), e4m3)  # every value is exactly representable
    with pytest.raises(ValueError, match="int8"):
        nf.grid_values("e3m4")


def test_format_rows_read_bits_ranges_and_relative_steps():
    from sparsity_lab.quant import number_formats as nf

    rows = {r["format"]: r for r in nf.format_rows()}
    assert rows["e4m3"]["bits"] == "1 / 4 / 3" and rows["e5m2"]["bits"] == "1 / 5 / 2"
    assert rows["e4m3"]["smallest_normal"] == 2.0**-6 and rows["e5m2"]["smallest_normal"] == 2.0**-14
    assert rows["int8"]["smallest_normal"] is None and rows["int8"]["largest"] == 127
    assert rows["int8"]["step_at_max_over_1"] == pytest.approx(1 / 127)
    assert rows["int8"]["step_at_max_over_256"] > 1, "an even grid's step outgrows small values"
    for name, step in (("e4m3", 32 / 448), ("e5m2", 8192 / 57344)):  # the gap below the largest value
        assert [rows[name][f"step_at_max_over_{d}"] for d in nf.BELOW_LARGEST] == pytest.approx([step] * 3)
    values = nf.grid_values("e4m3")
    assert nf.relative_step(values, 1.0) == pytest.approx(0.0625) and nf.relative_step(values, 1.01) == 0.125 / 1.01
    with pytest.raises(ValueError, match="at must be"):
        nf.relative_step(values, 500.0)


def test_quantize_rows_rounds_within_half_a_step_of_each_grid():
    from sparsity_lab.quant import number_formats as nf

    torch.manual_seed(0)
    x = torch.randn(6, 64) * torch.logspace(-3, 0, 6)[:, None]
    for name, bound in (("e4m3", 2.0**-4), ("e5m2", 2.0**-3)):
        back = nf.quantize_rows(x, name)
        relative = ((back - x).abs() / x.abs())[x.abs() >= x.abs().amax(1, keepdim=True) * 2.0**-5]
        assert float(relative.max()) <= bound, name
    int8 = nf.quantize_rows(x, "int8")
    assert float(((int8 - x).abs() / (x.abs().amax(1, keepdim=True) / 127)).max()) <= 0.5 + 1e-6


def test_layer_errors_grow_with_fewer_mantissa_bits_and_the_fp8_product_is_exact():
    from sparsity_lab.quant import number_formats as nf

    torch.manual_seed(0)
    x, weight, bias = torch.randn(32, 64), torch.randn(24, 64), torch.randn(24)
    rows = {r["format"]: r for r in nf.layer_errors(x, weight, bias)}
    assert list(rows) == list(nf.NAMES)
    for key in ("weight", "activations", "output"):
        assert 0 < rows["int8"][key] < rows["e4m3"][key] < rows["e5m2"][key] < 0.1, key
    assert rows["int8"]["reference_vs_dequantized"] is None
    assert rows["e4m3"]["reference_vs_dequantized"] < 1e-14 and rows["e5m2"]["reference_vs_dequantized"] < 1e-14
    unbiased = {r["format"]: r for r in nf.layer_errors(x, weight)}
    assert unbiased["e4m3"]["weight"] == rows["e4m3"]["weight"]


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
