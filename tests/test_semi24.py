"""2:4 compression: PyTorch's CUTLASS conversion reproduced bit for bit, exact round trips, clear errors."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from sparsity_lab.semi24 import layout as semi24

CUTLASS = [torch.float16, torch.bfloat16, torch.float32, torch.int8]
SIMPLE = CUTLASS + [torch.float64, torch.uint8, torch.int16, torch.int32, torch.int64]
SPECIALS = [float("nan"), float("inf"), float("-inf"), 1e-45, 6e-8, 65504.0]


def bits(x: torch.Tensor) -> torch.Tensor:
    """Same-width integer view: equality of these is equality bit for bit (NaN payloads, signed zeros)."""
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])


def random_sparse(seed: int, rows: int, cols: int, dtype: torch.dtype, density: float, zero_rows: bool,
                  specials: bool, pattern: str = "2:4") -> torch.Tensor:
    """A random `pattern` sparse matrix with extra zeros (groups with fewer than two non-zeros), maybe zero rows,
    maybe NaN/inf/subnormal kept values; dropped entries are +0."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        vals = (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 10).to(dtype)
        if specials:
            pick = torch.randint(0, len(SPECIALS), (rows, cols), generator=g)
            use = torch.rand(rows, cols, generator=g) < 0.1
            vals = torch.where(use, torch.tensor(SPECIALS, dtype=torch.float64)[pick].to(dtype), vals)
    else:
        info = torch.iinfo(dtype)
        low, high = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
        vals = torch.randint(low, high, (rows, cols), generator=g, dtype=torch.int64).to(dtype)
    mask = semi24.prune(torch.rand(rows, cols, generator=g), pattern)
    mask &= torch.rand(rows, cols, generator=g) < density
    if zero_rows and rows:
        mask[torch.rand(rows, generator=g) < 0.3] = False
    return torch.where(mask, vals, torch.zeros((), dtype=dtype))


@st.composite
def cases(draw, dtypes=CUTLASS, layout="cutlass", pattern=None):
    dtype = draw(st.sampled_from(dtypes))
    row_multiple, col_multiple = semi24.shape_multiples(dtype, layout)
    rows = row_multiple * draw(st.integers(1, 3)) if layout == "cutlass" else draw(st.integers(0, 9))
    cols = col_multiple * draw(st.integers(1, 3 if layout == "cutlass" else 5))
    tf32 = dtype == torch.float32 and layout == "cutlass"
    return random_sparse(draw(st.integers(0, 2**31)), rows, cols, dtype, draw(st.floats(0.0, 1.0)),
                         draw(st.booleans()), draw(st.booleans()), pattern or ("1:2" if tf32 else "2:4"))


# ---------------------------------------------------------------- the CUTLASS layout is PyTorch's, bit for bit


