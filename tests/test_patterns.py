"""Sparsity patterns: exact counts, the structure each pattern promises, ties, and errors that name the problem."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsity_lab import PruneConfig, sparsify_
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.patterns.masks import (
    Pattern,
    block_mask,
    column_mask,
    global_unstructured_masks,
    is_block,
    is_nm,
    nm_mask,
    parse_pattern,
    pattern_masks,
    row_mask,
    unstructured_mask,
)
from sparsity_lab.pruning.prune import magnitudes, sparsity_of

sparsities = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)


def _scores(seed: int, shape: tuple[int, ...], ties: bool) -> torch.Tensor:
    """Random scores; with `ties`, only three distinct values, so tie-breaking is exercised."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, shape, generator=g).double() if ties else torch.rand(shape, generator=g)


@st.composite
def score_tensors(draw, min_dims: int = 1, max_dims: int = 3, multiple_of: tuple[int, ...] | None = None):
    dims = len(multiple_of) if multiple_of else draw(st.integers(min_dims, max_dims))
    if multiple_of:
        shape = tuple(draw(st.integers(1, 4)) * b for b in multiple_of)
    else:
        shape = tuple(draw(st.integers(1, 9)) for _ in range(dims))
    return _scores(draw(st.integers(0, 2**16)), shape, draw(st.booleans()))


@given(score_tensors(), sparsities)
def test_unstructured_drops_exactly_the_lowest_scores(scores, sparsity):
    mask = unstructured_mask(scores, sparsity)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert int((~mask).sum()) == round(sparsity * scores.numel())
    if mask.any() and (~mask).any():
        assert scores[mask].min() >= scores[~mask].max()


@given(st.lists(score_tensors(max_dims=2), min_size=1, max_size=3), sparsities)
def test_global_masks_spend_one_exact_budget_across_tensors(tensors, sparsity):
    scores = {f"layer{i}": t for i, t in enumerate(tensors)}
    masks = global_unstructured_masks(scores, sparsity)
    total = sum(t.numel() for t in tensors)
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    kept = torch.cat([scores[k][m] for k, m in masks.items()])
    dropped = torch.cat([scores[k][~m] for k, m in masks.items()])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


@given(st.data())
def test_nm_mask_keeps_exactly_n_of_every_m_along_the_dim(data):
    m = data.draw(st.integers(2, 8))
    n = data.draw(st.integers(1, m - 1))
    ndim = data.draw(st.integers(1, 3))
    dim = data.draw(st.integers(-ndim, ndim - 1))
    shape = [data.draw(st.integers(1, 4)) for _ in range(ndim)]
    shape[dim] *= m
    scores = _scores(data.draw(st.integers(0, 2**16)), tuple(shape), data.draw(st.booleans()))
    mask = nm_mask(scores, n, m, dim=dim)
    assert mask.shape == scores.shape
    groups = mask.movedim(dim, -1).reshape(-1, m)
    assert (groups.sum(-1) == n).all()
    assert is_nm(mask, n, m, dim=dim)
    if n > 1:
        assert not is_nm(mask, n - 1, m, dim=dim)
    values = scores.movedim(dim, -1).reshape(-1, m)
    kept_min = torch.where(groups, values, torch.inf).min(-1).values
    dropped_max = torch.where(~groups, values, -torch.inf).max(-1).values
    assert (kept_min >= dropped_max).all()
    assert sparsity_of(mask) == pytest.approx(1 - n / m)


@given(st.data())
def test_block_mask_drops_whole_blocks_exactly(data):
    block = tuple(data.draw(st.integers(1, 4)) for _ in range(data.draw(st.integers(1, 3))))
    scores = data.draw(score_tensors(multiple_of=block))
    sparsity = data.draw(sparsities)
    mask = block_mask(scores, sparsity, block)
    assert is_block(mask, block)
    block_numel = torch.Size(block).numel()
    n_blocks = scores.numel() // block_numel
    assert int((~mask).sum()) == round(sparsity * n_blocks) * block_numel
    assert parse_pattern("block " + "x".join(map(str, block))).achieved_sparsity(scores.shape, sparsity) == (
        pytest.approx(sparsity_of(mask))
    )


@given(score_tensors(min_dims=2), sparsities)
def test_row_and_column_masks_drop_whole_slices(scores, sparsity):
    rows, cols = row_mask(scores, sparsity), column_mask(scores, sparsity)
    row_kept = rows.reshape(scores.shape[0], -1)
    assert (row_kept.all(1) | ~row_kept.any(1)).all()
    assert int((~row_kept.all(1)).sum()) == round(sparsity * scores.shape[0])
    col_kept = cols.movedim(1, 0).reshape(scores.shape[1], -1)
    assert (col_kept.all(1) | ~col_kept.any(1)).all()
    assert int((~col_kept.all(1)).sum()) == round(sparsity * scores.shape[1])
    summed = scores.reshape(scores.shape[0], -1).sum(1)
    if row_kept.all(1).any() and (~row_kept.all(1)).any():
        assert summed[row_kept.all(1)].min() >= summed[~row_kept.all(1)].max()


