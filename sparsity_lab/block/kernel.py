"""A Triton kernel for a block-sparse (BSR) weight times a dense input: the `y = x W^T (+ b)` of a Linear layer.

Orientation. `x` is (M, K): M tokens of K input features, row-major. The weight W is (N, K), stored in block
compressed-sparse-row form with square `bs x bs` blocks:

    crow_indices  (N/bs + 1,)    int32  block-row pointers: row r's blocks are crow[r] .. crow[r+1]-1
    col_indices   (nnz,)         int32  block-column of each stored block, ascending within a row
    blocks        (nnz, bs, bs)         the blocks, row-major (output feature, input feature), contiguous

`y` is (M, N). One program owns one block-row of W (bs output features) and a tile of BLOCK_M tokens; it walks
that block-row's stored blocks, `BLOCKS_PER_STEP` at a time, gathers the matching bs-wide column slab of x and
accumulates `x_slab @ block^T` in float32. An empty block-row runs no iteration and writes zeros (or the bias).
Programs are ordered in groups of GROUP_M token tiles that sweep the block-rows together, so the programs running
at one time share a few token tiles of x and a few block-rows of W, and find both in L2.

Shapes that are not multiples of the block are handled by zero padding: the blocks cover ceil(N/bs) x ceil(K/bs)
block positions, reads of x past K and writes of y past N are masked off.

fp16 and bf16 inputs use their tensor-core path; float32 inputs use TF32 by default (`input_precision="ieee"`
asks for full float32). Accumulation is float32 in every case; y has x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)
DEFAULT_VARIANT = "auto"


@triton.jit
def _block_product(acc, x_rows, m_ok, col_ptr, blk_ptr, idx, K, stride_xk, offs_b, w_offs,
                   BS: tl.constexpr, EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """acc += x[:, slab of block idx] @ block[idx]^T."""
    col = tl.load(col_ptr + idx)
    k = col * BS + offs_b
    if EVEN_K:
        x = tl.load(x_rows + k[None, :] * stride_xk, mask=m_ok[:, None], other=0.0)
    else:
        x = tl.load(x_rows + k[None, :] * stride_xk, mask=m_ok[:, None] & (k[None, :] < K), other=0.0)
    w = tl.load(blk_ptr + idx * (BS * BS) + w_offs)
    if WIDEN:
        x = x.to(tl.float32)
        w = w.to(tl.float32)
    return tl.dot(x, w, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _grouped_program(crow_ptr, M, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr):
    """(token tile, block-row, its first and one-past-last block) of this program, in grouped order: GROUP_M token
    tiles side by side sweep the block-rows together, so a block-row of W is read from DRAM once per group and
    each token tile of x stays in L2 while the group sweeps."""
    pid = tl.program_id(0)
    n_tiles_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * (tl.num_programs(0) // n_tiles_m)
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_tiles_m - first_m, GROUP_M)
    row = (pid % per_group) // group_m
    return first_m + (pid % per_group) % group_m, row, tl.load(crow_ptr + row), tl.load(crow_ptr + row + 1)


@triton.jit
def _bsr_linear_kernel(
    x_ptr, y_ptr, bias_ptr, crow_ptr, col_ptr, blk_ptr,
    M, N, K, M_BUCKET, NNZ_BUCKET,
    stride_xm, stride_xk, stride_ym, stride_yn,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr = False,
):
    """y[m_tile, row*BS:(row+1)*BS] = x[m_tile, :] @ W[row block]^T (+ bias), one block-row per program::

        (pid_m, row) = grouped order of program_id(0)       # GROUP_M token tiles sweep the block-rows together
        acc = 0                                             # (BLOCK_M, BS) float32
        for i in crow[row] .. crow[row + 1] - 1:            # BLOCKS_PER_STEP at a time, unrolled
            acc += x[m_tile, col[i]*BS : (col[i]+1)*BS] @ blocks[i]^T
        y[m_tile, row*BS : (row+1)*BS] = acc + bias         # masked past M and N
    """
    pid_m, row, start, end = _grouped_program(crow_ptr, M, BLOCK_M, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_b = tl.arange(0, BS)
    m_ok = offs_m < M
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    # B operand: w_t[k, n] = block[n, k], so k is the contiguous axis (K-major).
    w_offs = offs_b[None, :] * BS + offs_b[:, None]

    acc = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    # Whole steps of BLOCKS_PER_STEP blocks (unrolled), then the remaining blocks one at a time: no masks on k.
    full_end = start + (end - start) // BLOCKS_PER_STEP * BLOCKS_PER_STEP
    for i in range(start, full_end, BLOCKS_PER_STEP):
        for g in tl.static_range(BLOCKS_PER_STEP):
            acc = _block_product(acc, x_rows, m_ok, col_ptr, blk_ptr, i + g, K, stride_xk, offs_b, w_offs,
                                 BS, EVEN_K, INPUT_PRECISION, WIDEN)
    if BLOCKS_PER_STEP > 1:
        for i in range(full_end, end):
            acc = _block_product(acc, x_rows, m_ok, col_ptr, blk_ptr, i, K, stride_xk, offs_b, w_offs,
                                 BS, EVEN_K, INPUT_PRECISION, WIDEN)

    offs_n = row * BS + offs_b
    n_ok = offs_n < N
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)
        acc = acc + bias[None, :].to(tl.float32)
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _bsr_linear_tma_kernel(
    x_desc, y_desc, w_desc, bias_ptr, crow_ptr, col_ptr,
    M, N, K, M_BUCKET, NNZ_BUCKET,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr = False,
):
    """The same product with x tiles, blocks and y tiles moved by tensor descriptors (TMA on Hopper), which
    zero-fill reads and clip writes outside the matrices: no masks."""
    pid_m, row, start, end = _grouped_program(crow_ptr, M, BLOCK_M, GROUP_M)
    m0 = pid_m * BLOCK_M

    acc = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    full_end = start + (end - start) // BLOCKS_PER_STEP * BLOCKS_PER_STEP
    for i in range(start, full_end, BLOCKS_PER_STEP):
        for g in tl.static_range(BLOCKS_PER_STEP):
            acc = _tma_block_product(acc, x_desc, w_desc, col_ptr, i + g, m0, BS, INPUT_PRECISION, WIDEN)
    if BLOCKS_PER_STEP > 1:
        for i in range(full_end, end):
            acc = _tma_block_product(acc, x_desc, w_desc, col_ptr, i, m0, BS, INPUT_PRECISION, WIDEN)
    if HAS_BIAS:
        offs_n = row * BS + tl.arange(0, BS)
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc + bias[None, :].to(tl.float32)
    y_desc.store([m0, row * BS], acc.to(y_desc.dtype))


@triton.jit
def _tma_block_product(acc, x_desc, w_desc, col_ptr, idx, m0, BS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                       WIDEN: tl.constexpr):
    """acc += x[m tile, slab of block idx] @ block[idx]^T, both tiles fetched by descriptor."""
    col = tl.load(col_ptr + idx)
    x = x_desc.load([m0, col * BS])
    w = w_desc.load([idx * BS, 0])
    if WIDEN:
        x = x.to(tl.float32)
        w = w.to(tl.float32)
    return tl.dot(x, w.T, acc, input_precision=INPUT_PRECISION)


def _set_tma_block_shapes(nargs: dict) -> None:
    """Autotuner pre-hook: the descriptors' tile shapes follow the config's BLOCK_M and the block size."""
    bs, block_m = nargs["BS"], nargs["BLOCK_M"]
    nargs["x_desc"].block_shape = [block_m, bs]
    nargs["y_desc"].block_shape = [block_m, bs]
    nargs["w_desc"].block_shape = [bs, bs]


def _configs(pre_hook=None, stages_options: tuple[int, ...] = (2, 4)) -> list[triton.Config]:
    """Candidate tilings: token tile, blocks per loop step, warps, pipeline depth, and launch grouping: 8 token
    tiles per group, or as many as make 512 tokens (a smaller slice of x in L2 while a group sweeps the block-rows;
    measured 8% faster at BLOCK_M 256, block 64 / 90%, docs/performance/block_sparse.md)."""
    configs = []
    for block_m in (64, 128, 256):
        for group_m in sorted({8, max(1, 512 // block_m)}):
            for per_step in (1, 2, 4):
                for warps in (4, 8):
                    for stages in stages_options:
                        configs.append(triton.Config({"BLOCK_M": block_m, "BLOCKS_PER_STEP": per_step,
                                                      "GROUP_M": group_m},
                                                     num_warps=warps, num_stages=stages, pre_hook=pre_hook))
    return configs


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep the tilings that fit this block size: a loop step of 64 input features below block 64 (128 never won in
    the recorded heatmap) and one block from 64 up,
    4 warps for accumulator tiles up to 8192 entries and 8 from 8192 up, shared memory within 200 KB."""
    bs = kwargs.get("BS", named_args.get("BS"))
    kept = []
    for c in configs:
        block_m, per_step = c.kwargs["BLOCK_M"], c.kwargs["BLOCKS_PER_STEP"]
        step = per_step * bs
        if (bs >= 64 and per_step > 1) or (bs < 64 and step != 64):
            continue
        acc_entries = block_m * bs
        if (c.num_warps == 8 and acc_entries < 8192) or (c.num_warps == 4 and acc_entries > 8192):
            continue
        if (block_m + bs) * step * 2 * c.num_stages > 200 * 1024 or (c.num_stages >= 4 and step >= 128):
            continue
        kept.append(c)
    return kept


