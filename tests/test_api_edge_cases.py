"""Edge and bad inputs against the public API: each gets an error that names the problem, and a refused call
changes nothing. Property tests (hypothesis) keep whole classes of input fixed, not single examples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsity_lab import PruneConfig, sparsify_
from sparsity_lab.patterns.masks import nm_mask, parse_pattern, pattern_masks
from sparsity_lab.pruning import prune
from sparsity_lab.semi24 import layout as semi24
from sparsity_lab.training.masks import transposable_mask

SIGNED_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64]


def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    return ({k: v.clone() for k, v in model.state_dict().items()}, [type(m).__name__ for m in model.modules()])


def _unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[str]]) -> bool:
    after = _state(model)
    return after[1] == before[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])


@pytest.mark.parametrize("dtype", SIGNED_DTYPES)
def test_the_integer_minimum_ranks_as_the_largest_magnitude(dtype):
    weight = torch.tensor([[torch.iinfo(dtype).min, 1, 2, 3] * 4] * 4, dtype=dtype)  # abs() of the minimum wraps
    assert prune.magnitude_mask(weight, 0.5)[0].tolist() == [True, False, False, True] * 4
    assert semi24.prune(weight)[0].tolist() == [True, False, False, True] * 4
    tile = torch.ones(4, 4, dtype=dtype)
    tile[0, 0] = torch.iinfo(dtype).min
    assert transposable_mask(tile)[0, 0]


@given(st.integers(1, 6), st.integers(1, 3), st.sampled_from([(2, 4), (1, 4), (4, 8)]))
def test_nm_masks_need_whole_groups_and_say_so(rows, extra, nm):
    n, m = nm
    with pytest.raises(ValueError, match=f"not divisible by m={m}"):
        nm_mask(torch.randn(rows, m * 2 + extra), n, m)


@pytest.mark.parametrize(("mask", "error", "message"), [
    ([[True] * 4] * 4, TypeError, "mask must be a boolean torch.Tensor"),
    (torch.ones(4, 4), TypeError, "got a torch.float32 tensor"),
    (torch.ones(3, 4, dtype=torch.bool), ValueError, r"mask has shape \(3, 4\)"),
])
def test_masks_that_are_not_boolean_tensors_of_the_weights_shape_are_refused(mask, error, message):
    layer = nn.Linear(4, 4)
    before = _state(layer)
    with pytest.raises(error, match=message):
        prune.apply_mask(layer, mask)
    assert _unchanged(layer, before)


def test_a_module_without_the_weight_is_named():
    with pytest.raises(ValueError, match="module ReLU has no tensor 'weight'"):
        prune.apply_mask(nn.ReLU(), torch.ones(4, 4, dtype=torch.bool))


@pytest.mark.parametrize("sparsity", ["0.5", None, True, [0.5]])
def test_sparsity_of_the_wrong_type_is_named(sparsity):
    with pytest.raises(TypeError, match="sparsity must be a number"):
        prune.topk_mask(torch.randn(8), sparsity)


@pytest.mark.parametrize("call", [
    lambda m: pattern_masks(m, "2:4", None),
    lambda m: prune.prune_by_scores(m, {}, 0.5),
    lambda m: prune.iterative_prune(m, lambda _: {}, [0.5]),
])
def test_models_with_no_prunable_layer_are_named(call):
    with pytest.raises(ValueError, match="has no prunable layer"):
        call(nn.Sequential(nn.ReLU(), nn.Tanh()))


def test_a_bad_schedule_is_refused_before_the_first_round():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = _state(model)
    scorer = lambda m: {n: layer.weight.detach().abs() for n, layer in prune.prunable_layers(m).items()}  # noqa: E731
    with pytest.raises(ValueError, match="schedule must not decrease"):
        prune.iterative_prune(model, scorer, [0.5, 0.7, 0.6])
    with pytest.raises(ValueError, match=r"sparsity must be a fraction in \[0, 1\)"):
        prune.iterative_prune(model, scorer, [0.5, 1.5])
    assert _unchanged(model, before)


@pytest.mark.parametrize("spec", ["block 0x4", "block 2.5x2", "3:2", "4:4", "2:0", "diagonal"])
def test_bad_pattern_specs_are_refused_by_name(spec):
    with pytest.raises(ValueError, match="block|n|pattern|m"):
        parse_pattern(spec)


@given(st.integers(0, 2), st.floats(0.1, 0.9))
def test_a_refused_prune_leaves_every_layer_as_it_was(bad_layer, sparsity):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    with torch.no_grad():
        model[2 * bad_layer].weight[1, 1] = float("inf")
    before = _state(model)
    with pytest.raises(ValueError, match="nothing was changed"):
        sparsify_(model, PruneConfig(sparsity=sparsity))
    assert _unchanged(model, before) and not any(hasattr(m, "parametrizations") for m in model)


@pytest.mark.parametrize("config", ["semi24", "training"])
def test_layers_name_a_wrong_feature_count(config):
    from sparsity_lab import Semi24Config, Semi24TrainingConfig

    model = nn.Sequential(nn.Linear(128, 128))
    sparsify_(model, Semi24Config() if config == "semi24" else Semi24TrainingConfig())
    with pytest.raises(ValueError, match="128 features"):
        model(torch.randn(4, 100))


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e20, 1e300])
def test_repruning_keeps_pruned_weights_pruned_at_any_score_scale(scale):
    scores = torch.full((4, 4), scale, dtype=torch.float64)
    kept = torch.ones(4, 4, dtype=torch.bool)
    kept[3] = False  # the last row was pruned: with every score equal, the tie rule alone would keep it first
    mask = prune.masks_from_scores({"w": scores}, 0.5, "layer", keep_pruned={"w": kept})["w"]
    assert not (mask & ~kept).any() and int(mask.sum()) == 8
