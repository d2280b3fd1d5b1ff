"""Semi-structured 2:4 sparsity on the CPU: prune, compress to values + 2-bit metadata, decompress, multiply.

In a 2:4 sparse matrix every group of four consecutive entries of a row (columns 4g..4g+3) holds at most two
non-zeros. The compressed form keeps, per group, the two kept values (so `values` has half the columns) and their two
positions inside the group, 2 bits each: a 4-bit *nibble* per group,

    nibble = i0 | (i1 << 2)        with 0 <= i0 < i1 <= 3   (lower two bits: the first kept position)

e.g. a group [a, 0, b, 0] keeps positions (0, 2): values (a, b), nibble 0b1000.

Which positions a group keeps when it has fewer than two non-zeros (the metadata must still name two) follows
PyTorch's CUTLASS conversion, so our metadata equals it bit for bit: the non-zeros first, then the missing slots are
filled from positions 2, 3 in that order (skipping one already kept). [0, x, 0, 0] -> (1, 2); [0, 0, 0, 0] -> (2, 3).

Two layouts of the same nibbles:

``"simple"`` (ours, for teaching): row-major, two groups per byte. `meta` is uint8 shaped
(rows, ceil(cols / 8)); byte j of a row holds group 2j in its low nibble and group 2j + 1 in its high nibble
(a missing last group is the nibble 0). Any floating or integer dtype; cols must be a multiple of 4.

    byte j of row r:   bit 7  6 | 5  4 | 3  2 | 1  0
                           i1(2j+1)  i0(2j+1)  i1(2j)  i0(2j)

``"cutlass"``: exactly what `torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`
returns, so the result feeds CUTLASS's sparse tensor-core GEMMs as is (PyTorch's
`SparseSemiStructuredTensorCUTLASS.from_dense` calls that very function):

- float16 / bfloat16: 4 nibbles per int16 word (group q of the word at bits 4q..4q+3): meta int16 (rows, cols / 16).
- int8: 8 nibbles per int32 word: meta int32 (rows, cols / 32).
- float32 runs on tf32 sparse tensor cores, whose pattern is **1:2**: at most one non-zero in every pair of
  columns (2p, 2p + 1). That is stricter than 2:4 ([a, b, 0, 0] is 2:4 but not 1:2). Each pair is described as if its
  8 bytes were four 16-bit halves: keeping the first float is the nibble 0b0100 (halves 0, 1), the second 0b1110
  (halves 2, 3); an all-zero pair keeps its second float. Meta int16 (rows, cols / 8). PyTorch silently keeps the
  first float of a pair with two non-zeros; we raise instead (`sparsify(w, pattern="1:2")` prunes to 1:2).
- The words are then *reordered* for the tensor-core loads (`cutlass_meta_offsets`): within every band of 32 rows
  (16 for int8) row 8a + b moves to row 4b + a (2b + a for int8), each 2 x 2 block of (row, word) is transposed,
  and the words are stored column-major interleaved by 2 (`cutlass::layout::ColumnMajorInterleaved<2>`), the
  layout CUTLASS's `reorder_meta` (tools/util/include/cutlass/util/host_reorder.h) produces.
- Shapes: rows a multiple of 32 (16 for int8); cols a multiple of 32 for float16/bfloat16, 16 for float32, 64 for
  int8 (an even number of metadata words per row, which the interleaving by 2 needs; PyTorch checks only half of
  that and then fails with an index error).

Values and metadata are moved through same-width integer views, so `decompress(*compress(w))` returns `w` bit for bit
(NaN payloads included) wherever the entries it drops are +0. A -0.0 that is not kept comes back as +0.0, as in
PyTorch: zeros are not stored. (PyTorch's `sparse_semi_structured_to_dense_cutlass` moves float32 values as pairs of
float16 halves with `scatter_`, which quiets float16 signalling NaNs: a float32 whose low 16 bits look like one comes
back with bit 9 set.)
"""

from __future__ import annotations

import math

import torch

from sparsity_lab.patterns.masks import nm_mask
from sparsity_lab.pruning.prune import check_scores, magnitudes

LAYOUTS = ("simple", "cutlass")
CUTLASS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.int8)
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NIBBLE_FIRST, _NIBBLE_SECOND = 0b0100, 0b1110  # float32 (tf32) pairs: keep float 0 / float 1 of the pair
# Order in which positions fill a group's two slots: non-zeros first (keys 0..3), then 2, 3 (then 0, 1: never needed).
_PAD_KEYS = (6, 7, 4, 5)


