"""`decode_linear(x, values, meta)`: y = x Wᵀ for a 2:4 weight at decode sizes (1-64 tokens), in Triton.

Why: at a few tokens a linear layer reads its whole weight to do very little arithmetic, so its time is the
weight's bytes over memory bandwidth. A 2:4 weight in `semi24.layout`'s "simple" form is its kept values (N x K/2)
plus a 4-bit nibble per group of four columns (N x K/8 bytes): 0.5625 of the dense bytes, a ceiling of 1.78x over a
dense product that reads all of them. cuSPARSELt's kernels are tiled for large M and gain little here; this kernel
reads exactly those bytes once.

Two ways to multiply, `DecodeConfig.cores` (the fastest kept per shape by `best_config`):

* "cuda" (1-8 tokens, float16 / bfloat16): multiply-adds on CUDA cores, nothing rebuilt. Per group g of four
  columns and its two kept values v0, v1 at positions i0 = nib & 3 < i1 = nib >> 2 (`semi24.layout`):

      acc[m, n, g] += v0 * x[m, 4g + i0] + v1 * x[m, 4g + i1]        y[m, n] = sum_g acc[m, n, g]

  Everything is read in whole words: the pair (v0, v1) is one int32, group g's four x entries one int64 (x[m, 4g + i]
  its 16 bits at 16·i, picked by a shift), and eight nibbles one int32; a 16-bit float becomes a float32 by bits
  (a bfloat16 is a float32's top half). So the weight streams in as coalesced loads, with no select, reshape or
  shuffle between the load and the multiply-add (at the tile sizes `DecodeConfig` describes).

* "tensor" (1-64 tokens, 16 a tile): the dense (BLOCK_N x BLOCK_K) tile of W rebuilt in registers from the values
  and nibbles, then multiplied on tensor cores:

      w[n, 4g + p] = v0 if p == i0 else v1 if p == i1 else 0          (p = 0..3)
      acc[n, m] += sum_k w[n, k] * x[m, k]

Either way y[m, n] is written row-major (no transposed output for the next op to copy); K may be split over
programs, whose float32 partial sums are added atomically.

Reference: ``x @ layout.decompress(values, meta, "simple").t()``. Tested in Triton's interpreter on the CPU
(tests/test_semi24_decode_kernel.py); its GPU speed is measured by the 2:4 layer's dispatcher where it is a
candidate and recorded by `sparsity-lab bench models` (decode steps).
"""

from __future__ import annotations

