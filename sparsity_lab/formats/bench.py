"""Benchmark: a sparse weight times a dense batch on the CPU, by sparsity: where does sparse beat dense?

`sparsity-lab bench formats_cpu [--n 4096] [--batch 64] [--sparsities 0,0.5,...] [--reps 7] [--threads T]
[--out PATH]`: W (n x n float32, random normal values under a random unstructured mask with exactly
round(s * n²) zeros) times X (n x batch) at each sparsity s, by

* ``dense``: ``torch.mm`` on the dense W, zeros and all (the baseline);
* ``ours_csr``: our `CSR` matmul, one fused gather + scale + row sum (``embedding_bag``);
* ``ours_csr_index_add``: our `CSR` matmul, gathered products added into rows with ``index_add_`` (the textbook);
* ``ours_coo``: our `COO` matmul (gather + ``index_add_``);
* ``torch_csr`` / ``torch_coo``: ``torch.mm`` / ``torch.sparse.mm`` on torch.sparse tensors;
* ``scipy_csr``: ``scipy.sparse.csr_array @ ndarray`` (single-threaded).

torch runs on one thread by default, like scipy: on a shared machine a second thread that waits for a busy core
can cost a whole scheduler tick per parallel region, which distorts the timings (in a 2-thread run on a busy
2-core machine our two CSR kernels took 8.0 and 288 ms at 99.9%, whole multiples of 4 ms; on one thread, 0.8 and
2.2 ms).

Every format is built before timing. Each method is called once to warm up, then timed call by call with
``time.perf_counter`` (the methods take turns, so a burst of other load hits them alike); the figure is the
median. Slow points get fewer calls (at least `MIN_REPS`, about `budget_s` seconds per method). Every output is
checked against dense. The crossover of a method is the first sparsity at which it is faster than dense.
Writes ``sparsity_lab/recorded/formats_cpu.json``; lecture 03 plots it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsity_lab._optional import require
from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.formats.matrices import COO, CSR, random_sparse
from sparsity_lab.patterns.study import torch_threads

NAME = "formats_cpu"
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
LABELS = {
    "dense": "dense (torch.mm)",
    "ours_csr": "ours: CSR (embedding_bag)",
    "ours_csr_index_add": "ours: CSR (gather + index_add_)",
    "ours_coo": "ours: COO (gather + index_add_)",
    "torch_csr": "torch.sparse CSR",
    "torch_coo": "torch.sparse COO",
    "scipy_csr": "scipy CSR",
}
MIN_REPS = 3
TARGET = 2.0  # the target: our CSR within 2x of scipy's time at 99% sparsity
Matmul = Callable[[], Any]


def _torch_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return weight.to_sparse_csr()


def prepare(method: str, weight: torch.Tensor, x: torch.Tensor) -> Matmul:
    """A no-argument call computing weight @ x by `method` (see `LABELS`), with its format built beforehand."""
    if method == "dense":
        return lambda: torch.mm(weight, x)
    if method == "ours_csr":
        csr = CSR.from_dense(weight)
        return lambda: csr.matmul(x, method="embedding_bag")
    if method == "ours_csr_index_add":
        csr = CSR.from_dense(weight)
        return lambda: csr.matmul(x, method="index_add")
    if method == "ours_coo":
        coo = COO.from_dense(weight)
        return lambda: coo.matmul(x)
    if method == "torch_csr":
        csr_tensor = _torch_csr(weight)
        return lambda: torch.mm(csr_tensor, x)
    if method == "torch_coo":
        coo_tensor = weight.to_sparse()
        return lambda: torch.sparse.mm(coo_tensor, x)
    if method == "scipy_csr":
        scipy_csr, x_numpy = CSR.from_dense(weight).to_scipy(), x.numpy()
        return lambda: scipy_csr @ x_numpy
    raise ValueError(f"unknown method {method!r}; methods: {list(LABELS)}")


def _as_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))


def time_calls(calls: dict[str, Matmul], reps: int, budget_s: float) -> dict[str, list[float]]:
    """Milliseconds of each call, timed one by one, the methods taking turns, after one warm-up call each.

    A method gets `reps` timed calls, or fewer where its warm-up says `reps` would take more than `budget_s`
    (but at least `MIN_REPS`, or `reps` if that is fewer).
    """
    planned = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        warm = time.perf_counter() - start
        planned[name] = min(reps, max(MIN_REPS, int(budget_s / max(warm, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(max(planned.values())):
        for name, call in calls.items():
            if rep < planned[name]:
                start = time.perf_counter()
                call()
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def measure_point(n: int, batch: int, sparsity: float, methods: Sequence[str], reps: int, budget_s: float,
                  seed: int = 0) -> list[dict[str, Any]]:
    """One row per method at one sparsity: median / min milliseconds, the calls timed, speedup over dense and
    relative error against dense."""
    weight = random_sparse((n, n), sparsity, seed=seed)
    x = torch.randn(n, batch, generator=torch.Generator().manual_seed(seed + 1))
    calls = {m: prepare(m, weight, x) for m in ("dense", *[m for m in methods if m != "dense"])}
    reference = torch.mm(weight, x)
    errors = {m: relative_error(_as_tensor(call()), reference) for m, call in calls.items()}
    times = time_calls(calls, reps, budget_s)
    dense_ms = statistics.median(times["dense"])
    nnz = int((weight != 0).sum())
    return [{"sparsity": float(sparsity), "nnz": nnz, "method": m, "ms": statistics.median(t), "min_ms": min(t),
             "reps": len(t), "times_ms": t, "dense_ms": dense_ms, "speedup": dense_ms / statistics.median(t),
             "relerr": errors[m]} for m, t in times.items()]


def crossovers(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per sparse method: the first sparsity at which it is faster than dense (None: never), and whether it stays
    faster at every higher sparsity measured."""
    result = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        faster = [r["ms"] < r["dense_ms"] for r in line]
        first = faster.index(True) if True in faster else None
        result[method] = {"sparsity": None if first is None else line[first]["sparsity"],
                          "stays_faster": first is not None and all(faster[first:])}
    return result


