"""`ColumnMajorNorm`: LayerNorm or RMSNorm that reads and writes a column-major activation as it lies (Triton).

Why: a 2:4 layer's y = D.t() is column-major (cuSPARSELt writes D = W · xᵀ), and PyTorch's ``F.layer_norm`` first
copies such an input to row-major, which in a whole model costs about what sparsity saves. If instead the whole
residual stream of a transformer is kept column-major (`models.stream.column_major_stream_`), the 2:4 outputs,
the residual adds, the GELU and the next 2:4 layer all meet one layout and nothing is copied -- provided the norms
take it too. This kernel normalizes each token over its features where the features are the *strided* dimension.

Layout, for x (M tokens, C features) column-major, i.e. D = xᵀ row-major (C, M):

    read   D[c, m] at c * M + m    one program: BLOCK_M consecutive tokens (unit stride, coalesced),
                                   all C features of them (one tile, or BLOCK_C rows at a time)
    stats  per token m: mean over c (LayerNorm only) and variance, in float32
    write  out[c, m] at c * M + m  the same tile, normalized, scaled by weight[c] (and shifted by bias[c])

Where C fits one tile (``next_pow2(C) * BLOCK_M`` up to `MAX_TILE`: ViT-L's 1024 and Llama's 4096 features) a
program reads its tokens once and writes them once, as PyTorch's row-major kernel does; wider rows are read twice
(and so is a fused add's tile above half of `MAX_TILE`, which would spill): a first pass merges per-chunk mean and
squared deviations (Chan's parallel update, no catastrophic cancellation), a second normalizes (`tile_config`).
Reference: `norm_t_reference` (float32 math through ``F.layer_norm`` / ``F.rms_norm``).
Benchmark: `norm_speed` (ours on a column-major x against PyTorch on a row-major and on a column-major x);
`sparsity-lab bench models` records it at ViT-L's and Llama's shapes.

Fused with the residual add before it (`add_norm_t`, HAS_RESIDUAL; `ColumnMajorNorm.add_forward`): a pre-norm
block's sum is read at once by a norm, so one program reads the tile of D (the stream x) and of R (the branch
output, the same layout), rounds S = D + R to their dtype as PyTorch's add does (a float32 sum, one rounding),
writes S and takes the norm of that rounded S -- four passes over the stream where an add then a norm take five.
The two-pass kernel writes S in its first pass and reads it back in the second. Reference: `add_norm_t_reference`.

Under ``torch.compile`` the kernels are the custom ops ``sparsity_lab::norm_t`` (D in, D out) and
``sparsity_lab::add_norm_t`` (D and R in, S and the norm out), with fake kernels for the shapes, so a streamed
model compiles with no graph break.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab._optional import triton_available, triton_interpreting

# Elements one program holds in the one-pass kernel (float32: 256 KiB over 16 warps), and the tokens it takes by
# default: measured on an H200 (bf16, docs/performance/models.md), the norm ran fastest on 16 tokens a program
# (25 216 x 1024: 45 µs; 16 384 x 4096 in one pass with 16 warps: 144 µs against 188 in two), the fused add on 32
# at 1024 features (71 against 84 µs on 16) and in two passes of 64 tokens at 4096 (a one-pass tile spilled).
MAX_TILE = 65536
NORM_TOKENS, ADD_NORM_TOKENS = 16, 32
BLOCK_C = 64  # rows of D per step in the two-pass kernel


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _load_sum(d_ptr, r_ptr, s_ptr, offsets, inside, HAS_RESIDUAL: tl.constexpr):
        """A tile of D in float32; with HAS_RESIDUAL, of S = D + R instead, rounded to S's dtype as PyTorch's add
        rounds (float32 sum, one rounding) and stored, so the norm is taken of the S the model goes on with."""
        x = tl.load(d_ptr + offsets, mask=inside, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + offsets, mask=inside, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(s_ptr.dtype.element_ty)
            tl.store(s_ptr + offsets, x, mask=inside)
        return x.to(tl.float32)

    @triton.jit
    def _norm_t_kernel(d_ptr, r_ptr, s_ptr, w_ptr, b_ptr, out_ptr, C, M, eps, RMS: tl.constexpr,
                       HAS_RESIDUAL: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ONE_PASS: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
        m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < M
        if ONE_PASS:  # the whole (C, BLOCK_M) tile in registers: one read, one write (of each)
            c = tl.arange(0, BLOCK_C)
            inside = (c[:, None] < C) & m_ok[None, :]
            offsets = c[:, None].to(tl.int64) * M + m[None, :]
            x = _load_sum(d_ptr, r_ptr, s_ptr, offsets, inside, HAS_RESIDUAL)
            if RMS:
                xc = x
            else:
                xc = tl.where(inside, x - tl.sum(x, axis=0)[None, :] / C, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / C + eps)
            y = xc * rstd[None, :]
            if HAS_W:
                y = y * tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
            if HAS_B:
                y = y + tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=inside)
        else:  # pass 1: per-token mean and sum of squared deviations, merged chunk by chunk (Chan et al.)
            mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
            m2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for start in range(0, C, BLOCK_C):
                c = start + tl.arange(0, BLOCK_C)
                inside = (c[:, None] < C) & m_ok[None, :]
                x = _load_sum(d_ptr, r_ptr, s_ptr, c[:, None].to(tl.int64) * M + m[None, :], inside, HAS_RESIDUAL)
                count_a = start * 1.0
                count_b = tl.minimum(C - start, BLOCK_C) * 1.0
                if RMS:
                    m2 += tl.sum(x * x, axis=0)
                else:
                    mean_b = tl.sum(x, axis=0) / count_b
                    dev = tl.where(inside, x - mean_b[None, :], 0.0)
                    delta = mean_b - mean
                    total = count_a + count_b
                    m2 += tl.sum(dev * dev, axis=0) + delta * delta * (count_a * count_b / total)
                    mean += delta * (count_b / total)
            rstd = 1.0 / tl.sqrt(m2 / C + eps)
            if HAS_RESIDUAL:  # pass 2 reads S back: the program's stores must be visible to all its threads
                tl.debug_barrier()
                src_ptr = s_ptr
            else:
                src_ptr = d_ptr
            for start in range(0, C, BLOCK_C):  # pass 2: normalize (the tile is read again, mostly from L2)
                c = start + tl.arange(0, BLOCK_C)
                inside = (c[:, None] < C) & m_ok[None, :]
                offsets = c[:, None].to(tl.int64) * M + m[None, :]
                x = tl.load(src_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
                y = (x - mean[None, :]) * rstd[None, :]
                if HAS_W:
                    y = y * tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
                if HAS_B:
                    y = y + tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
                tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=inside)


def tile_config(c: int, residual: bool, block_m: int = 0, itemsize: int = 2) -> tuple[int, bool, int]:
    """(tokens a program takes, whether one pass holds all C features, warps) for C features of `itemsize`-byte
    values; `block_m` 0: the measured default (`NORM_TOKENS`, `ADD_NORM_TOKENS` where one pass holds them, else 64
    in two passes). Float32 tiles get half the elements (their one-pass tiles spill at the 16-bit sizes: 2.9 KB a
    thread for the fused add over 1024 features, scripts/hopper_build.py) and as few as 8 tokens (32 bytes)."""
    width = triton.next_power_of_2(c)
    limit = MAX_TILE >> (residual + (itemsize > 2))  # halved for the fused add (x, its branch, their sum), float32
    tokens = ADD_NORM_TOKENS if residual else NORM_TOKENS
    while itemsize > 2 and tokens > 8 and width * tokens > limit:
        tokens //= 2
    block_m = block_m or (tokens if width * tokens <= limit else 64)
    one_pass = width * block_m <= limit
    warps = (8 if width * block_m <= 32768 else 16) if one_pass else (8 if residual else 4)
    return block_m, one_pass, warps


def norm_t_reference(d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                     rms: bool) -> torch.Tensor:
    """What `norm_t` computes, by PyTorch in float32: the norm of x = dᵀ over its features, returned as D (C, M)."""
    x = d.t().float()
    w = None if weight is None else weight.float()
    if rms:
        y = F.rms_norm(x, (d.shape[0],), w, eps)
    else:
        y = F.layer_norm(x, (d.shape[0],), w, None if bias is None else bias.float(), eps)
    return y.t().to(d.dtype).contiguous()


def add_norm_t_reference(d: torch.Tensor, r: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What `add_norm_t` computes: S = D + R by PyTorch's own add (in their dtype, as the unfused model adds) and
    the norm of S by `norm_t_reference`, both as D (C, M)."""
    s = d + r
    return s, norm_t_reference(s, weight, bias, eps, rms)


