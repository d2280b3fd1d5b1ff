"""`sparsity-lab bench semi24` / `gpu_structure`: shapes, the targets summary, CPU behaviour, the recorded H100
results (consistent with themselves) and the plots drawn from them."""

from __future__ import annotations

import math

import pytest
import torch

from sparsity_lab import timing
from sparsity_lab.course.cli import BENCHMARKS
from sparsity_lab.course.results import load_results
from sparsity_lab.gpu import bench as gpu_structure
from sparsity_lab.gpu import plots as gpu_plots
from sparsity_lab.semi24 import bench as semi24
from sparsity_lab.semi24 import plots


def test_benchmarks_are_registered():
    assert {"semi24", "gpu_structure"} <= set(BENCHMARKS)


def test_shapes_cover_decode_to_prefill_against_llama_mlp_sizes_and_the_cubes():
    full = semi24.shapes()
    assert min(m for m, _, _ in full) == 16 and max(m for m, _, _ in full) == 16384
    assert {(4096, 14336), (14336, 4096), (4096, 4096)} <= {(k, n) for _, k, n in full}
    assert (4096, 4096, 4096) in full and (8192, 8192, 8192) in full
    assert set(semi24.shapes(quick=True)) <= set(full)


def _row(m, k, n, dense, ours, eager, graph, dispatch, dtype="float16"):
    return {"dtype": dtype, "M": m, "K": k, "N": n, "dense_ms": dense, "ours_ms": ours, "speedup": dense / ours,
            "ours_loop_ms": eager, "ours_graph_ms": graph, "eager_over_graph": eager / graph,
            "dispatch_ms": dispatch, "dispatch_over_dense": dispatch / dense}


def test_summary_checks_each_target_and_names_the_worst_shape():
    rows = [_row(8192, 8192, 8192, 1.5, 1.0, 1.0, 1.0, 1.0), _row(4096, 4096, 4096, 0.2, 0.15, 0.15, 0.15, 0.15),
            _row(16, 4096, 4096, 0.02, 0.03, 0.04, 0.01, 0.0205)]
    summary = semi24.summarize(rows, {"ours_triton_prune_compress_ms": 0.09})
    assert summary["speedup_8192"] == pytest.approx(1.5) and summary["speedup_4096"] == pytest.approx(0.2 / 0.15)
    assert summary["eager_over_graph_worst"] == pytest.approx(4.0)
    assert summary["eager_over_graph_worst_shape"] == ["float16", 16, 4096, 4096]
    assert summary["dispatch_over_dense_worst"] == pytest.approx(1.025)
    assert summary["met"] == {"speedup_8192": True, "speedup_4096": True, "eager_over_graph": False,
                              "dispatch_over_dense": True, "compress_8192_ms": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answer")
def test_benchmarks_refuse_politely_without_a_gpu(capsys):
    assert semi24.main([]) == 2 and "needs a CUDA GPU" in capsys.readouterr().err
    assert gpu_structure.main([]) == 2 and "recorded results" in capsys.readouterr().err


@pytest.fixture(scope="module")
def recorded():
    return load_results("semi24_gpu")


def test_recorded_results_are_labelled_and_complete(recorded):
    assert "H100" in recorded.label and recorded.figures["complete"]
    rows = recorded.figures["linear"]
    assert {r["dtype"] for r in rows} == {"float16", "bfloat16"}
    assert {(r["M"], r["K"], r["N"]) for r in rows} == set(semi24.shapes())


def test_recorded_rows_agree_with_themselves(recorded):
    for r in recorded.figures["linear"]:
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["ours_ms"])
        assert r["ours_relerr"] < 1e-2 and r["dispatch_relerr"] < 1e-2 and r["ours_bias_relerr"] < 1e-2
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("dense_ms", "ours_ms", "ours_graph_ms"))
    assert recorded.figures["compressors"]["ours_bit_exact"] is True
    summary = semi24.summarize(recorded.figures["linear"], recorded.figures["compressors"])
    assert summary == recorded.figures["summary"]


def test_recorded_int8_is_exact_where_the_output_is_integer(recorded):
    for r in recorded.figures["int8"]:
        assert r["int32_relerr"] == 0.0 and r["int8_relerr"] == 0.0 and r["bfloat16_relerr"] < 1e-2


def test_cpu_timings_warm_up_first_then_count_every_call():
    calls = []

    def fn():
        calls.append(1)

    assert timing.loop_ms(fn, calls=3, trials=2, device="cpu") >= 0 and len(calls) == 1 + 3 * 2
    calls.clear()
    assert timing.host_us(fn, calls=1, trials=7, device="cpu") >= 0 and len(calls) == 1 + 7
    calls.clear()
    assert timing.bench_ms(fn, "cpu", warmup_ms=0.0, rep_ms=0.0) >= 0 and len(calls) == 1 + 3 + 10


def test_gpu_structure_runs_on_the_cpu_as_lecture_04_does():
    figures = gpu_structure.run(m=16, k=32, n=32, dtype=torch.float32, sparsities=(0.5,), device="cpu",
                                log=lambda line: None)
    (row,) = figures["rows"]
    assert figures["dense_ms"] > 0 and row["csr_ms"] > 0 and row["row_pruned_ms"] > 0 and row["csr_relerr"] < 1e-5
    assert "semi24_ms" not in row  # 2:4 needs a GPU


def test_gpu_structure_recorded_shows_rows_beat_unstructured():
    results = load_results("gpu_structure")
    rows = results.figures["rows"]
    assert [r["sparsity"] for r in rows] == sorted(r["sparsity"] for r in rows)
    for r in rows:
        assert r["row_pruned_speedup"] > r["csr_speedup"]
        assert r["row_pruned_speedup"] <= r["ideal_speedup"] * 1.1


def test_plots_draw_the_recorded_numbers(recorded):
    rows = recorded.figures["linear"]
    fig = plots.speedup_by_shape(rows, caption=recorded.label)
    ours = next(t for t in fig.data if t.name == "ours 4096->14336")
    expected = sorted((r["M"], r["speedup"]) for r in rows
                      if r["dtype"] == "float16" and (r["K"], r["N"]) == (4096, 14336))
    assert list(zip(ours.x, ours.y, strict=True)) == [tuple(p) for p in expected]
    assert recorded.label in fig.layout.title.text
    assert len(plots.eager_vs_graph(rows).data) >= 2
    bars = plots.compressor_times(recorded.figures["compressors"]).data[0]
    assert "ours: Triton prune + compress" in bars.y
    structure = gpu_plots.structure_speedups(load_results("gpu_structure").figures)
    assert {t.name for t in structure.data} >= {"row pruning (smaller dense matmul)", "unstructured (CSR SpMM)"}
