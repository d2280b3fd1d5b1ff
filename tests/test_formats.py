"""Our COO / CSR / BSR: every error path, exact round trips (dense, torch.sparse, scipy) for every value dtype, and
matmuls against dense and against scipy.sparse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsity_lab.formats.matrices import (
    BSR,
    COO,
    CSR,
    FORMATS,
    INDEX_DTYPES,
    VALUE_DTYPES,
    breakeven_sparsity,
    random_sparse,
    storage_nbytes,
    storage_sweep,
    stored_entries,
)

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCIPY_DTYPES = tuple(d for d in VALUE_DTYPES if d not in (torch.float16, torch.bfloat16))
BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
        torch.float64: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (floats viewed as integers), so that -0.0 != 0.0 and NaN == NaN."""
    t = t.contiguous()
    return t.view(BITS[t.dtype]) if t.dtype in BITS else t


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


@st.composite
def matrices(draw, dtypes=VALUE_DTYPES, specials: bool = True):
    """(dense, blocksize): a small random matrix whose sides are multiples of the blocksize, any sparsity, and
    for floats a few -0.0 / NaN / inf entries."""
    dtype = draw(st.sampled_from(dtypes))
    bh, bw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (bh * draw(st.integers(0, 4)), bw * draw(st.integers(0, 4)))
    blocky = draw(st.booleans()) and min(shape) > 0
    dense = random_sparse(shape, draw(st.floats(0.0, 1.0)), seed=draw(st.integers(0, 2**16)), dtype=dtype,
                          blocksize=(bh, bw) if blocky else None)
    if specials and dtype.is_floating_point and dense.numel():
        for value in draw(st.lists(st.sampled_from([-0.0, math.nan, math.inf]), max_size=3)):
            dense.view(-1)[draw(st.integers(0, dense.numel() - 1))] = value
    return dense, (bh, bw)


def build(name: str, dense: torch.Tensor, blocksize: tuple[int, int], index_dtype: torch.dtype = torch.int64,
          keep_signed_zeros: bool = False):
    if name == "bsr":
        return BSR.from_dense(dense, blocksize, index_dtype, keep_signed_zeros)
    return FORMATS[name].from_dense(dense, index_dtype, keep_signed_zeros)


def arrays(matrix) -> list[torch.Tensor]:
    if isinstance(matrix, COO):
        return [matrix.indices, matrix.values]
    return [matrix.crow_indices, matrix.col_indices, matrix.values]


def same_arrays(a, b) -> bool:
    """Equal index values (any index dtype) and bitwise-equal values."""
    index_a, index_b = arrays(a)[:-1], arrays(b)[:-1]
    return (all(torch.equal(x.long(), y.long()) for x, y in zip(index_a, index_b, strict=True))
            and a.shape == b.shape and a.values.dtype == b.values.dtype and torch.equal(bits(a.values), bits(b.values)))


# --- round trips ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=matrices(), index_dtype=st.sampled_from(INDEX_DTYPES), keep=st.booleans())
def test_dense_round_trip_is_bit_exact(name, case, index_dtype, keep):
    dense, blocksize = case
    matrix = build(name, dense, blocksize, index_dtype, keep_signed_zeros=keep)
    assert matrix.index_dtype == index_dtype and matrix.dtype == dense.dtype
    out = matrix.to_dense()
    if keep:
        assert_bitwise_equal(out, dense)
    else:  # bit for bit but for -0.0, which is a zero: not stored, back as +0.0 (in a stored BSR block, kept)
        signed_zero = (bits(dense) != 0) & (dense == 0)
        assert out.dtype == dense.dtype and torch.equal(bits(out)[~signed_zero], bits(dense)[~signed_zero])
        assert (out[signed_zero] == 0).all()
        if name != "bsr":
            assert (bits(out)[signed_zero] == 0).all()
    if name != "bsr":
        assert matrix.nnz == int(stored_entries(dense, keep).sum())


