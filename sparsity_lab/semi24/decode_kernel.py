"""`decode_linear(x, values, meta)`: y = x Wᵀ for a 2:4 weight at decode sizes (1-64 tokens), in Triton.

Why: at a few tokens a linear layer reads its whole weight to do very little arithmetic, so its time is the
weight's bytes over memory bandwidth. A 2:4 weight in `semi24.layout`'s "simple" form is its kept values (N x K/2)
plus a 4-bit nibble per group of four columns (N x K/8 bytes): 0.5625 of the dense bytes, a ceiling of 1.78x over a
dense product that reads all of them. cuSPARSELt's kernels are tiled for large M and gain little here; this kernel
reads exactly those bytes once.

Per program: a tile of BLOCK_N weight rows and BLOCK_M tokens. For each BLOCK_K columns of K it loads the tile's
values and nibbles, rebuilds the dense (BLOCK_N x BLOCK_K) tile in registers, and multiplies it with x's tile:

    for a group g of four columns and its two kept values v0, v1 at positions i0 = nib & 3, i1 = nib >> 2:
        w[n, 4g + p] = v0 if p == i0 else v1 if p == i1 else 0          (p = 0..3)
    acc[n, m] += sum_k w[n, k] * x[m, k]
    y[m, n] = acc[n, m]       (row-major y: no transposed output for the next op to copy)

Reference: ``x @ layout.decompress(values, meta, "simple").t()``. Tested in Triton's interpreter on the CPU
(tests/test_semi24_decode_kernel.py); its GPU speed is measured by the 2:4 layer's dispatcher where it is a
candidate and recorded by `sparsity-lab bench models` (decode steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsity_lab._optional import triton_available, triton_interpreting

MAX_TOKENS = 64  # the token counts this kernel is written for (tiles of 16 tokens)

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _decode_kernel(x_ptr, values_ptr, meta_ptr, bias_ptr, y_ptr, M, N, K, K_PER_SPLIT, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                       WIDEN: tl.constexpr):
        pid_n, pid_s, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        half, eighth, kk = tl.arange(0, BLOCK_K // 2), tl.arange(0, BLOCK_K // 8), tl.arange(0, BLOCK_K)
        position = tl.arange(0, 4)
        n_in, m_in = n < N, m < M
        values_row = values_ptr + n[:, None].to(tl.int64) * (K // 2)
        meta_row = meta_ptr + n[:, None].to(tl.int64) * (K // 8)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        k_first = pid_s * K_PER_SPLIT
        for k0 in tl.range(k_first, tl.minimum(k_first + K_PER_SPLIT, K), BLOCK_K):
            k_in = (k0 + kk) < K
            # the tile's kept values, contiguous in memory, split into the first and second of each group's pair
            pairs = tl.load(values_row + k0 // 2 + half[None, :], mask=n_in[:, None] & ((k0 + 2 * half) < K)[None, :],
                            other=0.0)
            v0, v1 = tl.split(tl.reshape(pairs, (BLOCK_N, BLOCK_K // 4, 2)))
            # one byte holds the nibbles of two groups: low nibble the even group, high nibble the odd one
            byte = tl.load(meta_row + k0 // 8 + eighth[None, :],
                           mask=n_in[:, None] & ((k0 + 8 * eighth) < K)[None, :], other=0).to(tl.int32)
            nibble = tl.reshape(tl.join(byte & 0xF, byte >> 4), (BLOCK_N, BLOCK_K // 4))
            i0, i1 = nibble & 3, nibble >> 2
            w = (tl.where(i0[:, :, None] == position[None, None, :], v0[:, :, None], 0.0)
                 + tl.where(i1[:, :, None] == position[None, None, :], v1[:, :, None], 0.0))
            w = tl.reshape(w, (BLOCK_N, BLOCK_K)).to(x_ptr.dtype.element_ty)
            x = tl.load(x_ptr + m[None, :].to(tl.int64) * K + (k0 + kk)[:, None], mask=m_in[None, :] & k_in[:, None],
                        other=0.0)
            if WIDEN:  # Triton's CPU interpreter multiplies bf16 bit patterns as integers in tl.dot: widen there
                w, x = w.to(tl.float32), x.to(tl.float32)
            acc = tl.dot(w, x, acc)
        if HAS_BIAS:
            if pid_s == 0:
                acc += tl.load(bias_ptr + n, mask=n_in, other=0.0).to(tl.float32)[:, None]
        y = y_ptr + m[None, :].to(tl.int64) * N + n[:, None]
        if SPLIT_K == 1:
            tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=n_in[:, None] & m_in[None, :])
        else:  # y is float32 here: the K-slices add up
            tl.atomic_add(y, acc, mask=n_in[:, None] & m_in[None, :])


def check_operands(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor) -> None:
    """Raise naming the operand when x (M, K), values (N, K/2) and the simple-layout meta (N, K/8) do not fit."""
    if x.dim() != 2 or values.dim() != 2 or meta.dim() != 2:
        raise ValueError(f"x, values and meta must be 2-D, got {tuple(x.shape)}, {tuple(values.shape)}, "
                         f"{tuple(meta.shape)}")
    m, k = x.shape
    if k % 64:
        raise ValueError(f"x has K = {k} columns: the decode kernel needs a multiple of 64")
    if values.shape[1] * 2 != k or meta.shape != (values.shape[0], k // 8):
        raise ValueError(f"values {tuple(values.shape)} and meta {tuple(meta.shape)} do not describe a weight of "
                         f"{k} columns (values (N, {k // 2}), meta (N, {k // 8}) in the simple layout)")
    if values.dtype != x.dtype or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x and values must share a float dtype, got {x.dtype} and {values.dtype}")
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must be uint8 (the simple layout), got {meta.dtype}")
    if m > MAX_TOKENS:
        raise ValueError(f"{m} tokens: the decode kernel is for at most {MAX_TOKENS}")


@dataclass(frozen=True)
class DecodeConfig:
    """One launch of the kernel: weight rows and columns per tile, `split_k` programs along K (> 1: float32
    atomics into y, then one cast), and Triton's warps and pipeline stages."""

    block_n: int = 32
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