@given(cases())
def test_cutlass_layout_equals_pytorchs_conversion(dense):
    values, meta = semi24.compress(dense, layout="cutlass")
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert values.dtype == ref_values.dtype and values.shape == ref_values.shape == (dense.shape[0],
                                                                                       dense.shape[1] // 2)
    assert torch.equal(bits(values), bits(ref_values))
    assert meta.dtype == ref_meta.dtype and meta.shape == ref_meta.shape and meta.is_contiguous()
    assert torch.equal(meta, ref_meta)


@pytest.mark.parametrize("dtype", CUTLASS)
def test_all_zero_rows_and_groups_match_pytorch(dtype):
    rows, cols = (m * 2 for m in semi24.shape_multiples(dtype))
    dense = torch.zeros(rows, cols, dtype=dtype)
    dense[1, 1] = 1  # a group with one non-zero in position 1, the rest all-zero groups and rows
    dense[2, 7] = 3
    values, meta = semi24.compress(dense)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(meta, ref_meta)


@pytest.mark.parametrize("dtype", CUTLASS)
def test_every_group_pattern_matches_pytorch(dtype):
    """All 11 non-zero patterns a 2:4 group can have (9 for float32's two 1:2 pairs), in every slot of a word."""
    if dtype == torch.float32:
        pairs = [(0, 0), (1, 0), (0, 1)]
        patterns = [p + q for p in pairs for q in pairs]
    else:
        patterns = [tuple(int(i in kept) for i in range(4)) for n in range(3)
                    for kept in itertools.combinations(range(4), n)]
    assert len(patterns) == (9 if dtype == torch.float32 else 11)
    rows, col_multiple = semi24.shape_multiples(dtype)
    cols = max(col_multiple, 4 * len(patterns))
    cols += -cols % col_multiple
    flags = torch.tensor(patterns, dtype=torch.bool).repeat(rows * cols // (4 * len(patterns)) + 1, 1)
    flags = flags.reshape(-1)[: rows * cols].reshape(rows, cols)  # every pattern meets every nibble slot
    dense = torch.where(flags, torch.arange(1, rows * cols + 1).reshape(rows, cols) % 100 + 1, 0).to(dtype)
    values, meta = semi24.compress(dense)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert torch.equal(bits(values), bits(ref_values)) and torch.equal(meta, ref_meta)
    assert torch.equal(semi24.decompress(values, meta), dense)


def test_fill_rule_for_groups_with_fewer_than_two_non_zeros():
    dense = torch.tensor([[0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0, 0, 0, 5, 0, 0, 0, 0, 5]], dtype=torch.float16)
    _, meta = semi24.compress(dense, layout="simple")
    nibbles = [(byte >> shift) & 0xF for byte in meta[0].tolist() for shift in (0, 4)][:5]
    positions = [(n & 3, n >> 2) for n in nibbles]
    assert positions == [(2, 3), (0, 2), (1, 2), (2, 3), (2, 3)]


@pytest.mark.parametrize("dtype", CUTLASS)
def test_empty_matrices(dtype):
    row_multiple, col_multiple = semi24.shape_multiples(dtype)
    for rows, cols in [(0, col_multiple), (row_multiple, 0)]:
        dense = torch.zeros(rows, cols, dtype=dtype)
        for layout in semi24.LAYOUTS:
            values, meta = semi24.compress(dense, layout)
            assert values.shape == (rows, cols // 2)
            assert torch.equal(semi24.decompress(values, meta, layout), dense)
    values, meta = semi24.compress(torch.zeros(0, col_multiple, dtype=dtype))
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(torch.zeros(0, col_multiple, dtype=dtype))
    assert values.shape == ref_values.shape and meta.shape == ref_meta.shape and meta.dtype == ref_meta.dtype


# ---------------------------------------------------------------- float32: tf32 tensor cores are 1:2


def test_float32_metadata_describes_pairs_as_halves():
    dense = torch.zeros(32, 16)
    dense[:, 0::4] = 1.0  # pair 0 keeps its first float, pair 1 (columns 2, 3) is empty: keeps its second
    values, meta = semi24.compress(dense)
    nibbles = semi24.nibbles(meta)
    assert nibbles.shape == (32, 8) and set(nibbles.reshape(-1).tolist()) == {0b0100, 0b1110}
    assert nibbles[:, 0::2].eq(0b0100).all() and nibbles[:, 1::2].eq(0b1110).all()
    assert meta.shape == (32, 2) and meta.dtype == torch.int16


@given(cases(dtypes=[torch.float32]))
def test_float32_cutlass_metadata_is_always_1_to_2(dense):
    _, meta = semi24.compress(dense)
    nibbles = semi24.nibbles(meta)
    assert ((nibbles == 0b0100) | (nibbles == 0b1110)).all()


def test_float32_2_to_4_that_is_not_1_to_2_is_refused_where_pytorch_drops_a_value():
    dense = torch.zeros(32, 16)
    dense[5, 8:10] = torch.tensor([1.5, 2.5])  # 2:4 (group 2 has two non-zeros) but both in one pair
    semi24.check_pattern(dense, "2:4")
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert 2.5 not in sparse_semi_structured_to_dense_cutlass(ref_values, ref_meta)[5].tolist()  # PyTorch drops it
    with pytest.raises(ValueError, match=r"not 1:2 sparse: row 5, columns 8\.\.9 .*tf32.*pattern='1:2'"):
        semi24.compress(dense)
    values, meta = semi24.compress(dense, layout="simple")  # the simple layout is 2:4 for every dtype
    assert torch.equal(semi24.decompress(values, meta, "simple"), dense)
    with pytest.raises(ValueError, match=r"not 1:2 sparse: row 5, columns 8\.\.9"):
        semi24.convert(values, meta, "simple", "cutlass")


def test_a_1_to_2_mask_is_a_2_to_4_mask():
    weight = torch.randn(8, 32)
    mask = semi24.prune(weight, "1:2")
    semi24.check_pattern(weight * mask, "2:4")
    assert mask.reshape(8, -1, 2).sum(-1).eq(1).all()


def test_pytorchs_float32_decompression_is_not_exact_ours_is():
    torch.manual_seed(0)
    dense = torch.randn(32, 64)
    dense = torch.where(semi24.prune(dense, "1:2"), dense, 0.0)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(dense)
    theirs = sparse_semi_structured_to_dense_cutlass(ref_values, ref_meta)
    changed = bits(theirs) != bits(dense)
    assert changed.any(), "PyTorch's float32 to_dense became exact: update the docs"
    low = bits(dense)[changed] & 0xFFFF  # the low half of each changed float, seen as a float16 ...
    assert ((low >> 10) & 0x1F).eq(0x1F).all() and (low & 0x200).eq(0).all()  # ... is a signalling NaN
    assert torch.equal(bits(theirs)[changed], bits(dense)[changed] | 0x200)  # which scatter_ quiets
    ours = semi24.decompress(*semi24.compress(dense))
    assert torch.equal(bits(ours), bits(dense))
    assert torch.equal(bits(semi24.decompress(ref_values, ref_meta)), bits(dense))  # also on PyTorch's output


# ---------------------------------------------------------------- round trips and conversion


@given(cases())
def test_cutlass_round_trip_is_exact(dense):
    assert torch.equal(bits(semi24.decompress(*semi24.compress(dense, "cutlass"), "cutlass")), bits(dense))


@given(cases(dtypes=SIMPLE, layout="simple"))
def test_simple_round_trip_is_exact(dense):
    values, meta = semi24.compress(dense, "simple")
    assert values.shape == (dense.shape[0], dense.shape[1] // 2) and meta.dtype == torch.uint8
    assert meta.shape == (dense.shape[0], -(-dense.shape[1] // 8))
    assert torch.equal(bits(semi24.decompress(values, meta, "simple")), bits(dense))


def test_negative_zero_survives_when_kept_and_is_a_zero_when_dropped():
    dense = torch.tensor([[0.0, 1.0, -0.0, 0.0, -0.0, 0.0, 0.0, 2.0]]).half()
    values, meta = semi24.compress(dense, "simple")
    back = semi24.decompress(values, meta, "simple")
    assert torch.equal(bits(back[0, :4]), bits(dense[0, :4]))  # (1, 2) kept: -0.0 stored as a value
    assert torch.equal(back, dense) and not torch.equal(bits(back[0, 4:]), bits(dense[0, 4:]))  # dropped -0.0 -> +0


@given(cases(), st.sampled_from(semi24.LAYOUTS), st.sampled_from(semi24.LAYOUTS))
def test_convert_equals_compressing_the_decompressed_matrix(dense, source, target):
    if dense.is_floating_point():  # signed zeros: equal to zero, but they are bits the metadata may keep
        dense = torch.where((dense == 0) & (torch.rand(dense.shape) < 0.5), -0.0, dense).to(dense.dtype)
    values, meta = semi24.compress(dense, source)
    converted = semi24.convert(values, meta, source, target)
    expected = semi24.compress(semi24.decompress(values, meta, source), target)
    assert torch.equal(bits(converted[0]), bits(expected[0])) and torch.equal(converted[1], expected[1])


def test_non_contiguous_and_grad_requiring_input():
    weight = torch.randn(64, 32)
    weight = torch.where(semi24.prune(weight.t()).t(), weight, 0.0)  # 2:4 along the rows of weight.t()
    transposed = weight.t().requires_grad_()
    values, meta = semi24.compress(transposed.half().detach().requires_grad_())
    assert torch.equal(semi24.decompress(values, meta), transposed.detach().half())
    values, meta = semi24.compress(transposed, "simple")
    assert torch.equal(semi24.decompress(values, meta, "simple"), transposed.detach())


def test_simple_layout_packing_is_as_documented():
    a, b, c, d = 1.0, 2.0, 3.0, 4.0
    dense = torch.tensor([[a, 0, b, 0, 0, c, 0, d, 0, 0, a, b]])
    values, meta = semi24.compress(dense, "simple")
    assert values.tolist() == [[a, b, c, d, a, b]]
    # group 0 keeps (0, 2): nibble 0b1000; group 1 (1, 3): 0b1101; group 2 (2, 3): 0b1110, high nibble unused
    assert meta.tolist() == [[0b1101_1000, 0b0000_1110]]


def test_cutlass_reordering_is_a_permutation_with_the_documented_steps():
    offsets = semi24.cutlass_meta_offsets(64, 4, torch.int16)
    assert sorted(offsets.reshape(-1).tolist()) == list(range(64 * 4))
    assert offsets[0, 0] == 0  # stays
    assert offsets[8, 0] == 1  # row 8 -> row 1 (band interleave), 2x2 transpose -> (0, 1): next to word (0, 0)
    assert offsets[0, 1] == 2  # (0, 1) -> transpose -> (1, 0)
    assert offsets[1, 0] == 8  # row 1 -> row 4
    assert offsets[32, 0] == 64  # the next band of 32 rows starts fresh
    assert offsets[0, 2] == 2 * 64  # words 2, 3 form the next column-major panel of width 2
    int8 = semi24.cutlass_meta_offsets(32, 2, torch.int32)
    assert int8[8, 0] == 1 and int8[1, 0] == 4 and int8[16, 0] == 32  # bands of 16, rows 8a + b -> 2b + a


# ---------------------------------------------------------------- the teaching matmul


@given(cases(dtypes=CUTLASS), st.sampled_from(semi24.LAYOUTS), st.integers(1, 3))
def test_matmul_reading_metadata_equals_the_dense_product(dense, layout, n):
    dense = torch.where(dense.isfinite(), dense, 0) if dense.is_floating_point() else dense.clamp(-8, 8)
    values, meta = semi24.compress(dense, layout)
    other = torch.randn(dense.shape[1], n).to(dense.dtype) if dense.is_floating_point() else torch.randint(
        -8, 8, (dense.shape[1], n), dtype=dense.dtype)
    out = semi24.matmul(values, meta, other, layout)
    if dense.is_floating_point():
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), dense.double() @ other.double(), rtol=1e-4, atol=1e-2)
    else:
        assert out.dtype == torch.int32 and torch.equal(out, dense.int() @ other.int())
    vector = semi24.matmul(values, meta, other[:, 0], layout)
    torch.testing.assert_close(vector, out[:, 0], rtol=1e-4, atol=1e-2)


def test_matmul_does_not_decompress(monkeypatch):
    dense = torch.randn(32, 32).half()
    dense = dense * semi24.prune(dense)
    values, meta = semi24.compress(dense)
    monkeypatch.setattr(semi24, "decompress", lambda *a, **k: pytest.fail("matmul must not decompress"))
    other = torch.randn(32, 5).half()
    torch.testing.assert_close(semi24.matmul(values, meta, other), dense.float() @ other.float())


def test_kept_columns_and_nibbles_read_the_metadata():
    dense = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4, 0, 0, 0, 0]])
    values, meta = semi24.compress(dense, "simple")
    assert semi24.kept_columns(values, meta, "simple").tolist() == [[0, 2, 5, 7, 10, 11]]
    assert semi24.nibbles(meta, "simple").tolist() == [[0b1000, 0b1101, 0b1110, 0]]
    with pytest.raises(ValueError, match="uint8"):
        semi24.nibbles(meta, "cutlass")


def test_matmul_checks_the_other_shape():
    values, meta = semi24.compress(torch.zeros(4, 8), "simple")
    with pytest.raises(ValueError, match=r"other must be \(8,\) or \(8, n\)"):
        semi24.matmul(values, meta, torch.zeros(7, 2), "simple")


# ---------------------------------------------------------------- prune


@given(st.integers(0, 2**31), st.sampled_from(["2:4", "1:2", "4:8"]))
def test_prune_keeps_the_largest_magnitudes_of_each_group(seed, pattern):
    n, m = semi24.parse_pattern(pattern)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 4 * m, generator=g).round(decimals=1)  # rounding makes ties
    mask = semi24.prune(weight, pattern)
    assert mask.dtype == torch.bool and mask.reshape(6, -1, m).sum(-1).eq(n).all()
    groups_w, groups_m = weight.abs().reshape(6, -1, m), mask.reshape(6, -1, m)
    kept_min = torch.where(groups_m, groups_w, float("inf")).amin(-1)
    dropped_max = torch.where(groups_m, -1.0, groups_w).amax(-1)
    assert (kept_min >= dropped_max).all()


