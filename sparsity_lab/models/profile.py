"""Where a forward's time goes: CUDA kernels sorted into classes from a profile, and what a sparse swap can then
save (Amdahl's law with the layout bill: only the GEMMs speed up, and re-layouts add time).

`kernel_times(fn)` profiles a call (CUDA ms per kernel), `breakdown` sums them per class (`KERNEL_CLASSES`: 2:4
GEMMs, dense GEMMs, layout copies, attention, norms, GELU, the rest) and `top_kernels` names the kernels behind the
totals; `predicted_ms(profile, gemm_speedup, ...)` turns a dense profile into the time a swap would take.
Exercise 09 asks for the same prediction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KERNEL_CLASSES = (  # (class, substrings of CUDA kernel names), first match wins
    ("2:4 GEMM", ("sparse_gemm", "sm90_xmma_sparse", "cusparselt", "spmma")),
    ("attention", ("flash", "fmha", "sdpa", "attention", "softmax")),
    ("layout copies", ("copy", "transpose", "_row_major_kernel", "permute", "clone")),
    ("norms", ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "welford", "red_fused", "_norm_t_kernel")),
    ("dense GEMM", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "_mm_", "bsr", "_block_sparse")),
    ("GELU", ("gelu",)),  # after the GEMMs: a GEMM with a GELU epilogue is a GEMM
)


def classify_kernel(name: str) -> str:
    """Which part of a forward a CUDA kernel's name says it is (`KERNEL_CLASSES`; "other" for the rest)."""
    lowered = name.lower()
    for label, needles in KERNEL_CLASSES:
        if any(needle in lowered for needle in needles):
            return label
    return "other"


def kernel_times(fn: Callable[[], object], calls: int = 3) -> dict[str, float]:
    """CUDA milliseconds per call of `fn` by kernel name (torch.profiler over `calls` calls after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        cuda_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        if cuda_us and event.key:
            times[event.key] = times.get(event.key, 0.0) + cuda_us / 1e3 / calls
    return times


def breakdown(kernels: dict[str, float]) -> dict[str, float]:
    """Kernel times (name -> ms) summed by class (`classify_kernel`)."""
    totals: dict[str, float] = {}
    for name, ms in kernels.items():
        label = classify_kernel(name)
        totals[label] = totals.get(label, 0.0) + ms
    return {label: round(ms, 3) for label, ms in sorted(totals.items())}


def top_kernels(kernels: dict[str, float], n: int = 15) -> list[dict[str, object]]:
    """The `n` kernels that took longest, each with its class and ms: what a class's total is made of."""
    ranked = sorted(kernels.items(), key=lambda item: -item[1])[:n]
    return [{"kernel": name[:160], "class": classify_kernel(name), "ms": round(ms, 3)} for name, ms in ranked]


def predicted_ms(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                 layout_ms: float = 0.0) -> float:
    """The forward's predicted ms when `sparse_fraction` of its "dense GEMM" time runs `gemm_speedup` times faster
    and `layout_ms` of re-layout is added; every other class of `profile` (ms per class) stays as it is."""
    if "dense GEMM" not in profile:
        raise ValueError(f"profile needs a 'dense GEMM' entry, got {sorted(profile)}")
    if any(ms < 0 for ms in profile.values()) or layout_ms < 0:
        raise ValueError("profile times and layout_ms must be >= 0")
    if gemm_speedup <= 0 or not 0.0 <= sparse_fraction <= 1.0:
        raise ValueError(f"gemm_speedup must be > 0 and sparse_fraction in [0, 1], got {gemm_speedup}, "
                         f"{sparse_fraction}")
    sparse = sparse_fraction * profile["dense GEMM"]
    return sum(profile.values()) - sparse + sparse / gemm_speedup + layout_ms
