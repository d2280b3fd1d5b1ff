"""`ColumnMajorAttention`: self-attention that reads q, k and v from a column-major qkv output as it lies (Triton).

Why: in a column-major stream (`models.stream`) every 2:4 layer's output is free except qkv's: attention kernels
(flash, cuDNN) want each head's features contiguous, and a 2:4 qkv writes D = W · xᵀ, where they are strided by
the token count. Copying D costs what the sparse qkv saves, so qkv stays dense. This kernel reads D directly, so
qkv can be 2:4 too.

Layout, for B images of N tokens (M = B·N), H heads of HD features, C = H·HD, and D = qkvᵀ row-major (3C, M):

    q[b, h, n, :] = D[0C + h·HD : 0C + (h+1)·HD, b·N + n]      every load is a tile whose rows are features and
    k[b, h, n, :] = D[1C + h·HD : ..., b·N + n]                 whose columns are consecutive tokens (coalesced)
    v[b, h, n, :] = D[2C + h·HD : ..., b·N + n]
    o[b·N + n, h·HD + d]                                        written row-major (M, C), for proj

It is flash attention's forward (a running max and sum per query, softmax in base 2), non-causal, no mask, no
dropout: what timm's ViT runs. One program takes BLOCK_M consecutive token columns of D for one head -- queries of
one image, or of two where an image ends inside the tile -- and runs over the key tiles that cover their images,
each query seeing the keys of its own image only (a mask, applied only where a tile needs it: at an image's
border tiles and where a query tile holds two images; the key tiles wholly inside the one image of a query tile go
through the same loop body without it, 296 instructions a tile where the masked body takes 443 at ViT-L's shape on
sm_90a; the scale joins the softmax's subtraction in one FMA). Tiles start at multiples of the block size, not at
b·N, so Triton can prove their alignment and load them in wide vectors: tiling per image (starting at token b·197)
made every load element-wise and the kernel 2.2x slower. Kᵀ tiles arrive as `tl.dot` wants them; q and v tiles
are turned around by Triton. Reference: `attention_t_reference` (``F.scaled_dot_product_attention`` on q, k, v
cut from D). Benchmark: `attention_speed` (ours on D against PyTorch's SDPA on the row-major q, k, v a dense qkv
writes). Under ``torch.compile`` the kernel is the custom op ``sparsity_lab::attention_t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab._optional import triton_available, triton_interpreting
from sparsity_lab.models.column_major_norm import columns

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _key_tile(acc, l_i, m_i, q, d_ptr, tile, M, N, C, h, qk_scale, image_start, feats, HD: tl.constexpr,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, WIDEN: tl.constexpr):
        """One key tile of the online softmax: acc, l_i, m_i updated. MASKED: some query of the tile may not own
        every key of it (a tile at an image's border, or queries of two images), so scores are masked."""
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # keys, from a multiple of BLOCK_N: aligned loads
        k_t = tl.load(d_ptr + (C + h * HD + feats)[:, None].to(tl.int64) * M + cols[None, :],
                      mask=cols[None, :] < M, other=0.0)  # (HD, BLOCK_N): Kᵀ as it lies
        if WIDEN:  # Triton's CPU interpreter multiplies bfloat16 wrongly: float32 there
            k_t = k_t.to(tl.float32)
        s = tl.dot(q, k_t)  # unscaled scores: the scale joins the subtraction below in one FMA
        if MASKED:
            own = (cols[None, :] >= image_start[:, None]) & (cols[None, :] < image_start[:, None] + N)
            s = tl.where(own, s, float("-inf"))  # a query sees the keys of its own image only
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)  # log2-scaled running max (qk_scale > 0)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(d_ptr + (2 * C + h * HD + feats)[None, :].to(tl.int64) * M + cols[:, None],
                    mask=cols[:, None] < M, other=0.0)  # (BLOCK_N, HD)
        if WIDEN:
            v = v.to(tl.float32)
        return acc * alpha[:, None] + tl.dot(p.to(v.dtype), v), l_i * alpha + tl.sum(p, axis=1), m_new

    @triton.jit
    def _attention_t_kernel(d_ptr, o_ptr, M, N, C, qk_scale, HD: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, WIDEN: tl.constexpr):
        h, first = tl.program_id(1), tl.program_id(0) * BLOCK_M
        rows = first + tl.arange(0, BLOCK_M)  # queries: token columns of D, of one image or two
        feats = tl.arange(0, HD)
        image_start = (tl.minimum(rows, M - 1) // N) * N  # each query's image: keys image_start .. + N
        q = tl.load(d_ptr + (h * HD + feats)[None, :].to(tl.int64) * M + rows[:, None],
                    mask=rows[:, None] < M, other=0.0)  # (BLOCK_M, HD)
        if WIDEN:
            q = q.to(tl.float32)
        m_i = tl.full((BLOCK_M,), -1e30, dtype=tl.float32)  # finite: a key tile may hold no key of a query
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HD), dtype=tl.float32)
        first_image, last_image = first // N, (tl.minimum(first + BLOCK_M, M) - 1) // N
        keys_from = first_image * N // BLOCK_N  # the key tile holding the first image's first token
        keys_to = tl.cdiv((last_image + 1) * N, BLOCK_N)  # past the tile of the last image's last token
        # queries of one image: the key tiles wholly inside it need no mask (inner_from .. inner_to)
        one_image = first_image == last_image
        inner_from = tl.where(one_image, tl.cdiv(first_image * N, BLOCK_N), keys_to)
        inner_to = tl.maximum(tl.where(one_image, (first_image + 1) * N // BLOCK_N, keys_to), inner_from)
        head = inner_from - keys_from  # masked tiles before the inner ones; the rest come after them
        for j in range(0, head + keys_to - inner_to):
            tile = tl.where(j < head, keys_from + j, inner_to + j - head)
            acc, l_i, m_i = _key_tile(acc, l_i, m_i, q, d_ptr, tile, M, N, C, h, qk_scale, image_start, feats, HD,
                                      BLOCK_N, True, WIDEN)
        for tile in range(inner_from, inner_to):
            acc, l_i, m_i = _key_tile(acc, l_i, m_i, q, d_ptr, tile, M, N, C, h, qk_scale, image_start, feats, HD,
                                      BLOCK_N, False, WIDEN)
        acc = acc / l_i[:, None]
        tl.store(o_ptr + rows[:, None].to(tl.int64) * C + h * HD + feats[None, :],
                 acc.to(o_ptr.dtype.element_ty), mask=rows[:, None] < M)


def attention_t_reference(d: torch.Tensor, images: int, heads: int) -> torch.Tensor:
    """What `attention_t` computes, by PyTorch: SDPA on q, k, v cut from D (3C, M); returns o (M, C) row-major."""
    c3, m = d.shape
    c, tokens = c3 // 3, m // images
    qkv = d.reshape(3, heads, c // heads, images, tokens).permute(0, 3, 1, 4, 2)  # (3, B, H, N, HD)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return o.transpose(1, 2).reshape(m, c)


def check_operands(d: torch.Tensor, images: int, heads: int) -> None:
    """Refuse a D the kernel would misread, naming what is wrong."""
    if d.dim() != 2 or d.shape[0] % 3 or d.shape[0] // 3 % heads:
        raise ValueError(f"D must be (3C, M) with C a multiple of heads={heads}, got {tuple(d.shape)}")
    if images <= 0 or d.shape[1] % images:
        raise ValueError(f"D's {d.shape[1]} token columns are not {images} images of equal length")
    head_dim = d.shape[0] // 3 // heads
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"head dimension {head_dim}: the kernel takes a power of two, at least 16")


def _attention_t(d: torch.Tensor, images: int, heads: int, block_m: int = 64, block_n: int = 64, warps: int = 4,
                 stages: int = 3) -> torch.Tensor:
    """Self-attention of `images` sequences from D = qkvᵀ (3C, M) row-major: o (M, C) row-major. `block_m`
    queries and `block_n` keys per tile, `warps` and `stages` (software pipelining) per program: the defaults
    measured fastest at ViT-L's shape on an H200 (docs/performance/models.md)."""
    check_operands(d, images, heads)
    d = d.contiguous()
    if not (triton_available() and (d.is_cuda or triton_interpreting()) and d.dtype in (torch.float16,
                                                                                           torch.bfloat16)):
        return attention_t_reference(d, images, heads)
    return _launch(d, images, heads, block_m, block_n, warps, stages)


def _launch(d: torch.Tensor, images: int, heads: int, block_m: int, block_n: int, warps: int, stages: int
            ) -> torch.Tensor:
    """One `_attention_t_kernel` over contiguous D (3C, M): o (M, C) row-major."""
    c = d.shape[0] // 3
    m, tokens, head_dim = d.shape[1], d.shape[1] // images, c // heads
    out = torch.empty((m, c), dtype=d.dtype, device=d.device)
    scale = head_dim ** -0.5 * 1.4426950408889634  # softmax in base 2
    widen = d.dtype == torch.bfloat16 and triton_interpreting()
    _attention_t_kernel[(triton.cdiv(m, block_m), heads)](
        d, out, m, tokens, c, scale, HD=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, WIDEN=widen, num_warps=warps,
        num_stages=stages)
    return out


# The custom op is what ``torch.compile`` sees; an eager call runs `_attention_t` itself (the op's dispatch costs
# more host time than the kernel's launch).
attention_t = torch.library.custom_op("sparsity_lab::attention_t", _attention_t, mutates_args=())


@attention_t.register_fake
def _(d: torch.Tensor, images: int, heads: int, block_m: int = 64, block_n: int = 64, warps: int = 4,
      stages: int = 3) -> torch.Tensor:
    return d.new_empty((d.shape[1], d.shape[0] // 3))


class ColumnMajorAttention(nn.Module):
    """Self-attention with a qkv and a proj linear (timm's ViT ``Attention``, our encoder's) that takes qkv's output
    in either layout: a column-major one (a 2:4 qkv, or "dense-colmajor") goes to `attention_t` without a copy;
    a row-major one to PyTorch's SDPA, as the module it replaces computed it. Built by `from_attention`, sharing its
    qkv and proj (the state-dict keys stay the same)."""

    def __init__(self, qkv: nn.Module, proj: nn.Module, heads: int) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = qkv, proj, heads

    @classmethod
    def from_attention(cls, attention: nn.Module) -> ColumnMajorAttention:
        """The same attention for a module `unfit` accepts; a ValueError saying why for any other."""
        reason = unfit(attention)
        if reason:
            raise ValueError(reason)
        return cls(attention.qkv, attention.proj, getattr(attention, "num_heads", getattr(attention, "heads", 0)))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, reads a column-major qkv as it lies"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
                ) -> torch.Tensor:
        """timm's signature (its blocks pass `attn_mask` and `is_causal`): a masked or causal call, and one that
        needs gradients, goes through SDPA, which takes any layout of q, k, v."""
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, tokens, features), got shape {tuple(x.shape)}")
        batch, tokens, _ = x.shape
        qkv = self.qkv(x)
        width = qkv.shape[-1] // 3
        plain = attn_mask is None and not is_causal and not (torch.is_grad_enabled() and qkv.requires_grad)
        d = columns(qkv) if plain else None
        if d is not None:
            op = torch.ops.sparsity_lab.attention_t if torch.compiler.is_compiling() else _attention_t
            o = op(d, batch, self.heads).reshape(batch, tokens, width)
        else:
            q, k, v = qkv.reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
            o = o.transpose(1, 2).reshape(batch, tokens, width)
        return self.proj(o)


def unfit(attention: nn.Module) -> str | None:
    """Why `ColumnMajorAttention.from_attention` cannot take `attention` (None when it can): it must be plain
    self-attention with a qkv and a proj, and no q/k norms, gate, output norm or dropout."""
    name = type(attention).__name__
    if name != "Attention" or not hasattr(attention, "qkv") or not hasattr(attention, "proj"):
        return f"{name} is not an attention ColumnMajorAttention knows (timm's ViT Attention, our encoder's)"
    for part in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attention, part, nn.Identity()), nn.Identity):
            return f"{name} has a {part}: only plain attention is taken"
    if getattr(attention, "gate", None) is not None:
        return f"{name} is gated: only plain attention is taken"
    for part in ("attn_drop", "proj_drop"):
        if getattr(getattr(attention, part, None), "p", 0.0):
            return f"{name} has {part} > 0: only attention without dropout is taken"
    heads = getattr(attention, "num_heads", getattr(attention, "heads", None))
    if not isinstance(heads, int) or attention.qkv.out_features != 3 * attention.proj.in_features:
        return f"{name}: its heads and its qkv and proj widths do not describe plain self-attention"
    return None


