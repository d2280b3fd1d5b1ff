"""Sparse storage formats, our own: COO, CSR and BSR matrices with torch tensors inside.

A sparse format keeps only the stored entries and where they are:

- **COO** (coordinate): ``indices`` (2, nnz) holds the row and the column of every stored value, ``values``
  (nnz,) the values, in any order, no position twice. The simplest format: two indices per value.
- **CSR** (compressed sparse row): the entries sorted by row, columns ascending within a row, and the row array
  compressed into ``crow_indices`` (rows + 1,): row i's entries are ``crow_indices[i]:crow_indices[i + 1]`` of
  ``col_indices`` (nnz,) and ``values`` (nnz,). About one index per value, and a row's entries sit together,
  which a matmul wants.
- **BSR** (block sparse row): CSR over a grid of ``blocksize`` (bh, bw) blocks: ``crow_indices`` (block rows + 1,),
  ``col_indices`` (one block column per stored block) and ``values`` (stored blocks, bh, bw), whole dense blocks.
  One index per block, so indices are cheap, but the zeros inside a stored block are stored too.

The arrays are the ones `torch.sparse_coo_tensor` / `sparse_csr_tensor` / `sparse_bsr_tensor` and scipy's
`coo_array` / `csr_array` / `bsr_array` hold; `from_torch` / `to_torch` and `from_scipy` / `to_scipy` convert.
`from_dense` stores the entries that are not zero, so dense -> format -> dense is exact bit for bit (NaN and inf
included) except that -0.0, a zero like +0.0, is not stored and comes back as +0.0, as in torch and scipy: a
weight pruned by multiplying it with a mask holds -0.0 wherever it was negative, and those must not be stored.
``keep_signed_zeros=True`` stores every entry whose bits are not all zero instead, and then the round trip is
exact bit for bit without exception. Constructors validate their arrays: anything malformed is a ValueError (or
a TypeError for a wrong type or dtype) that names the argument. Index dtypes are int32 or int64; value dtypes are
`VALUE_DTYPES`.

``A @ X`` (X of shape (cols, n), or a vector) is vectorised, with no Python loop over rows. CSR sums each row's
rows of X scaled by its values in one fused pass (`torch.nn.functional.embedding_bag` with per-sample weights:
gather + scale + segment sum, nothing materialised), or, like COO, gathers X at the column indices, scales and
adds the products into their rows with `index_add_`, in chunks of nnz that bound the memory. BSR multiplies the
stored blocks with X's matching row blocks in one batched matmul and adds them into their block rows. float16
and bfloat16 accumulate in float32; integer matmuls wrap around as torch's do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from sparsity_lab._optional import require

__all__ = [
    "BSR",
    "COO",
    "CSR",
    "FORMATS",
    "INDEX_DTYPES",
    "VALUE_DTYPES",
    "block_view",
    "breakeven_sparsity",
    "random_sparse",
    "storage_nbytes",
    "storage_sweep",
    "stored_entries",
]

VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
INDEX_DTYPES = (torch.int32, torch.int64)
# With keep_signed_zeros, floats are compared through integers of their width, so that -0.0 counts as stored.
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
_ACCUMULATE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
# Products the gather + index_add_ path holds at once (2 MiB of float32): bounds memory at any density, and is
# faster than larger chunks (4096² CSR at 99% sparsity times 64 columns, one thread: 13 ms with chunks of 2^19,
# 55 ms with 2^22, 75 ms in one gather).
CHUNK_ELEMENTS = 1 << 19


# --- validation -------------------------------------------------------------------------------------------------

def _check_tensor(value: Any, name: str, owner: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_value_dtype(dtype: torch.dtype, name: str, owner: str) -> None:
    if dtype not in VALUE_DTYPES:
        raise TypeError(f"{owner}: {name} has dtype {dtype}; supported value dtypes are "
                        f"{', '.join(str(d).removeprefix('torch.') for d in VALUE_DTYPES)}")


def _check_index_dtype(dtype: torch.dtype, name: str, owner: str) -> None:
    if dtype not in INDEX_DTYPES:
        raise TypeError(f"{owner}: {name} must be an integer tensor of dtype torch.int32 or torch.int64, got {dtype}")


def _check_ndim(tensor: torch.Tensor, ndim: int, name: str, owner: str, layout: str) -> None:
    if tensor.ndim != ndim:
        raise ValueError(f"{owner}: {name} must be {ndim}-D {layout}, got shape {tuple(tensor.shape)}")


def _check_shape(shape: Any, owner: str) -> tuple[int, int]:
    """`shape` as a tuple of two non-negative ints, or an error naming it."""
    if not isinstance(shape, Sequence) or len(shape) != 2:
        raise ValueError(f"{owner}: shape must be (rows, cols), two ints, got {shape!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{owner}: shape must hold ints, got {shape!r}")
    if min(shape) < 0:
        raise ValueError(f"{owner}: shape must not be negative, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _check_same_device(owner: str, **tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{owner}: the arrays must be on one device, got {devices}")


def _check_range(index: torch.Tensor, high: int, name: str, owner: str) -> None:
    """Every entry of `index` in [0, high), or a ValueError naming the first one out of range."""
    bad = ((index < 0) | (index >= high)).nonzero()
    if bad.numel():
        position = int(bad[0, 0])
        value = int(index[position])
        raise ValueError(f"{owner}: {name} out of range: must lie in [0, {high}), got {value} at position {position}")


def _check_crow(crow: torch.Tensor, n_rows: int, nnz: int, owner: str, what: str = "rows") -> None:
    """Row pointers: n_rows + 1 of them, from 0 to nnz, never decreasing."""
    if crow.shape != (n_rows + 1,):
        raise ValueError(f"{owner}: crow_indices must have {n_rows + 1} entries ({what} + 1), "
                         f"got shape {tuple(crow.shape)}")
    if int(crow[0]) != 0:
        raise ValueError(f"{owner}: crow_indices must start at 0, got crow_indices[0] = {int(crow[0])}")
    if int(crow[-1]) != nnz:
        raise ValueError(f"{owner}: crow_indices must end at nnz = {nnz} (the length of col_indices), "
                         f"got crow_indices[-1] = {int(crow[-1])}")
    drops = (crow.diff() < 0).nonzero()
    if drops.numel():
        i = int(drops[0, 0])
        raise ValueError(f"{owner}: crow_indices must not decrease, got crow_indices[{i}] = {int(crow[i])} > "
                         f"crow_indices[{i + 1}] = {int(crow[i + 1])}")


def _expand_rows(crow: torch.Tensor) -> torch.Tensor:
    """The row of every entry of a CSR structure: row i repeated crow[i + 1] - crow[i] times (crow's dtype)."""
    rows = torch.arange(crow.numel() - 1, dtype=crow.dtype, device=crow.device)
    return torch.repeat_interleave(rows, crow.diff().long())


def _check_sorted_within_rows(crow: torch.Tensor, col: torch.Tensor, owner: str) -> None:
    """Columns strictly ascending within every row (sorted, no repeats), as torch's CSR invariants require."""
    rows = _expand_rows(crow)
    step = col.diff()
    bad = ((rows[1:] == rows[:-1]) & (step <= 0)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        row, first, second = int(rows[i]), int(col[i]), int(col[i + 1])
        problem = f"column {first} twice" if first == second else f"column {second} after column {first}"
        raise ValueError(f"{owner}: col_indices must be sorted and unique within each row; row {row} has {problem} "
                         "(CSR.from_scipy sorts and sums a non-canonical scipy matrix)")


def _check_compressed(crow: Any, col: Any, values: Any, shape: Any, owner: str) -> tuple[int, int]:
    """What CSR and BSR arrays share: tensors, a valid shape, index dtypes (one for both), a value dtype, 1-D
    col_indices, one device; returns the shape."""
    for name, tensor in (("crow_indices", crow), ("col_indices", col), ("values", values)):
        _check_tensor(tensor, name, owner)
    shape = _check_shape(shape, owner)
    _check_index_dtype(crow.dtype, "crow_indices", owner)
    _check_index_dtype(col.dtype, "col_indices", owner)
    if crow.dtype != col.dtype:
        raise TypeError(f"{owner}: crow_indices ({crow.dtype}) and col_indices ({col.dtype}) must share one dtype")
    _check_value_dtype(values.dtype, "values", owner)
    _check_ndim(col, 1, "col_indices", owner, "(nnz,)")
    _check_same_device(owner, crow_indices=crow, col_indices=col, values=values)
    return shape


def _check_dense(dense: Any, owner: str) -> None:
    _check_tensor(dense, "dense", owner)
    _check_ndim(dense, 2, "dense", owner, "(a matrix)")
    _check_value_dtype(dense.dtype, "dense", owner)


def _check_fits(index_dtype: torch.dtype, largest: int, owner: str) -> None:
    _check_index_dtype(index_dtype, "index_dtype", owner)
    if largest > torch.iinfo(index_dtype).max:
        raise ValueError(f"{owner}: index_dtype {index_dtype} cannot hold {largest}; use torch.int64")


def stored_entries(dense: torch.Tensor, keep_signed_zeros: bool = False) -> torch.Tensor:
    """Which entries `from_dense` stores (a bool mask): the nonzero ones (NaN too), and -0.0 if `keep_signed_zeros`
    (then every entry whose bits are not all zero)."""
    bits = _BITS.get(dense.dtype)
    return dense.view(bits) != 0 if keep_signed_zeros and bits is not None else dense != 0


# --- shared behaviour --------------------------------------------------------------------------------------------

@contextmanager
def _quiet_beta() -> Iterator[None]:
    """Silence torch's 'sparse CSR/BSR support is in beta' warning around a conversion."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse (CSR|BSR|CSC|BSC) tensor support is in beta")
        yield


def _require_scipy_dtype(dtype: torch.dtype, owner: str) -> None:
    if dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{owner}.to_scipy: scipy.sparse has no {dtype}; convert the values first, "
                        "e.g. .to(torch.float32)")


def _scipy_sparse(matrix: Any, fmt: str, owner: str) -> Any:
    """`matrix` if it is a scipy sparse matrix or array of format `fmt`, canonical (a sorted, summed copy if not)."""
    sparse = require("scipy.sparse", extra="dev")
    if not sparse.issparse(matrix) or matrix.format != fmt:
        got = f"a scipy {matrix.format} matrix" if sparse.issparse(matrix) else type(matrix).__name__
        raise TypeError(f"{owner}.from_scipy: matrix must be a scipy.sparse {fmt} matrix or array, got {got} "
                        f"(convert it with .to{fmt}())")
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    return matrix


def _from_numpy(array: Any) -> torch.Tensor:
    """A torch copy of a numpy array (scipy's arrays stay scipy's)."""
    return torch.from_numpy(array.copy())


def _scipy_indices(matrix: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A scipy CSR / BSR matrix's indptr and indices as torch tensors of one dtype (the wider of the two)."""
    crow, col = _from_numpy(matrix.indptr), _from_numpy(matrix.indices)
    dtype = torch.promote_types(crow.dtype, col.dtype)
    return crow.to(dtype), col.to(dtype)


def _gather_index_add(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
                      n_rows: int) -> torch.Tensor:
    """out[rows[j]] += values[j] * x[cols[j]] for every entry j, in chunks of at most CHUNK_ELEMENTS products."""
    out = torch.zeros(n_rows, x.shape[1], dtype=x.dtype, device=x.device)
    chunk = max(1, CHUNK_ELEMENTS // max(x.shape[1], 1))
    for start in range(0, cols.numel(), chunk):
        part = slice(start, start + chunk)
        out.index_add_(0, rows[part], x.index_select(0, cols[part]).mul_(values[part, None]))
    return out


class _SparseMatrix:
    """What COO, CSR and BSR share: sizes, bytes, dtype conversion, the `@` operator and `.T`."""

    shape: tuple[int, int]
    values: torch.Tensor
    _index_names: tuple[str, ...]

    def _index_tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self._index_names)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def index_dtype(self) -> torch.dtype:
        return self._index_tensors()[0].dtype

    @property
    def nnz(self) -> int:
        """Stored values (for BSR, every entry of the stored blocks, zeros inside them included)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """Stored values / entries of the matrix (0.0 for an empty shape)."""
        numel = self.shape[0] * self.shape[1]
        return self.nnz / numel if numel else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: values and every index array."""
        return sum(t.numel() * t.element_size() for t in (self.values, *self._index_tensors()))

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same matrix stored dense in the same dtype."""
        return self.shape[0] * self.shape[1] * self.values.element_size()

    @property
    def compression_ratio(self) -> float:
        """Dense bytes / this format's bytes: above 1 the format is smaller (inf when it stores no bytes)."""
        return self.dense_nbytes / self.nbytes if self.nbytes else math.inf

    @property
    def T(self):
        """The transpose (see `transpose`)."""
        return self.transpose()

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)

    def to(self, *args: Any, **kwargs: Any):
        """The same matrix with its values converted / moved by `Tensor.to(...)`; indices follow the device."""
        values = self.values.to(*args, **kwargs)
        moved = {name: getattr(self, name).to(values.device) for name in self._index_names}
        return replace(self, values=values, **moved)

    def _operand(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` as a (cols, n) matrix and the values, both in the accumulation dtype; errors name what is wrong."""
        owner = type(self).__name__
        _check_tensor(x, "x", f"{owner} @ x")
        if x.ndim not in (1, 2):
            raise ValueError(f"{owner} @ x: x must be a vector or a matrix, got shape {tuple(x.shape)}")
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"{owner} @ x: shape mismatch, {self.shape} @ {tuple(x.shape)}: "
                             f"x.shape[0] must be {self.shape[1]}")
        if x.dtype != self.dtype:
            raise TypeError(f"{owner} @ x: x has dtype {x.dtype} but the values have {self.dtype}; "
                            "convert one (torch.mm also needs equal dtypes)")
        if x.device != self.device:
            raise ValueError(f"{owner} @ x: x is on {x.device} but the matrix is on {self.device}")
        accumulate = _ACCUMULATE.get(self.dtype, self.dtype)
        matrix = x if x.ndim == 2 else x[:, None]
        return matrix.to(accumulate).contiguous(), self.values.to(accumulate)

    def _result(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = out.to(self.dtype)
        return out[:, 0] if x.ndim == 1 else out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, "
                f"index_dtype={self.index_dtype}, density={self.density:.4g})")


# --- COO ---------------------------------------------------------------------------------------------------------

def _check_coo_arrays(indices: Any, values: Any, shape: Any, owner: str) -> tuple[int, int]:
    """Everything about COO arrays except repeated positions; returns the shape."""
    _check_tensor(indices, "indices", owner)
    _check_tensor(values, "values", owner)
    shape = _check_shape(shape, owner)
    _check_index_dtype(indices.dtype, "indices", owner)
    _check_value_dtype(values.dtype, "values", owner)
    if indices.ndim != 2 or indices.shape[0] != 2:
        raise ValueError(f"{owner}: indices must have shape (2, nnz) (rows, then columns), "
                         f"got {tuple(indices.shape)}")
    _check_ndim(values, 1, "values", owner, "(nnz,)")
    if values.shape[0] != indices.shape[1]:
        raise ValueError(f"{owner}: indices hold {indices.shape[1]} positions but values has {values.shape[0]}")
    _check_same_device(owner, indices=indices, values=values)
    _check_range(indices[0], shape[0], "indices[0] (rows)", owner)
    _check_range(indices[1], shape[1], "indices[1] (columns)", owner)
    return shape


def _linear(indices: torch.Tensor, cols: int) -> torch.Tensor:
    return indices[0].long() * cols + indices[1].long()


@dataclass(frozen=True, eq=False, repr=False)
class COO(_SparseMatrix):
    """A matrix as coordinates: `indices` (2, nnz) rows and columns, `values` (nnz,), any order, no repeats."""

    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    _index_names = ("indices",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _check_coo_arrays(self.indices, self.values, self.shape, "COO"))
        linear = _linear(self.indices, self.shape[1]).sort().values
        repeated = (linear.diff() == 0).nonzero()
        if repeated.numel():
            at = int(linear[repeated[0, 0]])
            raise ValueError(f"COO: indices hold position ({at // self.shape[1]}, {at % self.shape[1]}) more than "
                             "once; COO.coalesced(indices, values, shape) sums repeated entries (as torch's "
                             "coalesce does)")

    @classmethod
    def coalesced(cls, indices: torch.Tensor, values: torch.Tensor, shape: Sequence[int]) -> COO:
        """A COO from entries that may repeat: sorted row-major, repeated positions summed (`Tensor.coalesce`)."""
        shape = _check_coo_arrays(indices, values, shape, "COO.coalesced")
        positions, inverse = torch.unique(_linear(indices, shape[1]), sorted=True, return_inverse=True)
        summed = torch.zeros(positions.numel(), dtype=values.dtype, device=values.device)
        summed.index_add_(0, inverse, values)
        cols = max(shape[1], 1)
        return cls(torch.stack([positions // cols, positions % cols]).to(indices.dtype), summed, shape)

    @classmethod
    def from_dense(cls, dense: torch.Tensor, index_dtype: torch.dtype = torch.int64,
                   keep_signed_zeros: bool = False) -> COO:
        """The nonzero entries of `dense` (and its -0.0 ones if `keep_signed_zeros`), in row-major order."""
        _check_dense(dense, "COO.from_dense")
        _check_fits(index_dtype, max(dense.shape), "COO.from_dense")
        stored = stored_entries(dense, keep_signed_zeros)
        return cls(stored.nonzero().T.to(index_dtype).contiguous(), dense[stored], tuple(dense.shape))

    def to_dense(self) -> torch.Tensor:
        """The dense matrix: the values at their positions, +0.0 elsewhere."""
        dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        dense[self.indices[0], self.indices[1]] = self.values
        return dense

    @property
    def is_coalesced(self) -> bool:
        """Whether the entries are in row-major order (with no repeats, which COO never has: torch's meaning)."""
        return bool((_linear(self.indices, self.shape[1]).diff() > 0).all())

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> COO:
        """From a 2-D `torch.sparse_coo` tensor (an uncoalesced one is coalesced first: repeats summed)."""
        _check_tensor(tensor, "tensor", "COO.from_torch")
        if tensor.layout != torch.sparse_coo:
            raise TypeError(f"COO.from_torch: expected a torch.sparse_coo tensor, got layout {tensor.layout}")
        if tensor.sparse_dim() != 2 or tensor.dense_dim() != 0:
            raise ValueError(f"COO.from_torch: only 2-D tensors without dense dimensions, got sparse_dim "
                             f"{tensor.sparse_dim()}, dense_dim {tensor.dense_dim()}")
        tensor = tensor if tensor.is_coalesced() else tensor.coalesce()
        return cls(tensor.indices(), tensor.values(), tuple(tensor.shape))

    def to_torch(self) -> torch.Tensor:
        """As a `torch.sparse_coo` tensor (torch wants int64 indices, so int32 ones are widened); torch re-checks it."""
        return torch.sparse_coo_tensor(self.indices.long(), self.values, self.shape, is_coalesced=self.is_coalesced,
                                       check_invariants=True)

    @classmethod
    def from_scipy(cls, matrix: Any) -> COO:
        """From a scipy COO matrix or array (a non-canonical one is sorted and its repeats summed, as scipy does)."""
        matrix = _scipy_sparse(matrix, "coo", "COO")
        indices = torch.stack([_from_numpy(matrix.row), _from_numpy(matrix.col)])
        return cls(indices, _from_numpy(matrix.data), tuple(int(s) for s in matrix.shape))

    def to_scipy(self) -> Any:
        """As a `scipy.sparse.coo_array` (a copy)."""
        sparse = require("scipy.sparse", extra="dev")
        _require_scipy_dtype(self.dtype, "COO")
        rows, cols = self.indices.cpu().numpy()
        return sparse.coo_array((self.values.cpu().numpy(), (rows, cols)), shape=self.shape, copy=True)

    def to_csr(self) -> CSR:
        """The same matrix as CSR: the entries sorted by row (then column), the rows counted into crow_indices."""
        order = torch.argsort(_linear(self.indices, self.shape[1]))
        counts = torch.bincount(self.indices[0].long(), minlength=self.shape[0])
        crow = torch.zeros(self.shape[0] + 1, dtype=self.indices.dtype, device=self.device)
        crow[1:] = counts.cumsum(0)
        return CSR(crow, self.indices[1, order], self.values[order], self.shape)

    def transpose(self) -> COO:
        """The transpose: rows and columns swapped, entries re-sorted row-major."""
        flipped = self.indices.flip(0)
        order = torch.argsort(_linear(flipped, self.shape[0]))
        return COO(flipped[:, order].contiguous(), self.values[order], (self.shape[1], self.shape[0]))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """self @ x: x gathered at the column indices, scaled by the values, added into the rows (`index_add_`)."""
        matrix, values = self._operand(x)
        out = _gather_index_add(self.indices[0], self.indices[1], values, matrix, self.shape[0])
        return self._result(out, x)


# --- CSR ---------------------------------------------------------------------------------------------------------

CSR_METHODS = ("auto", "embedding_bag", "index_add")


@dataclass(frozen=True, eq=False, repr=False)
class _CompressedRows(_SparseMatrix):
    """What CSR and BSR share: row pointers, column indices and values in torch's and scipy's compressed layouts
    (`_LAYOUT`, `_FORMAT`), values of `_VALUES_NDIM` dimensions (1: entries, 3: blocks)."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    _index_names = ("crow_indices", "col_indices")
    _LAYOUT: ClassVar[torch.layout]
    _FORMAT: ClassVar[str]
    _VALUES_NDIM: ClassVar[int]

    def _checked_shape(self, values_layout: str) -> tuple[int, int]:
        """The arrays checked together and the shape normalised in place; values must be `values_layout`."""
        owner = type(self).__name__
        shape = _check_compressed(self.crow_indices, self.col_indices, self.values, self.shape, owner)
        object.__setattr__(self, "shape", shape)
        _check_ndim(self.values, self._VALUES_NDIM, "values", owner, values_layout)
        return shape

    def _check_rows(self, n_rows: int, n_cols: int, what: str = "rows") -> None:
        """Row pointers for `n_rows` (block) rows, column indices below `n_cols`, ascending within each row."""
        owner = type(self).__name__
        _check_crow(self.crow_indices, n_rows, self.col_indices.numel(), owner, what=what)
        _check_range(self.col_indices, n_cols, "col_indices", owner)
        _check_sorted_within_rows(self.crow_indices, self.col_indices, owner)

    @classmethod
    def from_torch(cls, tensor: torch.Tensor):
        """From a 2-D torch sparse tensor of this layout without batch or dense dimensions."""
        owner = f"{cls.__name__}.from_torch"
        _check_tensor(tensor, "tensor", owner)
        if tensor.layout != cls._LAYOUT:
            raise TypeError(f"{owner}: expected a {cls._LAYOUT} tensor, got layout {tensor.layout}")
        if tensor.ndim != 2 or tensor.values().ndim != cls._VALUES_NDIM:
            raise ValueError(f"{owner}: only 2-D tensors without batch or dense dimensions, got shape "
                             f"{tuple(tensor.shape)} with values of shape {tuple(tensor.values().shape)}")
        return cls(tensor.crow_indices(), tensor.col_indices(), tensor.values(), tuple(tensor.shape))

    def to_torch(self) -> torch.Tensor:
        """As a torch sparse tensor of this layout (same arrays, same index dtype); torch re-checks the invariants."""
        with _quiet_beta():
            return torch.sparse_compressed_tensor(self.crow_indices, self.col_indices, self.values, self.shape,
                                                  layout=self._LAYOUT, check_invariants=True)

    @classmethod
    def from_scipy(cls, matrix: Any):
        """From a scipy matrix or array of this format (a non-canonical one is sorted and its repeats summed, as
        scipy does)."""
        matrix = _scipy_sparse(matrix, cls._FORMAT, cls.__name__)
        crow, col = _scipy_indices(matrix)
        return cls(crow, col, _from_numpy(matrix.data), tuple(int(s) for s in matrix.shape))

    def to_scipy(self) -> Any:
        """As a scipy sparse array of this format (a copy; scipy may narrow int64 indices to int32)."""
        sparse = require("scipy.sparse", extra="dev")
        _require_scipy_dtype(self.dtype, type(self).__name__)
        arrays = (self.values.cpu().numpy(), self.col_indices.cpu().numpy(), self.crow_indices.cpu().numpy())
        extra = {"blocksize": self.values.shape[1:]} if self._VALUES_NDIM == 3 else {}
        return getattr(sparse, f"{self._FORMAT}_array")(arrays, shape=self.shape, copy=True, **extra)


@dataclass(frozen=True, eq=False, repr=False)
class CSR(_CompressedRows):
    """A matrix by rows: `crow_indices` (rows + 1,) row pointers, `col_indices` (nnz,) ascending within each row,
    `values` (nnz,); both index arrays of one dtype (int32 or int64), as torch and scipy have them."""

    _LAYOUT, _FORMAT, _VALUES_NDIM = torch.sparse_csr, "csr", 1

    def __post_init__(self) -> None:
        shape, col, values = self._checked_shape("(nnz,)"), self.col_indices, self.values
        if col.shape != values.shape:
            raise ValueError(f"CSR: col_indices has {col.numel()} entries but values has {values.numel()}")
        self._check_rows(shape[0], shape[1])

    @classmethod
    def from_dense(cls, dense: torch.Tensor, index_dtype: torch.dtype = torch.int64,
                   keep_signed_zeros: bool = False) -> CSR:
        """The nonzero entries of `dense` (and its -0.0 ones if `keep_signed_zeros`), row by row."""
        _check_dense(dense, "CSR.from_dense")
        stored = stored_entries(dense, keep_signed_zeros)
        _check_fits(index_dtype, max(*dense.shape, int(stored.sum())), "CSR.from_dense")
        crow = torch.zeros(dense.shape[0] + 1, dtype=index_dtype, device=dense.device)
        crow[1:] = stored.sum(1).cumsum(0)
        cols = stored.nonzero()[:, 1].to(index_dtype)
        return cls(crow, cols, dense[stored], tuple(dense.shape))

    def row_indices(self) -> torch.Tensor:
        """The row of every stored entry (crow_indices expanded): the row array CSR compressed away."""
        return _expand_rows(self.crow_indices)

    def to_coo(self) -> COO:
        """The same matrix as COO: the row array expanded back."""
        return COO(torch.stack([self.row_indices(), self.col_indices]), self.values, self.shape)

    def to_dense(self) -> torch.Tensor:
        """The dense matrix: the values at their positions, +0.0 elsewhere."""
        dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        dense[self.row_indices(), self.col_indices] = self.values
        return dense

    def transpose(self) -> CSR:
        """The transpose (CSR of Aᵀ, i.e. A in CSC): entries stably sorted by column, so rows stay ascending."""
        order = torch.argsort(self.col_indices, stable=True)
        counts = torch.bincount(self.col_indices.long(), minlength=self.shape[1])
        crow = torch.zeros(self.shape[1] + 1, dtype=self.crow_indices.dtype, device=self.device)
        crow[1:] = counts.cumsum(0)
        return CSR(crow, self.row_indices()[order], self.values[order], (self.shape[1], self.shape[0]))

    def matmul(self, x: torch.Tensor, method: str = "auto") -> torch.Tensor:
        """self @ x, row by row the sum of x's rows at the column indices, scaled by the values.

        method "embedding_bag" does it in one fused pass (`F.embedding_bag`, per-sample weights, sum mode: the
        fastest here); "index_add" gathers the products, then adds them into their rows with `index_add_`, in
        chunks. "auto": embedding_bag for floating values, index_add for integers (which embedding_bag refuses).
        """
        if method not in CSR_METHODS:
            raise ValueError(f"CSR.matmul: method must be one of {CSR_METHODS}, got {method!r}")
        matrix, values = self._operand(x)
        if method == "auto":
            method = "embedding_bag" if values.is_floating_point() else "index_add"
        if method == "index_add":
            out = _gather_index_add(self.row_indices(), self.col_indices, values, matrix, self.shape[0])
        elif not values.is_floating_point():
            raise TypeError(f"CSR.matmul: method 'embedding_bag' needs floating values, got {self.dtype}; "
                            "use method='index_add'")
        elif self.shape[0] == 0 or matrix.shape[1] == 0:
            out = torch.zeros(self.shape[0], matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
        else:
            out = F.embedding_bag(self.col_indices, matrix, self.crow_indices, mode="sum",
                                  per_sample_weights=values, include_last_offset=True)
        return self._result(out, x)


# --- BSR ---------------------------------------------------------------------------------------------------------

def _check_blocksize(shape: tuple[int, int], blocksize: Sequence[int], owner: str, hint: str = "") -> tuple[int, int]:
    """`blocksize` as (bh, bw), positive and dividing `shape`, or an error naming it (and `hint`, how to fix it)."""
    if len(blocksize) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocksize):
        raise TypeError(f"{owner}: blocksize must be two ints (bh, bw), got {tuple(blocksize)!r}")
    if min(blocksize) < 1:
        raise ValueError(f"{owner}: blocksize must be positive, got {tuple(blocksize)}")
    for dim, (size, b) in enumerate(zip(shape, blocksize, strict=True)):
        if size % b:
            raise ValueError(f"{owner}: blocksize {tuple(blocksize)} does not divide shape {shape}: dim {dim} has "
                             f"size {size}, which is not divisible by {b}{hint}")
    return int(blocksize[0]), int(blocksize[1])


def block_view(dense: torch.Tensor, blocksize: int | Sequence[int], pad: bool = False) -> torch.Tensor:
    """`dense` (R, C) as its (R/bh, C/bw) grid of (bh, bw) blocks (an int: square blocks): a view, or with `pad`
    a copy zero-padded at the end of each side to whole blocks (else a side that is not whole blocks is refused)."""
    _check_tensor(dense, "dense", "block_view")
    _check_ndim(dense, 2, "dense", "block_view", "(a matrix)")
    if isinstance(blocksize, int) and not isinstance(blocksize, bool):
        blocksize = (blocksize, blocksize)
    if pad:
        bh, bw = _check_blocksize((0, 0), tuple(blocksize), "block_view")  # the blocksize alone
        dense = F.pad(dense, (0, -dense.shape[1] % bw, 0, -dense.shape[0] % bh))
    bh, bw = _check_blocksize(tuple(dense.shape), tuple(blocksize), "block_view",
                              "; pass pad=True to zero-pad to whole blocks")
    return dense.reshape(dense.shape[0] // bh, bh, dense.shape[1] // bw, bw).transpose(1, 2)


@dataclass(frozen=True, eq=False, repr=False)
class BSR(_CompressedRows):
    """A matrix by rows of blocks: `crow_indices` (block rows + 1,), `col_indices` (blocks,) block columns
    ascending within each block row, `values` (blocks, bh, bw) the stored blocks; blocksize = values.shape[1:]."""

    _LAYOUT, _FORMAT, _VALUES_NDIM = torch.sparse_bsr, "bsr", 3

    def __post_init__(self) -> None:
        shape, col, values = self._checked_shape("(blocks, bh, bw)"), self.col_indices, self.values
        bh, bw = _check_blocksize(shape, tuple(values.shape[1:]), "BSR")
        if col.numel() != values.shape[0]:
            raise ValueError(f"BSR: col_indices has {col.numel()} entries but values holds {values.shape[0]} blocks")
        self._check_rows(shape[0] // bh, shape[1] // bw, what="block rows")

    @property
    def blocksize(self) -> tuple[int, int]:
        return int(self.values.shape[1]), int(self.values.shape[2])

    @property
    def n_blocks(self) -> int:
        """Stored blocks."""
        return int(self.values.shape[0])

    @property
    def block_size(self) -> int:
        """The side of square blocks (what the block-sparse kernel takes); a ValueError for rectangular ones."""
        bh, bw = self.blocksize
        if bh != bw:
            raise ValueError(f"BSR: blocks are {bh}x{bw}, not square")
        return bh

    @classmethod
    def from_dense(cls, dense: torch.Tensor, blocksize: int | Sequence[int], index_dtype: torch.dtype = torch.int64,
                   keep_signed_zeros: bool = False, pad: bool = False, block_mask: torch.Tensor | None = None) -> BSR:
        """Every block of `dense` that holds a nonzero entry (or a -0.0 if `keep_signed_zeros`), or exactly those
        where `block_mask` (one bool per block) is True; whole (zeros inside too, bit for bit), block row by block
        row. An int `blocksize` means square blocks; `pad` zero-pads `dense` to whole blocks first (the matrix then
        has the padded shape)."""
        _check_dense(dense, "BSR.from_dense")
        blocks = block_view(dense, blocksize, pad)
        if block_mask is None:
            kept = stored_entries(blocks, keep_signed_zeros).flatten(2).any(-1)
        elif not isinstance(block_mask, torch.Tensor) or block_mask.shape != blocks.shape[:2]:
            got = tuple(block_mask.shape) if isinstance(block_mask, torch.Tensor) else type(block_mask).__name__
            raise ValueError(f"BSR.from_dense: block_mask must be one bool per block, {tuple(blocks.shape[:2])}, "
                             f"got {got}")
        else:
            kept = block_mask.to(device=dense.device, dtype=torch.bool)
        _check_fits(index_dtype, max(*kept.shape, int(kept.sum())), "BSR.from_dense")
        rows, cols = kept.nonzero(as_tuple=True)
        crow = torch.zeros(kept.shape[0] + 1, dtype=index_dtype, device=dense.device)
        crow[1:] = kept.sum(1).cumsum(0)
        shape = (blocks.shape[0] * blocks.shape[2], blocks.shape[1] * blocks.shape[3])
        return cls(crow, cols.to(index_dtype), blocks[rows, cols].contiguous(), shape)

    def block_row_indices(self) -> torch.Tensor:
        """The block row of every stored block (crow_indices expanded)."""
        return _expand_rows(self.crow_indices)

    def to_dense(self) -> torch.Tensor:
        """The dense matrix: the blocks at their places, +0.0 elsewhere."""
        (rows, cols), (bh, bw) = self.shape, self.blocksize
        grid = torch.zeros(rows // bh, cols // bw, bh, bw, dtype=self.dtype, device=self.device)
        grid[self.block_row_indices(), self.col_indices] = self.values
        return grid.transpose(1, 2).reshape(rows, cols)

    def transpose(self) -> BSR:
        """The transpose: blocks stably sorted by block column, each block transposed, blocksize swapped."""
        order = torch.argsort(self.col_indices, stable=True)
        counts = torch.bincount(self.col_indices.long(), minlength=self.shape[1] // self.blocksize[1])
        crow = torch.zeros(counts.numel() + 1, dtype=self.crow_indices.dtype, device=self.device)
        crow[1:] = counts.cumsum(0)
        values = self.values[order].transpose(1, 2).contiguous()
        return BSR(crow, self.block_row_indices()[order], values, (self.shape[1], self.shape[0]))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """self @ x: every stored block times x's matching row block (one batched matmul per chunk of blocks),
        added into its block row with `index_add_`."""
        matrix, values = self._operand(x)
        (rows, cols), (bh, bw), n = self.shape, self.blocksize, matrix.shape[1]
        row_blocks = matrix.reshape(cols // bw, bw, n)
        block_rows = self.block_row_indices()
        out = torch.zeros(rows // bh, bh, n, dtype=matrix.dtype, device=matrix.device)
        chunk = max(1, CHUNK_ELEMENTS // max(max(bh, bw) * n, 1))
        for start in range(0, self.n_blocks, chunk):
            part = slice(start, start + chunk)
            products = torch.bmm(values[part], row_blocks.index_select(0, self.col_indices[part]))
            out.index_add_(0, block_rows[part], products)
        return self._result(out.reshape(rows, n), x)


FORMATS = {"coo": COO, "csr": CSR, "bsr": BSR}


# --- storage -----------------------------------------------------------------------------------------------------

def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def storage_nbytes(kind: str, shape: Sequence[int], nnz: int, dtype: torch.dtype = torch.float32,
                   index_dtype: torch.dtype = torch.int64, blocksize: Sequence[int] = (1, 1)) -> int:
    """Bytes of a `kind` matrix ('dense', 'coo', 'csr', 'bsr') of `shape` storing `nnz` values, indices included.

    For BSR, `nnz` counts every entry of the stored blocks (a multiple of bh * bw). The same count as `.nbytes`
    of a built matrix, without building it.
    """
    rows, cols = _check_shape(tuple(shape), "storage_nbytes")
    value, index = _itemsize(dtype), _itemsize(index_dtype)
    if kind == "dense":
        return rows * cols * value
    if kind == "coo":
        return nnz * (2 * index + value)
    if kind == "csr":
        return (rows + 1) * index + nnz * (index + value)
    if kind == "bsr":
        bh, bw = _check_blocksize((rows, cols), tuple(blocksize), "storage_nbytes")
        if nnz % (bh * bw):
            raise ValueError(f"storage_nbytes: BSR stores whole {bh}x{bw} blocks, so nnz must be a multiple of "
                             f"{bh * bw}, got {nnz}")
        return (rows // bh + 1 + nnz // (bh * bw)) * index + nnz * value
    raise ValueError(f"storage_nbytes: kind must be 'dense', 'coo', 'csr' or 'bsr', got {kind!r}")


def breakeven_sparsity(kind: str, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                       index_dtype: torch.dtype = torch.int64, blocksize: Sequence[int] = (1, 1)) -> float:
    """The sparsity above which `kind` ('coo', 'csr', 'bsr') takes fewer bytes than the dense matrix.

    Solves storage_nbytes(kind, nnz) = dense bytes for nnz; for BSR the sparsity is that of the stored blocks'
    entries (a block-pruned matrix). 1.0 when the format is never smaller.
    """
    rows, cols = _check_shape(tuple(shape), "breakeven_sparsity")
    numel, value, index = rows * cols, _itemsize(dtype), _itemsize(index_dtype)
    if kind == "coo":
        fixed, per_value = 0, 2 * index + value
    elif kind == "csr":
        fixed, per_value = (rows + 1) * index, index + value
    elif kind == "bsr":
        bh, bw = _check_blocksize((rows, cols), tuple(blocksize), "breakeven_sparsity")
        fixed, per_value = (rows // bh + 1) * index, value + index / (bh * bw)
    else:
        raise ValueError(f"breakeven_sparsity: kind must be 'coo', 'csr' or 'bsr', got {kind!r}")
    density = (numel * value - fixed) / (numel * per_value) if numel else 0.0
    return 1.0 - min(max(density, 0.0), 1.0)


def random_sparse(shape: Sequence[int], sparsity: float, seed: int = 0, dtype: torch.dtype = torch.float32,
                  blocksize: Sequence[int] | None = None) -> torch.Tensor:
    """A dense random matrix with exactly round(sparsity * positions) zero positions, entries or whole
    `blocksize` blocks, chosen uniformly; every other entry is nonzero (normal values, integers in [1, 100)).

    Uses `torch.randperm` (not a sort of scores), so a 4096 x 4096 matrix takes a fraction of a second.
    """
    rows, cols = _check_shape(tuple(shape), "random_sparse")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"random_sparse: sparsity must lie in [0, 1], got {sparsity!r}")
    _check_value_dtype(dtype, "dtype", "random_sparse")
    bh, bw = (1, 1) if blocksize is None else _check_blocksize((rows, cols), tuple(blocksize), "random_sparse")
    generator = torch.Generator().manual_seed(seed)
    grid = (rows // bh, cols // bw)
    positions = grid[0] * grid[1]
    keep = torch.zeros(positions, dtype=torch.bool)
    keep[torch.randperm(positions, generator=generator)[: positions - round(float(sparsity) * positions)]] = True
    mask = keep.reshape(grid).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    if dtype.is_floating_point:
        values = torch.randn(rows, cols, generator=generator).to(dtype)
        values = values.masked_fill(values == 0, 1.0)
    else:
        values = torch.randint(1, 100, (rows, cols), generator=generator).to(dtype)
    return torch.where(mask, values, torch.zeros((), dtype=dtype))  # +0.0 zeros (values * mask leaves -0.0)


def storage_sweep(shape: Sequence[int] = (256, 256), sparsities: Sequence[float] = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99),
                  dtype: torch.dtype = torch.float32, index_dtype: torch.dtype = torch.int64,
                  blocksize: Sequence[int] = (4, 4), seed: int = 0) -> list[dict[str, Any]]:
    """Bytes of each format at each sparsity, measured on built matrices: one random matrix pruned unstructured
    and one pruned in whole blocks, each stored as COO, CSR and BSR. Rows: sparsity, pattern, format, nbytes,
    dense_nbytes, compression_ratio."""
    rows = []
    for sparsity in sparsities:
        for pattern, blocks in (("unstructured", None), ("blocks", blocksize)):
            dense = random_sparse(shape, sparsity, seed, dtype, blocks)
            built = {"coo": COO.from_dense(dense, index_dtype), "csr": CSR.from_dense(dense, index_dtype),
                     "bsr": BSR.from_dense(dense, blocksize, index_dtype)}
            rows += [{"sparsity": float(sparsity), "pattern": pattern, "format": name, "nbytes": m.nbytes,
                      "dense_nbytes": m.dense_nbytes, "compression_ratio": m.compression_ratio}
                     for name, m in built.items()]
    return rows
