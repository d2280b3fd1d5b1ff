"""Solution to exercise 09: the whole model's predicted time, Amdahl's law with the layout bill; a LayerNorm over
the columns of a 2:4 layer's D."""

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
