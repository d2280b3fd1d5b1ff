"""`sparsity-lab bench models` without a GPU: kernel classes, the Amdahl prediction, speed-up rows, the recorder
keeping a failed variant, block pruning; and lecture 09's figures from the recording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsity_lab.course.results import load_results
from sparsity_lab.models import bench, plots
from sparsity_lab.models.encoder import Encoder
from sparsity_lab.models.profile import classify_kernel, predicted_ms


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_sparse_gemm_bf16bf16_bf16f32_f32_tn_t_tilesize128x128", "2:4 GEMM"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", "dense GEMM"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma", "attention"),
    ("_row_major_kernel", "layout copies"),
    ("void at::native::elementwise_kernel<128, 2, direct_copy_kernel_cuda>", "layout copies"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel", "norms"),
    ("triton_red_fused_add_native_layer_norm_0", "norms"),
    ("_norm_t_kernel", "norms"),
    ("void at::native::vectorized_elementwise_kernel<8, GeluCUDAKernelImpl>", "GELU"),
    ("triton_poi_fused_gelu_semi24_linear_t_t_view_1", "GELU"),
    ("_gelu_kernel", "GELU"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>>", "other"),
])
def test_kernels_are_classified_by_name(name: str, kind: str) -> None:
    assert classify_kernel(name) == kind


def test_kernel_times_sum_by_class_and_the_longest_are_named() -> None:
    from sparsity_lab.models.profile import breakdown, top_kernels

    kernels = {"sm90_xmma_sparse_gemm_bf16": 2.0, "nvjet_sm90_tst_256x128": 1.5, "_norm_t_kernel": 0.25,
               "vectorized_layer_norm_kernel": 0.5, "GeluCUDAKernelImpl": 0.125, "AddFunctor": 0.0625}
    assert breakdown(kernels) == {"2:4 GEMM": 2.0, "dense GEMM": 1.5, "norms": 0.75, "GELU": 0.125, "other": 0.062}
    top = top_kernels(kernels, 2)
    assert [k["kernel"] for k in top] == ["sm90_xmma_sparse_gemm_bf16", "nvjet_sm90_tst_256x128"]
    assert top[1]["class"] == "dense GEMM" and top[1]["ms"] == 1.5


def test_predicted_ms_is_amdahl_with_the_layout_bill() -> None:
    profile = {"dense GEMM": 20.0, "other": 10.0}
    assert predicted_ms(profile, 2.0) == pytest.approx(20.0)
    assert predicted_ms(profile, 2.0, sparse_fraction=0.5, layout_ms=1.0) == pytest.approx(26.0)
    for bad in ({"other": 1.0}, {"dense GEMM": -1.0}):
        with pytest.raises(ValueError):
            predicted_ms(bad, 2.0)
    with pytest.raises(ValueError, match="sparse_fraction"):
        predicted_ms(profile, 2.0, sparse_fraction=2.0)


def test_speedups_compare_each_row_with_its_own_dense_rows() -> None:
    rows = [{"model": "m", "dtype": "bf16", "batch": 1, "variant": "dense", "compiled": False, "ms": 10.0},
            {"model": "m", "dtype": "bf16", "batch": 1, "variant": "dense", "compiled": True, "ms": 8.0},
            {"model": "m", "dtype": "bf16", "batch": 1, "variant": "ours", "compiled": True, "ms": 5.0},
            {"model": "m", "dtype": "bf16", "batch": 2, "variant": "ours", "compiled": False, "ms": 5.0},
            {"model": "m", "dtype": "bf16", "batch": 1, "variant": "broken", "failure": "..."}]
    out = {(r["variant"], r["compiled"], r["batch"]): r for r in bench.speedups(rows)}
    assert out[("ours", True, 1)]["over_dense_eager"] == pytest.approx(2.0)
    assert out[("ours", True, 1)]["over_dense_compiled"] == pytest.approx(1.6)
    assert out[("ours", False, 2)]["over_dense_eager"] is None  # no dense row at batch 2
    assert len(out) == 4  # the failed row has no time
    rows[2]["dense_ms_adjacent"] = 12.0  # dense eager timed again right after the variant: that is its baseline
    assert bench.speedups(rows)[2]["over_dense_eager"] == pytest.approx(2.4)


def test_recorder_times_the_baseline_right_after_each_variant(tmp_path: Path) -> None:
    times = iter([3.0, 4.0])
    recorder = bench.Recorder(tmp_path / "models.json", torch.device("cpu"), lambda line: None)
    for variant in ("dense", "ours", "other"):
        recorder.variant("vit", {"variant": variant}, lambda: {"ms": 1.0}, baseline=lambda: next(times))
    saved = json.loads((tmp_path / "models.json").read_text())["figures"]["vit"]
    assert [r.get("dense_ms_adjacent") for r in saved] == [None, 3.0, 4.0]  # dense is its own baseline


def test_recorder_keeps_a_failed_variant_and_saves_after_each(tmp_path: Path) -> None:
    recorder = bench.Recorder(tmp_path / "models.json", torch.device("cpu"), lambda line: None)
    recorder.variant("vit", {"variant": "fine"}, lambda: {"ms": 1.0})
    recorder.variant("vit", {"variant": "broken"}, lambda: 1 / 0)
    saved = json.loads((tmp_path / "models.json").read_text())["figures"]
    assert [r["variant"] for r in saved["vit"]] == ["fine", "broken"]
    assert "ZeroDivisionError" in saved["failures"][0]["failure"] and "ms" not in saved["vit"][1]


def test_recorder_runs_only_the_named_variants_and_updates_a_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    first = bench.Recorder(path, torch.device("cpu"), lambda line: None)
    for variant in ("dense", "ours 2:4", "ours fp8 2:4"):
        first.variant("vit", {"variant": variant, "compiled": False}, lambda: {"ms": 1.0})
    first.variant("vit", {"variant": "ours block", "compiled": False}, lambda: 1 / 0)
    again = bench.Recorder(path, torch.device("cpu"), lambda line: None, only=("fp8", "block"), update=True)
    for variant in ("dense", "ours 2:4", "ours fp8 2:4", "ours block"):
        again.variant("vit", {"variant": variant, "compiled": False}, lambda: {"ms": 2.0})
    rows = {r["variant"]: r["ms"] for r in json.loads(path.read_text())["figures"]["vit"]}
    assert rows == {"dense": 2.0, "ours 2:4": 1.0, "ours fp8 2:4": 2.0, "ours block": 2.0}
    assert json.loads(path.read_text())["figures"]["failures"] == []  # the failure was measured again, and passed


def test_decode_kernel_rows_cover_the_decoders_linears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_speed(tokens: int, n: int, k: int, dtype: torch.dtype) -> dict:
        calls.append((tokens, n, k))
        return {"dense_ms": 1.0, "ours_cuda_ms": 0.6}

    monkeypatch.setattr(bench, "decode_speed", fake_speed)
    path = tmp_path / "models.json"
    bench.run_decode_kernels(torch.bfloat16, bench.Recorder(path, torch.device("cpu"), lambda line: None))
    rows = json.loads(path.read_text())["figures"]["decode_kernels"]
    assert calls[0] == (1, 4096, 4096) and len(calls) == 1 + 3 * len(bench.LLAMA_LINEARS)  # one untimed first
    assert {(r["batch"], r["phase"]) for r in rows} == {(t, f"{t} x {k} -> {n}") for t in (1, 4, 16)
                                                        for n, k in bench.LLAMA_LINEARS}
    assert all(r["ours_cuda_ms"] == 0.6 for r in rows)


def test_block_prune_mlps_prunes_only_the_named_layers_on_a_copy() -> None:
    torch.manual_seed(0)
    model = Encoder(width=128, depth=1, heads=2)
    pruned = bench.block_prune_mlps(model, ("fc1", "fc2"), 0.75)
    fc1 = pruned.blocks[0].mlp.fc1.weight.detach()
    blocks = (fc1.reshape(8, 64, 2, 64) != 0).any(dim=3).any(dim=1)
    assert blocks.float().mean() == pytest.approx(0.25)
    assert torch.equal(pruned.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert (model.blocks[0].mlp.fc1.weight != 0).all()


def test_bench_needs_a_gpu_and_says_where_the_recording_is(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main([]) == 1
    assert "models_gpu.json" in capsys.readouterr().err


def test_encoder_has_vits_four_linears_per_block() -> None:
    model = Encoder(width=64, depth=2, heads=4)
    names = [fqn for fqn, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert names[:4] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert model(torch.randn(2, 5, 64)).shape == (2, 5, 64)
    with pytest.raises(ValueError, match="heads"):
        Encoder(width=64, heads=5)


# ------------------------------------------------------------------------------------- the recording, plotted
@pytest.fixture(scope="module")
def recorded():
    return load_results("models_gpu")


def test_recording_holds_checked_rows(recorded) -> None:
    vit = [r for r in recorded.figures["vit"] if "ms" in r]
    assert {r["variant"] for r in vit} >= {"dense", "ours 2:4 untuned", "ours 2:4 tuned", "ours block 64 90% MLP"}
    assert all(r.get("rel_error", 0.0) <= 0.15 for r in vit)
    assert not recorded.figures["failures"]


def test_h100_recording_holds_checked_rows() -> None:
    h100 = load_results("models_gpu_h100")
    rows = [r for section in ("vit", "llama") for r in h100.figures[section] if "ms" in r]
    assert {r["variant"] for r in rows} >= {"dense", "ours 2:4 column-major stream tuned", "ours 2:4", "ours fp8 2:4"}
    limit = bench.MAX_RELATIVE_ERROR
    assert all(r.get("rel_error", 0.0) <= limit["fp8" if "fp8" in r["variant"] else "other"] for r in rows)
    assert "H100" in h100.environment["device"] and not h100.figures["failures"]


def test_llama_figure_compares_compiled_with_compiled() -> None:
    pytest.importorskip("plotly")
    step = {"dtype": "bfloat16", "phase": "decode step (CUDA graph)", "batch": 1}
    rows = [{**step, "variant": "dense", "ms": 1.0}, {**step, "variant": "dense", "ms": 0.5, "compiled": True},
            {**step, "variant": "ours 2:4", "ms": 0.8}, {**step, "variant": "ours 2:4", "ms": 0.4, "compiled": True}]
    bars = plots.llama_figure(rows).data[0]
    assert list(bars.x) == ["decode step, batch 1", "decode step, batch 1, compiled"]
    assert list(bars.y) == pytest.approx([1.25, 1.25])


def test_llama_figure_draws_each_variant_over_its_own_dense() -> None:
    pytest.importorskip("plotly")
    prefill = {"dtype": "bfloat16", "phase": "prefill", "batch": 8}
    rows = [{**prefill, "variant": "dense", "ms": 60.0}, {**prefill, "variant": "ours fp8 2:4", "ms": 40.0},
            {**prefill, "variant": "dense block-pruned", "ms": 50.0},
            {**prefill, "variant": "ours block 64 90% MLP", "ms": 25.0}]
    bars = {bar.name: list(bar.y) for bar in plots.llama_figure(rows).data}
    assert bars == {"ours fp8 2:4, bfloat16": [pytest.approx(1.5)], "ours block 64 90% MLP, bfloat16": [2.0]}


def test_layout_figure_colours_what_each_module_reads_and_writes() -> None:
    pytest.importorskip("plotly")
    before = {"norm1": ("row-major", "row-major"), "fc1": ("row-major", "column-major")}
    after = {"norm1": ("column-major", "column-major"), "fc1": ("column-major", "column-major"),
             "attn": ("column-major", "strided")}
    heat = plots.layout_figure({"row-major model": before, "streamed": after}).data[0]
    assert list(heat.y) == ["norm1", "fc1", "attn"] and len(heat.x) == 4
    assert [list(row) for row in heat.z] == [[0, 0, 1, 1], [0, 1, 1, 1], [None, None, 1, 2]]
    assert heat.text[2][3] == "strided"
    with pytest.raises(ValueError, match="no module"):
        plots.layout_figure({"empty": {}})


def test_decode_kernel_figure_puts_each_kernel_beside_cublas() -> None:
    pytest.importorskip("plotly")
    rows = [{"batch": 1, "phase": "1 x 4096 -> 1024", "dense_ms": 0.008, "cusparselt_ms": 0.025, "ours_cuda_ms": 0.007},
            {"batch": 1, "phase": "1 x 4096 -> 4096", "dense_ms": 0.014, "ours_cuda_ms": 0.013},
            {"batch": 16, "phase": "16 x 4096 -> 4096", "dense_ms": 0.014}]
    fig = plots.decode_kernel_figure(rows)
    assert [trace.name for trace in fig.data] == ["cuBLAS, dense", "cuSPARSELt 2:4", "ours: W as it lies, CUDA cores"]
    assert list(fig.data[0].x) == ["4096 → 1024", "4096 → 4096"]
    assert list(fig.data[1].y) == [pytest.approx(25.0), None]  # a kernel not measured at a shape has no bar
    with pytest.raises(ValueError, match="at 4 tokens"):
        plots.decode_kernel_figure(rows, tokens=4)


def test_figures_from_the_recording(recorded) -> None:
    pytest.importorskip("plotly")
    vit, llama = recorded.figures["vit"], recorded.figures["llama"]
    fig = plots.speedup_figure(vit, "bfloat16", caption=recorded.label)
    bars = fig.data[0]
    dense = next(r["ms"] for r in vit if r["variant"] == "dense" and not r["compiled"] and r["dtype"] == "bfloat16")
    first = next(r for r in vit if r["dtype"] == "bfloat16" and "ms" in r)
    assert bars.x[0] == pytest.approx(dense / first["ms"]) and len(fig.data) == 2  # bars and targets
    for r in vit:  # where tune_(stream=) kept the model row-major, the bar says so
        if r.get("streamed") is False and r["dtype"] == "bfloat16":
            assert f"{r['variant']} ({'compiled' if r['compiled'] else 'eager'}, kept row-major)" in bars.y
    profile = plots.profile_figure(vit, "bfloat16")
    assert {trace.name for trace in profile.data} >= {"dense GEMM", "2:4 GEMM", "layout copies"}
    assert plots.llama_figure(llama).data
    kernels = plots.decode_kernel_figure(recorded.figures["decode_kernels"]).data
    assert {trace.name for trace in kernels} == set(plots.DECODE_KERNELS.values()) and len(kernels[0].x) == 4
    with pytest.raises(ValueError, match="dtype"):
        plots.speedup_figure(vit, "float32")
    with pytest.raises(ValueError):
        plots.profile_figure([], "bfloat16")
