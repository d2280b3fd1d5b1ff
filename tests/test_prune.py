"""Masks: exact sparsity, validation, and parametrize-based attachment that survives training."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsity_lab import PruneConfig, sparsify_
from sparsity_lab.pruning import prune


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_magnitude_mask_drops_exactly_the_requested_count(sparsity):
    weight = torch.randn(50, 40)
    mask = prune.magnitude_mask(weight, sparsity)
    assert int((~mask).sum()) == round(sparsity * weight.numel())
    if sparsity > 0:
        assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


def test_ties_keep_the_lower_flat_index():
    mask = prune.magnitude_mask(torch.ones(6), 0.5)
    assert mask.tolist() == [True, True, True, False, False, False]
    assert prune.magnitude_mask(torch.tensor([1.0, -1.0, 2.0, -2.0]), 0.5).tolist() == [False, False, True, True]
    assert prune.topk_mask(torch.tensor([[-0.0, 0.0], [0.0, -0.0]]), 0.5).tolist() == [[True, True], [False, False]]
    assert prune.topk_mask(torch.zeros(5), 0.4).tolist() == [True, True, True, False, False]


@given(st.lists(st.sampled_from([-0.0, 0.0, 1.0, 3.0]), min_size=1, max_size=40),
       st.floats(min_value=0.0, max_value=0.99, allow_nan=False))
def test_topk_mask_keeps_the_first_entries_of_a_stable_descending_order(values, sparsity):
    scores = torch.tensor(values)
    n_keep = len(values) - round(sparsity * len(values))
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))  # higher first, then the lower index
    assert prune.topk_mask(scores, sparsity).tolist() == [i in order[:n_keep] for i in range(len(values))]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                                   torch.uint32, torch.uint64])
def test_integer_weights_rank_by_exact_magnitude_down_to_the_dtype_minimum(dtype):
    info = torch.iinfo(dtype)
    weight = torch.tensor([min(info.max, 2**53), 1, info.min, 0], dtype=dtype)
    assert prune.magnitudes(weight).tolist() == [float(min(info.max, 2**53)), 1.0, float(abs(info.min)), 0.0]
    signed = info.min < 0
    assert prune.magnitude_mask(weight, 0.75).tolist() == [not signed, False, signed, False]
    assert prune.topk_mask(weight, 0.75).tolist() == [True, False, False, False]


@pytest.mark.parametrize("bad", [-0.01, 1.0, 2.0, float("nan")])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="sparsity must be a fraction in"):
        prune.magnitude_mask(torch.randn(4), bad)


def test_non_finite_scores_are_rejected_with_their_position():
    scores = torch.ones(3, 3)
    scores[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(first at index \[1, 2\]\)"):
        prune.topk_mask(scores, 0.5)


def test_mask_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="mask has shape"):
        prune.apply_mask(nn.Linear(4, 3), torch.ones(4, 3, dtype=torch.bool))


def test_masked_weights_stay_zero_through_training_and_after_make_permanent():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    mask = prune.magnitude_mask(layer.weight, 0.75)
    prune.apply_mask(layer, mask)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(5):
        loss = layer(torch.randn(16, 8)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.all(layer.weight[~mask] == 0)
    assert layer.parametrizations.weight.original[mask].ne(0).all()
    prune.make_permanent(layer)
    assert isinstance(layer.weight, nn.Parameter)
    assert prune.sparsity_of(layer.weight) == pytest.approx(0.75)


def test_magnitude_pruning_masks_every_prunable_layer():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    sparsify_(model, PruneConfig(sparsity=0.5))
    assert [prune.sparsity_of(m.weight) for m in prune.prunable_layers(model).values()] == [0.5, 0.5]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


def test_global_scores_prune_the_lowest_across_layers():
    model = _net()
    scores = {"0": torch.full((5, 6), 100.0), "2": torch.arange(20.0).reshape(4, 5)}
    prune.prune_by_scores(model, scores, 20 / 50)
    assert prune.sparsity_of(model[2].weight) == 1.0 and prune.sparsity_of(model[0].weight) == 0.0


def test_layer_scope_prunes_each_layer_at_the_sparsity():
    model = _net()
    scores = {"0": torch.rand(5, 6), "2": torch.rand(4, 5)}
    prune.prune_by_scores(model, scores, 0.5, scope="layer")
    assert [r["zeros"] for r in prune.sparsity_report(model)] == [15, 10, 25]


def test_pruned_weights_stay_pruned_when_scores_change():
    model = _net()
    prune.prune_by_scores(model, {"0": torch.arange(30.0).reshape(5, 6), "2": torch.full((4, 5), 99.0)}, 0.2)
    first = prune.current_mask(model[0])
    prune.prune_by_scores(model, {"0": -torch.arange(30.0).reshape(5, 6), "2": torch.full((4, 5), 99.0)}, 0.4)
    second = prune.current_mask(model[0])
    assert not (second & ~first).any(), "a pruned weight came back"
    assert int((~second).sum()) == 20


def test_scores_are_validated_by_layer_name_and_shape():
    model = _net()
    good = {"0": torch.rand(5, 6), "2": torch.rand(4, 5)}
    with pytest.raises(KeyError, match="prunable layers"):
        prune.prune_by_scores(model, {"0": good["0"]}, 0.5)
    with pytest.raises(ValueError, match=r"scores\['2'\] has shape \(5, 4\)"):
        prune.prune_by_scores(model, {"0": good["0"], "2": torch.rand(5, 4)}, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        prune.prune_by_scores(model, {"0": good["0"], "2": torch.full((4, 5), float("nan"))}, 0.5)
    with pytest.raises(ValueError, match="sparsity must be a fraction"):
        prune.prune_by_scores(model, good, 1.0)
    with pytest.raises(ValueError, match="scope must be"):
        prune.prune_by_scores(model, good, 0.5, scope="row")


@pytest.mark.parametrize("kind", prune.SCHEDULES)
def test_schedules_rise_to_the_final_sparsity(kind):
    steps = prune.sparsity_schedule(0.9, 5, kind)
    assert len(steps) == 5 and steps == sorted(steps) and steps[-1] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        prune.sparsity_schedule(1.2, 5, kind)


def test_cubic_schedule_front_loads_the_pruning():
    assert prune.sparsity_schedule(0.8, 4, "cubic")[0] > prune.sparsity_schedule(0.8, 4, "linear")[0]


def test_iterative_prune_rescores_finetunes_and_reports_each_round():
    model = _net()
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    calls = []

    def finetune(m):
        calls.append(prune.sparsity_report(m)[-1]["sparsity"])
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        for _ in range(3):
            loss = nn.functional.cross_entropy(m(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def magnitude(m):
        return {n: mod.weight.detach().abs() for n, mod in prune.prunable_layers(m).items()}

    rows = prune.iterative_prune(
        model, magnitude, prune.sparsity_schedule(0.6, 3, "linear"), finetune=finetune,
        evaluate=lambda m: {"zeros": prune.sparsity_report(m)[-1]["zeros"]})
    assert calls == pytest.approx([0.2, 0.4, 0.6])
    assert [r["zeros"] for r in rows] == [10, 20, 30]
    with pytest.raises(ValueError, match="must not decrease"):
        prune.iterative_prune(_net(), magnitude, [0.5, 0.3])


def test_sparsity_report_and_its_table():
    model = _net()
    sparsify_(model, PruneConfig(sparsity=0.5))
    rows = prune.sparsity_report(model)
    assert [r["layer"] for r in rows] == ["0", "2", "total"]
    assert rows[-1] == {"layer": "total", "shape": (), "weights": 50, "zeros": 25, "sparsity": 0.5}
    assert "total" in prune.format_sparsity_report(model).splitlines()[-1]


def test_a_deep_copy_of_a_pruned_model_can_be_pruned_again_without_breaking_the_original():
    import copy

    model = _net()
    sparsify_(model, PruneConfig(sparsity=0.5))
    twin = copy.deepcopy(model)
    sparsify_(twin, PruneConfig(sparsity=0.8))
    x = torch.randn(3, 6)
    model(x), twin(x)
    assert prune.sparsity_of(model[0].weight) == 0.5 and prune.sparsity_of(twin[0].weight) == pytest.approx(0.8)


def test_replacing_a_mask_can_restore_weights():
    layer = nn.Linear(4, 4)
    prune.apply_mask(layer, torch.zeros(4, 4, dtype=torch.bool))
    prune.apply_mask(layer, torch.ones(4, 4, dtype=torch.bool))
    assert prune.sparsity_of(layer.weight) == 0.0
