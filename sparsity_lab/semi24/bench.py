"""`sparsity-lab bench semi24`: 2:4 linear layers on the GPU against cuBLAS dense, in one run.

For each dtype (float16, bfloat16) and shape (M tokens, K in, N out) -- M from 16 to 16384 against Llama-like
MLP sizes (4096 -> 14336, 14336 -> 4096), 4096³ and 8192³ -- it times, on random data (never zeros):

* ``dense_ms``: ``F.linear`` (cuBLAS) with the pruned weight;
* ``ours_ms``: our cuSPARSELt binding (`sparsity_lab.semi24.cusparselt`), eager, plan cached;
* ``torch_linear_ms``: PyTorch's own 2:4 path, ``F.linear`` with a ``to_sparse_semi_structured`` weight, and
  ``torch_cslt_raw_ms``: the raw ``torch._cslt_sparse_mm`` under it (both re-plan on every call);
* ``dispatch_ms``: `Semi24Linear` through its dispatcher (sparse or dense, as measured);
* ``ours_loop_ms`` / ``ours_graph_ms`` (and ``dense_*``): 20 calls back to back, eager vs replayed from one
  CUDA graph (per call): what host overhead eager mode costs; ``*_host_us``: host time per eager call.

Medians of ``triton.testing.do_bench`` (CUDA events; it flushes L2 before every timed call). It also times the
2:4 compressors on an 8192² float16 weight and checks every path against dense. Results go to a results file
(`sparsity_lab.course.results`), by default ``sparsity_lab/recorded/semi24_gpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsity_lab.checks import relative_error as relerr
from sparsity_lab.course.results import RECORDED_DIR, save_results
from sparsity_lab.timing import bench_ms, graph_ms, host_us, loop_ms, resolve_device

MLP_SIZES = ((4096, 4096), (4096, 14336), (14336, 4096))
TOKENS = (16, 128, 1024, 4096, 16384)
TARGETS = {"speedup_8192": 1.4, "speedup_4096": 1.25, "eager_over_graph": 1.10, "dispatch_over_dense": 1.05,
           "compress_8192_ms": 0.15}


def shapes(quick: bool = False) -> list[tuple[int, int, int]]:
    """(M, K, N) to measure: every M against the MLP sizes, plus 4096³ and 8192³ (few of them when `quick`)."""
    if quick:
        return [(16, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 8192)]
    out = [(m, k, n) for (k, n) in MLP_SIZES for m in TOKENS]
    out.append((8192, 8192, 8192))
    return out


def measure_linear(m: int, k: int, n: int, dtype: torch.dtype, log: Callable[[str], None] = print) -> dict:
    """Every timing and check of one shape."""
    from sparsity_lab.dispatch import Dispatcher
    from sparsity_lab.semi24.compress_kernel import prune_and_compress
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.semi24.layer import Semi24Key, Semi24Linear

    gen = torch.Generator(device="cuda").manual_seed(m * 7 + k * 3 + n)
    x = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=gen)
    bias = torch.randn(n, device="cuda", dtype=dtype, generator=gen)
    _, _, pruned = prune_and_compress(w, return_pruned=True)
    row: dict = {"dtype": str(dtype).removeprefix("torch."), "M": m, "K": k, "N": n}
    ref = x.float() @ pruned.float().t()
    ours = Semi24Weight.from_dense(pruned)
    start = time.perf_counter()
    row["ours_relerr"] = relerr(ours.linear(x), ref)
    row["ours_first_call_s"] = time.perf_counter() - start  # builds the plan (and searches, if asked)
    row["ours_bias_relerr"] = relerr(ours.linear(x, bias=bias), ref + bias.float())
    row["dense_relerr"] = relerr(F.linear(x, pruned), ref)
    # dense and ours twice each, interleaved, best median kept: clock drift hits both alike
    dense_runs, ours_runs = [], []
    for _ in range(2):
        dense_runs.append(bench_ms(lambda: F.linear(x, pruned)))
        ours_runs.append(bench_ms(lambda: ours.linear(x)))
    row["dense_ms"], row["ours_ms"] = min(dense_runs), min(ours_runs)
    row["speedup"] = row["dense_ms"] / row["ours_ms"]
    row["ours_loop_ms"] = loop_ms(lambda: ours.linear(x))
    row["ours_graph_ms"] = graph_ms(lambda: ours.linear(x))
    row["eager_over_graph"] = row["ours_loop_ms"] / row["ours_graph_ms"]
    row["dense_loop_ms"] = loop_ms(lambda: F.linear(x, pruned))
    row["dense_graph_ms"] = graph_ms(lambda: F.linear(x, pruned))
    row["ours_host_us"] = host_us(lambda: ours.linear(x))
    row["dense_host_us"] = host_us(lambda: F.linear(x, pruned))
    try:
        from torch.sparse import to_sparse_semi_structured

        sparse_weight = to_sparse_semi_structured(pruned)
        row["torch_linear_relerr"] = relerr(F.linear(x, sparse_weight), ref)
        row["torch_linear_ms"] = bench_ms(lambda: F.linear(x, sparse_weight))
        packed = torch._cslt_compress(pruned)
        row["torch_cslt_raw_ms"] = bench_ms(lambda: torch._cslt_sparse_mm(packed, x.t()))
    except RuntimeError as err:
        row["torch_error"] = str(err)[:200]
    layer = Semi24Linear(pruned, None, dispatcher=Dispatcher(), prune=False)
    row["dispatch_relerr"] = relerr(layer(x), ref)
    row["dispatch_sparse"] = layer.dispatcher.decisions[Semi24Key(m, k, n, dtype, "cusparselt")].choice == "sparse"
    row["dispatch_ms"] = bench_ms(lambda: layer(x))
    row["dispatch_over_dense"] = row["dispatch_ms"] / row["dense_ms"]
    log(" ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in row.items()))
    return row


def measure_compressors(size: int = 8192, log: Callable[[str], None] = print) -> dict:
    """Milliseconds to prune and pack a size² float16 weight, ours against PyTorch's, and a plain copy."""
    from torch.sparse import to_sparse_semi_structured
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    from sparsity_lab.semi24.compress_kernel import prune_and_compress
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.semi24.layout import sparsify

    w = torch.randn(size, size, device="cuda", dtype=torch.float16)
    values, meta, pruned = prune_and_compress(w, return_pruned=True)
    ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(sparsify(w))
    out = {
        "size": size,
        "ours_bit_exact": bool(torch.equal(values.view(torch.int16), ref_values.view(torch.int16))
                               and torch.equal(meta, ref_meta)),
        "copy_ms": bench_ms(lambda: w.clone()),
        "ours_triton_prune_compress_ms": bench_ms(lambda: prune_and_compress(w)),
        "ours_triton_compress_only_ms": bench_ms(lambda: prune_and_compress(pruned, prune=False)),
        "ours_cusparselt_compress_ms": bench_ms(lambda: Semi24Weight.from_dense(pruned)),
        "torch_cslt_compress_ms": bench_ms(lambda: torch._cslt_compress(pruned)),
        "torch_to_sparse_semi_structured_ms": bench_ms(lambda: to_sparse_semi_structured(pruned)),
    }
    try:
        out["torch_semi_structured_tile_ms"] = bench_ms(
            lambda: torch._sparse_semi_structured_tile(w, algorithm="", use_cutlass=True))
    except RuntimeError as err:
        out["torch_semi_structured_tile_error"] = str(err)[:200]
    log(f"compressors {out}")
    return out