def test_prune_ties_keep_the_lower_column():
    weight = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 2.0, -3.0, 2.0]])
    assert semi24.prune(weight).int().tolist() == [[1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0]]


def test_prune_handles_int8_extremes_and_scores():
    weight = torch.tensor([[-128, 127, 1, -1]], dtype=torch.int8)
    assert semi24.prune(weight).tolist() == [[True, True, False, False]]
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.2]])
    assert semi24.prune(scores).tolist() == [[False, True, True, False]]
    assert semi24.prune(torch.randn(3, 2, 8)).shape == (3, 2, 8)


INTEGERS = [d for d in SIMPLE if not d.is_floating_point]


@pytest.mark.parametrize("dtype", INTEGERS)
def test_prune_ranks_every_integer_minimum_as_the_largest_magnitude(dtype):
    info = torch.iinfo(dtype)
    weight = torch.tensor([[1, info.min, min(info.max, 2**53), 1, 0, 0, info.min, 0]], dtype=dtype)
    if info.min < 0:  # |min| = max + 1 is the largest magnitude (an integer abs() wraps it to min)
        one_of_4, two_of_4 = [0, 1, 0, 0, 0, 0, 1, 0], [0, 1, 1, 0, 1, 0, 1, 0]
    else:  # min is 0: the tied 1s and 0s keep their lower column
        one_of_4, two_of_4 = [0, 0, 1, 0, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1, 0, 0]
    assert semi24.prune(weight, "1:4").int().tolist() == [one_of_4]
    assert semi24.prune(weight).int().tolist() == [two_of_4]