_autotuned = triton.autotune(
    configs=_configs(),
    key=["M_BUCKET", "NNZ_BUCKET", "N", "K", "BS"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_bsr_linear_kernel)

_autotuned_tma = triton.autotune(
    configs=_configs(pre_hook=_set_tma_block_shapes, stages_options=(2, 5)),
    key=["M_BUCKET", "NNZ_BUCKET", "N", "K", "BS"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_bsr_linear_tma_kernel)


def interpreted() -> bool:
    """True when the kernel was built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_bsr_linear_kernel).__name__ == "InterpretedFunction"


def check_operands(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, blocks: torch.Tensor,
                   out_features: int, bias: torch.Tensor | None) -> int:
    """Raise a clear error for operands the kernel cannot take; return the block size."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, in_features), got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; the kernel takes {[str(d) for d in SUPPORTED_DTYPES]}")
    if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        raise ValueError(f"blocks must be (nnz, bs, bs), got shape {tuple(blocks.shape)}")
    bs = int(blocks.shape[1])
    if bs not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block size {bs} is not supported by the kernel; use one of {SUPPORTED_BLOCK_SIZES}")
    if blocks.dtype != x.dtype:
        raise TypeError(f"blocks have dtype {blocks.dtype} but x has {x.dtype}; convert one of them")
    n_block_rows = -(-out_features // bs)
    if crow_indices.shape != (n_block_rows + 1,):
        raise ValueError(f"crow_indices must have {n_block_rows + 1} entries for {out_features} outputs in blocks "
                         f"of {bs}, got shape {tuple(crow_indices.shape)}")
    if col_indices.shape != (blocks.shape[0],):
        raise ValueError(f"col_indices has shape {tuple(col_indices.shape)} but there are {blocks.shape[0]} blocks")
    if blocks.numel() >= 2**31:
        raise ValueError(f"{blocks.numel()} stored weight values: the kernel indexes blocks with int32 (< 2**31)")
    for name, t in (("crow_indices", crow_indices), ("col_indices", col_indices)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
    tensors = {"x": x, "crow_indices": crow_indices, "col_indices": col_indices, "blocks": blocks}
    if bias is not None:
        if bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        tensors["bias"] = bias
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all operands must be on one device, got {devices}")
    return bs


def tma_supported(x: torch.Tensor, out_features: int) -> bool:
    """Whether the tensor-descriptor variant can run: a Hopper-or-newer GPU (or the interpreter), a Triton with
    host tensor descriptors, and rows of x and y whose byte strides are multiples of 16."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    if not interpreted() and (x.device.type != "cuda" or torch.cuda.get_device_capability(x.device)[0] < 9):
        return False
    size = x.element_size()
    return x.stride(1) == 1 and (x.stride(0) * size) % 16 == 0 and (out_features * size) % 16 == 0


def bsr_linear(
    x: torch.Tensor,
    crow_indices: torch.Tensor,
    col_indices: torch.Tensor,
    blocks: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None = None,
    config: dict | None = None,
    input_precision: str = "tf32",
    out: torch.Tensor | None = None,
    variant: str = DEFAULT_VARIANT,
) -> torch.Tensor:
    """`x @ W^T (+ bias)` for a BSR weight W of `out_features` rows, through the Triton kernel.

    `variant` is "tma" (tiles moved by tensor descriptors; used where `tma_supported`, else falls back),
    "pointer" (plain masked loads, any GPU) or "auto": "tma" for blocks of 32 to 128, "pointer" for 16,
    the faster one in 18 of the 20 cells of the recorded H100 heatmap (`sparsity_lab/recorded/block_sparse_gpu.json`;
    the other two within 1.2%). `config`
    ({"BLOCK_M", "BLOCKS_PER_STEP", "num_warps", "num_stages", optional "GROUP_M"}) skips the autotuner (tests,
    the CPU interpreter); without it the tiling is autotuned per (token-count bucket, blocks-per-row bucket, N, K,
    block size, dtype). `input_precision` only matters for float32 inputs: "tf32" (default) or "ieee".
    `out`, when given, is a (M, out_features) tensor of x's dtype and device that receives the result.
    Column indices are trusted (formats.BSR checks them when built): checking here would cost a GPU sync.
    """
    bs = check_operands(x, crow_indices, col_indices, blocks, out_features, bias)
    if input_precision not in ("tf32", "ieee"):
        raise ValueError(f"input_precision must be 'tf32' or 'ieee', got {input_precision!r}")
    if variant not in ("auto", "tma", "pointer"):
        raise ValueError(f"variant must be 'auto', 'tma' or 'pointer', got {variant!r}")
    M, K = x.shape
    precision = input_precision if x.dtype == torch.float32 else "ieee"
    if out is None:
        y = torch.empty((M, out_features), dtype=x.dtype, device=x.device)
    elif out.shape != (M, out_features) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be a ({M}, {out_features}) {x.dtype} tensor on {x.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    else:
        y = out
    if M == 0 or out_features == 0:
        return y
    blocks = blocks.contiguous()
    n_block_rows = crow_indices.numel() - 1
    buckets = (triton.next_power_of_2(M), _nnz_bucket(col_indices.numel(), n_block_rows))
    bias_arg = bias if bias is not None else blocks
    # Triton's CPU interpreter multiplies bf16 bit patterns as integers in tl.dot; widen them there (exact products).
    flags = dict(BS=bs, HAS_BIAS=bias is not None, INPUT_PRECISION=precision,
                 WIDEN=x.dtype == torch.bfloat16 and interpreted())
    launch, grid = {}, lambda meta: (n_block_rows * triton.cdiv(M, meta["BLOCK_M"]),)  # noqa: E731
    if config is not None:
        launch = dict(config)
        launch.setdefault("GROUP_M", 8)
    wants_tma = variant == "tma" or (variant == "auto" and bs >= 32)
    use_tma = wants_tma and tma_supported(x, out_features) and y.is_contiguous()
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block_m = launch.get("BLOCK_M", 64)
        stored = blocks if blocks.shape[0] else torch.zeros(1, bs, bs, dtype=blocks.dtype, device=blocks.device)
        descs = (TensorDescriptor.from_tensor(x, [block_m, bs]), TensorDescriptor.from_tensor(y, [block_m, bs]),
                 TensorDescriptor.from_tensor(stored.view(-1, bs), [bs, bs]))
        args = (*descs, bias_arg, crow_indices, col_indices, M, out_features, K, *buckets)
        kernel = _bsr_linear_tma_kernel if config is not None else _autotuned_tma
    else:
        args = (x, y, bias_arg, crow_indices, col_indices, blocks, M, out_features, K, *buckets,
                x.stride(0), x.stride(1), y.stride(0), y.stride(1))
        flags["EVEN_K"] = K % bs == 0
        kernel = _bsr_linear_kernel if config is not None else _autotuned
    kernel[grid](*args, **flags, **launch)
    return y


def _nnz_bucket(nnz_blocks: int, n_block_rows: int) -> int:
    """Stored blocks per block-row, rounded up to a power of two: the loop length the tiling is tuned for."""
    return triton.next_power_of_2(max(1, -(-nnz_blocks // max(n_block_rows, 1))))


def best_config(M: int, out_features: int, in_features: int, block_size: int, dtype: torch.dtype,
                nnz_blocks: int, variant: str = "pointer") -> dict | None:
    """The tiling the autotuner chose for this problem and variant ("pointer" or "tma"), once it ran (else None)."""
    n_block_rows = -(-out_features // block_size)
    key_prefix = (triton.next_power_of_2(M), _nnz_bucket(nnz_blocks, n_block_rows), out_features, in_features,
                  block_size)
    tuner = _autotuned_tma if variant == "tma" else _autotuned
    for key, cfg in tuner.cache.items():
        if tuple(key[:5]) == key_prefix and str(dtype) in map(str, key):
            return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return None

