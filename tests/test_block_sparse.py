"""Block-sparse storage (`formats.BSR` with square blocks, padding, block masks), BlockSparseLinear, the model swap and
the dispatcher (CPU paths; GPU ones marked)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsity_lab.block.layer import BLOCK_BACKENDS, DEFAULT_DISPATCHER, BlockKey, BlockSparseLinear
from sparsity_lab.dispatch import Dispatcher
from sparsity_lab.formats.matrices import BSR, block_view
from sparsity_lab.sparsify import BlockSparseConfig, sparsify_


def block_sparse_weight(rows: int, cols: int, bs: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(-(-rows // bs), -(-cols // bs), generator=g) < density
    mask = keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:rows, :cols]
    return torch.randn(rows, cols, generator=g) * mask


@given(rows=st.integers(1, 40), cols=st.integers(1, 40), bs=st.sampled_from([1, 2, 4, 8, 16]),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 10**6))
def test_round_trip_with_padding_is_exact(rows, cols, bs, density, seed):
    w = block_sparse_weight(rows, cols, bs, density, seed)
    bsr = BSR.from_dense(w, bs, index_dtype=torch.int32, pad=True)
    assert bsr.shape == (-(-rows // bs) * bs, -(-cols // bs) * bs) and bsr.block_size == bs
    assert torch.equal(bsr.to_dense()[:rows, :cols], w) and not bsr.to_dense()[rows:].any()
    assert not bsr.to_dense()[:, cols:].any()
    kept = (block_view(w, bs, pad=True) != 0).flatten(2).any(-1)
    assert bsr.n_blocks == int(kept.sum())
    assert bsr.density == pytest.approx(kept.float().mean().item())
    assert bsr.crow_indices.dtype == bsr.col_indices.dtype == torch.int32


def test_layout_is_block_rows_with_ascending_columns():
    w = torch.zeros(4, 6)
    w[0:2, 4:6] = 1.0
    w[0:2, 0:2] = 2.0
    w[2:4, 2:4] = 3.0
    bsr = BSR.from_dense(w, 2)
    assert bsr.crow_indices.tolist() == [0, 2, 3]
    assert bsr.col_indices.tolist() == [0, 2, 1]
    assert bsr.values[:, 0, 0].tolist() == [2.0, 1.0, 3.0]


def test_shape_not_a_multiple_of_the_block_is_refused_without_padding():
    with pytest.raises(ValueError, match=r"does not divide shape \(8, 10\): dim 1 .*pad=True"):
        BSR.from_dense(torch.randn(8, 10), 4)
    with pytest.raises(ValueError, match=r"does not divide shape \(8, 10\): dim 1 .*pad=True"):
        BlockSparseLinear.from_linear(nn.Linear(10, 8), 4)
    assert BlockSparseLinear.from_linear(nn.Linear(10, 8), 4, pad=True).values.shape[1:] == (4, 4)


def test_block_mask_keeps_exactly_the_chosen_blocks_even_if_zero():
    w = torch.zeros(4, 4)
    mask = torch.tensor([[True, False], [False, False]])
    bsr = BSR.from_dense(w, 2, block_mask=mask)
    assert bsr.n_blocks == 1 and bsr.col_indices.tolist() == [0]
    with pytest.raises(ValueError, match=r"block_mask must be one bool per block, \(2, 2\), got \(3, 3\)"):
        BSR.from_dense(w, 2, block_mask=torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta")
def test_interoperates_with_torch_sparse_bsr():
    w = block_sparse_weight(32, 48, 8, 0.4)
    ours = BSR.from_dense(w, 8, index_dtype=torch.int32)
    theirs = w.to_sparse_bsr((8, 8))
    assert torch.equal(ours.to_torch().to_dense(), w)
    back = BSR.from_torch(theirs)
    assert torch.equal(back.to_dense(), w)
    assert back.n_blocks == theirs.values().shape[0] and back.block_size == 8
    layer = BlockSparseLinear(back)  # torch's int64 indices, stored as the kernel's int32
    assert layer.crow_indices.dtype == layer.col_indices.dtype == torch.int32
    assert torch.equal(layer.dense_weight(), w)


def test_inconsistent_arrays_are_refused():
    bsr = BSR.from_dense(block_sparse_weight(8, 8, 4, 1.0), 4, index_dtype=torch.int32)
    with pytest.raises(ValueError, match="col_indices out of range"):
        BSR(bsr.crow_indices, bsr.col_indices + 5, bsr.values, bsr.shape)
    with pytest.raises(ValueError, match="crow_indices must have 3 entries"):
        BSR(bsr.crow_indices[:2], bsr.col_indices, bsr.values, bsr.shape)


def _two_blocks_in_row_0(col: list[int], crow: list[int]) -> BSR:
    """A 4 x 8 matrix of 2 x 2 blocks (2 block rows, 4 block columns), two stored blocks, arrays as given."""
    return BSR(torch.tensor(crow, dtype=torch.int32), torch.tensor(col, dtype=torch.int32), torch.ones(2, 2, 2),
               (4, 8))


def test_duplicate_blocks_and_decreasing_row_pointers_are_refused_on_the_block_sparse_path():
    assert BlockSparseLinear(_two_blocks_in_row_0([0, 1], [0, 2, 2])).n_blocks == 2  # well formed
    with pytest.raises(ValueError, match="row 0 has column 1 twice"):
        BlockSparseLinear(_two_blocks_in_row_0([1, 1], [0, 2, 2]))
    with pytest.raises(ValueError, match="column 0 after column 1"):
        BlockSparseLinear(_two_blocks_in_row_0([1, 0], [0, 2, 2]))
    with pytest.raises(ValueError, match="crow_indices must not decrease"):
        BlockSparseLinear(BSR(torch.tensor([0, 3, 2], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32),
                              torch.ones(2, 2, 2), (4, 8)))
    layer = BlockSparseLinear(_two_blocks_in_row_0([0, 1], [0, 2, 2]))
    layer.col_indices[1] = 0  # corrupted in place after construction: caught when the dense weight is rebuilt
    with pytest.raises(ValueError, match="column 0 twice"):
        layer.dense_weight()


def test_the_layer_takes_a_square_block_bsr_of_its_padded_shape():
    with pytest.raises(TypeError, match="formats.BSR"):
        BlockSparseLinear(torch.randn(8, 8))
    with pytest.raises(ValueError, match="not square"):
        BlockSparseLinear(BSR.from_dense(torch.randn(8, 8), (2, 4)))
    with pytest.raises(ValueError, match="out_features=3 does not fit a weight of 8 in blocks of 4"):
        BlockSparseLinear(BSR.from_dense(torch.randn(8, 8), 4), shape=(3, 8))
    layer = BlockSparseLinear(BSR.from_dense(torch.randn(8, 8), 4, pad=True), shape=(6, 7))
    assert (layer.out_features, layer.in_features) == (6, 7) and layer.dense_weight().shape == (6, 7)


def test_linear_matches_nn_linear_on_cpu():
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    with torch.no_grad():
        linear.weight.copy_(block_sparse_weight(32, 48, 16, 0.5, seed=3))
    layer = BlockSparseLinear.from_linear(linear, 16)
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        assert torch.allclose(layer(x), linear(x), atol=1e-6)
    assert layer.density == pytest.approx(BSR.from_dense(linear.weight, 16).density)
    assert "block_size=16" in repr(layer)


def test_gradients_reach_the_input_through_the_dense_path():
    linear = nn.Linear(16, 16)
    layer = BlockSparseLinear.from_linear(linear, 8, backend="auto")
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, linear.weight.detach().sum(0).expand(4, -1), atol=1e-6)


def test_wrong_feature_count_and_backend_are_refused():
    layer = BlockSparseLinear.from_linear(nn.Linear(16, 16), 8)
    with pytest.raises(ValueError, match="expects 16"):
        layer(torch.randn(2, 15))
    with pytest.raises(ValueError, match="backend must be one of"):
        BlockSparseLinear.from_linear(nn.Linear(16, 16), 8, backend="cusparse")


def test_auto_answers_dense_on_cpu_without_measuring():
    dispatcher = Dispatcher()
    layer = BlockSparseLinear.from_linear(nn.Linear(16, 16), 8, dispatcher=dispatcher)
    assert layer.choose_backend(torch.randn(4, 16)) == "dense" and dispatcher.decisions == {}
    assert "auto" in BLOCK_BACKENDS and (DEFAULT_DISPATCHER.margin, DEFAULT_DISPATCHER.reps) == (1.0, 10)
    assert layer.dispatch_key(torch.randn(5, 16)) == BlockKey("cpu", "torch.float32", 8, 16, 16, 8, 4)


def test_swap_replaces_only_block_sparse_layers_and_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[2].weight.copy_(block_sparse_weight(64, 64, 16, 0.25, seed=1) + 0.0)
    x = torch.randn(7, 32)
    with torch.no_grad():
        before = model(x)
    report = sparsify_(model, BlockSparseConfig(16, max_density=0.7))
    assert report.changed == ["2"], "only the block-sparse middle layer qualifies (dense first, 10 outputs last)"
    assert "above max_density" in report["0"].what and "not a multiple of block 16" in report["4"].what
    assert isinstance(model[2], BlockSparseLinear)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.gpu
def test_dispatcher_picks_a_backend_and_outputs_agree_on_gpu():
    w = block_sparse_weight(2048, 2048, 64, 0.1).half().cuda()
    dispatcher = Dispatcher(margin=1.0, reps=3)
    layer = BlockSparseLinear(BSR.from_dense(w, 64), dispatcher=dispatcher)
    x = torch.randn(1024, 2048, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        y = layer(x)
    decision = dispatcher.decisions[layer.dispatch_key(x)]
    assert decision.choice in ("tma", "pointer", "dense") and {"pointer", "dense"} <= set(decision.timings)
    assert dispatcher.table()[0]["choice"] == decision.choice
    ref = x.double() @ w.double().T
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-3


def test_heatmap_plot_and_curves_from_recorded_results():
    from sparsity_lab.block import plots
    from sparsity_lab.course.results import load_results

    rows = load_results("block_sparse_gpu").figures["heatmap"]
    fig = plots.speedup_heatmap(rows)
    heat = fig.data[0]
    assert list(heat.y) == ["16", "32", "64", "128"] and "90%" in list(heat.x)
    row = next(r for r in rows if r["bs"] == 64 and r["sparsity"] == 0.9)
    column = list(heat.x).index("90%")
    assert 2 ** heat.z[2][column] == pytest.approx(row["speedup"]) and heat.text[2][column] == f"{row['speedup']:.2f}x"
    assert heat.colorbar.ticktext[0] == "0.125x" and heat.zmid == 0  # log2 colours: no negative "x dense" ticks
    curves = plots.speedup_curves(rows)
    assert curves.data[-1].name == "ideal 1/density"
    assert len(curves.data) == 2 * 4 + 1


def test_recorded_results_hold_checked_numbers():
    """The shipped GPU file: every correctness case passed, every cell agrees with its reference."""
    from sparsity_lab.course.results import load_results

    res = load_results("block_sparse_gpu")
    figures = res.figures
    assert "H100" in res.environment["device"]
    assert figures["correctness"] and all(r["ok"] for r in figures["correctness"])
    assert {(r["bs"], r["sparsity"]) for r in figures["heatmap"]} >= {(64, 0.9), (32, 0.9), (64, 0.5)}
    for r in figures["heatmap"]:
        assert r["relerr"] < 2e-3 and r["speedup"] == pytest.approx(r["dense_ms"] / r["ours_ms"])
