"""2:4 training: transposable masks, the autograd Function (STE, SR-STE), the layer, digits and DDP."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.semi24.layout import prune as prune_rows
from sparsity_lab.sparsify import Semi24TrainingConfig, sparsify_
from sparsity_lab.training.layer import (
    Semi24TrainingLinear,
    SparseMLP,
    sparse24_layers,
    sparse24_linear,
    to_dense_linears,
)
from sparsity_lab.training.masks import is_24, is_transposable_24, tile_patterns, transposable_mask


def test_there_are_90_tile_patterns_each_2_per_row_and_column():
    patterns = tile_patterns().reshape(-1, 4, 4)
    assert patterns.shape[0] == 90 == len({tuple(p.flatten().tolist()) for p in patterns})
    assert (patterns.sum(1) == 2).all() and (patterns.sum(2) == 2).all()


@given(rows=st.integers(1, 4), cols=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_transposable_mask_is_24_both_ways_and_the_best_tile(rows, cols, seed):
    weight = torch.randn(4 * rows, 4 * cols, generator=torch.Generator().manual_seed(seed))
    mask = transposable_mask(weight)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert is_transposable_24(mask) and mask.sum() == weight.numel() // 2
    # brute force: no 4x4 pattern with two per row and column keeps more magnitude in any tile
    row_choices = [r for r in itertools.product((0, 1), repeat=4) if sum(r) == 2]
    for i, j in itertools.product(range(rows), range(cols)):
        tile = weight[4 * i:4 * i + 4, 4 * j:4 * j + 4].abs().double()
        kept = float((tile * mask[4 * i:4 * i + 4, 4 * j:4 * j + 4]).sum())
        best = max(float((tile * torch.tensor(p, dtype=torch.float64)).sum())
                   for p in itertools.product(row_choices, repeat=4)
                   if all(sum(c) == 2 for c in zip(*p, strict=True)))
        assert kept == pytest.approx(best, rel=1e-12)


def test_transposable_keeps_less_magnitude_than_plain_24_but_not_much():
    weight = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    plain = float((weight.abs() * prune_rows(weight)).sum())
    both = float((weight.abs() * transposable_mask(weight)).sum())
    assert 0.9 * plain < both < plain


def test_masks_refuse_bad_shapes_and_values():
    with pytest.raises(ValueError, match="multiples of 4"):
        transposable_mask(torch.randn(6, 8))
    with pytest.raises(ValueError, match="2-D"):
        transposable_mask(torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        transposable_mask(torch.tensor([[float("nan"), 1, 2, 3]] * 4))
    with pytest.raises(ValueError, match="transpose must be one of"):
        Semi24TrainingLinear(8, 8, transpose="sideways")
    for transpose in ("transposable", "recompress"):  # recompress prunes Wᵀ along the outputs: 4 | out_features
        with pytest.raises(ValueError, match="multiples of 4"):
            Semi24TrainingLinear(8, 10, transpose=transpose)
    with pytest.raises(ValueError, match="srste_decay"):
        Semi24TrainingLinear(8, 8, srste_decay=-1.0)


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(8, 12, generator=g, dtype=torch.float64))
    bias = nn.Parameter(torch.randn(8, generator=g, dtype=torch.float64))
    x = torch.randn(5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    return weight, bias, x, transposable_mask(weight)


def test_forward_and_input_gradient_are_those_of_the_masked_weight():
    weight, bias, x, mask = _case()
    assert torch.autograd.gradcheck(lambda x, b: sparse24_linear(x, weight, b, mask), (x, bias))
    y = sparse24_linear(x, weight, bias, mask)
    torch.testing.assert_close(y, x @ (weight * mask).T + bias, rtol=0, atol=1e-12)


def test_weight_gradient_is_straight_through_and_srste_decays_the_pruned():
    weight, bias, x, mask = _case(1)
    grad_y = torch.randn(5, 8, dtype=torch.float64)
    sparse24_linear(x, weight, bias, mask).backward(grad_y)
    straight = grad_y.T @ x.detach()
    torch.testing.assert_close(weight.grad, straight)  # pruned entries get their gradient too
    assert (weight.grad[~mask] != 0).all()
    weight.grad = None
    sparse24_linear(x, weight, bias, mask, srste_decay=0.5).backward(grad_y)
    torch.testing.assert_close(weight.grad, straight + 0.5 * weight.detach() * ~mask)


def test_recompress_mode_uses_a_24_transpose_for_the_input_gradient():
    weight, bias, x, _ = _case(2)
    mask = prune_rows(weight.detach())
    grad_y = torch.randn(5, 8, dtype=torch.float64)
    sparse24_linear(x, weight, bias, mask, transpose="recompress").backward(grad_y)
    weight_t = (weight.detach() * mask).T
    weight_t = weight_t * prune_rows(weight_t)  # the transpose, pruned again to 2:4 along its rows
    assert is_24(weight_t)
    torch.testing.assert_close(x.grad, grad_y @ weight_t.T)


def test_layer_accepts_batches_of_sequences():
    layer = Semi24TrainingLinear(16, 8)
    x = torch.randn(2, 3, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 3, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_dynamic_mask_follows_the_weights_and_fixed_mask_does_not():
    torch.manual_seed(0)
    dynamic, fixed = Semi24TrainingLinear(32, 32), Semi24TrainingLinear(32, 32, mask="fixed")
    fixed.load_state_dict(dynamic.state_dict())
    start = dynamic.mask.clone()
    for layer in (dynamic, fixed):
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        for _ in range(5):
            layer(torch.randn(64, 32)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
        layer(torch.randn(1, 32))  # the next training forward sees the updated weight
    assert not torch.equal(dynamic.mask, start) and torch.equal(fixed.mask, start)
    for layer in (dynamic, fixed):
        assert is_transposable_24(layer.sparse_weight())
        assert torch.equal(layer.mask, transposable_mask(layer.weight)) == (layer is dynamic)


def test_gradient_accumulation_keeps_each_forwards_weight():
    torch.manual_seed(0)
    layer = Semi24TrainingLinear(16, 8, mask="fixed", bias=False)
    x1, x2 = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    y1 = layer(x1)
    w1 = layer.sparse_weight()
    with torch.no_grad():  # a new mask between the two forwards, before either backward
        layer.mask.copy_(transposable_mask(torch.randn(8, 16)))
    y2 = layer(x2)
    (y1.sum() + y2.sum()).backward()
    torch.testing.assert_close(x1.grad, torch.ones(4, 8) @ w1)
    torch.testing.assert_close(x2.grad, torch.ones(4, 8) @ layer.sparse_weight())


def test_dynamic_mask_is_computed_once_per_weight_update():
    layer = Semi24TrainingLinear(16, 16)
    x = torch.randn(4, 16)
    layer(x)
    version = layer.mask._version
    layer(x)  # a second forward on the same weight (gradient accumulation): no new mask
    assert layer.mask._version == version
    with torch.no_grad():
        layer.weight.add_(torch.randn(16, 16))
    layer(x)
    assert layer.mask._version > version
    assert torch.equal(layer.mask, transposable_mask(layer.weight))


def test_forward_follows_weight_updates_in_eval_mode():
    layer = Semi24TrainingLinear(16, 8, mask="fixed").eval()
    x = torch.randn(3, 16)
    layer(x)
    with torch.no_grad():
        layer.weight.mul_(3)  # an optimizer-like in-place update
    torch.testing.assert_close(layer(x), F.linear(x, layer.sparse_weight(), layer.bias))


def test_eval_forward_does_not_move_the_mask():
    layer = Semi24TrainingLinear(16, 16).eval()
    with torch.no_grad():
        layer.weight.mul_(-1).add_(torch.randn(16, 16))
    before = layer.mask.clone()
    layer(torch.randn(3, 16))
    assert torch.equal(layer.mask, before)


def test_swap_and_export_keep_what_the_model_computes():
    torch.manual_seed(0)
    model = DigitsMLP(hidden=64)
    report = sparsify_(model, Semi24TrainingConfig(), filter_fn=lambda m, fqn: fqn != "net.5")
    assert report.changed == ["net.1", "net.3"] and set(sparse24_layers(model)) == {"net.1", "net.3"}
    x = torch.randn(7, 64)
    with torch.no_grad():
        y = model(x)
        assert to_dense_linears(model) == ["net.1", "net.3"]
        torch.testing.assert_close(model(x), y)
    assert is_transposable_24(model.net[1].weight)


def test_the_cusparselt_backend_says_why_it_cannot_run_here():
    layer = Semi24TrainingLinear(16, 16, backend="cusparselt")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA weight"):
        layer(torch.randn(2, 16))
    assert Semi24TrainingLinear(16, 16).backend().name == "dense"


@pytest.mark.slow
def test_digits_from_scratch_stays_within_one_point_of_dense():
    from sparsity_lab.training.study import finetune_into_sparse, train_dense, train_sparse_from_scratch

    dense, model = train_dense(0, epochs=20)
    sparse = train_sparse_from_scratch(0, epochs=20)
    assert sparse.layers_24 == ["net.1", "net.3"]
    assert dense.final_accuracy > 0.95
    assert sparse.final_accuracy > dense.final_accuracy - 0.01
    tuned = finetune_into_sparse(model, 0, epochs=3)
    assert tuned.final_accuracy > dense.final_accuracy - 0.015
    assert sparse.train_loss[-1] < sparse.train_loss[0] / 5


@pytest.mark.slow
def test_ddp_on_gloo_keeps_ranks_identical_and_learns():
    from sparsity_lab.training.distributed import run_ddp

    result = run_ddp(world_size=2, steps=25)
    assert result["identical_weights"] and result["identical_masks"]
    assert result["mask_entries_flipped"] > 0  # the masks really moved, identically on both ranks
    losses = result["losses"]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


# ------------------------------------------------------------------------------------------------- GPU
def _gpu_case(dtype, transpose="transposable"):
    torch.manual_seed(0)
    layer = Semi24TrainingLinear(256, 512, transpose=transpose, backend="cusparselt", device="cuda", dtype=dtype)
    reference = Semi24TrainingLinear(256, 512, transpose=transpose, backend="dense", device="cuda", dtype=torch.float32)
    reference.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in layer.state_dict().items()})
    return layer, reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("transpose", ["transposable", "recompress"])
def test_cusparselt_backend_matches_the_dense_reference(dtype, transpose):
    from sparsity_lab.checks import relative_error

    layer, reference = _gpu_case(dtype, transpose)
    x = torch.randn(128, 256, device="cuda", dtype=dtype, requires_grad=True)
    x_ref = x.detach().float().requires_grad_()
    grad = torch.randn(128, 512, device="cuda", dtype=dtype)
    y, y_ref = layer(x), reference(x_ref)
    y.backward(grad)
    y_ref.backward(grad.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert layer.backend().name == "cusparselt"
    assert relative_error(y, y_ref) < tol
    assert relative_error(x.grad, x_ref.grad) < tol
    assert relative_error(layer.weight.grad, reference.weight.grad) < tol
    assert relative_error(layer.bias.grad, reference.bias.grad) < tol


@pytest.mark.gpu
def test_cusparselt_training_steps_recompress_in_place():
    layer, _ = _gpu_case(torch.float16)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    pointers = set()
    for _ in range(4):
        x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
        layer(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        pointers.add(layer.backend().forward_weight.compressed.data_ptr())
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected = x.float() @ layer.sparse_weight().float().T + layer.bias.float()
        torch.testing.assert_close(layer(x).float(), expected, rtol=1e-2, atol=1e-2)
    assert len(pointers) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fixed_mask_steps_write_cusparselts_own_bytes_by_gather(dtype):
    from sparsity_lab.semi24.cusparselt import Semi24Weight

    torch.manual_seed(0)
    layer = Semi24TrainingLinear(256, 512, mask="fixed", backend="cusparselt", device="cuda", dtype=dtype)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        x = torch.randn(64, 256, device="cuda", dtype=dtype)
        layer(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    layer(torch.randn(64, 256, device="cuda", dtype=dtype))  # loads the stepped weight
    backend = layer.backend()
    assert backend.slots_error is None and backend._slots is not None  # the gather path ran
    weight_s = layer.sparse_weight()
    x = torch.randn(64, 256, device="cuda", dtype=dtype)
    grad_y = torch.randn(64, 512, device="cuda", dtype=dtype)
    for gathered, dense, operand in ((backend.forward_weight, weight_s, x),
                                     (backend.backward_weight, weight_s.T.contiguous(), grad_y)):
        compressed = Semi24Weight.from_dense(dense)
        values = weight_s.numel()  # bytes of the kept values (2 bytes each, half the entries kept): the slots
        assert torch.equal(gathered.compressed[:values], compressed.compressed[:values])
        # metadata: cuSPARSELt's compress of random weights was seen to write one byte differently from the
        # mask's (2 of 8 4M-entry weights; docs/performance/sparse_training.md, "Value slots"), with identical products
        assert torch.equal(gathered.linear(operand), compressed.linear(operand))
    x = torch.randn(64, 256, device="cuda", dtype=dtype, requires_grad=True)
    layer(x).float().sum().backward()
    torch.testing.assert_close(x.grad.float(), torch.ones(64, 512, device="cuda") @ weight_s.float(),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_cusparselt_backend_takes_any_token_count():
    layer, reference = _gpu_case(torch.float16)
    x = torch.randn(3, 256, device="cuda", dtype=torch.float16, requires_grad=True)  # 3: not a multiple of 8
    y = layer(x)
    y.float().sum().backward()
    torch.testing.assert_close(y.float(), reference(x.detach().float()), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad.float(), torch.ones(3, 512, device="cuda") @ layer.sparse_weight().float(),
                               rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
def test_sparse_mlp_block_trains_on_the_gpu():
    torch.manual_seed(0)
    mlp = SparseMLP(256, 1024, sparse=True, backend="cusparselt", device="cuda", dtype=torch.float16)
    x = torch.randn(512, 256, device="cuda", dtype=torch.float16)
    target = torch.randn(512, 256, device="cuda", dtype=torch.float16)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, eps=1e-4)
    losses = []
    for _ in range(30):
        loss = (mlp(x).float() - target.float()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0]


def test_readme_training_quick_start_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### 2:4 training\s*```python\n(.+?)\n```", readme, re.DOTALL)
    assert block, "README.md must keep the 2:4 training quick start"
    namespace: dict = {}
    exec(compile(block.group(1), "README 2:4 training", "exec"), namespace)
    assert namespace["is_transposable_24"](namespace["model"].net[1].weight)
    assert isinstance(namespace["model"].net[1], nn.Linear)