def measure_int8(log: Callable[[str], None] = print) -> list[dict]:
    """int8 x int8 through our binding for each output dtype, checked against exact integer products."""
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.semi24.layout import sparsify

    rows = []
    for m, k, n in ((4096, 4096, 4096), (8192, 8192, 8192)):
        x = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
        w = sparsify(torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8))
        ref = x.double() @ w.double().t()
        weight = Semi24Weight.from_dense(w)
        row = {"M": m, "K": k, "N": n, "int_mm_ms": bench_ms(lambda x=x, w=w: torch._int_mm(x, w.t()))}
        for out_dtype, alpha in ((torch.int32, 1.0), (torch.bfloat16, 0.01), (torch.float16, 0.01), (torch.int8, 0.05)):
            name = str(out_dtype).removeprefix("torch.")
            try:
                y = weight.linear(x, out_dtype=out_dtype, alpha=alpha)
                expect = ref * alpha
                if out_dtype == torch.int8:
                    expect = expect.round().clamp(-128, 127)
                row[f"{name}_relerr"] = relerr(y, expect)
                row[f"{name}_ms"] = bench_ms(
                    lambda od=out_dtype, a=alpha, wt=weight, x=x: wt.linear(x, out_dtype=od, alpha=a))
            except RuntimeError as err:
                row[f"{name}_error"] = str(err)[:200]
        log(f"int8 {row}")
        rows.append(row)
    return rows