@given(score_tensors(min_dims=2, max_dims=2), sparsities,
       st.sampled_from(["unstructured", "row", "column", "block 1x1"]))
def test_achieved_sparsity_is_what_the_mask_gets(scores, sparsity, spec):
    pattern = parse_pattern(spec)
    achieved = pattern.achieved_sparsity(scores.shape, sparsity)
    assert sparsity_of(pattern.mask(scores, sparsity)) == pytest.approx(achieved)


def test_ties_keep_the_lower_index():
    flat = torch.ones(8)
    assert nm_mask(flat, 2, 4).tolist() == [True, True, False, False] * 2
    assert row_mask(torch.ones(4, 2), 0.5).tolist() == [[True, True]] * 2 + [[False, False]] * 2
    blocks = block_mask(torch.ones(4, 4), 0.25, (2, 2))
    assert blocks[2:, 2:].logical_not().all() and int(blocks.sum()) == 12, "the last block (grid index 3) goes"
    assert unstructured_mask(flat, 0.25).tolist() == [True] * 6 + [False, False]
    assert column_mask(torch.ones(2, 4), 0.5).tolist() == [[True, True, False, False]] * 2
    kept = global_unstructured_masks({"a": torch.ones(2), "b": torch.ones(2)}, 0.5)
    assert kept["a"].all() and not kept["b"].any(), "an earlier tensor's tied entry is kept"