def _check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def _check_dtype(dtype: torch.dtype, layout: str, name: str) -> None:
    if layout == "cutlass" and dtype not in CUTLASS_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in CUTLASS_DTYPES)
        raise TypeError(f"{name} has dtype {dtype}; the cutlass layout takes {names} (cast first, e.g. .half())")
    if dtype == torch.bool or dtype.is_complex or not (dtype.is_floating_point or dtype in _INTEGER_DTYPES):
        raise TypeError(f"{name} has dtype {dtype}; 2:4 compression takes a floating or integer tensor")


def meta_dtype(dtype: torch.dtype, layout: str = "cutlass") -> torch.dtype:
    """The metadata dtype of `layout` for values of `dtype`: uint8 (simple), int32 for int8 else int16 (cutlass)."""
    _check_layout(layout)
    _check_dtype(dtype, layout, "values")
    if layout == "simple":
        return torch.uint8
    return torch.int32 if dtype == torch.int8 else torch.int16


def shape_multiples(dtype: torch.dtype, layout: str = "cutlass") -> tuple[int, int]:
    """(row multiple, column multiple) a dense weight of `dtype` needs in `layout`."""
    _check_dtype(dtype, _check_layout(layout), "dense")
    if layout == "simple":
        return 1, 4
    if dtype == torch.int8:
        return 16, 64
    return 32, 16 if dtype == torch.float32 else 32


def _nibbles_per_word(dtype: torch.dtype) -> int:
    """How many 4-bit nibbles one cutlass metadata word holds (int32: 8, int16: 4)."""
    return 8 if dtype == torch.int8 else 4


def _cols_per_word(dtype: torch.dtype) -> int:
    """Dense columns one cutlass metadata word describes: a nibble per group of 4 (per pair of 2 for float32)."""
    return _nibbles_per_word(dtype) * (2 if dtype == torch.float32 else 4)


def check_shape(rows: int, cols: int, dtype: torch.dtype, layout: str, name: str = "dense") -> None:
    """Raise, naming the multiple needed, when `layout` cannot hold a (rows, cols) weight of `dtype`."""
    row_multiple, col_multiple = shape_multiples(dtype, layout)
    why = "" if layout == "simple" else f" for the cutlass layout with {str(dtype).removeprefix('torch.')}"
    if cols % col_multiple:
        raise ValueError(f"{name} has {cols} columns; it needs a multiple of {col_multiple}{why} "
                         "(pad the input dimension with zero columns; nothing is truncated)")
    if rows % row_multiple:
        raise ValueError(f"{name} has {rows} rows; it needs a multiple of {row_multiple}{why} "
                         "(pad the output dimension with zero rows; nothing is truncated)")


