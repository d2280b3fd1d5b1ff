"""2:4 training figures carry the data they draw (synthetic study and benchmark results); the explorer follows
its controls."""

import pytest
import torch

from sparsity_lab.training import plots
from sparsity_lab.training.masks import transposable_mask


def _run(recipe, seed, accuracy, loss, one_shot=None):
    return {"recipe": recipe, "seed": seed, "train_loss": loss, "test_accuracy": accuracy,
            "one_shot_accuracy": one_shot, "layers_24": [], "final_accuracy": accuracy[-1]}


STUDY = {
    "config": {"seeds": [0, 1], "epochs": 3, "finetune_epochs": 2},
    "runs": [
        _run("dense", 0, [0.5, 0.8, 0.9], [1.0, 0.5, 0.3]),
        _run("2:4 from scratch", 0, [0.4, 0.7, 0.88], [1.2, 0.6, 0.4]),
        _run("dense -> 2:4 fine-tuned", 0, [0.85, 0.89], [0.35, 0.32], one_shot=0.6),
        _run("dense", 1, [0.7, 0.8, 0.94], [0.8, 0.5, 0.1]),
        _run("2:4 from scratch", 1, [0.6, 0.7, 0.9], [1.0, 0.6, 0.2]),
        _run("dense -> 2:4 fine-tuned", 1, [0.87, 0.93], [0.25, 0.2], one_shot=0.8),
    ],
    "summary": {"dense": {"mean": 0.92, "std": 0.02, "n": 2, "gap_points": 0.0},
                "2:4 from scratch": {"mean": 0.89, "std": 0.01, "n": 2, "gap_points": 3.0},
                "dense -> 2:4 fine-tuned": {"mean": 0.91, "std": 0.02, "n": 2, "gap_points": 1.0}},
}


def _traces(fig, name):
    return [t for t in fig.data if t.name == name]


def test_curves_draw_the_mean_over_seeds_with_a_std_band():
    fig = plots.training_curves(STUDY)
    accuracy, loss = _traces(fig, "dense")
    assert list(accuracy.x) == [1, 2, 3] and list(accuracy.y) == pytest.approx([60.0, 80.0, 92.0])
    assert accuracy.xaxis == "x" and loss.xaxis == "x2" and list(loss.y) == pytest.approx([0.9, 0.5, 0.2])
    band = _traces(fig, "dense ± std")[0]
    assert list(band.x) == [1, 2, 3, 3, 2, 1]
    assert list(band.y) == pytest.approx([60 + 10, 80, 92 + 2, 92 - 2, 80, 60 - 10])  # upper, then lower reversed
    assert band.fill == "toself"


def test_curves_put_fine_tuning_after_the_dense_epochs_with_its_one_shot_point():
    fig = plots.training_curves(STUDY)
    accuracy, _ = _traces(fig, "dense -> 2:4 fine-tuned")
    assert list(accuracy.x) == [4, 5] and list(accuracy.y) == pytest.approx([86.0, 91.0])
    one_shot = _traces(fig, "dense -> 2:4 fine-tuned: one-shot")[0]
    assert list(one_shot.x) == [3] and list(one_shot.y) == pytest.approx([70.0])


def test_curves_per_seed_draw_one_line_per_run():
    fig = plots.training_curves(STUDY, per_seed=True)
    lines = [t for t in fig.data if t.name == "2:4 from scratch"]
    assert len(lines) == 4  # two seeds, two panels
    assert [list(t.y) for t in lines if t.xaxis == "x"] == [pytest.approx([40.0, 70.0, 88.0]),
                                                            pytest.approx([60.0, 70.0, 90.0])]
    assert sum(t.showlegend is not False for t in lines) == 1


def test_final_accuracy_bars_show_mean_std_and_the_difference_to_dense():
    fig = plots.final_accuracy_bars(STUDY["summary"])
    bars = fig.data[0]
    assert list(bars.x) == list(STUDY["summary"])
    assert list(bars.y) == pytest.approx([92.0, 89.0, 91.0]) and list(bars.error_y.array) == pytest.approx([2, 1, 2])
    assert bars.text[0] == "92.00 ± 2.00" and bars.text[1] == "89.00 ± 1.00<br>-3.00 points vs dense"
    assert "n = 2 seeds" in fig.layout.title.text


def test_study_table_lists_every_recipe():
    table = plots.study_table(STUDY).data[0]
    recipes, seeds, accuracy, versus, epochs, one_shot = table.cells.values
    assert list(recipes) == list(STUDY["summary"]) and list(seeds) == [2, 2, 2]
    assert list(accuracy) == ["92.00 ± 2.00", "89.00 ± 1.00", "91.00 ± 2.00"]
    assert list(versus) == ["+0.00", "-3.00", "-1.00"] and list(epochs) == ["3", "3", "3 + 2"]
    assert list(one_shot) == ["—", "—", "70.00"]


def test_kept_magnitude_is_the_kept_fraction_of_the_absolute_sum():
    weight = torch.tensor([[1.0, -3.0, 0.0, 4.0]])
    assert plots.kept_magnitude(weight, torch.tensor([[False, True, False, True]])) == pytest.approx(7 / 8)
    assert plots.kept_magnitude(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bool)) == 1.0


