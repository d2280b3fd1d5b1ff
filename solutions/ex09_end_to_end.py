"""Solution to exercise 09: the whole model's predicted time, Amdahl's law with the layout bill; a LayerNorm over
the columns of a 2:4 layer's D; a decode step's product from the simple 2:4 layout; the GELU from the normal tail."""

import torch


def predicted_forward_ms(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                         layout_ms: float = 0.0) -> float:
    """Predicted ms of the forward with `sparse_fraction` of its dense GEMM time 2:4 sparse."""
    if "dense GEMM" not in profile:
        raise ValueError(f"profile needs a 'dense GEMM' entry, got {sorted(profile)}")
    negative = [kind for kind, ms in profile.items() if ms < 0]
    if negative:
        raise ValueError(f"profile times must be >= 0; negative: {negative}")
    if gemm_speedup <= 0:
        raise ValueError(f"gemm_speedup must be > 0, got {gemm_speedup}")
    if not 0.0 <= sparse_fraction <= 1.0:
        raise ValueError(f"sparse_fraction must be in [0, 1], got {sparse_fraction}")
    if layout_ms < 0:
        raise ValueError(f"layout_ms must be >= 0, got {layout_ms}")
    sparse_gemm = sparse_fraction * profile["dense GEMM"]
    return sum(profile.values()) - sparse_gemm + sparse_gemm / gemm_speedup + layout_ms


def predicted_speedup(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                      layout_ms: float = 0.0) -> float:
    """The dense forward's total over `predicted_forward_ms`."""
    return sum(profile.values()) / predicted_forward_ms(profile, gemm_speedup, sparse_fraction, layout_ms)


def layer_norm_columns(d: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                       eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm of every column (token) of D (C, M) over its C rows (features), in D's layout."""
    if d.dim() != 2:
        raise ValueError(f"d must be 2-D (features, tokens), got shape {tuple(d.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (d.shape[0],):
            raise ValueError(f"{name} must have shape ({d.shape[0]},), got {tuple(t.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x = d.to(torch.float64 if d.dtype == torch.float64 else torch.float32)
    mean = x.mean(dim=0)
    var = (x - mean).square().mean(dim=0)
    out = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight.to(x.dtype)[:, None]
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    return out.to(d.dtype).contiguous()


def matvec_simple(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """y = x Wᵀ for W in the simple 2:4 layout, without rebuilding W."""
    if x.dim() != 2 or x.shape[1] % 4:
        raise ValueError(f"x must be 2-D (tokens, K) with K a multiple of 4, got shape {tuple(x.shape)}")
    m, k = x.shape
    groups = k // 4
    if values.dim() != 2 or values.shape[1] != k // 2:
        raise ValueError(f"values must be (N, {k // 2}) for K = {k}, got shape {tuple(values.shape)}")
    n = values.shape[0]
    if meta.dtype != torch.uint8 or meta.shape != (n, -(-k // 8)):
        raise ValueError(f"meta must be uint8 of shape ({n}, {-(-k // 8)}), got {meta.dtype} {tuple(meta.shape)}")
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    nibbles = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(n, -1)[:, :groups].long()  # (N, G)
    pairs = values.to(wide).reshape(n, groups, 2)
    x4 = x.to(wide).reshape(m, 1, groups, 4).expand(m, n, groups, 4)
    at = torch.stack([nibbles & 3, nibbles >> 2], dim=-1).expand(m, n, groups, 2)  # the kept positions
    picked = x4.gather(3, at)  # (M, N, G, 2): the x entries each kept value meets
    return (picked * pairs).sum(dim=(2, 3)).to(x.dtype)


def gelu_from_tail(x: torch.Tensor) -> torch.Tensor:
    """GELU(x) = max(x, 0) - |x| Q(|x|), Q the normal tail: no cancellation for negative x."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    wide = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    t = wide.abs()
    tail = 0.5 * torch.special.erfc(t * 0.5**0.5)
    return (wide.clamp_min(0) - t * tail).to(x.dtype)
