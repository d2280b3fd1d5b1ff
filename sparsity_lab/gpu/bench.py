"""`sparsity-lab bench gpu_structure`: why unstructured sparsity is slow on a GPU and structure is not.

At one layer shape (M tokens, K = N features) and several sparsities it times, against the dense matmul:

* unstructured sparsity: the weight as a CSR matrix, ``torch.sparse.mm`` (cuSPARSE SpMM);
* row pruning (structured): the same fraction of output rows removed, so the product is a smaller *dense*
  matmul on the same cuBLAS kernels;
* 2:4 semi-structured (50% only): our cuSPARSELt binding.

Writes ``sparsity_lab/recorded/gpu_structure.json``; lecture 04 plots it.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from sparsity_lab import timing
from sparsity_lab.course.results import RECORDED_DIR, save_results

SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)


def run(m: int = 4096, k: int = 4096, n: int = 4096, dtype: torch.dtype = torch.float16,
        sparsities: tuple[float, ...] = SPARSITIES, device: str = "cuda",
        log: Callable[[str], None] = print) -> dict:
    """Measure dense, CSR and row-pruned matmuls at each sparsity (and 2:4 at 50%, on a GPU). On the CPU it runs
    single-threaded: on a shared machine a second thread waiting for a busy core distorts every timing."""
    if device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _run(m, k, n, dtype, sparsities, device, log)
        finally:
            torch.set_num_threads(threads)
    return _run(m, k, n, dtype, sparsities, device, log)


def _run(m: int, k: int, n: int, dtype: torch.dtype, sparsities: tuple[float, ...], device: str,
         log: Callable[[str], None]) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    w = torch.randn(n, k, device=device, dtype=dtype, generator=gen)

    def timed(fn: Callable[[], object]) -> float:
        """Milliseconds of `fn`: do_bench's median on a GPU; on the CPU the fastest of 7 single calls (other
        processes only ever add time, so the minimum is the least disturbed run)."""
        return timing.bench_ms(fn) if device == "cuda" else timing.host_us(fn, calls=1, trials=7, device=device) / 1e3

    dense_ms = timed(lambda: x @ w.t())
    rows = []
    for sparsity in sparsities:
        # dense again next to each variant: a busy machine then slows both alike
        row: dict = {"sparsity": sparsity, "dense_ms": timed(lambda: x @ w.t())}
        scores = torch.rand(n, k, device=device, generator=gen)
        unstructured = w * (scores >= sparsity)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            csr = unstructured.to_sparse_csr()
        xt = x.t().contiguous()
        try:
            y = torch.sparse.mm(csr, xt)
            ref = unstructured.float() @ xt.float()
            row["csr_relerr"] = float((y.float() - ref).norm() / ref.norm())
            row["csr_ms"] = timed(lambda csr=csr, xt=xt: torch.sparse.mm(csr, xt))
            row["csr_speedup"] = row["dense_ms"] / row["csr_ms"]
        except RuntimeError as err:
            row["csr_error"] = str(err)[:200]
        kept_rows = max(16, round(n * (1 - sparsity) / 16) * 16)
        small = w[:kept_rows].contiguous()
        row["rows_kept"] = kept_rows
        row["row_pruned_ms"] = timed(lambda small=small: x @ small.t())
        row["row_pruned_speedup"] = row["dense_ms"] / row["row_pruned_ms"]
        row["ideal_speedup"] = 1 / (1 - sparsity)
        if sparsity == 0.5 and device == "cuda":
            from sparsity_lab.semi24.compress_kernel import prune_and_compress
            from sparsity_lab.semi24.cusparselt import Semi24Weight

            _, _, pruned = prune_and_compress(w, return_pruned=True)
            semi = Semi24Weight.from_dense(pruned)
            row["semi24_ms"] = timed(lambda semi=semi: semi.linear(x))
            row["semi24_speedup"] = row["dense_ms"] / row["semi24_ms"]
        log(f"gpu_structure {row}")
        rows.append(row)
    return {"M": m, "K": k, "N": n, "dtype": str(dtype).removeprefix("torch."), "device": device,
            "dense_ms": dense_ms, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """`sparsity-lab bench gpu_structure [--out PATH]`."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench gpu_structure", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / "gpu_structure.json", help="results file")
    args = parser.parse_args(argv)
    if timing.resolve_device("cuda", "gpu_structure.json") is None:
        return 2
    path = save_results("gpu_structure", run(), args.out)
    print(f"wrote {path}")
    return 0
