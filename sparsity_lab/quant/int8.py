"""Symmetric int8 dynamic quantization: per-token activation scales, per-output-channel weight scales.

The arithmetic of one quantized linear layer ``y = x @ w.T + b`` (x: (M, K) tokens, w: (N, K)):

    s_x[m] = max_k |x[m, k]| / 127        q_x = clamp(round(x / s_x), -127, 127)    (per token, at run time)
    s_w[n] = max_k |w[n, k]| / 127        q_w = clamp(round(w / s_w), -127, 127)    (per channel, once)
    acc    = q_x @ q_w.T                   exact in int32 (|acc| <= 127 * 127 * K)
    y      = acc * s_x[:, None] * s_w[None, :] + b     in float32, then cast to the output dtype

Symmetric means zero maps to zero and -128 is never used, so the grid is the same on both sides.
A row of zeros has max 0 and therefore scale 0: it quantizes to zeros (we divide by 1 there, never by 0) and
dequantizes back to exact zeros. Rounding is round-half-to-even (`torch.round`), so every entry's error is at most
half a step: ``|x - s * q| <= s / 2``.

Two integer matmuls are provided: `int8_matmul_reference` (exact, int64 on any device; the CPU path) and
`int_mm` (the GPU dense path, `torch._int_mm`, whose shape constraints it checks and pads around).
"""

from __future__ import annotations

import torch

QMAX = 127
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# torch._int_mm on CUDA needs M > 16 rows, and K and N multiples of 8 (aten/src/ATen/native/cuda/Blas.cpp).
INT_MM_MIN_ROWS = 17
INT_MM_MULTIPLE = 8


def _check_float_2d(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(x.shape)}")