def test_mask_tiles_figure_draws_the_mask_its_transpose_and_the_tiles():
    weight = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    mask = transposable_mask(weight)
    fig = plots.mask_tiles_figure(weight, mask)
    left, right = fig.data
    assert torch.equal(torch.tensor(left.z), mask.float()) and torch.equal(torch.tensor(right.z), mask.T.float())
    assert [a.text for a in fig.layout.annotations] == ["W ⊙ mask<br>2:4 along rows ✓",
                                                        "(W ⊙ mask)ᵀ<br>2:4 along rows ✓"]
    vertical = [(s.xref, s.x0) for s in fig.layout.shapes if s.x0 == s.x1]
    horizontal = [(s.yref, s.y0) for s in fig.layout.shapes if s.y0 == s.y1]
    assert vertical == [("x", 3.5), ("x", 7.5), ("x2", 3.5)]  # tile borders: W is 8 x 12, its transpose 12 x 8
    assert horizontal == [("y", 3.5), ("y2", 3.5), ("y2", 7.5)]
    assert f"{plots.kept_magnitude(weight, mask):.1%}" in fig.layout.title.text


def test_mask_tiles_figure_marks_groups_of_the_transpose_that_break_24():
    weight = torch.tensor([[4.0, 3, 1, 1], [4, 3, 1, 1], [4, 3, 1, 1], [1, 1, 4, 3]])
    plain = torch.tensor([[True, True, False, False]] * 3 + [[False, False, True, True]])
    fig = plots.mask_tiles_figure(weight, plain)
    left, right = fig.data
    assert torch.equal(torch.tensor(left.z), plain.float())
    assert torch.tensor(right.z)[0].tolist() == [2.0, 2.0, 2.0, 0.0]  # column 0 keeps 3 of 4: drawn "broken"
    assert fig.layout.annotations[1].text == "(W ⊙ mask)ᵀ<br>NOT 2:4: 2 of 4 groups keep > 2"
    with pytest.raises(ValueError, match="multiples of 4"):
        plots.mask_tiles_figure(torch.ones(6, 8), torch.ones(6, 8, dtype=torch.bool))


ROWS = [{"dtype": d, "tokens": t, "variant": v, "dense_ms": 2.0, "sparse_ms": 2.0 / s, "speedup": s}
        for d in ("float16", "bfloat16") for t in (16384, 8192)
        for v, s in (("dynamic", 1.1 + t / 1e5), ("fixed mask", 1.3))]


def test_training_speedup_has_a_panel_per_dtype_and_a_bar_per_variant():
    fig = plots.training_speedup(ROWS, label="recorded on a test GPU, 2026-12-02")
    assert [a.text for a in fig.layout.annotations if a.text in ("float16", "bfloat16")] == ["float16", "bfloat16"]
    fp16_dynamic = next(t for t in fig.data if t.name == "dynamic" and t.xaxis == "x")
    assert list(fp16_dynamic.x) == ["8192 tokens", "16384 tokens"]  # sorted by tokens
    assert list(fp16_dynamic.y) == pytest.approx([1.1 + 0.08192, 1.1 + 0.16384])
    assert fp16_dynamic.text[0] == "1.18x"
    assert len(fig.data) == 4 and "recorded on a test GPU" in fig.layout.title.text
    assert sorted(s.y0 for s in fig.layout.shapes) == [1.0, 1.0]


BREAKDOWN = [{"dtype": "float16", "tokens": 8192, "part": p, "dense_ms": d, "sparse_ms": s}
             for p, d, s in (("fc1 y = x Wᵀ", 1.0, 0.6), ("fc1 transposable mask", None, 0.2), ("GELU", 0.3, 0.3))]


def test_step_breakdown_stacks_the_parts_of_dense_and_24():
    fig = plots.step_breakdown(BREAKDOWN, label="recorded on a test GPU")
    assert fig.layout.barmode == "stack"
    product, mask, gelu, totals = fig.data
    assert list(product.x[1]) == ["dense", "2:4"] and list(product.x[0]) == ["float16 8192"] * 2
    assert list(product.y) == [1.0, 0.6] and list(mask.y) == [None, 0.2] and list(gelu.y) == [0.3, 0.3]
    assert list(totals.text) == ["1.30 ms", "1.10 ms"]
    assert "recorded on a test GPU" in fig.layout.title.text


def test_step_breakdown_leaves_out_the_parts_asked_for():
    alternative = {"dtype": "float16", "tokens": 8192, "part": "fc1 mask (fixed mask)", "dense_ms": None,
                   "sparse_ms": 0.1}
    fig = plots.step_breakdown([*BREAKDOWN, alternative], skip=("(fixed mask)",))
    assert [t.name for t in fig.data] == ["fc1 y = x Wᵀ", "fc1 transposable mask", "GELU", "total"]
    assert list(fig.data[-1].text) == ["1.30 ms", "1.10 ms"]


def test_mask_explorer_follows_its_controls():
    from sparsity_lab.training.widgets import mask_explorer

    box = mask_explorer(rows=8, cols=8, seed=0)
    (rows_box, cols_box, seed_box), kind_box, status, _, figure = box.children[0].children, *box.children[1:]
    assert "8 x 8, seed 0" in status.value and "transposable keeps" in status.value
    assert "2:4 along rows ✓" in figure.layout.annotations[1].text
    kind_box.value = "plain 2:4 rows"
    assert figure.layout.title.text.startswith("plain 2:4 rows mask")
    rows_box.value, cols_box.value = 12, 16
    assert (len(figure.data[0].z), len(figure.data[0].z[0])) == (12, 16)
    assert (len(figure.data[1].z), len(figure.data[1].z[0])) == (16, 12)
    before = status.value
    seed_box.value = 3
    assert status.value != before and "seed 3" in status.value
