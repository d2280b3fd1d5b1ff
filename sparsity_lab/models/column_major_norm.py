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

Where C fits one tile (``next_pow2(C) * BLOCK_M <= MAX_TILE``: ViT-L's 1024 features) a program reads its tokens
once and writes them once, as PyTorch's row-major kernel does; wider rows (Llama's 4096) are read twice: a first
pass merges per-chunk mean and squared deviations (Chan's parallel update, no catastrophic cancellation), a
second normalizes. Reference: `norm_t_reference` (float32 math through ``F.layer_norm`` / ``F.rms_norm``).
Benchmark: `norm_speed` (ours on a column-major x against PyTorch on a row-major and on a column-major x);
`sparsity-lab bench models` records it at ViT-L's and Llama's shapes.

Under ``torch.compile`` the kernel is the custom op ``sparsity_lab::norm_t`` (D in, D out, a fake kernel for the
shapes), so a streamed model compiles with no graph break.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab._optional import triton_available, triton_interpreting

MAX_TILE = 16384  # elements one program holds in the one-pass kernel (float32: 64 KiB over its warps)
BLOCK_C = 64  # rows of D per step in the two-pass kernel

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _norm_t_kernel(d_ptr, w_ptr, b_ptr, out_ptr, C, M, eps, RMS: tl.constexpr, HAS_W: tl.constexpr,
                       HAS_B: tl.constexpr, ONE_PASS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
        m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < M
        if ONE_PASS:  # the whole (C, BLOCK_M) tile in registers: one read, one write
            c = tl.arange(0, BLOCK_C)
            inside = (c[:, None] < C) & m_ok[None, :]
            offsets = c[:, None].to(tl.int64) * M + m[None, :]
            x = tl.load(d_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
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
                x = tl.load(d_ptr + c[:, None].to(tl.int64) * M + m[None, :], mask=inside, other=0.0)
                x = x.to(tl.float32)
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
            for start in range(0, C, BLOCK_C):  # pass 2: normalize (the tile is read again, mostly from L2)
                c = start + tl.arange(0, BLOCK_C)
                inside = (c[:, None] < C) & m_ok[None, :]
                offsets = c[:, None].to(tl.int64) * M + m[None, :]
                x = tl.load(d_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
                y = (x - mean[None, :]) * rstd[None, :]
                if HAS_W:
                    y = y * tl.load(w_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
                if HAS_B:
                    y = y + tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
                tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=inside)


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


def _kernel_runs(d: torch.Tensor) -> bool:
    return triton_available() and (d.is_cuda or triton_interpreting()) and d.dtype in (
        torch.float16, torch.bfloat16, torch.float32)


def _norm_t(d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, rms: bool,
            block_m: int = 0) -> torch.Tensor:
    """LayerNorm (``rms=False``) or RMSNorm of x = dᵀ over its C features, for D (C, M) row-major; returns D's
    layout (C, M). `block_m`: tokens per program (0: 16 where one tile holds every feature, else 64)."""
    d = d.contiguous()
    if not _kernel_runs(d):
        return norm_t_reference(d, weight, bias, eps, rms)
    c, m = d.shape
    block_m = block_m or (16 if triton.next_power_of_2(c) * 16 <= MAX_TILE else 64)
    one_pass = triton.next_power_of_2(c) * block_m <= MAX_TILE
    out = torch.empty_like(d)
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    _norm_t_kernel[(triton.cdiv(m, block_m),)](
        d, weight if weight is not None else d, bias if bias is not None else d, out, c, m, eps, RMS=rms,
        HAS_W=weight is not None, HAS_B=bias is not None, ONE_PASS=one_pass,
        BLOCK_C=triton.next_power_of_2(c) if one_pass else BLOCK_C, BLOCK_M=block_m, num_warps=8 if one_pass else 4)
    return out


# The custom op is what ``torch.compile`` sees; an eager call runs `_norm_t` itself, since the op's dispatch costs
# more host time than the kernel's launch (135 against 36 µs a call on a 2-core CPU host).
norm_t = torch.library.custom_op("sparsity_lab::norm_t", _norm_t, mutates_args=())


@norm_t.register_fake
def _(d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, rms: bool,
      block_m: int = 0) -> torch.Tensor:
    return torch.empty_like(d, memory_format=torch.contiguous_format)


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
    computed exactly as the model's own norm computes it (the same PyTorch calls, row-major out). Built from that
    norm by `from_norm`, sharing its weight and bias (the state-dict keys stay the same)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.features:
            raise ValueError(f"x has shape {tuple(x.shape)}: this norm expects {self.features} features last")
        d = columns(x)
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight, self.bias))
        if d is None or grad:  # the kernel has no backward: PyTorch's norm takes any layout and differentiates
            return self._as_before(x)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        op = torch.ops.sparsity_lab.norm_t if torch.compiler.is_compiling() else _norm_t
        out = op(d, self.weight, self.bias, eps, self.kind != "layer_norm")
        return out.reshape(self.features, *x.shape[:-1]).movedim(0, -1)


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
               device: str = "cuda", block_m: int = 0) -> dict[str, float]:
    """Median ms of one norm over (tokens, features) random values: ours on a column-major x (`block_m` tokens per
    program, 0: the default), PyTorch on a row-major x (what the dense model runs) and on a column-major x (its copy
    included), and ours' relative error against PyTorch's."""
    from sparsity_lab.checks import relative_error
    from sparsity_lab.timing import bench_ms

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, features, device=device, dtype=dtype, generator=gen)
    norm = nn.RMSNorm(features, device=device, dtype=dtype) if rms else nn.LayerNorm(features, device=device,
                                                                                     dtype=dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen)
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_(generator=gen)
        col = to_column_major(x)
        d = columns(col)
        eps = norm.eps if norm.eps is not None else torch.finfo(dtype).eps
        bias = getattr(norm, "bias", None)

        def ours() -> torch.Tensor:
            return norm_t(d, norm.weight, bias, eps, rms, block_m)

        out = {"ours_column_major_ms": bench_ms(ours, device),
               "torch_row_major_ms": bench_ms(lambda: norm(x), device),
               "torch_column_major_ms": bench_ms(lambda: norm(col), device),
               "rel_error": relative_error(ours().t(), norm(x))}
    return out