def _as_int(x: torch.Tensor) -> torch.Tensor:
    """A same-width integer view, so gathers and scatters move bits, never values (exact for every float)."""
    return x if not x.is_floating_point() else x.view(_INT_OF_WIDTH[x.element_size()])


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'N:M' -> (N, M): keep N of every M consecutive entries of a row."""
    try:
        n, m = (int(part) for part in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern must look like '2:4' (keep N of every M), got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r} must keep between 1 and M - 1 entries of every M")
    return n, m


def prune(dense_or_scores: torch.Tensor, pattern: str = "2:4") -> torch.Tensor:
    """The N:M mask (True = kept) keeping the N largest |x| of every M consecutive entries along the last dim.

    Pass a weight (its magnitudes rank it, exactly: int8 -128 as 128) or saliency scores. `patterns.masks.nm_mask`
    decides, so ties keep the lower column and an all-zero group keeps its first N positions, as the Triton
    compressor does. Use `pattern="1:2"` for float32 weights bound for the cutlass layout (tf32 sparse tensor
    cores): a 1:2 mask is also 2:4. `sparsify` applies the mask.
    """
    x = _check_tensor(dense_or_scores, "dense_or_scores")
    n, m = parse_pattern(pattern)
    if x.dim() == 0 or x.shape[-1] % m:
        raise ValueError(f"dense_or_scores has shape {tuple(x.shape)}; its last dimension must be a multiple of {m} "
                         f"to form groups of {m} for the {pattern} pattern")
    _check_dtype(x.dtype, "simple", "dense_or_scores")
    check_scores(x, name="dense_or_scores")
    return nm_mask(magnitudes(x), n, m)


def sparsify(weight: torch.Tensor, pattern: str = "2:4", scores: torch.Tensor | None = None) -> torch.Tensor:
    """`weight` with the entries `prune` drops set to +0 (ranked by `scores` when given, else by |weight|).

    Unlike `weight * mask`, no -0.0 appears, so the result survives compress/decompress bit for bit.
    """
    weight = _check_tensor(weight, "weight")
    if scores is not None and _check_tensor(scores, "scores").shape != weight.shape:
        raise ValueError(f"scores has shape {tuple(scores.shape)} but weight has shape {tuple(weight.shape)}")
    mask = prune(weight if scores is None else scores, pattern)
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def check_pattern(dense: torch.Tensor, pattern: str = "2:4", name: str = "dense") -> None:
    """Raise, naming the first offending group (row, columns), if a 2-D `dense` has more than N non-zeros in some
    group of M consecutive columns."""
    n, m = parse_pattern(pattern)
    count = (dense != 0).reshape(dense.shape[0], dense.shape[1] // m, m).sum(-1)
    bad = (count > n).nonzero()
    if len(bad):
        row, group = bad[0].tolist()
        fix = "semi24.sparsify(w)" if pattern == "2:4" else f"semi24.sparsify(w, pattern={pattern!r})"
        extra = ("; float32 runs on tf32 sparse tensor cores, whose pattern is 1:2 (use float16/bfloat16 for 2:4)"
                 if pattern == "1:2" else "")
        raise ValueError(
            f"{name} is not {pattern} sparse: row {row}, columns {m * group}..{m * group + m - 1} hold "
            f"{int(count[row, group])} non-zeros, at most {n} of every {m} may be non-zero{extra}. "
            f"Prune first: w = {fix}")


def _fill_positions(nonzero: torch.Tensor) -> torch.Tensor:
    """(..., 4) non-zero flags of groups with at most two -> (..., 2) kept positions, ascending (PyTorch's choice)."""
    position = torch.arange(4, device=nonzero.device)
    pad = torch.tensor(_PAD_KEYS, device=nonzero.device)
    key = torch.where(nonzero, position, pad)
    return key.topk(2, dim=-1, largest=False).indices.sort(-1).values


def _pack_words(nibbles: torch.Tensor, per_word: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, n) nibbles -> (rows, n / per_word) words of `dtype`, nibble q of each word at bits 4q..4q+3."""
    shifts = 4 * torch.arange(per_word, device=nibbles.device)
    grouped = nibbles.reshape(nibbles.shape[0], nibbles.shape[1] // per_word, per_word).to(torch.int64)
    words = (grouped << shifts).sum(-1)
    bits = 8 * torch.empty((), dtype=dtype).element_size()
    words = torch.where(words >= 2 ** (bits - 1), words - 2**bits, words)  # two's complement, no overflow cast
    return words.to(dtype)


def _unpack_words(words: torch.Tensor, per_word: int) -> torch.Tensor:
    """Inverse of `_pack_words`: (rows, w) words -> (rows, w * per_word) nibbles as int64."""
    shifts = 4 * torch.arange(per_word, device=words.device)
    return ((words.to(torch.int64).unsqueeze(-1) >> shifts) & 0xF).reshape(words.shape[0], words.shape[1] * per_word)


def cutlass_meta_offsets(rows: int, words: int, word_dtype: torch.dtype, device: torch.device | str = "cpu"
                         ) -> torch.Tensor:
    """(rows, words) flat offsets: where metadata word (r, c), in row-major order, is stored in CUTLASS's layout.

    Three steps (see the module docstring): rows interleaved within bands, 2 x 2 blocks transposed, column-major
    storage interleaved by 2.
    """
    band, stride = (32, 4) if word_dtype == torch.int16 else (16, 2)
    r = torch.arange(rows, device=device).unsqueeze(1).expand(rows, words)
    c = torch.arange(words, device=device).unsqueeze(0).expand(rows, words)
    r = r - r % band + (r % 8) * stride + (r % band) // 8
    off_diagonal = (r % 2) != (c % 2)  # the two entries a 2x2 transpose swaps
    r, c = torch.where(off_diagonal, r + c % 2 - r % 2, r), torch.where(off_diagonal, c + r % 2 - c % 2, c)
    return (c // 2) * (2 * rows) + r * 2 + c % 2


def _reorder(meta: torch.Tensor) -> torch.Tensor:
    rows, words = meta.shape
    out = torch.empty(rows * words, dtype=meta.dtype, device=meta.device)
    out[cutlass_meta_offsets(rows, words, meta.dtype, meta.device).reshape(-1)] = meta.reshape(-1)
    return out.view(rows, words)


def _unreorder(meta: torch.Tensor) -> torch.Tensor:
    rows, words = meta.shape
    return meta.reshape(-1)[cutlass_meta_offsets(rows, words, meta.dtype, meta.device)]


def _encode(positions: torch.Tensor, kept: torch.Tensor, layout: str, dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, G, 2) canonical positions and their values -> (values, meta) in `layout`."""
    rows, groups = positions.shape[:2]
    values = kept.reshape(rows, 2 * groups).view(dtype)
    if layout == "simple":
        nibs = positions[..., 0] | (positions[..., 1] << 2)
        if groups % 2:
            nibs = torch.cat([nibs, nibs.new_zeros(rows, 1)], dim=1)
        return values, _pack_words(nibs, 2, torch.uint8)
    if dtype == torch.float32:  # one nibble per pair: first float kept -> 0b0100, second -> 0b1110
        first = torch.stack([positions[..., 0] == 0, positions[..., 1] == 2], dim=-1).reshape(rows, 2 * groups)
        nibs = torch.where(first, _NIBBLE_FIRST, _NIBBLE_SECOND)
    else:
        nibs = positions[..., 0] | (positions[..., 1] << 2)
    return values, _reorder(_pack_words(nibs, _nibbles_per_word(dtype), meta_dtype(dtype)))


def _canonical(nonzero: torch.Tensor, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """(rows, G, 4) non-zero flags -> (rows, G, 2) positions kept, as the layout's reference conversion picks them."""
    if layout == "cutlass" and dtype == torch.float32:  # per pair: the non-zero, else the pair's second float
        pair = nonzero.reshape(*nonzero.shape[:-1], 2, 2)
        return torch.where(pair[..., 0], 0, 1) + torch.tensor([0, 2], device=nonzero.device)
    return _fill_positions(nonzero)


def compress(dense: torch.Tensor, layout: str = "cutlass") -> tuple[torch.Tensor, torch.Tensor]:
    """A 2:4 sparse 2-D weight -> (values (rows, cols / 2), meta) in `layout` (see the module docstring).

    Raises if `dense` is not 2:4 (1:2 for float32 in the cutlass layout), naming the first group that breaks it.
    """
    dense = _check_tensor(dense, "dense")
    _check_layout(layout)
    _check_dtype(dense.dtype, layout, "dense")
    if dense.dim() != 2:
        raise ValueError(f"dense must be 2-D (rows, cols) with 2:4 groups along cols, got shape {tuple(dense.shape)}; "
                         "reshape a conv weight to (out_channels, -1) first")
    rows, cols = dense.shape
    check_shape(rows, cols, dense.dtype, layout)
    dense = dense.detach()
    tf32 = layout == "cutlass" and dense.dtype == torch.float32
    check_pattern(dense, "1:2" if tf32 else "2:4")
    nonzero = (dense != 0).reshape(rows, cols // 4, 4)
    positions = _canonical(nonzero, layout, dense.dtype)
    kept = _as_int(dense).reshape(rows, cols // 4, 4).gather(-1, positions)
    return _encode(positions, kept, layout, dense.dtype)


def nibbles(meta: torch.Tensor, layout: str = "cutlass") -> torch.Tensor:
    """The metadata's 4-bit nibbles as int64 (rows, n), row-major (CUTLASS's reordering undone), for reading.

    A nibble describes a group of 4 columns (a pair of columns for float32 in the cutlass layout). The simple
    layout's unused last nibble of a row with an odd number of groups is included.
    """
    meta = _check_tensor(meta, "meta")
    _check_layout(layout)
    per_word = {torch.uint8: 2, torch.int16: 4, torch.int32: 8}.get(meta.dtype) if meta.dim() == 2 else None
    if per_word is None or (layout == "simple") != (meta.dtype == torch.uint8):
        raise ValueError(f"meta must be 2-D uint8 (simple) or int16/int32 (cutlass); got {meta.dtype} "
                         f"{tuple(meta.shape)} for layout {layout!r}")
    return _unpack_words(meta if layout == "simple" else _unreorder(meta), per_word)


def _decode(values: torch.Tensor, meta: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) -> (rows, G, 2) positions in each group and the (rows, G, 2) kept values as integers."""
    values, meta = _check_tensor(values, "values"), _check_tensor(meta, "meta")
    _check_layout(layout)
    _check_dtype(values.dtype, layout, "values")
    if values.dim() != 2 or meta.dim() != 2:
        raise ValueError(f"values and meta must be 2-D, got shapes {tuple(values.shape)} and {tuple(meta.shape)}")
    rows, half = values.shape
    cols, groups = 2 * half, half // 2
    check_shape(rows, cols, values.dtype, layout, name=f"the dense matrix of values {tuple(values.shape)}")
    expected_dtype = meta_dtype(values.dtype, layout)
    if layout == "simple":
        expected_shape = (rows, math.ceil(groups / 2))
    else:
        expected_shape = (rows, cols // _cols_per_word(values.dtype))
    if meta.dtype != expected_dtype or tuple(meta.shape) != expected_shape:
        raise ValueError(f"meta is {meta.dtype} {tuple(meta.shape)}, but {layout} metadata for values "
                         f"{values.dtype} {tuple(values.shape)} is {expected_dtype} {expected_shape}")
    if layout == "simple":
        nibs = nibbles(meta, "simple")
        if groups % 2 and (nibs[:, -1] != 0).any():
            row = int((nibs[:, -1] != 0).nonzero()[0])
            raise ValueError(f"meta row {row}: the unused high nibble of its last byte must be 0")
        nibs = nibs[:, :groups]
    else:
        nibs = nibbles(meta, "cutlass")
    if layout == "cutlass" and values.dtype == torch.float32:
        valid = (nibs == _NIBBLE_FIRST) | (nibs == _NIBBLE_SECOND)
        what = "a float32 pair must be 0b0100 (first float) or 0b1110 (second)"
        positions = torch.where(nibs == _NIBBLE_FIRST, 0, 1).reshape(rows, groups, 2) + torch.tensor(
            [0, 2], device=nibs.device)
        nibs_per_group = 2
    else:
        valid = (nibs & 3) < (nibs >> 2)
        what = "a group's nibble must name two positions i0 < i1 (i0 in bits 0-1, i1 in bits 2-3)"
        positions = torch.stack([nibs & 3, nibs >> 2], dim=-1)
        nibs_per_group = 1
    if not valid.all():
        row, index = (~valid).nonzero()[0].tolist()
        group = index // nibs_per_group
        raise ValueError(f"meta is not valid {layout} metadata: row {row}, group {group} (columns {4 * group}.."
                         f"{4 * group + 3}) has nibble {int(nibs[row, index]):#06b}; {what}")
    return positions, _as_int(values.detach()).reshape(rows, groups, 2)


def decompress(values: torch.Tensor, meta: torch.Tensor, layout: str = "cutlass") -> torch.Tensor:
    """The dense (rows, 2 * values.shape[1]) matrix that `compress` turned into (values, meta), bit for bit."""
    positions, kept = _decode(values, meta, layout)
    rows, groups = positions.shape[:2]
    dense = kept.new_zeros(rows, groups, 4).scatter_(-1, positions, kept)
    return dense.reshape(rows, 4 * groups).view(values.dtype)


def convert(values: torch.Tensor, meta: torch.Tensor, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-encode compressed (values, meta) from layout `source` to `target`, group by group (no dense matrix).

    The result equals `compress(decompress(values, meta, source), target)` bit for bit: positions of groups with
    fewer than two non-zeros are re-chosen the way the target layout's reference picks them.
    """
    positions, kept = _decode(values, meta, source)
    _check_layout(target)
    _check_dtype(values.dtype, target, "values")
    rows, groups = positions.shape[:2]
    check_shape(rows, 4 * groups, values.dtype, target, name=f"the dense matrix of values {tuple(values.shape)}")
    nonzero_kept = kept.view(values.dtype) != 0
    nonzero = torch.zeros(rows, groups, 4, dtype=torch.bool, device=positions.device).scatter_(
        -1, positions, nonzero_kept)
    if target == "cutlass" and values.dtype == torch.float32:
        both = nonzero.reshape(rows, groups * 2, 2).all(-1)
        if both.any():
            row, pair = both.nonzero()[0].tolist()
            raise ValueError(f"values are not 1:2 sparse: row {row}, columns {2 * pair}..{2 * pair + 1} are both "
                             "non-zero; float32 runs on tf32 sparse tensor cores, whose pattern is 1:2. "
                             "Prune first: w = semi24.sparsify(w, pattern='1:2')")
    new_positions = _canonical(nonzero, target, values.dtype)
    # Where a new position was kept before, take its value; positions newly named by the metadata hold zero.
    hit = new_positions.unsqueeze(-1) == positions.unsqueeze(-2)  # (rows, G, 2 new, 2 old)
    new_kept = (hit.to(kept.dtype) * kept.unsqueeze(-2)).sum(-1).to(kept.dtype)
    return _encode(new_positions, new_kept, target, values.dtype)


def kept_columns(values: torch.Tensor, meta: torch.Tensor, layout: str = "cutlass") -> torch.Tensor:
    """(rows, cols / 2) int64: the dense column each stored value came from (read from the metadata)."""
    positions, _ = _decode(values, meta, layout)
    rows, groups = positions.shape[:2]
    return (4 * torch.arange(groups, device=positions.device).unsqueeze(-1) + positions).reshape(rows, 2 * groups)


def matmul(values: torch.Tensor, meta: torch.Tensor, other: torch.Tensor, layout: str = "cutlass") -> torch.Tensor:
    """W @ other for the 2:4 W stored as (values, meta), reading the metadata directly (for teaching, not speed).

    Each kept value W[r, 4g + i] multiplies row 4g + i of `other`: the metadata says which rows to gather, so half
    the multiply-adds of the dense product are done. Accumulates in float32 (float64 for float64; int32 for
    integers, as int8 tensor cores do) and returns that dtype, like a tensor core's accumulator.
    """
    columns = kept_columns(values, meta, layout)
    other = _check_tensor(other, "other")
    rows, groups = columns.shape[0], columns.shape[1] // 2
    vector = other.dim() == 1
    other2 = other.unsqueeze(1) if vector else other
    if other2.dim() != 2 or other2.shape[0] != 4 * groups:
        raise ValueError(f"other must be ({4 * groups},) or ({4 * groups}, n) to multiply a "
                         f"({rows}, {4 * groups}) matrix, got shape {tuple(other.shape)}")
    if values.dtype.is_floating_point != other.dtype.is_floating_point:
        raise TypeError(f"values are {values.dtype} and other is {other.dtype}: multiply integers by integers "
                        "(quantize other first) or floats by floats; a mixed product would truncate one side")
    if values.dtype.is_floating_point:
        accumulate = torch.float64 if values.dtype == torch.float64 else torch.float32
    else:
        accumulate = torch.int32 if values.element_size() < 8 else torch.int64
    gathered = other2.to(accumulate)[columns]  # (rows, cols / 2, n): the activations each kept value multiplies
    out = (values.to(accumulate).unsqueeze(-1) * gathered).sum(1, dtype=accumulate)
    return out.squeeze(1) if vector else out


def nbytes(values: torch.Tensor, meta: torch.Tensor) -> int:
    """Bytes the compressed form takes: values plus metadata."""
    return values.numel() * values.element_size() + meta.numel() * meta.element_size()


def footprint(dense: torch.Tensor, layout: str = "cutlass") -> dict[str, object]:
    """Compress `dense` and measure it: dtype, layout, dense_bytes, values_bytes, meta_bytes, ratio (2:4 / dense)."""
    values, meta = compress(dense, layout)
    dense_bytes = dense.numel() * dense.element_size()
    values_bytes, meta_bytes = values.numel() * values.element_size(), meta.numel() * meta.element_size()
    return dict(dtype=str(dense.dtype).removeprefix("torch."), layout=layout, dense_bytes=dense_bytes,
                values_bytes=values_bytes, meta_bytes=meta_bytes,
                ratio=(values_bytes + meta_bytes) / dense_bytes if dense_bytes else float("nan"))