def _kernel_runs(d: torch.Tensor) -> bool:
    return triton_available() and (d.is_cuda or triton_interpreting()) and d.dtype in (
        torch.float16, torch.bfloat16, torch.float32)


def _launch(d: torch.Tensor, r: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
            eps: float, rms: bool, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One `_norm_t_kernel` over contiguous D (C, M) (and R, added first, where given): (S, the norm), S = D
    without R."""
    c, m = d.shape
    block_m, one_pass, warps = tile_config(c, r is not None, block_m, d.element_size())
    s = d if r is None else torch.empty_like(d)
    out = torch.empty_like(d)
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    _norm_t_kernel[(triton.cdiv(m, block_m),)](
        d, d if r is None else r, s, d if weight is None else weight, d if bias is None else bias, out, c, m, eps,
        RMS=rms, HAS_RESIDUAL=r is not None, HAS_W=weight is not None, HAS_B=bias is not None, ONE_PASS=one_pass,
        BLOCK_C=triton.next_power_of_2(c) if one_pass else BLOCK_C, BLOCK_M=block_m, num_warps=warps)
    return s, out


def _norm_t(d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, rms: bool,
            block_m: int = 0) -> torch.Tensor:
    """LayerNorm (``rms=False``) or RMSNorm of x = dᵀ over its C features, for D (C, M) row-major; returns D's
    layout (C, M). `block_m`: tokens per program (0: `tile_config`'s default)."""
    d = d.contiguous()
    if not _kernel_runs(d):
        return norm_t_reference(d, weight, bias, eps, rms)
    return _launch(d, None, weight, bias, eps, rms, block_m)[1]


def _add_norm_t(d: torch.Tensor, r: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                rms: bool, block_m: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, the norm of S) for S = D + R, both D (C, M) row-major of one dtype, in one kernel: D and R read once, S
    and the norm written once (a residual add and the norm after it; `_norm_t` otherwise)."""
    if r.shape != d.shape or r.dtype != d.dtype:
        raise ValueError(f"r must have d's shape {tuple(d.shape)} and dtype {d.dtype}, got {tuple(r.shape)} "
                         f"and {r.dtype}")
    d, r = d.contiguous(), r.contiguous()
    if not _kernel_runs(d):
        return add_norm_t_reference(d, r, weight, bias, eps, rms)
    return _launch(d, r, weight, bias, eps, rms, block_m)


# The custom ops are what ``torch.compile`` sees; an eager call runs `_norm_t` (`_add_norm_t`) itself, since an op's
# dispatch costs more host time than the kernel's launch (135 against 36 µs a call on a 2-core CPU host).
norm_t = torch.library.custom_op("sparsity_lab::norm_t", _norm_t, mutates_args=())
add_norm_t = torch.library.custom_op("sparsity_lab::add_norm_t", _add_norm_t, mutates_args=())


@norm_t.register_fake
def _(d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, rms: bool,
      block_m: int = 0) -> torch.Tensor:
    return torch.empty_like(d, memory_format=torch.contiguous_format)


@add_norm_t.register_fake
def _(d: torch.Tensor, r: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
      rms: bool, block_m: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty_like(d, memory_format=torch.contiguous_format),
            torch.empty_like(d, memory_format=torch.contiguous_format))


def columns(x: torch.Tensor) -> torch.Tensor | None:
    """D = xᵀ (C, M), a row-major view, when x (..., C) is column-major over its flattened tokens (the layout a 2:4
    layer returns); None for any other layout."""
    c = x.shape[-1]
    m = x.numel() // max(c, 1)
    if x.dim() < 2 or m <= 1 or c <= 1 or x.stride(-1) != m:
        return None
    d = x.movedim(-1, 0)
    return d.reshape(c, m) if d.is_contiguous() else None


def to_column_major(x: torch.Tensor) -> torch.Tensor:
    """x (..., C) with the same values, column-major over its flattened tokens (one copy; none if it already is)."""
    if columns(x) is not None:
        return x
    return x.movedim(-1, 0).contiguous().movedim(0, -1)


class ColumnMajorNorm(nn.Module):
    """LayerNorm or RMSNorm over the last dimension that keeps its input's layout: a column-major x goes through
    the Triton kernel (`norm_t`) and comes back column-major; any other x, and any call that needs gradients, is
    computed exactly as the model's own norm computes it (the same PyTorch calls, row-major out); `add_forward`
    takes the residual add before it too. Built from that norm by `from_norm`, sharing its weight and bias (the
    state-dict keys stay the same)."""

    KINDS = ("layer_norm", "rms_norm", "llama_rms_norm")

    def __init__(self, kind: str, features: int, eps: float | None, weight: nn.Parameter | None,
                 bias: nn.Parameter | None) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.features, self.eps = kind, features, eps
        self.weight, self.bias = weight, bias

    @classmethod
    def from_norm(cls, norm: nn.Module) -> ColumnMajorNorm:
        """The same norm for ``nn.LayerNorm`` (over the last dimension), ``nn.RMSNorm`` or Hugging Face's
        ``LlamaRMSNorm``; a ValueError naming the module for anything else (other RMSNorms differ: Gemma's
        scales by 1 + weight)."""
        reason = unfit(norm)
        if reason:
            raise ValueError(reason)
        if isinstance(norm, nn.LayerNorm):
            return cls("layer_norm", norm.normalized_shape[0], norm.eps, norm.weight, norm.bias)
        if isinstance(norm, nn.RMSNorm):
            return cls("rms_norm", norm.normalized_shape[0], norm.eps, norm.weight, None)
        return cls("llama_rms_norm", norm.weight.shape[0], norm.variance_epsilon, norm.weight, None)

    def extra_repr(self) -> str:
        return f"{self.features}, eps={self.eps}, {self.kind}, keeps the layout"

    def _as_before(self, x: torch.Tensor) -> torch.Tensor:
        """The original module's own computation."""
        if self.kind == "layer_norm":
            return F.layer_norm(x, (self.features,), self.weight, self.bias, self.eps)
        if self.kind == "rms_norm":
            return F.rms_norm(x, (self.features,), self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def _needs_grad(self, *tensors: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (*tensors, self.weight, self.bias))

    def _eps(self, x: torch.Tensor) -> float:
        return self.eps if self.eps is not None else torch.finfo(x.dtype).eps

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.features:
            raise ValueError(f"x has shape {tuple(x.shape)}: this norm expects {self.features} features last")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        d = columns(x)
        if d is None or self._needs_grad(x):  # the kernel has no backward: PyTorch's norm takes any layout
            return self._as_before(x)
        op = torch.ops.sparsity_lab.norm_t if torch.compiler.is_compiling() else _norm_t
        out = op(d, self.weight, self.bias, self._eps(x), self.kind != "layer_norm")
        return out.reshape(self.features, *x.shape[:-1]).movedim(0, -1)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, self(s)) for s = x + residual: a pre-norm block's residual add and the norm after it. Where x and
        `residual` are column-major alike (one shape, one dtype) and no gradient is needed, one kernel
        (`add_norm_t`: x and residual read once, s and the norm written once, both column-major); otherwise exactly
        ``s = x + residual; self(s)`` (any layout, differentiable)."""
        self._check(x)
        d, r = columns(x), columns(residual)
        if (d is None or r is None or residual.shape != x.shape or residual.dtype != x.dtype
                or self._needs_grad(x, residual)):
            s = x + residual
            return s, self(s)
        op = torch.ops.sparsity_lab.add_norm_t if torch.compiler.is_compiling() else _add_norm_t
        s, out = op(d, r, self.weight, self.bias, self._eps(x), self.kind != "layer_norm")
        shape = (self.features, *x.shape[:-1])
        return s.reshape(shape).movedim(0, -1), out.reshape(shape).movedim(0, -1)


def unfit(norm: nn.Module) -> str | None:
    """Why `ColumnMajorNorm.from_norm` cannot take `norm` (None when it can)."""
    if isinstance(norm, nn.LayerNorm | nn.RMSNorm):
        base = nn.LayerNorm if isinstance(norm, nn.LayerNorm) else nn.RMSNorm
        timm_layer_norm = type(norm).__name__ == "LayerNorm" and type(norm).__module__.startswith("timm.")
        if type(norm).forward is not base.forward and not timm_layer_norm:  # timm's computes F.layer_norm too
            return f"{type(norm).__name__} overrides {base.__name__}'s forward: what it computes is not known here"
        if len(norm.normalized_shape) != 1:
            return (f"{type(norm).__name__} over {tuple(norm.normalized_shape)}: only a norm over the last "
                    f"dimension keeps a layout")
        return None
    if type(norm).__name__ == "LlamaRMSNorm" and hasattr(norm, "variance_epsilon"):
        return None
    return f"{type(norm).__name__} is not a norm ColumnMajorNorm knows (LayerNorm, RMSNorm, LlamaRMSNorm)"


def norm_speed(tokens: int, features: int, dtype: torch.dtype = torch.bfloat16, rms: bool = False,
               device: str = "cuda", block_m: int = 0, residual: bool = False) -> dict[str, float]:
    """Median ms of one norm over (tokens, features) random values: ours on a column-major x (`block_m` tokens per
    program, 0: the default), PyTorch on a row-major x (what the dense model runs) and on a column-major x (its copy
    included), and ours' relative error against PyTorch's. With `residual`, of the residual add before the norm too:
    ours fused (`add_norm_t`) against PyTorch's add, then its norm, on either layout."""
    from sparsity_lab.checks import relative_error
    from sparsity_lab.timing import bench_ms

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, features, device=device, dtype=dtype, generator=gen)
    r = torch.randn(tokens, features, device=device, dtype=dtype, generator=gen) if residual else None
    norm = nn.RMSNorm(features, device=device, dtype=dtype) if rms else nn.LayerNorm(features, device=device,
                                                                                     dtype=dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen)
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_(generator=gen)
        col, r_col = to_column_major(x), None if r is None else to_column_major(r)
        d, r_d = columns(col), None if r_col is None else columns(r_col)
        eps = norm.eps if norm.eps is not None else torch.finfo(dtype).eps
        bias = getattr(norm, "bias", None)

        def ours() -> torch.Tensor:
            if residual:
                return add_norm_t(d, r_d, norm.weight, bias, eps, rms, block_m)[1]
            return norm_t(d, norm.weight, bias, eps, rms, block_m)

        def theirs(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            return norm(a if b is None else a + b)

        out = {"ours_column_major_ms": bench_ms(ours, device),
               "torch_row_major_ms": bench_ms(lambda: theirs(x, r), device),
               "torch_column_major_ms": bench_ms(lambda: theirs(col, r_col), device),
               "rel_error": relative_error(ours().t(), theirs(x, r))}
    return out
