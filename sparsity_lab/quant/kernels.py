"""Triton kernels for the memory-bound steps around an int8 or FP8 matmul in a dynamically quantized layer.

Eager PyTorch spends several passes over memory on each: per-token quantization (abs-max, divide, round, clamp,
cast) and the epilogue (accumulator -> float, two scales, bias, cast). Each kernel here makes one pass:

- `quantize_per_token(x)`: one program per row reads it once (up to 8192 entries, held in registers; longer rows
  twice: abs-max, then quantize, the second read mostly from L2) and writes int8 values and the float32 scale.
  Same arithmetic as `sparsity_lab.quant.int8.quantize_rows`: s = max|x| / 127,
  q = clamp(round_half_even(x / s), -127, 127), a zero row gets s = 0 and q = 0.
- `quantize_per_token_fp8(x, dtype)`: the same for float8_e4m3fn or float8_e5m2, bit for bit what
  `sparsity_lab.quant.fp8.quantize_rows_fp8` computes: s = max|x| / FMAX, q = fp8(clamp(x / s, -FMAX, FMAX)).
  Both are one kernel (`_quantize_rows_kernel`): the abs-max pass is shared, the rounding differs.
- `rescale(acc, s_x, s_w, bias, dtype)`: y = acc * s_x[:, None] (* s_w[None, :]) + bias in float32, written
  row-major in `dtype`; `acc` (int32 or float) may be any strided (M, N) view, such as the transposed (N, M)
  result of a cuSPARSELt matmul, so the re-layout costs nothing beyond this pass.

Round-half-to-even uses the float32 trick (v + 1.5 * 2**23) - 1.5 * 2**23, exact for |v| < 2**22.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _on_grid(v, QMAX: tl.constexpr, FP8: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr):
    """v (already divided by the row's scale) rounded to the target grid, in float32 (the final cast is exact).

    FP8's rounding to its grid is done in float32, as Triton's interpreter rounds some values wrongly when it
    casts: a value of binary exponent e (at least MIN_EXP, the smallest normal one: below it the subnormals share
    its step) lies on a grid of step 2**(e - MANTISSA); v / step rounded half to even and multiplied back is the
    FP8 value. Both steps are exact (powers of two), the sign is put back as a bit."""
    if FP8:
        v = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        bits = v.to(tl.int32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, MIN_EXP)
        step = ((exponent - MANTISSA + 127) << 23).to(tl.float32, bitcast=True)
        inverse = ((127 - exponent + MANTISSA) << 23).to(tl.float32, bitcast=True)
        r = tl.abs(v) * inverse
        r = (r + 12582912.0) - 12582912.0  # 1.5 * 2**23: round half to even
        return ((r * step).to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)
    q = (v + 12582912.0) - 12582912.0  # a literal, as Triton 3.6 kernels may not read globals
    return tl.minimum(tl.maximum(q, -QMAX), QMAX)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_xk, stride_qm, QMAX: tl.constexpr,
                          FP8: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr, BLOCK_K: tl.constexpr,
                          ONE_LOAD: tl.constexpr):
    """One program per row of x::

        s[row] = max(|x[row, :]|) / QMAX
        int8: q[row, :] = clamp(round_half_even(x[row, :] / s), -127, 127)      (s = 0: q = 0)
        FP8:  q[row, :] = fp8(clamp(x[row, :] / s, -QMAX, QMAX))   # round to nearest, ties to even

    ONE_LOAD (BLOCK_K >= K): the row is read once and held in registers. Otherwise it is read twice, BLOCK_K
    entries at a time: the abs-max pass, then the quantize pass (whose reads mostly hit L2).
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    if ONE_LOAD:
        v = tl.load(x_ptr + row * stride_xm + offs * stride_xk, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(v), axis=0)
    else:
        peak = tl.zeros([BLOCK_K], dtype=tl.float32)
        start = 0
        while start < K:  # not `range(0, K, ...)`: Triton 3.6's interpreter cannot take a runtime bound (NumPy 2.4)
            cols = start + offs
            x = tl.load(x_ptr + row * stride_xm + cols * stride_xk, mask=cols < K, other=0.0).to(tl.float32)
            peak = tl.maximum(peak, tl.abs(x))
            start += BLOCK_K
        amax = tl.max(peak, axis=0)
    scale = tl.div_rn(amax, QMAX)  # IEEE division, as torch: `/` on GPUs is approximate
    safe = tl.where(scale > 0.0, scale, 1.0)
    tl.store(s_ptr + row, scale)
    if ONE_LOAD:  # the row held since the first branch (a constexpr `if` shares the kernel's scope)
        q = _on_grid(tl.div_rn(v, safe), QMAX, FP8, MANTISSA, MIN_EXP)
        tl.store(q_ptr + row * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=offs < K)
    else:
        start = 0
        while start < K:
            cols = start + offs
            x = tl.load(x_ptr + row * stride_xm + cols * stride_xk, mask=cols < K, other=0.0).to(tl.float32)
            q = _on_grid(tl.div_rn(x, safe), QMAX, FP8, MANTISSA, MIN_EXP)
            tl.store(q_ptr + row * stride_qm + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
            start += BLOCK_K


@triton.jit
def _rescale_kernel(acc_ptr, sx_ptr, sw_ptr, b_ptr, y_ptr, M, N, stride_am, stride_an, stride_ym,
                    HAS_W_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """One program per (BLOCK_M, BLOCK_N) tile of y::

        y[tile] = float32(acc[tile]) * sx[rows, None] (* sw[None, cols]) (+ bias[None, cols]), cast to y's dtype
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    acc = tl.load(acc_ptr + rows64[:, None] * stride_am + cols64[None, :] * stride_an, mask=inside, other=0)
    sx = tl.load(sx_ptr + rows, mask=rows < M, other=0.0)
    y = acc.to(tl.float32) * sx[:, None]
    if HAS_W_SCALE:
        y *= tl.load(sw_ptr + cols, mask=cols < N, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows64[:, None] * stride_ym + cols64[None, :], y.to(y_ptr.dtype.element_ty), mask=inside)


# Rows of up to ONE_LOAD_UP_TO entries (rounded up to a power of two) are read once; longer ones twice, in steps of
# TWO_LOAD_BLOCK. Measured on an H200 (bf16 to e4m3, 4 warps, docs/performance/fp8.md): one load took 0.071 ms
# against 0.085 for two at 16384 x 4096 and 8192 x 8192; at K = 14336 one load of 16384 entries was slower than two
# (0.36 against 0.30 ms, steps of 2048 against 0.33 in steps of 4096).
ONE_LOAD_UP_TO, TWO_LOAD_BLOCK = 8192, 2048

# (largest magnitude, mantissa bits, smallest normal exponent) of each target type
_GRIDS = {torch.int8: (127.0, 0, 0), torch.float8_e4m3fn: (float(torch.finfo(torch.float8_e4m3fn).max), 3, -6),
          torch.float8_e5m2: (float(torch.finfo(torch.float8_e5m2).max), 2, -14)}


def _quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating tensor, got {x.dtype} of shape {tuple(x.shape)}")
    m, k = x.shape
    if k == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: rows need at least one entry to have a scale")
    q = torch.empty(m, k, dtype=dtype, device=x.device)
    s = torch.empty(m, dtype=torch.float32, device=x.device)
    if m:
        qmax, mantissa, min_exp = _GRIDS[dtype]
        one_load = triton.next_power_of_2(k) <= ONE_LOAD_UP_TO
        _quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), x.stride(1), q.stride(0), QMAX=qmax,
                                    FP8=dtype != torch.int8, MANTISSA=mantissa, MIN_EXP=min_exp,
                                    BLOCK_K=triton.next_power_of_2(k) if one_load else TWO_LOAD_BLOCK,
                                    ONE_LOAD=one_load)
    return q, s


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> (q int8 (M, K) contiguous, s float32 (M,)), one Triton program per row."""
    return _quantize(x, torch.int8)


def quantize_per_token_fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> (q `dtype` (M, K) contiguous, s float32 (M,)) for float8_e4m3fn or float8_e5m2, one Triton
    program per row."""
    if dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    return _quantize(x, dtype)


def rescale(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor | None, bias: torch.Tensor | None,
            dtype: torch.dtype, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """int32 or float (M, N), any strides -> acc * s_x[:, None] * s_w[None, :] + bias as a contiguous `dtype`
    tensor (`w_scale` None: the matmul applied it already)."""
    if acc.dim() != 2 or not (acc.dtype == torch.int32 or acc.is_floating_point()):
        raise ValueError(f"acc must be a 2-D int32 or float accumulator, got {acc.dtype} of shape {tuple(acc.shape)}")
    m, n = acc.shape
    if (x_scale.shape != (m,) or (w_scale is not None and w_scale.shape != (n,))
            or (bias is not None and bias.shape != (n,))):
        raise ValueError(f"scales must be ({m},) and ({n},) (and bias ({n},)) for acc {tuple(acc.shape)}")
    y = torch.empty(m, n, dtype=dtype, device=acc.device)
    if m and n:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _rescale_kernel[grid](acc, x_scale.contiguous(), w_scale.contiguous() if w_scale is not None else x_scale,
                              bias if bias is not None else acc, y, m, n, acc.stride(0), acc.stride(1), y.stride(0),
                              HAS_W_SCALE=w_scale is not None, HAS_BIAS=bias is not None, BLOCK_M=block_m,
                              BLOCK_N=block_n)
    return y