def test_prune_keeps_the_first_two_of_an_all_zero_group():
    zeros = torch.tensor([[0.0, -0.0, -0.0, 0.0, -0.0, -0.0, -0.0, -0.0]])
    assert semi24.prune(zeros).tolist() == [[True, True, False, False] * 2]
    assert torch.equal(bits(semi24.sparsify(zeros)), bits(torch.tensor([[0.0, -0.0, 0.0, 0.0, -0.0, -0.0, 0.0, 0.0]])))
    assert semi24.prune(torch.zeros(2, 8, dtype=torch.int8), "1:2").tolist() == [[True, False] * 4] * 2


@given(st.data())
def test_prune_sparsify_and_the_training_mask_are_nm_mask_bit_for_bit(data):
    from sparsity_lab.patterns.masks import nm_mask
    from sparsity_lab.pruning.prune import magnitudes
    from sparsity_lab.training.masks import sparse24_mask

    dtype = data.draw(st.sampled_from(SIMPLE))
    pattern = data.draw(st.sampled_from(["2:4", "1:2", "1:4", "3:4", "4:8"]))
    n, m = semi24.parse_pattern(pattern)
    rows, cols = data.draw(st.integers(1, 5)), m * data.draw(st.integers(1, 4))
    if dtype.is_floating_point:
        pool = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5]
    else:
        info = torch.iinfo(dtype)
        pool = sorted({0, 1, info.max, info.min, max(info.min, -1), min(info.max, 2**53)})
    weight = torch.tensor(data.draw(st.lists(st.sampled_from(pool), min_size=rows * cols, max_size=rows * cols)),
                          dtype=torch.float64 if dtype.is_floating_point else torch.int64)
    weight = weight.to(dtype).reshape(rows, cols)
    mask = semi24.prune(weight, pattern)
    magnitude = torch.tensor([abs(v) for v in weight.reshape(-1).tolist()], dtype=torch.float64)
    a = magnitude.reshape(rows, cols // m, m).unsqueeze(-1)
    lower = torch.ones(m, m, dtype=torch.bool).tril(-1)  # lower[i, j]: j < i
    beats = (a.transpose(-1, -2) > a) | ((a.transpose(-1, -2) == a) & lower)  # [.., i, j]: j outranks i
    assert torch.equal(mask, (beats.sum(-1) < n).reshape(rows, cols)), "keep fewer-than-n outranked; ties: lower"
    assert torch.equal(mask, nm_mask(magnitudes(weight), n, m))
    kept = semi24.sparsify(weight, pattern)
    assert torch.equal(bits(kept) if dtype.is_floating_point else kept,
                       bits(torch.where(mask, weight, 0)) if dtype.is_floating_point else weight * mask)
    if pattern == "2:4":
        assert torch.equal(sparse24_mask(weight, "recompress"), mask)


def test_sparsify_sets_dropped_entries_to_positive_zero():
    weight = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    assert torch.equal(bits(semi24.sparsify(weight)), bits(torch.tensor([[0.0, 0.0, -3.0, -4.0]])))
    assert semi24.sparsify(weight, scores=torch.tensor([[9.0, 8.0, 0.0, 0.0]])).tolist() == [[-1.0, -2.0, 0.0, 0.0]]
    assert semi24.sparsify(weight, "1:2").tolist() == [[0.0, -2.0, 0.0, -4.0]]
    with pytest.raises(ValueError, match="scores has shape"):
        semi24.sparsify(weight, scores=torch.ones(2, 4))


def test_prune_then_compress_works_on_any_weight():
    weight = torch.randn(64, 64).bfloat16()
    pruned = weight * semi24.prune(weight)
    assert torch.equal(semi24.decompress(*semi24.compress(pruned)), pruned)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(4, 6), "multiple of 4"),
    (torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), "non-finite"),
    (torch.zeros(4, 4, dtype=torch.bool), "floating or integer"),
])
def test_prune_rejects_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        semi24.prune(bad)