DEFAULT = DecodeConfig()  # what Triton's interpreter runs
# The configurations `best_config` times on a GPU: narrow tiles or K-splits give enough programs to keep every
# SM reading (N = 4096 rows in tiles of 64 is 64 programs, half an H200), wide K tiles give long contiguous reads.
CANDIDATES = tuple(DecodeConfig(bn, bk, split, warps, stages) for bn, bk, split, warps, stages in (
    (16, 128, 2, 4, 3), (32, 128, 4, 4, 3), (64, 128, 4, 4, 3), (16, 256, 1, 8, 4), (32, 256, 2, 8, 3),
    (16, 256, 1, 4, 3), (64, 128, 1, 4, 3), (64, 128, 8, 4, 3)))
_BEST: dict[tuple, DecodeConfig] = {}


def best_config(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor) -> DecodeConfig:
    """The fastest of `CANDIDATES` for this problem on this GPU (timed once per device, token tile, N, K and
    dtype, then cached); `DEFAULT` on the CPU (Triton's interpreter)."""
    if not x.is_cuda or triton_interpreting():
        return DEFAULT
    from sparsity_lab.timing import bench_ms

    key = (x.device, triton.cdiv(x.shape[0], 16), values.shape[0], x.shape[1], x.dtype)
    if key not in _BEST:
        times = {c: bench_ms(lambda c=c: decode_linear(x, values, meta, config=c), warmup_ms=5.0, rep_ms=20.0)
                 for c in CANDIDATES}
        _BEST[key] = min(times, key=times.get)
    return _BEST[key]


def decode_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
                  config: DecodeConfig | None = None) -> torch.Tensor:
    """y = x Wᵀ (+ bias), (M, N) row-major, for x (M <= 64, K) and W given as simple-layout 2:4 `values` and
    `meta`; `config` None: `best_config`."""
    check_operands(x, values, meta)
    if bias is not None and bias.shape != (values.shape[0],):
        raise ValueError(f"bias must be ({values.shape[0]},), got {tuple(bias.shape)}")
    x, values, meta = x.contiguous(), values.contiguous(), meta.contiguous()
    config = config or best_config(x, values, meta)
    m, k = x.shape
    n = values.shape[0]
    split = min(config.split_k, triton.cdiv(k, config.block_k))
    k_per_split = triton.cdiv(triton.cdiv(k, split), config.block_k) * config.block_k
    y = torch.zeros((m, n), dtype=torch.float32, device=x.device) if split > 1 else torch.empty(
        (m, n), dtype=x.dtype, device=x.device)
    block_m = 16
    grid = (triton.cdiv(n, config.block_n), triton.cdiv(k, k_per_split), triton.cdiv(m, block_m))
    _decode_kernel[grid](x, values, meta, values if bias is None else bias, y, m, n, k, k_per_split,
                         HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                         SPLIT_K=grid[1], WIDEN=x.dtype == torch.bfloat16 and triton_interpreting(),
                         num_warps=config.num_warps, num_stages=config.num_stages)
    return y if y.dtype == x.dtype else y.to(x.dtype)