def attention_speed(images: int = 128, tokens: int = 197, heads: int = 16, head_dim: int = 64,
                    dtype: torch.dtype = torch.bfloat16, block_m: int = 64, block_n: int = 64, warps: int = 4,
                    stages: int = 3, device: str = "cuda") -> dict[str, float]:
    """Median ms of ViT-L's attention (by default): ours from D (3C, M), PyTorch's SDPA on the row-major q, k, v a
    dense qkv writes, and SDPA after copying D to that layout; and ours' relative error against SDPA."""
    from sparsity_lab.checks import relative_error
    from sparsity_lab.timing import bench_ms

    gen = torch.Generator(device=device).manual_seed(0)
    width = heads * head_dim
    y = torch.randn(images * tokens, 3 * width, device=device, dtype=dtype, generator=gen)  # qkv, row-major
    d = y.t().contiguous()

    def sdpa(qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv.reshape(images, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(images * tokens, width)

    with torch.no_grad():
        def ours() -> torch.Tensor:
            return attention_t(d, images, heads, block_m, block_n, warps, stages)

        return {"ours_from_d_ms": bench_ms(ours, device), "sdpa_row_major_ms": bench_ms(lambda: sdpa(y), device),
                "sdpa_after_copy_ms": bench_ms(lambda: sdpa(d.t().contiguous()), device),
                "rel_error": relative_error(ours(), sdpa(y))}
