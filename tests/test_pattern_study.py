"""The pattern study on a tiny MLP: rows hold what they claim, summaries and paired differences add up."""

import math

import pytest
import torch

from sparsity_lab.course.results import load_results
from sparsity_lab.course.train import trained_mlp
from sparsity_lab.patterns import study
from sparsity_lab.patterns.masks import is_block, is_nm, pattern_masks

TINY = study.StudyConfig(seeds=(0, 1), hidden=32, train_epochs=3, finetune_epochs=1)


@pytest.fixture(scope="module")
def rows():
    points = [("unstructured", 0.5), ("2:4", 0.5), ("block 8x8", 0.5), ("row", 0.75)]
    return study.run_pattern_study(points, TINY)


def test_rows_measure_every_point_on_every_seed(rows):
    assert len(rows) == 8 and {r["seed"] for r in rows} == {0, 1}
    for row in rows:
        assert row["achieved_sparsity"] == pytest.approx(row["sparsity"])
        assert row["loss_increase"] == pytest.approx(row["loss"] - row["dense_loss"])
        assert row["finetuned_loss_increase"] == pytest.approx(row["finetuned_loss"] - row["dense_loss"])
        assert 0 < row["weight_error"] < 1 and 0 <= row["accuracy"] <= 1


def test_unstructured_removes_the_least_weight_norm(rows):
    for seed in (0, 1):
        errors = {r["pattern"]: r["weight_error"] for r in rows if r["seed"] == seed and r["sparsity"] == 0.5}
        assert errors["unstructured"] < errors["2:4"] < errors["block 8x8"]


def test_weight_error_is_the_share_of_norm_removed():
    model = trained_mlp(seed=0, epochs=1, hidden=16, progress=False)
    masks = pattern_masks(model, "row", 0.5, layers=["net.3"])
    weight = model.net[3].weight.detach().double()
    expected = math.sqrt(float((weight * ~masks["net.3"]).pow(2).sum() / weight.pow(2).sum()))
    assert study.relative_weight_error(model, masks) == pytest.approx(expected)


def test_measured_models_really_carry_the_pattern():
    model = trained_mlp(seed=0, epochs=1, hidden=32, progress=False)
    masks = pattern_masks(model, "2:4", None, study.LAYERS)
    assert all(is_nm(m, 2, 4) for m in masks.values())
    assert all(is_block(m, (8, 8)) for m in pattern_masks(model, "block 8x8", 0.5, study.LAYERS).values())


def test_summary_means_and_spread(rows):
    summary = study.summarize(rows)
    entry = next(e for e in summary if e["pattern"] == "2:4")
    values = torch.tensor([r["accuracy"] for r in rows if r["pattern"] == "2:4"], dtype=torch.float64)
    assert entry["n_seeds"] == 2
    assert entry["accuracy_mean"] == pytest.approx(float(values.mean()))
    assert entry["accuracy_std"] == pytest.approx(float(values.std()))
    assert entry["accuracy_min"] <= entry["accuracy_mean"] <= entry["accuracy_max"]


def test_paired_difference_is_seed_by_seed(rows):
    pair = study.paired_difference(rows, "2:4", "unstructured", 0.5, "weight_error")
    by = {(r["pattern"], r["seed"]): r["weight_error"] for r in rows}
    assert pair["diffs"] == pytest.approx([by["2:4", s] - by["unstructured", s] for s in (0, 1)])
    assert pair["ci95"] == pytest.approx(study.t_critical_95(1) * pair["std"] / math.sqrt(2))
    with pytest.raises(ValueError, match="no seed has both"):
        study.paired_difference(rows, "2:4", "row", 0.5, "accuracy")


def test_separates_is_a_paired_t_test_at_five_percent():
    def rows_of(diffs):
        return [r for s, d in enumerate(diffs) for r in (
            {"seed": s, "pattern": "2:4", "sparsity": 0.5, "x": 1.0 + d},
            {"seed": s, "pattern": "unstructured", "sparsity": 0.5, "x": 1.0})]

    assert study.paired_difference(rows_of([0.1, 0.11, 0.09]), "2:4", "unstructured", 0.5, "x")["separates"]
    assert not study.paired_difference(rows_of([0.1, -0.01, 0.09]), "2:4", "unstructured", 0.5, "x")["separates"]
    assert not study.paired_difference(rows_of([0.0, 0.0, 0.0]), "2:4", "unstructured", 0.5, "x")["separates"]
    assert study.paired_difference(rows_of([0.2, 0.2]), "2:4", "unstructured", 0.5, "x")["separates"]
    # mean 0.1: 1.73 standard errors with 3 seeds (below t(2) = 4.30), 2.74 with 6 (above t(5) = 2.57).
    assert not study.paired_difference(rows_of([0.0, 0.1, 0.2]), "2:4", "unstructured", 0.5, "x")["separates"]
    assert study.paired_difference(rows_of([0.0, 0.1, 0.2] * 2), "2:4", "unstructured", 0.5, "x")["separates"]


def test_t_critical_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert study.t_critical_95(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert study.t_critical_95(200) == pytest.approx(stats.t.ppf(0.975, 200), abs=0.02)


def test_damage_order_reads_accuracy_the_right_way_round():
    summary = [{"pattern": p, "sparsity": 0.5, "accuracy_mean": a, "loss_increase_mean": d}
               for p, a, d in (("unstructured", 0.97, 0.01), ("2:4", 0.96, 0.02), ("row", 0.90, 0.3))]
    claim = ("unstructured", "2:4", "row")
    assert study.damage_order(summary, claim, 0.5, "accuracy")["holds"]
    assert study.damage_order(summary, claim, 0.5, "loss_increase")["holds"]
    assert not study.damage_order(summary, ("row", "2:4", "unstructured"), 0.5, "accuracy")["holds"]
    summary[1]["accuracy_mean"] = 0.97
    assert not study.damage_order(summary, claim, 0.5, "accuracy")["holds"], "a tie does not hold"


def test_families_and_points():
    assert study.family_of("2:8") == "N:8" and study.family_pattern("N:8", 0.75) == "2:8"
    assert study.family_pattern("block4x4", 0.3) == "block 4x4"
    with pytest.raises(ValueError, match="no member at sparsity 0.3"):
        study.family_pattern("N:8", 0.3)
    points = study.study_points()
    assert len(points) == len(set(points)) and ("2:4", 0.5) in points and ("1:8", 0.875) in points


def test_the_benchmark_writes_a_results_file(tmp_path):
    from sparsity_lab.patterns import bench

    out = tmp_path / "ps.json"
    threads = torch.get_num_threads()
    assert bench.main(["--seeds", "2", "--no-sweep", "--hidden", "16", "--train-epochs", "1",
                       "--finetune-epochs", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads, "the benchmark must restore torch's thread count"
    results = load_results(out)
    assert "1 threads" in results.environment["device"]
    figures = results.figures
    assert len(figures["rows"]) == 2 * len(study.study_points(sweep_families=()))
    assert {p["measure"] for p in figures["paired_differences"]} == set(study.MEASURES)


def test_the_recorded_study_is_complete():
    recorded = load_results("pattern_study")
    figures = recorded.figures
    assert "CPU" in recorded.environment["device"]
    assert len(figures["config"]["seeds"]) >= 5
    assert {(r["pattern"], r["sparsity"]) for r in figures["rows"]} == set(map(tuple, study.study_points()))
    assert all(e["n_seeds"] == len(figures["config"]["seeds"]) for e in figures["summary"])


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with study.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be at least 1"), study.torch_threads(0):
        pass
