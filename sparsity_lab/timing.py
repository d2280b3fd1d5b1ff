"""GPU timing and error helpers shared by the benchmarks and the GPU check scripts (CUDA events, medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def loop_ms(fn: Callable[[], object], calls: int = 20, trials: int = 7) -> float:
    """Per-call milliseconds of `calls` back-to-back eager calls (host launch overhead included), median of trials."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def resolve_device(requested: str) -> torch.device | None:
    """A benchmark's ``--device``: "auto" is CUDA when present, else the CPU; None (after saying why) when CUDA
    was asked for and none is visible."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA GPU is visible")
        return None
    return torch.device(requested)


def capture_graph(fn: Callable[[], object], calls: int = 1) -> torch.cuda.CUDAGraph:
    """`calls` calls of `fn` captured once into a CUDA graph, after a warm-up on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def graph_ms(fn: Callable[[], object], calls: int = 20, trials: int = 7) -> float:
    """Per-call milliseconds of the same `calls` calls captured once in a CUDA graph and replayed (no host work)."""
    graph = capture_graph(fn, calls)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def host_us(fn: Callable[[], object], calls: int = 200, trials: int = 1) -> float:
    """Host microseconds per call of `fn`, the best of `trials` (no synchronization inside: what eager mode pays
    on the CPU)."""
    fn()
    torch.cuda.synchronize()
    best = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return min(best)

