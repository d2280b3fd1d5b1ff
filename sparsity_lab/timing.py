"""Timing helpers, one per kind of measurement, shared by the benchmarks, the dispatchers and cuSPARSELt's own
algorithm search; and the one CUDA-graph capture helper.

* `event_ms`: median CUDA-event time of single calls, each waited for (a call's host launch work counts);
* `loop_ms`: per-call time of back-to-back calls (eager throughput: host overhead shows where it outlasts the GPU);
* `graph_ms`: per-call time of the same calls replayed from one CUDA graph (no host work);
* `host_us`: host time per call, without synchronising inside;
* `bench_ms`: ``triton.testing.do_bench``'s median (L2 flushed before every call), the benchmarks' main figure.

Every one warms up first and reports a median (the best of trials for `host_us`, where noise only adds time).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import torch

_T = TypeVar("_T")


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def _synchronize(device: torch.device | str) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(device)


def _stopwatch(cuda: bool) -> Callable[[], float]:
    """Start timing now; the returned call gives the milliseconds since: between CUDA events on the current stream
    (it waits for the second one), or on the wall clock."""
    if not cuda:
        begin = time.perf_counter()
        return lambda: (time.perf_counter() - begin) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()

    def stop() -> float:
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return stop


def event_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 15) -> float:
    """Median milliseconds of `reps` single calls of `fn` after `warmup` calls, CUDA events around each call and
    a wait after it: the time a call takes where the GPU waits on its host launch work (what a dispatcher wants)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        stop = _stopwatch(cuda=True)
        fn()
        times.append(stop())
    return statistics.median(times)


def loop_ms(fn: Callable[[], object], calls: int = 20, trials: int = 7, device: torch.device | str = "cuda") -> float:
    """Per-call milliseconds of `calls` back-to-back calls (host launch overhead included), median of `trials`
    after one warm-up call: CUDA events on a GPU, the wall clock on the CPU."""
    fn()
    _synchronize(device)
    times = []
    for _ in range(trials):
        stop = _stopwatch(_is_cuda(device))
        for _ in range(calls):
            fn()
        times.append(stop() / calls)
    return statistics.median(times)


def capture_graph(fn: Callable[[], _T], calls: int = 1, warmup: int = 3,
                  device: torch.device | str | None = None) -> tuple[torch.cuda.CUDAGraph, _T]:
    """`calls` calls of `fn` captured into one CUDA graph, after `warmup` calls on a side stream (plans, dispatcher
    decisions and allocations are made there, outside the capture); returns the graph and the last call's output
    (the graph's static output: every replay overwrites it). `device`: the GPU to capture on (default: current)."""
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(max(warmup, 1)):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                out = fn()
    return graph, out


def graph_ms(fn: Callable[[], object], calls: int = 20, trials: int = 7) -> float:
    """Per-call milliseconds of the same `calls` calls captured once in a CUDA graph and replayed (no host work)."""
    graph, _ = capture_graph(fn, calls)
    return loop_ms(graph.replay, calls=1, trials=trials) / calls


def host_us(fn: Callable[[], object], calls: int = 200, trials: int = 1, device: torch.device | str = "cuda") -> float:
    """Host microseconds per call of `fn` over `calls` calls, the best of `trials` after one warm-up call (no
    synchronization inside: what eager mode pays on the CPU; on the CPU device, the whole time of a call)."""
    fn()
    _synchronize(device)
    best = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best.append((time.perf_counter() - start) / calls * 1e6)
        _synchronize(device)
    return min(best)


def bench_ms(fn: Callable[[], object], device: torch.device | str = "cuda", warmup_ms: float = 25.0,
             rep_ms: float = 100.0) -> float:
    """Median milliseconds of single calls of `fn` after `warmup_ms` of warm-up, for about `rep_ms`: on a GPU
    ``triton.testing.do_bench`` (CUDA events, L2 flushed before every call); on the CPU the wall clock (10 to 200
    calls)."""
    if _is_cuda(device):
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    start, warm = time.perf_counter(), 0
    while warm < 3 or (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
        warm += 1
    estimate = (time.perf_counter() - start) * 1e3 / warm
    times = []
    for _ in range(int(min(200, max(10, rep_ms / max(estimate, 1e-3))))):
        stop = _stopwatch(cuda=False)
        fn()
        times.append(stop())
    return statistics.median(times)


def resolve_device(requested: str, recorded: str | None = None) -> torch.device | None:
    """A benchmark's device (its ``--device``): "auto" is CUDA when present, else the CPU; None, after saying on
    stderr that a CUDA GPU is needed (and where the `recorded` results file is), when CUDA was asked for and none
    is visible."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        where = f"; recorded results: sparsity_lab/recorded/{recorded}" if recorded else ""
        print(f"this benchmark needs a CUDA GPU and none is visible{where}", file=sys.stderr)
        return None
    return torch.device(requested)