def assert_same_values(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal as numbers, NaN equal to NaN, -0.0 equal to 0.0 (for torch's to_dense, which adds into zeros)."""
    assert a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def torch_arrays(tensor: torch.Tensor) -> list[torch.Tensor]:
    if tensor.layout == torch.sparse_coo:
        return [tensor.indices(), tensor.values()]
    return [tensor.crow_indices(), tensor.col_indices(), tensor.values()]


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=matrices(), index_dtype=st.sampled_from(INDEX_DTYPES), keep=st.booleans())
def test_torch_round_trips_are_bit_exact(name, case, index_dtype, keep):
    dense, blocksize = case
    matrix = build(name, dense, blocksize, index_dtype, keep_signed_zeros=keep)
    tensor = matrix.to_torch()
    assert tensor.layout == {"coo": torch.sparse_coo, "csr": torch.sparse_csr, "bsr": torch.sparse_bsr}[name]
    for theirs, ours in zip(torch_arrays(tensor), arrays(matrix), strict=True):
        assert torch.equal(bits(theirs), bits(ours.long() if name == "coo" and ours is matrix.indices else ours))
    assert same_arrays(FORMATS[name].from_torch(tensor), matrix)
    assert_same_values(tensor.to_dense(), dense)
    # and from torch's own conversion
    theirs = {"coo": dense.to_sparse, "csr": dense.to_sparse_csr,
              "bsr": lambda: dense.to_sparse_bsr(blocksize)}[name]()
    ours = FORMATS[name].from_torch(theirs)
    assert_same_values(ours.to_dense(), theirs.to_dense())
    for a, b in zip(torch_arrays(ours.to_torch()), torch_arrays(theirs.coalesce() if name == "coo" else theirs),
                    strict=True):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=matrices(SCIPY_DTYPES), index_dtype=st.sampled_from(INDEX_DTYPES), keep=st.booleans())
def test_scipy_round_trips_are_bit_exact(name, case, index_dtype, keep):
    dense, blocksize = case
    matrix = build(name, dense, blocksize, index_dtype, keep_signed_zeros=keep)
    theirs = matrix.to_scipy()
    assert theirs.format == name and theirs.dtype == dense.numpy().dtype
    assert_same_values(torch.from_numpy(theirs.toarray()), dense)  # scipy's toarray adds into zeros, like torch
    assert same_arrays(FORMATS[name].from_scipy(theirs), matrix)
    converted = {"coo": sp.coo_array, "csr": sp.csr_array,
                 "bsr": lambda a: sp.bsr_array(a, blocksize=blocksize)}[name](dense.numpy())
    assert_same_values(FORMATS[name].from_scipy(converted).to_dense(), torch.from_numpy(converted.toarray()))


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_to_scipy_refuses_dtypes_scipy_lacks(name, dtype):
    matrix = build(name, torch.eye(4, dtype=dtype), (2, 2))
    with pytest.raises(TypeError, match=f"scipy.sparse has no {dtype}"):
        matrix.to_scipy()


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=matrices())
def test_transpose_is_exact_and_twice_is_the_identity(name, case):
    dense, blocksize = case
    matrix = build(name, dense, blocksize, keep_signed_zeros=True)
    transposed = matrix.T
    assert transposed.shape == (dense.shape[1], dense.shape[0])
    assert_bitwise_equal(transposed.to_dense(), dense.T.contiguous())
    assert same_arrays(transposed.transpose(), matrix)
    assert same_arrays(transposed, build(name, dense.T.contiguous(), blocksize[::-1], keep_signed_zeros=True))


@given(case=matrices())
def test_coo_and_csr_convert_into_each_other(case):
    dense, _ = case
    coo, csr = COO.from_dense(dense), CSR.from_dense(dense)
    assert same_arrays(coo.to_csr(), csr) and same_arrays(csr.to_coo(), coo)
    assert torch.equal(csr.row_indices(), coo.indices[0])