@pytest.mark.parametrize("pattern", ["2-4", "5:4", "0:4", "4:4"])
def test_prune_rejects_bad_patterns(pattern):
    with pytest.raises(ValueError, match="pattern"):
        semi24.prune(torch.randn(4, 4), pattern)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("layout", semi24.LAYOUTS)
def test_not_2_to_4_names_the_first_group_and_says_prune(layout):
    dense = torch.zeros(32, 32, dtype=torch.float16)
    dense[7, 20:23] = 1.0  # group 5 of row 7 has three non-zeros
    dense[9, 0:4] = 1.0
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 7, columns 20\.\.23 hold 3 non-zeros.*"
                                         r"Prune first: w = semi24\.sparsify\(w\)"):
        semi24.compress(dense, layout)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.bool, torch.complex64])
def test_cutlass_rejects_other_dtypes(dtype):
    with pytest.raises(TypeError, match="float16, bfloat16, float32, int8"):
        semi24.compress(torch.zeros(32, 64, dtype=dtype), "cutlass")


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_simple_rejects_non_numeric_dtypes(dtype):
    with pytest.raises(TypeError, match="floating or integer"):
        semi24.compress(torch.zeros(4, 8, dtype=dtype), "simple")


@pytest.mark.parametrize("dtype, shape, match", [
    (torch.float16, (32, 16), "16 columns.*multiple of 32"),  # PyTorch itself fails here with an index error
    (torch.float16, (32, 48), "multiple of 32"),
    (torch.float16, (16, 32), "16 rows.*multiple of 32"),
    (torch.bfloat16, (32, 40), "multiple of 32"),
    (torch.float32, (32, 8), "multiple of 16"),
    (torch.float32, (8, 16), "multiple of 32"),
    (torch.int8, (16, 32), "multiple of 64"),  # PyTorch: index error
    (torch.int8, (8, 64), "multiple of 16"),
])
def test_cutlass_shape_errors_say_which_multiple(dtype, shape, match):
    with pytest.raises(ValueError, match=match):
        semi24.compress(torch.zeros(shape, dtype=dtype), "cutlass")


