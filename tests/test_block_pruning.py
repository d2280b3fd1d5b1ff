"""Block saliency, block masks, learned (supermask) block masks with a straight-through top-k, the sweep."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsity_lab.block import pruning as bp
from sparsity_lab.course.data import load_digits
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.course.train import fit
from sparsity_lab.pruning.prune import make_permanent


def blocks_all_or_nothing(mask: torch.Tensor, bs: int) -> bool:
    r, c = mask.shape
    blocks = mask.reshape(r // bs, bs, c // bs, bs).permute(0, 2, 1, 3).reshape(r // bs, c // bs, -1)
    return bool((blocks.all(-1) | ~blocks.any(-1)).all())


@pytest.mark.parametrize("norm, reduce", [("l1", lambda b: b.abs().sum()), ("l2", lambda b: b.norm())])
def test_block_scores_are_block_norms(norm, reduce):
    w = torch.randn(12, 8)
    scores = bp.block_scores(w, 4, norm)
    assert scores.shape == (3, 2)
    assert scores[2, 1].item() == pytest.approx(reduce(w[8:12, 4:8]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="norm must be one of"):
        bp.block_scores(w, 4, "linf")


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.75, 0.95])
def test_block_mask_drops_whole_low_norm_blocks(sparsity):
    w = torch.randn(32, 64)
    mask = bp.block_mask(w, 8, sparsity)
    assert blocks_all_or_nothing(mask, 8)
    n_blocks = 4 * 8
    assert int((~mask).sum()) == round(sparsity * n_blocks) * 64
    scores = bp.block_scores(w, 8)
    kept = mask[::8, ::8]
    if 0 < sparsity:
        assert scores[kept].min() >= scores[~kept].max()


def test_prune_blocks_masks_only_layers_made_of_whole_blocks():
    model = DigitsMLP(hidden=32)
    masks = bp.prune_blocks(model, 16, 0.5)
    assert sorted(masks) == ["net.1", "net.3"], "the 10-output head is not a multiple of 16"
    for name, mask in masks.items():
        weight = dict(model.named_modules())[name].weight
        assert torch.equal(weight != 0, mask & (weight != 0)) and blocks_all_or_nothing(weight != 0, 16)
    with pytest.raises(ValueError, match="candidates"):
        bp.prune_blocks(model, 16, 0.5, layers=["net.5"])


def test_straight_through_topk_passes_gradients_to_every_score():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.2], requires_grad=True)
    mask = bp._TopKStraightThrough.apply(scores, 0.5)
    assert mask.tolist() == [0.0, 1.0, 1.0, 0.0]
    (mask * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert scores.grad.tolist() == [1.0, 2.0, 3.0, 4.0], "dropped entries get gradients too (straight-through)"


def test_supermask_learns_scores_and_hardens_to_block_masks():
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsMLP(hidden=32)
    fit(model, data, epochs=2, progress=False)
    attached = bp.attach_block_supermasks(model, 8, 0.75)
    before = {n: sm.scores.detach().clone() for n, sm in attached.items()}
    fit(model, data, epochs=2, progress=False)
    assert any(not torch.equal(before[n], sm.scores.detach()) for n, sm in attached.items()), "scores must train"
    masks = bp.harden_supermasks(model)
    assert sorted(masks) == ["net.1", "net.3"]
    for mask in masks.values():
        assert blocks_all_or_nothing(mask, 8)
        assert float((~mask).float().mean()) == pytest.approx(0.75)
    make_permanent(model)
    assert float((model.net[3].weight == 0).float().mean()) >= 0.75


def test_learn_block_masks_reaches_the_sparsity_and_beats_chance():
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsMLP(hidden=32)
    fit(model, data, epochs=5, lr=1e-2, progress=False)
    bp.learn_block_masks(model, data, 8, 0.5, epochs=2, lr=1e-2)
    from sparsity_lab.course.train import evaluate

    assert evaluate(model, data.x_test, data.y_test)[1] > 0.8
    assert float((model.net[1].weight == 0).float().mean()) >= 0.5


def test_accuracy_vs_block_size_rows():
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsMLP(hidden=32)
    fit(model, data, epochs=5, lr=1e-2, progress=False)
    rows = bp.accuracy_vs_block_size(model, data, [1, 8], 0.5, methods=("l2", "learned"), epochs=1, lr=1e-2)
    assert [(r["method"], r["block_size"]) for r in rows] == [("l2", 1), ("l2", 8), ("learned", 1), ("learned", 8)]
    for r in rows:
        assert r["sparsity"] == pytest.approx(0.5) and 0 <= r["accuracy"] <= 1 and 0.7 < r["finetuned_accuracy"] <= 1
    assert isinstance(model.net[1], nn.Linear) and not hasattr(model.net[1], "parametrizations"), "model untouched"
    with pytest.raises(ValueError, match="methods must be"):
        bp.accuracy_vs_block_size(model, data, [8], 0.5, methods=("random",))


def test_accuracy_plot_carries_the_rows():
    from sparsity_lab.block import plots

    rows = [dict(method="l2", block_size=bs, accuracy=0.5, finetuned_accuracy=0.9 - bs / 100) for bs in (1, 4, 16)]
    fig = plots.accuracy_vs_block_size(rows)
    finetuned, one_shot = fig.data
    assert list(finetuned.x) == [1, 4, 16] and list(finetuned.y) == pytest.approx([89.0, 86.0, 74.0])
    assert list(one_shot.y) == pytest.approx([50.0] * 3)


def test_explorer_reacts_to_its_controls():
    from sparsity_lab.block.widgets import block_pruning_explorer

    torch.manual_seed(0)
    data = load_digits()
    model = DigitsMLP(hidden=32)
    fit(model, data, epochs=2, lr=1e-2, progress=False)
    box = block_pruning_explorer(model, data, layer="net.3", block_sizes=(1, 8))
    (size, sparsity), status, heatmap = box.children[0].children, box.children[1], box.children[3]
    size.value, sparsity.value = 8, 0.5
    assert "8x8" in status.value and "50%" in status.value
    assert heatmap.data[0].z.mean() == pytest.approx(0.5) and box.errors.error is None