def measure_model(log: Callable[[str], None] = print) -> list[dict]:
    """A Llama-like MLP block (gate, up: 4096 -> 14336; down: 14336 -> 4096; SiLU) in float16, dense against
    the same block after `sparsify_(block, Semi24Config())`, at a decode and a prefill token count."""
    from torch import nn

    from sparsity_lab.dispatch import Dispatcher
    from sparsity_lab.sparsify import Semi24Config, sparsify_

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate, self.up = nn.Linear(4096, 14336, bias=False), nn.Linear(4096, 14336, bias=False)
            self.down = nn.Linear(14336, 4096, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(F.silu(self.gate(x)) * self.up(x))

    torch.manual_seed(0)
    sparse = MLP().cuda().half()
    report = {name: layer.what for name, layer in sparsify_(sparse, Semi24Config(dispatcher=Dispatcher())).items()}
    dense = MLP().cuda().half()
    for name in ("gate", "up", "down"):  # the dense twin holds the same pruned weights
        getattr(dense, name).weight.data.copy_(getattr(sparse, name).weight)
    rows = []
    with torch.no_grad():
        for m in (16, 4096):
            x = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
            y, ref = sparse(x), dense(x)
            row = {"M": m, "relerr": relerr(y, ref), "dense_ms": bench_ms(lambda x=x: dense(x)),
                   "sparse_ms": bench_ms(lambda x=x: sparse(x)),
                   "routes": {name: getattr(sparse, name).last_reason for name in ("gate", "up", "down")}}
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
            log(f"model {row}")
            rows.append(row)
    return [{"swap_report": report}, *rows]


def summarize(rows: list[dict], compressors: dict) -> dict:
    """The targets against what was measured (worst cases named)."""

    def find(m: int, k: int, n: int, dtype: str = "float16") -> dict | None:
        return next((r for r in rows if (r["M"], r["K"], r["N"], r["dtype"]) == (m, k, n, dtype)), None)

    out: dict = {"targets": TARGETS}
    for name, shape in (("speedup_8192", (8192, 8192, 8192)), ("speedup_4096", (4096, 4096, 4096))):
        row = find(*shape)
        out[name] = row["speedup"] if row else None
        out[name + "_bf16"] = (find(*shape, dtype="bfloat16") or {}).get("speedup")
    worst_eager = max(rows, key=lambda r: r["eager_over_graph"])
    worst_dispatch = max(rows, key=lambda r: r["dispatch_over_dense"])
    out["eager_over_graph_worst"] = worst_eager["eager_over_graph"]
    out["eager_over_graph_worst_shape"] = [worst_eager[key] for key in ("dtype", "M", "K", "N")]
    out["dispatch_over_dense_worst"] = worst_dispatch["dispatch_over_dense"]
    out["dispatch_over_dense_worst_shape"] = [worst_dispatch[key] for key in ("dtype", "M", "K", "N")]
    out["compress_8192_ms"] = compressors.get("ours_triton_prune_compress_ms")
    out["met"] = {
        "speedup_8192": (out["speedup_8192"] or 0) >= TARGETS["speedup_8192"],
        "speedup_4096": (out["speedup_4096"] or 0) >= TARGETS["speedup_4096"],
        "eager_over_graph": out["eager_over_graph_worst"] <= TARGETS["eager_over_graph"],
        "dispatch_over_dense": out["dispatch_over_dense_worst"] <= TARGETS["dispatch_over_dense"],
        "compress_8192_ms": (out["compress_8192_ms"] or 1e9) <= TARGETS["compress_8192_ms"],
    }
    return out


def run(quick: bool = False, dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16),
        log: Callable[[str], None] = print, partial: Path | None = None) -> dict:
    """Measure everything; return the figures of the results file (also saved to `partial` after every shape,
    so a run cut short keeps what it measured)."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench semi24 needs a CUDA GPU (the recorded results are in sparsity_lab/recorded/)")
    from sparsity_lab.semi24 import cusparselt

    cusparselt.load_library()
    figures: dict = {"cusparselt_library": cusparselt.library_path(),
                     "cusparselt_options": dataclasses.asdict(cusparselt.CusparseLtOptions()),
                     "cusparselt_version": ".".join(map(str, cusparselt.version())),
                     "quick": quick}
    figures["compressors"] = measure_compressors(log=log)
    rows = []
    for dtype in dtypes:
        for m, k, n in shapes(quick):
            rows.append(measure_linear(m, k, n, dtype, log=log))
            torch.cuda.empty_cache()
            if partial is not None:
                save_results("semi24_gpu", {**figures, "linear": rows, "complete": False}, partial)
    figures["linear"] = rows
    figures["int8"] = measure_int8(log=log)
    figures["model"] = measure_model(log=log)
    figures["plans"] = [{"key": repr(key), "alg_id": c.alg_id, "split_k": c.split_k}
                        for key, c in cusparselt.cached_plans().items()]
    figures["summary"] = summarize(rows, figures["compressors"])
    figures["complete"] = True
    log(f"summary {figures['summary']}")
    return figures


def main(argv: list[str] | None = None) -> int:
    """`sparsity-lab bench semi24 [--quick] [--out PATH]`."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench semi24", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes, float16 only")
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / "semi24_gpu.json", help="results file to write")
    args = parser.parse_args(argv)
    if resolve_device("cuda", "semi24_gpu.json") is None:
        return 2
    figures = run(quick=args.quick, dtypes=(torch.float16,) if args.quick else (torch.float16, torch.bfloat16))
    path = save_results("semi24_gpu", figures, args.out)
    print(f"wrote {path}")
    return 0