def test_pytorch_accepts_exactly_the_shapes_we_accept():
    for dtype in CUTLASS:
        for rows in (16, 32, 48, 64):
            for cols in (16, 32, 48, 64, 96, 128):
                dense = torch.zeros(rows, cols, dtype=dtype)
                try:
                    sparse_semi_structured_from_dense_cutlass(dense)
                    theirs = True
                except (RuntimeError, IndexError):
                    theirs = False
                try:
                    semi24.compress(dense)
                    ours = True
                except ValueError:
                    ours = False
                assert ours == theirs, (dtype, rows, cols)


def test_simple_shape_and_dimension_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        semi24.compress(torch.zeros(3, 6), "simple")
    with pytest.raises(ValueError, match="2-D"):
        semi24.compress(torch.zeros(2, 4, 4), "simple")
    with pytest.raises(TypeError, match="torch.Tensor"):
        semi24.compress([[0.0] * 4], "simple")
    with pytest.raises(ValueError, match="layout"):
        semi24.compress(torch.zeros(4, 4), "csr")


def test_decompress_checks_meta_against_values():
    values, meta = semi24.compress(torch.zeros(32, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"meta is torch.int32 .*torch.int16 \(32, 4\)"):
        semi24.decompress(values, meta.int())
    with pytest.raises(ValueError, match=r"\(32, 4\)"):
        semi24.decompress(values, meta[:, :2])
    with pytest.raises(TypeError):
        semi24.decompress(values.double(), meta)


def test_decompress_refuses_invalid_nibbles():
    values, meta = semi24.compress(torch.zeros(2, 12), "simple")
    bad = meta.clone()
    bad[1, 0] = 0b1000_0101  # group 0: (1, 1): two slots on one position would lose a value
    with pytest.raises(ValueError, match=r"row 1, group 0 \(columns 0\.\.3\)"):
        semi24.decompress(values, bad, "simple")
    bad = meta.clone()
    bad[0, 1] |= 0b1110_0000  # the unused high nibble of the last byte (3 groups)
    with pytest.raises(ValueError, match="unused high nibble"):
        semi24.decompress(values, bad, "simple")
    values, meta = semi24.compress(torch.zeros(32, 16))
    with pytest.raises(ValueError, match="0b0100"):
        semi24.decompress(values, torch.zeros_like(meta))


def test_memory_of_the_compressed_form():
    for dtype, ratio in [(torch.float16, 0.5625), (torch.bfloat16, 0.5625), (torch.float32, 0.5625),
                         (torch.int8, 0.625)]:
        dense = torch.zeros(64, 128, dtype=dtype)
        assert semi24.nbytes(*semi24.compress(dense)) / (dense.numel() * dense.element_size()) == ratio


@pytest.mark.parametrize(("values_dtype", "other_dtype"), [(torch.int8, torch.float32), (torch.float16, torch.int8)])
def test_matmul_refuses_integer_times_float(values_dtype, other_dtype):
    dense = semi24.sparsify(torch.randint(-9, 9, (32, 64)).to(values_dtype))
    values, meta = semi24.compress(dense)
    other = torch.randint(-3, 3, (64, 4)).to(other_dtype) + (0.5 if other_dtype.is_floating_point else 0)
    with pytest.raises(TypeError, match="multiply integers by integers"):
        semi24.matmul(values, meta, other)
