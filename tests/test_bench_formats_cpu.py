"""`sparsity-lab bench formats_cpu`: a tiny run writes a valid results file; crossovers and the scipy ratio are
computed as documented; the recorded 4096 x 4096 results agree with themselves."""

from __future__ import annotations

import math

import pytest
import torch

from sparsity_lab.course.cli import BENCHMARKS
from sparsity_lab.course.cli import main as cli
from sparsity_lab.course.results import load_results
from sparsity_lab.formats import bench as formats_cpu

SPARSE_METHODS = [m for m in formats_cpu.LABELS if m != "dense"]


def test_the_benchmark_is_registered():
    assert "formats_cpu" in BENCHMARKS


def test_a_tiny_run_writes_a_valid_results_file(tmp_path, capsys):
    out = tmp_path / "formats.json"
    assert cli(["bench", "formats_cpu", "--n", "48", "--batch", "4", "--sparsities", "0,0.9", "--reps", "2",
                "--budget", "0.01", "--note", "test run", "--out", str(out)]) == 0
    assert "ours / scipy at 99%" not in capsys.readouterr().out, "99% was not measured"
    results = load_results(out)
    figures = results.figures
    assert results.name == "formats_cpu" and "1 threads" in results.environment["device"]
    assert figures["config"]["threads"] == 1 and figures["config"]["n"] == 48 and figures["note"] == "test run"
    assert [(r["sparsity"], r["method"]) for r in figures["rows"]] == [
        (s, m) for s in (0.0, 0.9) for m in formats_cpu.LABELS]
    for row in figures["rows"]:
        assert row["relerr"] < 1e-5, row
        assert row["reps"] == 2 == len(row["times_ms"]) and row["ms"] > 0
        assert row["nnz"] == 48 * 48 - round(row["sparsity"] * 48 * 48)
    assert set(figures["crossover"]) == set(SPARSE_METHODS) and figures["ours_vs_scipy"] is None
    assert figures["labels"]["ours_csr"] == "ours: CSR (embedding_bag)"


def _row(sparsity: float, method: str, ms: float, dense_ms: float = 10.0) -> dict:
    return {"sparsity": sparsity, "method": method, "ms": ms, "dense_ms": dense_ms}


def test_crossover_is_the_first_sparsity_faster_than_dense():
    rows = [_row(s, "dense", 10.0) for s in (0.5, 0.9, 0.99)]
    rows += [_row(0.5, "a", 20.0), _row(0.9, "a", 9.0), _row(0.99, "a", 11.0)]  # faster at 90%, not at 99%
    rows += [_row(0.5, "b", 20.0), _row(0.9, "b", 10.0), _row(0.99, "b", 1.0)]  # a tie is not faster
    rows += [_row(s, "c", 30.0) for s in (0.5, 0.9, 0.99)]
    assert formats_cpu.crossovers(rows) == {"a": {"sparsity": 0.9, "stays_faster": False},
                                            "b": {"sparsity": 0.99, "stays_faster": True},
                                            "c": {"sparsity": None, "stays_faster": False}}


def test_ours_vs_scipy_at_99_percent():
    rows = [_row(0.99, "ours_csr", 3.0), _row(0.99, "scipy_csr", 2.0), _row(0.9, "ours_csr", 100.0)]
    assert formats_cpu.ours_vs_scipy(rows) == {"sparsity": 0.99, "ours_ms": 3.0, "scipy_ms": 2.0, "ratio": 1.5,
                                               "target": 2.0, "met": True}
    assert formats_cpu.ours_vs_scipy(rows[:1]) is None


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="unknown method 'cusparse'"):
        formats_cpu.prepare("cusparse", torch.eye(2), torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"unknown methods \['cusparse'\]"):
        formats_cpu.run(n=4, methods=("cusparse",), log=None)
    with pytest.raises(SystemExit):
        formats_cpu.main(["--sparsities", "0.5,1.0"])


@pytest.fixture(scope="module")
def recorded():
    return load_results("formats_cpu")


def test_recorded_results_are_the_full_benchmark_on_this_course_machine(recorded):
    config = recorded.figures["config"]
    assert (config["n"], config["batch"], config["dtype"], config["threads"]) == (4096, 64, "float32", 1)
    assert tuple(config["sparsities"]) == formats_cpu.SPARSITIES and config["methods"] == list(formats_cpu.LABELS)
    assert "CPU" in recorded.label and "2 CPU cores" in recorded.figures["note"]


def test_recorded_rows_agree_with_themselves(recorded):
    figures = recorded.figures
    rows = figures["rows"]
    assert len(rows) == len(formats_cpu.SPARSITIES) * len(formats_cpu.LABELS)
    for r in rows:
        assert r["relerr"] < 1e-5 and r["reps"] >= formats_cpu.MIN_REPS and r["ms"] > 0
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["ms"])
        assert r["nnz"] == 4096 * 4096 - round(r["sparsity"] * 4096 * 4096)
        assert math.isclose(r["min_ms"], min(r["times_ms"]))
    assert figures["crossover"] == formats_cpu.crossovers(rows)
    assert figures["ours_vs_scipy"] == formats_cpu.ours_vs_scipy(rows)