def _keeps_by_rank(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The tie rule written out along the last dim: keep an entry when fewer than n others outrank it (a higher
    score, or an equal score at a lower index), the rank the Triton 2:4 compressor computes."""
    a, b = scores.unsqueeze(-1), scores.unsqueeze(-2)
    lower = torch.ones(scores.shape[-1], scores.shape[-1], dtype=torch.bool).tril(-1)  # lower[i, j]: j < i
    return ((b > a) | ((b == a) & lower)).sum(-1) < n


tied_values = st.sampled_from([-0.0, 0.0, 0.5, 1.0, 2.0])


@given(st.data())
def test_nm_and_unstructured_ties_follow_the_rank_rule(data):
    m = data.draw(st.integers(2, 8))
    n = data.draw(st.integers(1, m - 1))
    rows = data.draw(st.integers(1, 4))
    values = data.draw(st.lists(tied_values, min_size=rows * m, max_size=rows * m))
    scores = torch.tensor(values, dtype=torch.float64).reshape(rows, m)
    assert torch.equal(nm_mask(scores, n, m), _keeps_by_rank(scores, n))
    assert torch.equal(nm_mask(scores.T.contiguous(), n, m, dim=0), _keeps_by_rank(scores, n).T)
    assert torch.equal(nm_mask(scores.float(), n, m), nm_mask(scores.half(), n, m)), "the dtype does not matter"
    sparsity = data.draw(sparsities)
    n_keep = scores.numel() - round(sparsity * scores.numel())
    flat = scores.reshape(-1)
    assert torch.equal(unstructured_mask(scores, sparsity).reshape(-1), _keeps_by_rank(flat, n_keep))


def test_all_zero_groups_keep_their_first_n_entries():
    zeros = torch.tensor([[0.0, -0.0, 0.0, -0.0] * 2, [-0.0] * 8])
    assert nm_mask(zeros, 2, 4).tolist() == [[True, True, False, False] * 2] * 2
    assert nm_mask(zeros, 1, 4).tolist() == [[True, False, False, False] * 2] * 2
    assert nm_mask(torch.zeros(8, 3), 2, 4, dim=0).tolist() == [[True] * 3] * 2 + [[False] * 3] * 2 + (
        [[True] * 3] * 2 + [[False] * 3] * 2)
    assert nm_mask(torch.zeros(2, 0, 4), 2, 4).shape == (2, 0, 4)


INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                  torch.uint64]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_integer_scores_rank_exactly_down_to_the_dtype_minimum(dtype):
    info = torch.iinfo(dtype)
    big = min(info.max, 2**53)  # float64 ranks 64-bit integers exactly up to 2**53
    weight = torch.tensor([[big, 0, info.min, 1]], dtype=dtype)
    signed = info.min < 0
    assert nm_mask(weight, 1, 4).tolist() == [[True, False, False, False]], "scores rank as given: max is highest"
    assert nm_mask(weight, 2, 4).tolist() == [[True, False, False, True]]
    assert nm_mask(magnitudes(weight), 1, 4).tolist() == [[not signed, False, signed, False]], (
        "|min| > max must rank highest (an integer abs() wraps min to itself)")
    assert nm_mask(magnitudes(weight), 2, 4).tolist() == [[True, False, signed, not signed]]
    assert unstructured_mask(weight, 0.75).tolist() == [[True, False, False, False]]
    assert unstructured_mask(weight, 0.25).tolist() == [[True, True, False, True]]


def test_masks_do_not_modify_the_scores_and_accept_any_float_dtype():
    scores = torch.randn(8, 8, dtype=torch.float16)
    before = scores.clone()
    for pattern in ("unstructured", "row", "column", "2:4", "block 2x4"):
        parse_pattern(pattern).mask(scores, 0.5)
    assert torch.equal(scores, before)


def test_is_nm_reads_tensors_by_their_nonzeros():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])
    assert is_nm(weight, 2, 4) and not is_nm(weight, 1, 4)
    assert not is_nm(weight, 2, 4, dim=0), "a dim whose size is not a multiple of m is never N:M"
    assert is_nm(weight.T, 2, 4, dim=0)


def test_parse_pattern_names_round_trip():
    for name in ("unstructured", "row", "column", "2:4", "1:4", "4:8", "block 4x4", "block 2x3x1"):
        assert parse_pattern(name).name == name
    assert parse_pattern("block8x8") == Pattern("block", block=(8, 8))
    assert parse_pattern("2:4").fixed_sparsity == 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nm_mask(torch.rand(3, 10), 2, 4), r"shape \(3, 10\): dim 1 has size 10, .*divisible by m=4"),
        (lambda: nm_mask(torch.rand(4, 4), 4, 4), "0 < n < m"),
        (lambda: nm_mask(torch.rand(4, 4), 0, 4), "0 < n < m"),
        (lambda: nm_mask(torch.rand(4, 4), 2, 4, dim=2), "dim=2 is out of range"),
        (lambda: block_mask(torch.rand(10, 16), 0.5, (4, 4)), r"\(10, 16\): dim 0 has size 10, .*divisible by 4"),
        (lambda: block_mask(torch.rand(8, 8), 0.5, (4,)), "block must be 2 positive ints"),
        (lambda: unstructured_mask(torch.rand(4), 1.0), "sparsity must be a fraction"),
        (lambda: unstructured_mask(torch.tensor([1.0, float("nan")]), 0.5), "non-finite"),
        (lambda: parse_pattern("2:4").mask(torch.rand(4, 4), 0.75), "2:4 fixes sparsity at .* 0.5"),
        (lambda: parse_pattern("row").mask(torch.rand(4, 4)), "needs a sparsity"),
        (lambda: parse_pattern("row").mask(torch.rand(8, 16), 0.3, strict=True), "cannot drop exactly 38 of 128"),
        (lambda: parse_pattern("diagonal"), "unknown pattern 'diagonal'"),
        (lambda: column_mask(torch.rand(5), 0.5), "at least 2 dimensions"),
        (lambda: parse_pattern("column").achieved_sparsity((5,), 0.5), "at least 2 dimensions"),
        (lambda: parse_pattern("block 2x2").achieved_sparsity((4, 4), None), "needs a sparsity"),
    ],
)
def test_bad_input_gets_an_error_that_names_it(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_strict_accepts_what_the_pattern_can_hit():
    mask = parse_pattern("row").mask(torch.rand(8, 16), 0.25, strict=True)
    assert sparsity_of(mask) == 0.25


def test_pattern_pruning_masks_a_model_and_names_a_layer_it_cannot_tile():
    torch.manual_seed(0)
    model = DigitsMLP(hidden=32)
    sparsify_(model, PruneConfig(pattern="2:4", sparsity=None))
    for layer in (model.net[1], model.net[3], model.net[5]):
        assert is_nm(layer.weight, 2, 4)
    with pytest.raises(ValueError, match=r"layer 'net.5': block \(8, 8\) does not tile .*\(10, 32\)"):
        pattern_masks(DigitsMLP(hidden=32), "block 8x8", 0.5)
    masks = pattern_masks(model, "block 8x8", 0.5, layers=["net.1", "net.3"])
    assert set(masks) == {"net.1", "net.3"} and all(is_block(m, (8, 8)) for m in masks.values())
    with pytest.raises(ValueError, match="scope='global' needs the unstructured pattern"):
        pattern_masks(model, "row", 0.5, scope="global")
    with pytest.raises(ValueError, match=r"layers \['net.9'\] are not prunable"):
        pattern_masks(model, "row", 0.5, layers=["net.9"])


def test_global_scope_gives_layers_different_sparsities_with_an_exact_total():
    torch.manual_seed(0)
    model = DigitsMLP(hidden=32)
    with torch.no_grad():
        model.net[3].weight.mul_(10)
    masks = pattern_masks(model, "unstructured", 0.5, scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
    assert sparsity_of(masks["net.3"]) < 0.5 < sparsity_of(masks["net.1"])