def _check_int8_2d(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.int8:
        raise TypeError(f"{name} must be torch.int8, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric scale max|x[row]| / 127 in float32 (0 for an all-zero row), correctly rounded on every
    device: CUDA divides a tensor by a Python scalar as a * (1/b), one bit off at times, so divide by a 0-d tensor
    on the same device (cached: no extra kernel or copy per call)."""
    amax = x.detach().abs().amax(dim=1).to(torch.float32)
    return amax / _qmax_on(amax.device)


_QMAX_TENSORS: dict[torch.device, torch.Tensor] = {}


def _qmax_on(device: torch.device) -> torch.Tensor:
    divisor = _QMAX_TENSORS.get(device)
    if divisor is None:
        divisor = _QMAX_TENSORS[device] = torch.tensor(float(QMAX), device=device)
    return divisor


def quantize_rows(x: torch.Tensor, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of a 2-D float tensor to int8 with its own symmetric scale; returns (q, scale).

    `scale` is float32 of shape (rows,); rows of zeros get scale 0 and q = 0 (no division by zero).
    `check_finite=False` skips the NaN/inf check (a device sync on GPUs) for activations in a hot path. Scales
    are float32, so float64 values beyond float32's range are refused rather than quantized to zeros.
    """
    _check_float_2d(x, "x")
    if x.shape[1] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: rows need at least one entry to have a scale")
    if check_finite and x.numel() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"x contains non-finite values (first at index {bad}); int8 scales need finite inputs")
    if check_finite and x.dtype == torch.float64 and x.numel():
        limit = torch.finfo(torch.float32).max
        too_big = x.abs() > limit
        if too_big.any():
            bad = too_big.nonzero()[0].tolist()
            raise ValueError(f"x has values beyond float32's range (first at index {bad}: {float(x[tuple(bad)]):.3g}):"
                             f" int8 scales are float32, so |x| must be at most {limit:.3g}")
    scale = row_scales(x)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x.to(torch.float32) / safe[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel int8 weight (N, K) -> (q_w int8 (N, K), s_w float32 (N,)), symmetric."""
    _check_float_2d(weight, "weight")
    return quantize_rows(weight, check_finite=True)


def quantize_per_token(x: torch.Tensor, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 activations (M, K) -> (q_x int8 (M, K), s_x float32 (M,)): the dynamic part, done per call."""
    _check_float_2d(x, "x")
    return quantize_rows(x, check_finite=check_finite)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Back to floats: q * scale[:, None] (the values the integer matmul really multiplies)."""
    _check_int8_2d(q, "q")
    if scale.dim() != 1 or scale.shape[0] != q.shape[0]:
        raise ValueError(f"scale must have shape ({q.shape[0]},) for q of shape {tuple(q.shape)}, "
                         f"got {tuple(scale.shape)}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # q * s is exact in float64
    return (q.to(compute) * scale.to(compute)[:, None]).to(dtype)


def _check_matmul_operands(a: torch.Tensor, w: torch.Tensor) -> None:
    _check_int8_2d(a, "a")
    _check_int8_2d(w, "w")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"a is {tuple(a.shape)} and w is {tuple(w.shape)}: both need the same K (a @ w.T)")
    if a.device != w.device:
        raise ValueError(f"a is on {a.device} but w is on {w.device}")


def int8_matmul_reference(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact a @ w.T for int8 a (M, K) and w (N, K), accumulated in int64 and returned as int32 (M, N)."""
    _check_matmul_operands(a, w)
    if a.device.type == "cuda":  # CUDA has no int64 matmul; float64 is exact for |acc| < 2**53
        acc = (a.to(torch.float64) @ w.to(torch.float64).T).to(torch.int64)
    else:
        acc = a.to(torch.int64) @ w.to(torch.int64).T
    return acc.to(torch.int32)  # |acc| <= 127 * 127 * K fits int32 for K < 133_000


def pad_2d(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """`x` zero-padded at the bottom and right to (rows, cols); `x` itself when it already has that shape."""
    if x.shape == (rows, cols):
        return x
    out = x.new_zeros(rows, cols)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def int_mm_shape(m: int, k: int, n: int, device_type: str) -> tuple[int, int, int]:
    """The (M, K, N) that `torch._int_mm` accepts on `device_type` for a requested (M, K, N): on CUDA M is raised to
    17 and K, N to multiples of 8 (zero padding leaves the product unchanged); the CPU takes any shape."""
    if device_type != "cuda":
        return m, k, n
    return max(m, INT_MM_MIN_ROWS), round_up(max(k, 1), INT_MM_MULTIPLE), round_up(max(n, 1), INT_MM_MULTIPLE)


def int_mm(a: torch.Tensor, w: torch.Tensor, pad: bool = True) -> torch.Tensor:
    """a @ w.T in int32 through `torch._int_mm` (cuBLAS int8 on GPUs), padding with zero rows/columns where
    its constraints (M > 16, K and N multiples of 8) require; `pad=False` raises instead, naming the constraint."""
    _check_matmul_operands(a, w)
    m, k = a.shape
    n = w.shape[0]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros(m, n, dtype=torch.int32, device=a.device)
    rows, inner, cols = int_mm_shape(m, k, n, a.device.type)
    if (rows, inner, cols) != (m, k, n):
        if not pad:
            raise ValueError(
                f"torch._int_mm on {a.device.type} needs M > 16 and K, N multiples of 8; got M={m}, K={k}, N={n} "
                "(pass pad=True to pad with zeros)"
            )
        a = pad_2d(a, rows, inner)
        w = pad_2d(w, cols, inner)
    out = torch._int_mm(a.contiguous(), w.contiguous().T)
    return out[:m, :n] if (rows, cols) != (m, n) else out


def rescale(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """int32 accumulator (M, N) -> acc * s_x[:, None] * s_w[None, :] + bias, computed in float32, cast to `dtype`.

    Two passes over the output: the per-token multiply makes float32, then one `addcmul` applies the per-channel
    scale and the bias and writes `dtype` directly.
    """
    if acc.dim() != 2 or acc.dtype != torch.int32:
        raise ValueError(f"acc must be a 2-D int32 accumulator, got {acc.dtype} of shape {tuple(acc.shape)}")
    m, n = acc.shape
    if x_scale.shape != (m,) or w_scale.shape != (n,):
        raise ValueError(f"scales must be ({m},) and ({n},) for acc {tuple(acc.shape)}, "
                         f"got {tuple(x_scale.shape)} and {tuple(w_scale.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    y = torch.mul(acc, x_scale.to(torch.float32)[:, None])
    out = torch.empty(m, n, dtype=dtype, device=acc.device)
    base = bias.to(torch.float32) if bias is not None else torch.zeros((), device=acc.device)
    return torch.addcmul(base, y, w_scale.to(torch.float32)[None, :], out=out)


def fused_kernels():
    """The Triton kernels of `sparsity_lab.quant.kernels` (one pass each for quantize and rescale); they need
    CUDA tensors, or TRITON_INTERPRET=1 set before the first import for CPU tensors."""
    from sparsity_lab._optional import require

    require("triton", extra="gpu")
    from sparsity_lab.quant import kernels as int8_quant

    return int8_quant


def use_fused(fused: bool | None, x: torch.Tensor) -> bool:
    """Whether to run the Triton quantize and rescale kernels: `fused` when given; by default (None) on CUDA
    tensors where Triton is installed (int8 2:4 at 8192³ on an H100: 0.77x of fp16 dense with the eager ops, 2.45x
    fused; docs/performance/quant_sparse.md)."""
    if fused is not None:
        return fused
    from sparsity_lab._optional import triton_available

    return x.is_cuda and triton_available()


def int8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
    fused: bool | None = None,
) -> torch.Tensor:
    """Dynamically quantized ``x @ w.T + b`` for x (..., K): quantize x per token, int8 matmul, rescale to x.dtype.

    `backend`: "reference" (exact int64, any device), "int_mm" (`torch._int_mm`), or "auto" (int_mm on CUDA,
    reference elsewhere). `fused`: quantize and rescale with the Triton kernels instead of eager PyTorch ops (None:
    on CUDA where Triton is installed, `use_fused`).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor (..., K), got {type(x).__name__}")
    if x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects {w_q.shape[1]}")
    if backend == "auto":
        backend = "int_mm" if x.device.type == "cuda" else "reference"
    matmuls = {"reference": int8_matmul_reference, "int_mm": int_mm}
    if backend not in matmuls:
        raise ValueError(f"backend must be one of {sorted(matmuls)} or 'auto', got {backend!r}")
    flat = x.reshape(-1, x.shape[-1])
    kernels = fused_kernels() if use_fused(fused, x) else None
    if kernels is not None:
        q_x, s_x = kernels.quantize_per_token(flat)
    else:
        q_x, s_x = quantize_per_token(flat, check_finite=x.device.type != "cuda")
    acc = matmuls[backend](q_x, w_q)
    if kernels is not None:
        y = kernels.rescale(acc, s_x, w_scale, bias, dtype=x.dtype)
    else:
        y = rescale(acc, s_x, w_scale, bias, dtype=x.dtype)
    return y.reshape(*x.shape[:-1], w_q.shape[0])