def test_negative_zero_is_a_zero_unless_kept_and_nan_is_stored():
    dense = torch.tensor([[0.0, -0.0, 1.0], [math.nan, 0.0, 0.0]])
    assert stored_entries(dense).tolist() == [[False, False, True], [True, False, False]]
    assert stored_entries(dense, keep_signed_zeros=True).tolist() == [[False, True, True], [True, False, False]]
    csr = CSR.from_dense(dense)
    assert csr.nnz == 2 == dense.to_sparse_csr().values().numel(), "as torch: -0.0 is not stored"
    assert bits(csr.to_dense())[0, 1] == 0, "it comes back +0.0"
    exact = CSR.from_dense(dense, keep_signed_zeros=True)
    assert exact.nnz == 3 and exact.col_indices.tolist() == [1, 2, 0]
    assert_bitwise_equal(exact.to_dense(), dense)


def test_a_weight_pruned_by_multiplying_with_its_mask_stores_only_the_kept_entries():
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    mask = weight.abs() > 0.5
    pruned = weight * mask  # -0.0 wherever a negative weight was pruned
    assert ((bits(pruned) != 0) & (pruned == 0)).any()
    for name in FORMATS:
        assert build(name, pruned, (1, 1)).nnz == int(mask.sum())


# --- matmul -----------------------------------------------------------------------------------------------------