def ours_vs_scipy(rows: Sequence[dict[str, Any]], sparsity: float = 0.99) -> dict[str, Any] | None:
    """Our CSR's median time over scipy's at `sparsity` (None when either was not measured there)."""
    at = {r["method"]: r["ms"] for r in rows if r["sparsity"] == sparsity}
    if "ours_csr" not in at or "scipy_csr" not in at:
        return None
    ratio = at["ours_csr"] / at["scipy_csr"]
    return {"sparsity": sparsity, "ours_ms": at["ours_csr"], "scipy_ms": at["scipy_csr"], "ratio": ratio,
            "target": TARGET, "met": ratio <= TARGET}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(n: int = 4096, batch: int = 64, sparsities: Sequence[float] = SPARSITIES,
        methods: Sequence[str] = tuple(LABELS), reps: int = 7, budget_s: float = 5.0, seed: int = 0,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Measure every method at every sparsity on torch's current threads; the results file's figures."""
    unknown = [m for m in methods if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; methods: {list(LABELS)}")
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for sparsity in sparsities:
        point = measure_point(n, batch, sparsity, methods, reps, budget_s, seed)
        rows += point
        if log:
            log(f"sparsity {sparsity:6.1%}: " + ", ".join(f"{r['method']} {r['ms']:.2f} ms" for r in point))
    figures = {
        "config": {"n": n, "batch": batch, "dtype": "float32", "sparsities": [float(s) for s in sparsities],
                   "methods": list(dict.fromkeys(("dense", *methods))), "reps": reps, "min_reps": MIN_REPS,
                   "budget_s": budget_s, "seed": seed, "threads": torch.get_num_threads(),
                   "cpu": cpu_model(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
                   "scipy": require("scipy", extra="dev").__version__},
        "labels": {m: LABELS[m] for m in dict.fromkeys(("dense", *methods))},
        "rows": rows,
        "crossover": crossovers(rows),
        "ours_vs_scipy": ours_vs_scipy(rows),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "seconds": time.perf_counter() - start,
    }
    return figures


def _sparsities(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must lie in [0, 1), got {text}")
    return values


def main(argv: list[str]) -> int:
    """Run the benchmark and write its results file; prints each point and where the file went."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench formats_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="W is n x n")
    parser.add_argument("--batch", type=int, default=64, help="X is n x batch")
    parser.add_argument("--sparsities", type=_sparsities, default=SPARSITIES, help="comma-separated, in [0, 1)")
    parser.add_argument("--reps", type=int, default=7, help="timed calls per method and sparsity (at most)")
    parser.add_argument("--budget", type=float, default=5.0, help="about this many seconds per method and point")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1, like scipy: extra threads waiting for busy cores distort timings)")
    parser.add_argument("--note", default="", help="a remark stored with the results (the machine, its load)")
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / f"{NAME}.json")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.reps < 1:
        parser.error("--n, --batch and --reps must be positive")
    with torch_threads(args.threads):  # inside, so the recorded device names the threads used
        figures = run(args.n, args.batch, args.sparsities, reps=args.reps, budget_s=args.budget)
        figures["note"] = args.note
        path = save_results(NAME, figures, args.out, environment=record_environment("cpu"))
        threads = torch.get_num_threads()
    for method, crossing in figures["crossover"].items():
        where = f"from {crossing['sparsity']:.1%}" if crossing["sparsity"] is not None else "never"
        print(f"{LABELS[method]:>32}: faster than dense {where}")
    if figures["ours_vs_scipy"]:
        print(f"ours / scipy at 99%: {figures['ours_vs_scipy']['ratio']:.2f} (target <= {TARGET})")
    print(f"{figures['seconds']:.0f} s on {threads} threads -> {path}")
    return 0
