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

import torch

from sparsity_lab._optional import triton_available, triton_interpreting

MAX_TOKENS = 64  # the token counts this kernel is written for (tiles of 16 tokens)

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _decode_kernel(x_ptr, values_ptr, meta_ptr, bias_ptr, y_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WIDEN: tl.constexpr):
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        groups = tl.arange(0, BLOCK_K // 4)
        position = tl.arange(0, 4)
        kk = tl.arange(0, BLOCK_K)
        n_in, m_in = n < N, m < M
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            g = k0 // 4 + groups  # the groups of this tile, along the whole row
            value = values_ptr + n[:, None].to(tl.int64) * (K // 2) + 2 * g[None, :]
            v0 = tl.load(value, mask=n_in[:, None], other=0.0)
            v1 = tl.load(value + 1, mask=n_in[:, None], other=0.0)
            byte = tl.load(meta_ptr + n[:, None].to(tl.int64) * (K // 8) + g[None, :] // 2, mask=n_in[:, None],
                           other=0).to(tl.int32)
            nibble = (byte >> (4 * (g[None, :] % 2))) & 0xF
            i0, i1 = nibble & 3, nibble >> 2
            w = (tl.where(i0[:, :, None] == position[None, None, :], v0[:, :, None], 0.0)
                 + tl.where(i1[:, :, None] == position[None, None, :], v1[:, :, None], 0.0))
            w = tl.reshape(w, (BLOCK_N, BLOCK_K)).to(x_ptr.dtype.element_ty)
            x = tl.load(x_ptr + m[None, :].to(tl.int64) * K + (k0 + kk)[:, None], mask=m_in[None, :], other=0.0)
            if WIDEN:  # Triton's CPU interpreter multiplies bf16 bit patterns as integers in tl.dot: widen there
                w, x = w.to(tl.float32), x.to(tl.float32)
            acc = tl.dot(w, x, acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=n_in, other=0.0).to(tl.float32)[:, None]
        y = y_ptr + m[None, :].to(tl.int64) * N + n[:, None]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=n_in[:, None] & m_in[None, :])


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


def decode_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
                  block_n: int = 64, block_k: int = 64) -> torch.Tensor:
    """y = x Wᵀ (+ bias), (M, N) row-major, for x (M <= 64, K) and W given as simple-layout 2:4 `values` and
    `meta`."""
    check_operands(x, values, meta)
    if bias is not None and bias.shape != (values.shape[0],):
        raise ValueError(f"bias must be ({values.shape[0]},), got {tuple(bias.shape)}")
    x, values, meta = x.contiguous(), values.contiguous(), meta.contiguous()
    m, k = x.shape
    n = values.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = 16
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _decode_kernel[grid](x, values, meta, values if bias is None else bias, y, m, n, k, HAS_BIAS=bias is not None,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                         WIDEN=x.dtype == torch.bfloat16 and triton_interpreting(), num_warps=4)
    return y