from collections.abc import Callable
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

    @triton.jit
    def _gemv_kernel(x_ptr, pairs_ptr, meta_ptr, bias_ptr, y_ptr, M, N, G, G_PER_SPLIT, HAS_BIAS: tl.constexpr,
                     BF16: tl.constexpr, TOKENS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                     SPLIT_K: tl.constexpr, UNROLL: tl.constexpr):
        # x_ptr: int64 words, x[m, 4g .. 4g + 3] in word (m, g) (16 bits each, the lowest first); pairs_ptr: int32
        # words, the kept pair (v0 low, v1 high) of group g of row n; meta_ptr: int32 words of 8 nibbles, group g's
        # at bits 4 (g % 8) of word g // 8 of its row. G = K / 4 groups a row.
        pid_n, pid_s, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m = pid_m * TOKENS + tl.arange(0, TOKENS)
        n_in, m_in = n < N, m < M
        pairs_row = pairs_ptr + n[:, None].to(tl.int64) * G
        meta_row = meta_ptr + n[:, None].to(tl.int64) * (G // 8)
        # x's words are addressed once per weight row (a zero stride along n) and loaded (TOKENS, BLOCK_N, BLOCK_G):
        # with two words a thread (`DecodeConfig`), that puts them in the weight tile's register layout, so nothing
        # moves between threads (through shared memory, with barriers) before the multiply-add; rows re-read x from L1.
        x_rows = x_ptr + m[:, None, None].to(tl.int64) * G + 0 * n[None, :, None]
        acc = tl.zeros((TOKENS, BLOCK_N, BLOCK_G), dtype=tl.float32)
        g_first = pid_s * G_PER_SPLIT
        # UNROLL steps a turn: their loads are issued together, so more bytes are in flight per thread
        for g0 in tl.range(g_first, tl.minimum(g_first + G_PER_SPLIT, G), BLOCK_G, loop_unroll_factor=UNROLL):
            g = g0 + tl.arange(0, BLOCK_G)
            w_in = n_in[:, None] & (g < G)[None, :]
            pair = tl.load(pairs_row + g[None, :], mask=w_in, other=0)  # (BLOCK_N, BLOCK_G) int32
            word = tl.load(meta_row + (g >> 3)[None, :], mask=w_in, other=0)  # g // 8 and g % 8 without a sign
            nibble = (word >> ((g & 7) * 4)[None, :]) & 0xF
            shift0 = ((nibble & 3) * 16).to(tl.int64)[None, :, :]  # where in x's word the kept positions lie
            shift1 = ((nibble >> 2) * 16).to(tl.int64)[None, :, :]
            xw = tl.load(x_rows + g[None, None, :], mask=m_in[:, None, None] & (g < G)[None, None, :], other=0)
            x0, x1 = ((xw >> shift0) & 0xFFFF).to(tl.int32), ((xw >> shift1) & 0xFFFF).to(tl.int32)
            if BF16:  # a bfloat16 is the top half of a float32
                v0, v1 = (pair << 16).to(tl.float32, bitcast=True), (pair & -65536).to(tl.float32, bitcast=True)
                x0, x1 = (x0 << 16).to(tl.float32, bitcast=True), (x1 << 16).to(tl.float32, bitcast=True)
            else:
                v0 = pair.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
                v1 = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
                x0 = x0.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
                x1 = x1.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            acc += v0[None, :, :] * x0  # two fused multiply-adds
            acc += v1[None, :, :] * x1
        out = tl.sum(acc, axis=2)  # (TOKENS, BLOCK_N)
        if HAS_BIAS:
            if pid_s == 0:
                out += tl.load(bias_ptr + n, mask=n_in, other=0.0).to(tl.float32)[None, :]
        y = y_ptr + m[:, None].to(tl.int64) * N + n[None, :]
        if SPLIT_K == 1:
            tl.store(y, out.to(y_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])
        else:  # y is float32 here: the K-slices add up
            tl.atomic_add(y, out, mask=m_in[:, None] & n_in[None, :])


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
    atomics into y, then one cast), Triton's warps and pipeline stages, and which `cores` multiply ("tensor":
    the tile of W rebuilt for tensor cores, any 1-64 tokens; "cuda": multiply-adds as the weight lies, 1-8).

    The CUDA-core kernel's loads are not pipelined by Triton (stages change nothing there); `unroll` K steps a loop
    turn keep several in flight instead. Its tiles hold two words a thread (block_n * block_k / 4 = 64 * num_warps):
    then the pairs and x's words load into one register layout (checked for sm_90 by tests/test_hopper_build.py);
    with four a thread, the pairs' load is vectorized wider than x's and both go through shared memory every step."""

    block_n: int = 32
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    cores: str = "tensor"
    unroll: int = 1

    def fits(self, tokens: int, dtype: torch.dtype = torch.float16) -> bool:
        """Whether this launch takes `tokens` rows of x of `dtype`."""
        if self.cores == "cuda":
            return tokens <= CUDA_CORE_TOKENS and dtype in (torch.float16, torch.bfloat16)
        return tokens <= MAX_TOKENS


CUDA_CORE_TOKENS = 8  # the most tokens the CUDA-core kernel takes: past that, every x entry is picked per weight row
DEFAULT = DecodeConfig()  # what Triton's interpreter runs
# The configurations `best_config` times on a GPU: narrow tiles or K-splits give enough programs to keep every
# SM reading (N = 4096 rows in tiles of 64 is 64 programs, half an H200), wide K tiles give long contiguous reads;
# for the CUDA-core kernel (two words a thread), unrolled K steps keep several loads in flight.
CANDIDATES = tuple(DecodeConfig(bn, bk, split, warps, stages) for bn, bk, split, warps, stages in (
    (16, 128, 2, 4, 3), (32, 128, 4, 4, 3), (64, 128, 4, 4, 3), (16, 256, 1, 8, 4), (32, 256, 2, 8, 3),
    (16, 256, 1, 4, 3), (64, 128, 1, 4, 3), (64, 128, 8, 4, 3))) + tuple(
    DecodeConfig(bn, bk, split, warps, 1, "cuda", unroll) for bn, bk, split, warps, unroll in (
        (2, 512, 1, 4, 1), (2, 512, 1, 4, 2), (2, 512, 1, 4, 4), (4, 256, 1, 4, 2), (4, 256, 1, 4, 4),
        (4, 512, 1, 8, 2), (4, 512, 1, 8, 4), (1, 1024, 1, 4, 4), (8, 256, 1, 8, 4), (2, 512, 4, 4, 2),
        (4, 256, 4, 4, 2), (2, 512, 8, 4, 1)))
_BEST: dict[tuple, DecodeConfig] = {}


def _token_tile(tokens: int) -> int:
    """The tokens one program takes: a power of two up to `CUDA_CORE_TOKENS`, then multiples of 16."""
    return 1 << max(tokens - 1, 0).bit_length() if tokens <= CUDA_CORE_TOKENS else 16 * -(-tokens // 16)


def best_config(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor) -> DecodeConfig:
    """The fastest of `CANDIDATES` that fit this problem on this GPU (timed once per device, token tile, N, K and
    dtype, then cached); `DEFAULT` on the CPU (Triton's interpreter)."""
    if not x.is_cuda or triton_interpreting():
        return DEFAULT
    from sparsity_lab.timing import bench_ms

    key = (x.device, _token_tile(x.shape[0]), values.shape[0], x.shape[1], x.dtype)
    if key not in _BEST:
        times = {c: bench_ms(lambda c=c: decode_linear(x, values, meta, config=c), warmup_ms=5.0, rep_ms=20.0)
                 for c in CANDIDATES if c.fits(x.shape[0], x.dtype)}
        _BEST[key] = min(times, key=times.get)
    return _BEST[key]


def decode_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None,
                  config: DecodeConfig | None = None) -> torch.Tensor:
    """y = x Wᵀ (+ bias), (M, N) row-major, for x (M <= 64, K) and W given as simple-layout 2:4 `values` and
    `meta`; `config` None: `best_config`."""
    check_operands(x, values, meta)
    if bias is not None and bias.shape != (values.shape[0],):
        raise ValueError(f"bias must be ({values.shape[0]},), got {tuple(bias.shape)}")
    if config is not None and config.cores not in ("tensor", "cuda"):
        raise ValueError(f"config.cores must be 'tensor' or 'cuda', got {config.cores!r}")
    if config is not None and not config.fits(x.shape[0]):
        raise ValueError(f"{x.shape[0]} tokens: the CUDA-core kernel is for at most {CUDA_CORE_TOKENS}")
    if config is not None and config.cores == "cuda" and x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the CUDA-core kernel takes float16 or bfloat16, got {x.dtype}")
    x, values, meta = x.contiguous(), values.contiguous(), meta.contiguous()
    config = config or best_config(x, values, meta)
    m, k = x.shape
    n = values.shape[0]
    split = min(config.split_k, triton.cdiv(k, config.block_k))
    k_per_split = triton.cdiv(triton.cdiv(k, split), config.block_k) * config.block_k
    y = torch.zeros((m, n), dtype=torch.float32, device=x.device) if split > 1 else torch.empty(
        (m, n), dtype=x.dtype, device=x.device)
    tokens = _token_tile(m) if config.cores == "cuda" else 16
    grid = (triton.cdiv(n, config.block_n), triton.cdiv(k, k_per_split), triton.cdiv(m, tokens))
    if config.cores == "cuda":  # the same bytes as words (module docstring)
        _gemv_kernel[grid](x.view(torch.int64), values.view(torch.int32), meta.view(torch.int32),
                           values if bias is None else bias, y, m, n, k // 4, k_per_split // 4,
                           HAS_BIAS=bias is not None, BF16=x.dtype == torch.bfloat16, TOKENS=tokens,
                           BLOCK_N=config.block_n, BLOCK_G=config.block_k // 4, SPLIT_K=grid[1],
                           UNROLL=config.unroll, num_warps=config.num_warps, num_stages=config.num_stages)
    else:
        _decode_kernel[grid](x, values, meta, values if bias is None else bias, y, m, n, k, k_per_split,
                             HAS_BIAS=bias is not None, BLOCK_M=tokens, BLOCK_N=config.block_n,
                             BLOCK_K=config.block_k, SPLIT_K=grid[1],
                             WIDEN=x.dtype == torch.bfloat16 and triton_interpreting(),
                             num_warps=config.num_warps, num_stages=config.num_stages)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def decode_speed(tokens: int, out_features: int, in_features: int, dtype: torch.dtype = torch.bfloat16,
                 device: str = "cuda") -> dict[str, object]:
    """Milliseconds per call of y = x Wᵀ for `tokens` rows of x and a random 2:4 weight, as a decode step runs it:
    replayed from a CUDA graph (no launch cost), over enough copies of the weight to exceed the L2 cache twice (each
    call reads W from memory, as in a model whose weights do not fit). cuBLAS on the dense (pruned) weight, the
    2:4 layer through cuSPARSELt, the fastest tensor-core and CUDA-core launch of ours (each of `CANDIDATES`
    timed); and ours' relative error against a float64 product."""
    from sparsity_lab.checks import relative_error
    from sparsity_lab.semi24 import layout
    from sparsity_lab.semi24.layer import Semi24Linear
    from sparsity_lab.timing import graph_ms

    gen = torch.Generator(device=device).manual_seed(tokens * out_features + in_features)
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    copies = max(2, -(-2 * l2 // (out_features * in_features * dtype.itemsize)))
    ws = [layout.sparsify(torch.randn(out_features, in_features, device=device, generator=gen)).to(dtype)
          for _ in range(copies)]
    x = torch.randn(tokens, in_features, device=device, generator=gen).to(dtype)
    packed = [layout.compress(w, "simple") for w in ws]
    layers = [Semi24Linear(w, prune=False, mode="sparse") for w in ws]

    def per_call(call: Callable[[int], object]) -> float:
        return graph_ms(lambda: [call(i) for i in range(copies)], calls=4) / copies

    with torch.no_grad():
        out: dict[str, object] = {"weight_copies": copies,
                                  "dense_ms": per_call(lambda i: torch.nn.functional.linear(x, ws[i])),
                                  "cusparselt_ms": per_call(lambda i: layers[i](x))}
        for cores in ("tensor", "cuda"):
            times = {c: per_call(lambda i, c=c: decode_linear(x, *packed[i], config=c))
                     for c in CANDIDATES if c.cores == cores and c.fits(tokens, dtype)}
            if times:
                best = min(times, key=times.get)
                out[f"ours_{cores}_ms"] = times[best]
                out[f"ours_{cores}_config"] = [best.block_n, best.block_k, best.split_k, best.num_warps,
                                               best.num_stages, best.unroll]
        out["rel_error"] = relative_error(decode_linear(x, *packed[0]), x.double() @ ws[0].double().t())
    return out