def reference(dense: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dense @ x: exactly (float64 / integers, wrapping) for those dtypes, in float32 for half types."""
    if dense.dtype in (torch.float16, torch.bfloat16):
        return dense.float() @ x.float()
    return dense @ x


TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_matmul_close(out: torch.Tensor, dense: torch.Tensor, x: torch.Tensor) -> None:
    expected = reference(dense, x)
    assert out.dtype == dense.dtype and out.shape == expected.shape
    if dense.is_floating_point():
        scale = (dense.abs().float() @ x.abs().float()).double() + 1.0
        err = ((out.double() - expected.double()).abs() / scale).max() if out.numel() else 0.0
        assert err <= TOLERANCE[dense.dtype], f"error {float(err):.2e} relative to |A| @ |x|"
    else:
        assert torch.equal(out, expected)


@st.composite
def products(draw, dtypes=VALUE_DTYPES):
    dense, blocksize = draw(matrices(dtypes, specials=False))
    n = draw(st.integers(0, 5))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if dense.dtype.is_floating_point:
        x = torch.randn(dense.shape[1], n, generator=generator).to(dense.dtype)
    else:
        x = torch.randint(-3 if dense.dtype != torch.uint8 else 0, 4, (dense.shape[1], n),
                          generator=generator).to(dense.dtype)
    return dense, blocksize, x


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=products(), index_dtype=st.sampled_from(INDEX_DTYPES))
def test_matmul_matches_dense_for_matrices_and_vectors(name, case, index_dtype):
    dense, blocksize, x = case
    matrix = build(name, dense, blocksize, index_dtype)
    assert_matmul_close(matrix @ x, dense, x)
    vector = x[:, 0] if x.shape[1] else torch.ones(dense.shape[1], dtype=dense.dtype)
    out = matrix @ vector
    assert out.shape == (dense.shape[0],)
    assert_matmul_close(out[:, None], dense, vector[:, None])


@given(case=products(FLOATS), index_dtype=st.sampled_from(INDEX_DTYPES))
def test_csr_methods_agree(case, index_dtype):
    dense, _, x = case
    csr = CSR.from_dense(dense, index_dtype)
    assert_matmul_close(csr.matmul(x, method="embedding_bag"), dense, x)
    assert_matmul_close(csr.matmul(x, method="index_add"), dense, x)


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=products(SCIPY_DTYPES))
def test_matmul_matches_scipy(name, case):
    dense, blocksize, x = case
    matrix = build(name, dense, blocksize)
    theirs = torch.from_numpy(np.asarray(matrix.to_scipy() @ x.numpy()))
    ours = matrix @ x
    if dense.dtype == torch.float64:
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    elif dense.dtype == torch.float32:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(ours, theirs.to(dense.dtype))


def test_matmul_chunks_over_nnz_without_changing_the_result(monkeypatch):
    import sparsity_lab.formats.matrices as formats

    dense = random_sparse((12, 10), 0.5, seed=3, dtype=torch.float64, blocksize=(2, 2))
    x = torch.randn(10, 3, dtype=torch.float64)
    expected = {name: build(name, dense, (2, 2)).matmul(x) for name in FORMATS}
    monkeypatch.setattr(formats, "CHUNK_ELEMENTS", 7)
    for name in FORMATS:
        matrix = build(name, dense, (2, 2))
        out = matrix.matmul(x, method="index_add") if name == "csr" else matrix.matmul(x)
        torch.testing.assert_close(out, expected[name], rtol=1e-12, atol=1e-12)


def test_empty_rows_all_zero_and_empty_shapes():
    x = torch.randn(4, 3)
    for name in FORMATS:
        zero = build(name, torch.zeros(6, 4), (2, 2))
        assert zero.nnz == 0 and torch.equal(zero @ x, torch.zeros(6, 3))
    csr = CSR.from_dense(torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]))
    assert csr.crow_indices.tolist() == [0, 0, 2, 2]
    assert (csr @ torch.ones(2)).tolist() == [0.0, 3.0, 0.0]
    empty = CSR.from_dense(torch.zeros(0, 3))
    assert (empty @ torch.ones(3, 2)).shape == (0, 2) and empty.density == 0.0


# --- sizes and bytes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@given(case=matrices(specials=False), index_dtype=st.sampled_from(INDEX_DTYPES))
def test_nbytes_counts_indices_and_matches_the_formula(name, case, index_dtype):
    dense, blocksize = case
    matrix = build(name, dense, blocksize, index_dtype)
    expected = storage_nbytes(name, dense.shape, matrix.nnz, dense.dtype, index_dtype, blocksize)
    assert matrix.nbytes == expected
    assert matrix.dense_nbytes == storage_nbytes("dense", dense.shape, 0, dense.dtype)
    if matrix.nbytes:
        assert matrix.compression_ratio == pytest.approx(matrix.dense_nbytes / matrix.nbytes)
    numel = dense.numel()
    assert matrix.density == (matrix.nnz / numel if numel else 0.0)


def test_nbytes_by_hand():
    csr = CSR.from_dense(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]), index_dtype=torch.int32)
    assert csr.nbytes == 3 * 4 + 3 * 4 + 3 * 4  # crow (3), col (3), values (3)
    assert COO.from_dense(csr.to_dense()).nbytes == 2 * 3 * 8 + 3 * 4
    bsr = BSR.from_dense(torch.eye(4, dtype=torch.float16), (2, 2))
    assert bsr.n_blocks == 2 and bsr.nnz == 8 and bsr.nbytes == 3 * 8 + 2 * 8 + 8 * 2
    assert COO.from_dense(torch.zeros(2, 2)).compression_ratio == math.inf


@pytest.mark.parametrize("kind", ["coo", "csr", "bsr"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.int8])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_breakeven_sparsity_is_where_the_format_gets_smaller(kind, dtype, index_dtype):
    shape, blocksize = (64, 64), (4, 4) if kind == "bsr" else (1, 1)
    sparsity = breakeven_sparsity(kind, shape, dtype, index_dtype, blocksize)
    unit = blocksize[0] * blocksize[1]
    dense_bytes = storage_nbytes("dense", shape, 0, dtype)
    for units in range(0, 64 * 64 // unit + 1):
        smaller = storage_nbytes(kind, shape, units * unit, dtype, index_dtype, blocksize) < dense_bytes
        assert smaller == (1 - units * unit / (64 * 64) > sparsity), (units, sparsity)
    assert breakeven_sparsity("coo", (4096, 4096), torch.float32, torch.int64) == pytest.approx(1 - 4 / 20)


def test_storage_sweep_rows():
    rows = storage_sweep((16, 16), (0.5, 0.75), blocksize=(4, 4))
    assert len(rows) == 2 * 2 * 3
    csr = [r for r in rows if r["format"] == "csr" and r["sparsity"] == 0.75]
    assert len(csr) == 2 and csr[0]["nbytes"] == csr[1]["nbytes"] == 17 * 8 + 64 * 12
    bsr = {r["pattern"]: r for r in rows if r["format"] == "bsr" and r["sparsity"] == 0.75}
    assert bsr["blocks"]["nbytes"] == 5 * 8 + 4 * 8 + 64 * 4 < bsr["unstructured"]["nbytes"]


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_random_sparse_hits_the_sparsity_with_no_zero_values(dtype):
    dense = random_sparse((40, 30), 0.9, seed=1, dtype=dtype)
    assert dense.dtype == dtype and int((dense == 0).sum()) == 1080
    blocks = random_sparse((40, 30), 0.5, seed=1, dtype=dtype, blocksize=(4, 5))
    assert int((blocks == 0).sum()) == 600 and BSR.from_dense(blocks, (4, 5)).n_blocks == 30
    assert torch.equal(random_sparse((5, 5), 0.5, seed=2), random_sparse((5, 5), 0.5, seed=2))


def test_to_and_repr():
    csr = CSR.from_dense(torch.eye(3))
    wide = csr.to(torch.float64)
    assert wide.dtype == torch.float64 and wide.index_dtype == torch.int64
    assert torch.equal(wide.to_dense(), torch.eye(3, dtype=torch.float64))
    assert repr(csr) == "CSR(shape=(3, 3), nnz=3, dtype=torch.float32, index_dtype=torch.int64, density=0.3333)"


def test_coalesced_sums_repeats_like_torch():
    indices = torch.tensor([[1, 0, 1, 1, 0], [2, 1, 2, 0, 1]])
    values = torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32)
    coo = COO.coalesced(indices, values, (2, 3))
    theirs = torch.sparse_coo_tensor(indices, values, (2, 3), check_invariants=True).coalesce()
    assert torch.equal(coo.indices, theirs.indices()) and torch.equal(coo.values, theirs.values())
    assert coo.is_coalesced and not COO(indices[:, [1, 3]].flip(1), values[:2], (2, 3)).is_coalesced
    uncoalesced = torch.sparse_coo_tensor(indices, values, (2, 3), check_invariants=True)
    assert COO.from_torch(uncoalesced).values.tolist() == [7, 4, 4]


def test_from_scipy_sorts_and_sums_a_non_canonical_matrix():
    matrix = sp.csr_array((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), np.array([0, 3, 3])), shape=(2, 3))
    assert not matrix.has_canonical_format
    csr = CSR.from_scipy(matrix)
    assert csr.col_indices.tolist() == [0, 2] and csr.values.tolist() == [2.0, 4.0]
    assert not matrix.has_canonical_format, "the caller's matrix is not modified"
    coo = COO.from_scipy(sp.coo_array((np.array([1.0, 2.0]), (np.array([0, 0]), np.array([1, 1]))), shape=(1, 2)))
    assert coo.values.tolist() == [3.0]


# --- errors -----------------------------------------------------------------------------------------------------

I64 = torch.int64


def t(values, dtype=I64):
    return torch.tensor(values, dtype=dtype)


COO_ERRORS = [
    ((t([[0], [0]]).tolist(), t([1.0], torch.float32), (2, 2)), TypeError, "indices must be a torch.Tensor"),
    ((t([[0], [0]], torch.float32), t([1.0], torch.float32), (2, 2)), TypeError, "indices must be an integer"),
    ((t([[0], [0]], torch.int16), t([1.0], torch.float32), (2, 2)), TypeError, "torch.int32 or torch.int64"),
    ((t([[0], [0]]), t([True], torch.bool), (2, 2)), TypeError, "values has dtype torch.bool"),
    ((t([[0], [0]]), t([1.0], torch.complex64), (2, 2)), TypeError, "supported value dtypes"),
    ((t([0, 0]), t([1.0], torch.float32), (2, 2)), ValueError, r"indices must have shape \(2, nnz\)"),
    ((t([[0], [0]]), t([[1.0]], torch.float32), (2, 2)), ValueError, "values must be 1-D"),
    ((t([[0, 1], [0, 1]]), t([1.0], torch.float32), (2, 2)), ValueError, "2 positions but values has 1"),
    ((t([[2], [0]]), t([1.0], torch.float32), (2, 2)), ValueError, r"indices\[0\] \(rows\) out of range.*got 2"),
    ((t([[0], [-1]]), t([1.0], torch.float32), (2, 2)), ValueError, r"indices\[1\] \(columns\) out of range"),
    ((t([[0, 1, 0], [1, 0, 1]]), t([1.0, 2.0, 3.0], torch.float32), (2, 2)), ValueError,
     r"position \(0, 1\) more than once.*COO.coalesced"),
    ((t([[0], [0]]), t([1.0], torch.float32), (2,)), ValueError, r"shape must be \(rows, cols\)"),
    ((t([[0], [0]]), t([1.0], torch.float32), (2.0, 2)), TypeError, "shape must hold ints"),
    ((t([[0], [0]]), t([1.0], torch.float32), (-1, 2)), ValueError, "must not be negative"),
    ((t([[0], [0]]), torch.ones(1, device="meta"), (2, 2)), ValueError, "on one device"),
]


@pytest.mark.parametrize(("args", "error", "message"), COO_ERRORS)
def test_coo_rejects_malformed_arrays(args, error, message):
    with pytest.raises(error, match=message):
        COO(*args)


V3 = t([1.0, 2.0, 3.0], torch.float32)
CSR_ERRORS = [
    ((t([0, 3]), t([0, 1, 2]), V3, (2, 3)), ValueError, r"3 entries \(rows \+ 1\)"),
    ((t([1, 2, 3]), t([0, 1, 2]), V3, (2, 3)), ValueError, r"must start at 0, got crow_indices\[0\] = 1"),
    ((t([0, 2, 2]), t([0, 1, 2]), V3, (2, 3)), ValueError, r"must end at nnz = 3.*got crow_indices\[-1\] = 2"),
    ((t([0, 2, 1, 3]), t([0, 1, 2]), V3, (3, 3)), ValueError, r"must not decrease.*crow_indices\[1\] = 2"),
    ((t([0, 2, 3]), t([0, 3, 1]), V3, (2, 3)), ValueError, r"col_indices out of range.*got 3 at position 1"),
    ((t([0, 2, 3]), t([1, 0, 1]), V3, (2, 3)), ValueError, "sorted and unique.*row 0 has column 0 after column 1"),
    ((t([0, 2, 3]), t([1, 1, 1]), V3, (2, 3)), ValueError, "row 0 has column 1 twice"),
    ((t([0, 2, 3], torch.int32), t([0, 1, 2]), V3, (2, 3)), TypeError, "must share one dtype"),
    ((t([0, 2, 3], torch.float32), t([0, 1, 2]), V3, (2, 3)), TypeError, "crow_indices must be an integer"),
    ((t([0, 2, 3]), t([0, 1, 2], torch.uint8), V3, (2, 3)), TypeError, "col_indices must be an integer"),
    ((t([0, 2, 3]), t([0, 1, 2]), V3[None], (2, 3)), ValueError, "values must be 1-D"),
    ((t([0, 2, 3]), t([0, 1]), t([1.0, 2.0], torch.float32), (2, 3)), ValueError, "must end at nnz = 2"),
    ((t([0, 2, 3]), t([0, 1, 2]), V3[:2], (2, 3)), ValueError, "col_indices has 3 entries but values has 2"),
    ((t([0, 2, 3]), [0, 1, 2], V3, (2, 3)), TypeError, "col_indices must be a torch.Tensor"),
]


@pytest.mark.parametrize(("args", "error", "message"), CSR_ERRORS)
def test_csr_rejects_malformed_arrays(args, error, message):
    with pytest.raises(error, match=message):
        CSR(*args)


BLOCKS = torch.ones(2, 2, 2)
BSR_ERRORS = [
    ((t([0, 1, 2]), t([0, 0]), BLOCKS, (4, 5)), ValueError, r"blocksize \(2, 2\) does not divide shape \(4, 5\)"),
    ((t([0, 1, 2]), t([0, 0]), torch.ones(2, 0, 2), (4, 4)), ValueError, "blocksize must be positive"),
    ((t([0, 1, 2]), t([0, 0]), torch.ones(2, 4), (4, 4)), ValueError, r"values must be 3-D \(blocks, bh, bw\)"),
    ((t([0, 1, 1, 2]), t([0, 0]), BLOCKS, (4, 4)), ValueError, r"3 entries \(block rows \+ 1\)"),
    ((t([0, 1, 2]), t([0, 2]), BLOCKS, (4, 4)), ValueError, r"col_indices out of range: must lie in \[0, 2\)"),
    ((t([0, 2, 2]), t([1, 0]), BLOCKS, (4, 4)), ValueError, "row 0 has column 0 after column 1"),
    ((t([0, 1, 3]), t([0, 0]), BLOCKS, (4, 4)), ValueError, "must end at nnz = 2"),
    ((t([0, 1, 2]), t([0, 0, 1]), BLOCKS, (4, 4)), ValueError, "col_indices has 3 entries but values holds 2 blocks"),
    ((t([0, 1, 2]), t([0, 0], torch.int32), BLOCKS, (4, 4)), TypeError, "must share one dtype"),
    ((t([0, 1, 2]), t([0, 0]), BLOCKS.bool(), (4, 4)), TypeError, "values has dtype torch.bool"),
]


@pytest.mark.parametrize(("args", "error", "message"), BSR_ERRORS)
def test_bsr_rejects_malformed_arrays(args, error, message):
    with pytest.raises(error, match=message):
        BSR(*args)


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
@pytest.mark.parametrize(("dense", "kwargs", "error", "message"), [
    ([[1.0]], {}, TypeError, "dense must be a torch.Tensor"),
    (torch.ones(4), {}, ValueError, "dense must be 2-D"),
    (torch.ones(2, 2, 2), {}, ValueError, "dense must be 2-D"),
    (torch.ones(2, 2, dtype=torch.bool), {}, TypeError, "dense has dtype torch.bool"),
    (torch.ones(2, 2), {"index_dtype": torch.float32}, TypeError, "index_dtype must be an integer"),
    (torch.ones(2, 2), {"index_dtype": torch.int16}, TypeError, "torch.int32 or torch.int64"),
])
def test_from_dense_rejects_what_it_cannot_store(name, dense, kwargs, error, message):
    with pytest.raises(error, match=message):
        if name == "bsr":
            BSR.from_dense(dense, (1, 1), **kwargs)
        else:
            FORMATS[name].from_dense(dense, **kwargs)


def test_bsr_from_dense_rejects_bad_blocksizes():
    with pytest.raises(ValueError, match=r"blocksize \(3, 2\) does not divide shape \(4, 4\): dim 0 has size 4"):
        BSR.from_dense(torch.ones(4, 4), (3, 2))
    with pytest.raises(TypeError, match="blocksize must be two ints"):
        BSR.from_dense(torch.ones(4, 4), (2.0, 2))
    with pytest.raises(TypeError, match="blocksize must be two ints"):
        BSR.from_dense(torch.ones(4, 4), (2,))
    with pytest.raises(ValueError, match="blocksize must be positive"):
        BSR.from_dense(torch.ones(4, 4), (0, 2))


def test_from_torch_rejects_other_layouts_and_dense_dimensions():
    dense = torch.eye(4)
    with pytest.raises(TypeError, match="expected a torch.sparse_csr tensor, got layout torch.strided"):
        CSR.from_torch(dense)
    with pytest.raises(TypeError, match="expected a torch.sparse_coo tensor, got layout torch.sparse_csr"):
        COO.from_torch(dense.to_sparse_csr())
    with pytest.raises(TypeError, match="expected a torch.sparse_bsr tensor"):
        BSR.from_torch(dense.to_sparse())
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        CSR.from_torch([[1.0]])
    with pytest.raises(ValueError, match="only 2-D tensors without dense dimensions"):
        COO.from_torch(torch.ones(2, 2, 3).to_sparse(2))
    with pytest.raises(ValueError, match="only 2-D tensors without batch or dense dimensions"):
        CSR.from_torch(torch.ones(2, 2, 3).to_sparse_csr(dense_dim=1))
    with pytest.raises(ValueError, match="only 2-D tensors without batch or dense dimensions"):
        BSR.from_torch(torch.ones(3, 2, 2).to_sparse_bsr((1, 1)))


def test_from_scipy_rejects_other_formats():
    with pytest.raises(TypeError, match=r"must be a scipy.sparse csr matrix or array, got a scipy coo matrix .*tocsr"):
        CSR.from_scipy(sp.coo_array(np.eye(2)))
    with pytest.raises(TypeError, match="got ndarray"):
        COO.from_scipy(np.eye(2))
    with pytest.raises(TypeError, match="scipy.sparse bsr matrix"):
        BSR.from_scipy(sp.csr_matrix(np.eye(2)))
    with pytest.raises(TypeError, match="values has dtype torch.complex128"):
        CSR.from_scipy(sp.csr_array(np.eye(2, dtype=np.complex128)))


@pytest.mark.parametrize("name", ["coo", "csr", "bsr"])
def test_matmul_rejects_bad_operands(name):
    matrix = build(name, torch.eye(4), (2, 2))
    with pytest.raises(ValueError, match=r"shape mismatch, \(4, 4\) @ \(3, 2\): x.shape\[0\] must be 4"):
        matrix @ torch.ones(3, 2)
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the values have torch.float32"):
        matrix @ torch.ones(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x must be a vector or a matrix"):
        matrix @ torch.ones(4, 2, 2)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        matrix @ np.ones((4, 2), dtype=np.float32)


def test_csr_matmul_methods():
    ints = CSR.from_dense(torch.eye(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="'embedding_bag' needs floating values"):
        ints.matmul(torch.ones(3, 1, dtype=torch.int32), method="embedding_bag")
    with pytest.raises(ValueError, match="method must be one of"):
        ints.matmul(torch.ones(3, 1, dtype=torch.int32), method="loop")


def test_storage_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match="kind must be 'dense', 'coo', 'csr' or 'bsr'"):
        storage_nbytes("csc", (4, 4), 1)
    with pytest.raises(ValueError, match="nnz must be a multiple of 4"):
        storage_nbytes("bsr", (4, 4), 6, blocksize=(2, 2))
    with pytest.raises(ValueError, match="kind must be 'coo', 'csr' or 'bsr'"):
        breakeven_sparsity("dense", (4, 4))
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\]"):
        random_sparse((4, 4), 1.5)
    with pytest.raises(ValueError, match="index_dtype torch.int32 cannot hold"):
        COO.from_dense(torch.empty(1, 2**31, device="meta"), index_dtype=torch.int32)  # meta: no memory
