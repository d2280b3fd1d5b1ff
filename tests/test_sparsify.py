"""`sparsify_`: one entry point for every technique, all or nothing, with a report for every layer it could take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsity_lab import (
    BlockSparseConfig,
    Int8Config,
    PruneConfig,
    Semi24Config,
    Semi24TrainingConfig,
    sparsify_,
)
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.patterns.masks import is_nm
from sparsity_lab.pruning.prune import current_mask, sparsity_of
from sparsity_lab.training.masks import is_transposable_24

CONFIGS = [PruneConfig(sparsity=0.5), PruneConfig(pattern="2:4"), Semi24Config(), Int8Config(),
           BlockSparseConfig(16, max_density=1.0), Semi24TrainingConfig()]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16))


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [f"{name}:{type(m).__name__}" for name, m in model.named_modules()])


def test_docstring_example():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    report = sparsify_(model, PruneConfig(sparsity=0.5, pattern="2:4"), lambda m, fqn: fqn != "2")
    assert str(report) == "0  pruned: 2:4 by magnitude\n2  left as it is: filter_fn"
    assert is_nm(model[0].weight, 2, 4) and sparsity_of(model[2].weight) == 0.0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_nan_in_a_later_layer_changes_nothing(config):
    model = _model()
    with torch.no_grad():
        model[2].weight[3, 5] = float("nan")
    before = _snapshot(model)
    with pytest.raises(ValueError, match="layer '2'.*NaN.*nothing was changed"):
        sparsify_(model, config)
    after = _snapshot(model)
    assert after[1] == before[1]
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k].nan_to_num(), after[0][k].nan_to_num()) for k in before[0])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_candidate_is_reported_and_the_filter_is_respected(config):
    model = _model()
    report = sparsify_(model, config, filter_fn=lambda module, fqn: fqn != "2")
    assert list(report) == ["0", "2", "4"]
    assert report["2"].what == "left as it is: filter_fn" and "2" not in report.changed
    assert type(model[2]) is nn.Linear and not torch.nn.utils.parametrize.is_parametrized(model[2])
    assert "0" in report.changed


def test_2_4_and_training_configs_give_their_patterns():
    model = DigitsMLP(hidden=64)
    sparsify_(model, Semi24TrainingConfig(), filter_fn=lambda m, fqn: fqn != "net.5")
    assert is_transposable_24(model.net[1].sparse_weight())
    pruned = _model()
    sparsify_(pruned, PruneConfig(pattern="4:8"))
    assert all(is_nm(current_mask(pruned[i]), 4, 8) for i in (0, 2, 4))


def test_repeated_pruning_keeps_what_was_pruned():
    model = _model()
    sparsify_(model, PruneConfig(sparsity=0.5))
    first = current_mask(model[0]).clone()
    with torch.no_grad():  # make the pruned weights' underlying values the largest: they must stay pruned
        model[0].parametrizations.weight.original.mul_(torch.where(first, 1.0, 1e6))
    sparsify_(model, PruneConfig(sparsity=0.75))
    second = current_mask(model[0])
    assert not (second & ~first).any() and sparsity_of(model[0].weight) == 0.75


def test_global_scope_spends_one_budget():
    model = _model()
    report = sparsify_(model, PruneConfig(sparsity=0.9, scope="global"))
    total = sum(m.weight.numel() for m in (model[0], model[2], model[4]))
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[2], model[4]))
    assert zeros == round(0.9 * total) and "global" in report["0"].what


@pytest.mark.parametrize(("config", "message"), [
    (PruneConfig(method="psychic"), "method must be one of"),
    (PruneConfig(scope="everywhere"), "scope must be 'layer' or 'global'"),
    (PruneConfig(pattern="2:4", scope="global"), "scope='global' needs the unstructured pattern"),
    (PruneConfig(sparsity=1.5), "sparsity"),
    (Semi24Config(backend="magic"), "backend must be one of"),
    (BlockSparseConfig(0), "block_size must be a positive int"),
    (BlockSparseConfig(16.0), "block_size must be a positive int"),
    (BlockSparseConfig(16, max_density=2.0), "max_density must be in"),
])
def test_bad_configs_are_refused_by_name_and_change_nothing(config, message):
    model = _model()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        sparsify_(model, config)
    after = _snapshot(model)
    assert after[1] == before[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_a_pattern_that_cannot_tile_a_layer_names_it_and_changes_nothing():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 6), nn.Linear(6, 3))
    before = _snapshot(model)
    with pytest.raises(ValueError, match="layer '2'"):
        sparsify_(model, PruneConfig(pattern="2:4"))
    assert _snapshot(model)[1] == before[1] and not torch.nn.utils.parametrize.is_parametrized(model[0])


def test_models_without_a_layer_and_non_configs_are_refused():
    with pytest.raises(ValueError, match="no layer that Semi24Config can take"):
        sparsify_(nn.Sequential(nn.ReLU()), Semi24Config())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sparsify_("model", Semi24Config())
    with pytest.raises(TypeError, match="config must be one of sparsity_lab's configs"):
        sparsify_(_model(), {"sparsity": 0.5})


def test_data_driven_methods_use_the_calibration_data():
    model = DigitsMLP(hidden=32)
    x = torch.randn(64, 64)
    y = torch.randint(0, 10, (64,))
    report = sparsify_(model, PruneConfig(sparsity=0.5, method="wanda", data=(x,)))
    assert "by wanda" in report["net.1"].what and sparsity_of(model.net[1].weight) == 0.5
    with pytest.raises(ValueError, match="needs data"):
        sparsify_(DigitsMLP(hidden=32), PruneConfig(method="obd-ggn"))
    sparsify_(DigitsMLP(hidden=32), PruneConfig(method="obd-ggn", data=(x, y)))


def test_sparsegpt_through_the_entry_point_prunes_and_updates_the_kept_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(256, 32)
    dense = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    report = sparsify_(model, PruneConfig(pattern="2:4", method="sparsegpt", data=(x,)))
    assert report.changed == ["0", "2"] and "sparsegpt" in report["0"].what
    assert is_nm(model[0].weight, 2, 4) and is_nm(model[2].weight, 2, 4)
    kept = model[0].weight != 0
    assert not torch.equal(model[0].weight[kept], dense[0][kept])  # the OBS update moved the kept weights
    with pytest.raises(ValueError, match="needs data"):
        sparsify_(_model(), PruneConfig(pattern="2:4", method="sparsegpt"))
    with pytest.raises(ValueError, match="unmasked nn.Linear layers only"):
        sparsify_(model, PruneConfig(pattern="2:4", method="sparsegpt", data=(x,)))
