"""Solution to exercise 05: 2:4 compression to values + 2-bit metadata in the simple layout."""

import torch


def compress_simple(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2:4 sparse 2-D matrix -> (kept values, packed 2-bit positions), row-major."""
    if dense.dim() != 2 or dense.shape[1] % 4:
        raise ValueError(f"dense must be 2-D with a multiple of 4 columns, got shape {tuple(dense.shape)}")
    rows, cols = dense.shape
    groups = dense.reshape(rows, cols // 4, 4)
    nonzero = groups != 0
    too_many = nonzero.sum(-1) > 2
    if too_many.any():
        row, group = too_many.nonzero()[0].tolist()
        raise ValueError(f"not 2:4: row {row}, columns {4 * group}..{4 * group + 3} have more than two non-zeros")
    # Rank the positions: non-zeros first (by position), then the fillers 2, 3; keep the best two.
    filler_rank = torch.tensor([6, 7, 4, 5])
    rank = torch.where(nonzero, torch.arange(4), filler_rank)
    positions = rank.argsort(-1)[..., :2].sort(-1).values  # (rows, groups, 2), i0 < i1
    values = groups.gather(-1, positions).reshape(rows, cols // 2)
    nibbles = positions[..., 0] | (positions[..., 1] << 2)  # (rows, groups)
    if nibbles.shape[1] % 2:
        nibbles = torch.cat([nibbles, torch.zeros(rows, 1, dtype=nibbles.dtype)], dim=1)
    meta = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).to(torch.uint8)
    return values, meta


def decompress_simple(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """(values, meta) from `compress_simple` -> the dense matrix."""
    rows, half = values.shape
    groups = half // 2
    meta = meta.to(torch.int64)
    nibbles = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(rows, 2 * meta.shape[1])[:, :groups]
    positions = torch.stack([nibbles & 3, nibbles >> 2], dim=-1)  # (rows, groups, 2)
    dense = torch.zeros(rows, groups, 4, dtype=values.dtype)
    dense.scatter_(-1, positions, values.reshape(rows, groups, 2))
    return dense.reshape(rows, 4 * groups)
