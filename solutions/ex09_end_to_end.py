"""Solution to exercise 09: the whole model's predicted time, Amdahl's law with the layout bill."""

import torch  # noqa: F401  (the course's exercises all import torch; this one needs only arithmetic)


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
