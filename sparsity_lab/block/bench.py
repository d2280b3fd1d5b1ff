"""Block-sparse Linear on the GPU: our Triton BSR kernel against dense cuBLAS and PyTorch's Triton BSR kernel.

One run checks correctness first (every dtype and block size, odd shapes, bias, empty block-rows, an all-empty
weight, against a float64 reference with the output poisoned beforehand), then times a heatmap of block size x
sparsity for `y = x W^T` with x (size x size) and W (size x size), all with `triton.testing.do_bench` medians,
and writes a results file (`sparsity_lab.course.results`). Usage: `sparsity-lab bench block_sparse [--out PATH]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import save_results
from sparsity_lab.formats.matrices import BSR
from sparsity_lab.timing import bench_ms, resolve_device

TARGETS = {(64, 0.9): 5.0, (32, 0.9): 3.0, (64, 0.5): 1.5}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 2e-3}


def random_block_sparse(n_out: int, n_in: int, bs: int, sparsity: float, dtype: torch.dtype, device: str,
                        generator: torch.Generator | None = None, empty_rows: int = 0) -> torch.Tensor:
    """A random weight with each bs x bs block kept with probability 1 - sparsity (the first `empty_rows`
    block-rows dropped), random normal values inside kept blocks."""
    n_r, n_c = -(-n_out // bs), -(-n_in // bs)
    keep = torch.rand(n_r, n_c, device=device, generator=generator) >= sparsity
    keep[:empty_rows] = False
    mask = keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:n_out, :n_in]
    return torch.randn(n_out, n_in, device=device, dtype=torch.float32, generator=generator).mul_(mask).to(dtype)


def correctness(device: str = "cuda") -> list[dict]:
    """Check both kernel variants on awkward shapes in every dtype and block size with fixed tilings (no
    autotuning): odd sizes for the pointer variant, 16-byte-aligned rows for the descriptor (TMA) one."""
    from sparsity_lab.block.kernel import bsr_linear, tma_supported

    g = torch.Generator(device=device).manual_seed(1)
    rows = []
    cases = [(v, dtype, bs, "tf32") for v in ("pointer", "tma") for dtype in DTYPES.values()
             for bs in (16, 32, 64, 128)]
    cases += [("pointer", torch.float32, 32, "ieee"), ("tma", torch.float32, 32, "ieee")]
    for variant, dtype, bs, precision in cases:
        n_out, n_in, m = (5 * bs + 8, 4 * bs + 8, 333) if variant == "tma" else (5 * bs + 3, 4 * bs + 5, 333)
        w = random_block_sparse(n_out, n_in, bs, 0.5, dtype, device, g, empty_rows=1)
        x = torch.randn(m, n_in, device=device, generator=g).to(dtype)
        bias = torch.randn(n_out, device=device, generator=g).to(dtype)
        bsr = BSR.from_dense(w, bs, index_dtype=torch.int32, pad=True)
        per_step = max(1, 64 // bs)
        config = {"BLOCK_M": 64, "BLOCKS_PER_STEP": per_step, "num_warps": 4, "num_stages": 2}
        out = torch.full((m, n_out), float("nan"), device=device, dtype=dtype)
        ran = "tma" if variant == "tma" and tma_supported(x, n_out) else "pointer"
        row = dict(case="odd shape, bias, empty block-row", variant=ran, dtype=str(dtype), bs=bs,
                   precision=precision, shape=[m, n_in, n_out])
        try:
            y = bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, n_out, bias, config=config,
                           input_precision=precision, out=out, variant=variant)
        except Exception as err:  # recorded (a variant that does not build here), counted as a failure
            rows.append(dict(row, error=repr(err)[:300], ok=False))
            continue
        ref = x.double() @ w.double().T + bias.double()
        err = relative_error(y, ref)
        tol = 1e-5 if precision == "ieee" else TOLERANCE[dtype]
        rows.append(dict(row, relerr=err, tol=tol, ok=err < tol))
    for variant in ("pointer", "tma"):
        for bs in (16, 64):  # all-empty weight: bias only, and zeros without bias
            x = torch.randn(100, 4 * bs, device=device, dtype=torch.float16)
            bsr = BSR.from_dense(torch.zeros(3 * bs, 4 * bs, device=device, dtype=torch.float16), bs,
                                 index_dtype=torch.int32)
            bias = torch.randn(3 * bs, device=device, dtype=torch.float16)
            for b in (bias, None):
                out = torch.full((100, 3 * bs), float("nan"), device=device, dtype=torch.float16)
                row = dict(case=f"all-empty weight, {'bias' if b is not None else 'no bias'}", variant=variant,
                           dtype="torch.float16", bs=bs)
                try:
                    y = bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, 3 * bs, b, out=out,
                                   variant=variant,
                                   config={"BLOCK_M": 64, "BLOCKS_PER_STEP": 1, "num_warps": 4, "num_stages": 2})
                except Exception as err:
                    rows.append(dict(row, error=repr(err)[:300], ok=False))
                    continue
                expected = b.expand(100, -1) if b is not None else torch.zeros_like(y)
                rows.append(dict(row, ok=bool(torch.equal(y, expected))))
    return rows


def heatmap(size: int, block_sizes: list[int], sparsities: list[float], dtype: torch.dtype, budget_s: float,
            started: float, torch_bsr: bool = True, on_row=None, device: str = "cuda", config: dict | None = None,
            bench=None) -> list[dict]:
    """Time dense, ours (autotuned unless `config` is given) and PyTorch's bsr_dense_mm for each (block size,
    sparsity) and check each against a float32 reference; `bench` replaces do_bench (CPU tests)."""
    bench = bench or bench_ms
    bsr_dense_mm = None
    if torch_bsr:
        try:
            from torch.sparse._triton_ops import bsr_dense_mm
        except ImportError:
            bsr_dense_mm = None
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(size, size, device=device, generator=g).to(dtype)
    x_t = x.t().contiguous()  # PyTorch's kernel computes W @ x^T; give it the layout it prefers
    order = [(bs, sp) for (bs, sp) in TARGETS] + [(bs, sp) for bs in block_sizes for sp in sparsities
                                                  if (bs, sp) not in TARGETS]
    rows = []
    for bs, sp in order:
        if bs not in block_sizes or sp not in sparsities:
            continue
        if time.time() - started > budget_s:
            print(f"budget reached: skipping bs={bs} sparsity={sp}", flush=True)
            continue
        row = _cell(x, x_t, bs, sp, g, config, bench, bsr_dense_mm)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if "autotune" not in k},
              flush=True)
    return rows


def _cell(x: torch.Tensor, x_t: torch.Tensor, bs: int, sp: float, g: torch.Generator, config: dict | None,
          bench, bsr_dense_mm, variants: tuple[str, ...] = ("pointer", "tma")) -> dict:
    """One heatmap cell: a fresh random weight, checked and timed three ways."""
    from sparsity_lab.block.kernel import best_config, bsr_linear

    size = x.shape[0]
    w = random_block_sparse(size, size, bs, sp, x.dtype, str(x.device), g)
    bsr = BSR.from_dense(w, bs, index_dtype=torch.int32)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    ref = F.linear(x.float(), w.float())
    torch.backends.cuda.matmul.allow_tf32 = tf32
    row = dict(bs=bs, sparsity=sp, density=bsr.density, ideal=1 / max(bsr.density, 1e-9))
    row["dense_ms"] = bench(lambda: F.linear(x, w))

    for variant in variants:
        def ours(variant: str = variant) -> torch.Tensor:
            return bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, size, config=config, variant=variant)

        try:
            y = ours()  # autotunes on first sight of a problem
            row[f"{variant}_relerr"] = relative_error(y, ref)
            row[f"{variant}_ms"] = bench(ours)
            row[f"{variant}_config"] = config or best_config(size, size, size, bs, x.dtype, bsr.n_blocks, variant)
            if config is None:
                row[f"{variant}_autotune"] = autotune_log(variant)
        except Exception as err:  # a variant that does not build on this GPU/Triton is recorded, not fatal
            row[f"{variant}_error"] = repr(err)[:300]
    timed = [v for v in variants if f"{v}_ms" in row]
    if not timed:
        raise RuntimeError(f"no kernel variant ran for bs={bs} sparsity={sp}: {row}")
    best = min(timed, key=lambda v: row[f"{v}_ms"])
    row.update(variant=best, ours_ms=row[f"{best}_ms"], relerr=max(row[f"{v}_relerr"] for v in timed),
               config=row[f"{best}_config"])
    row["speedup"] = row["dense_ms"] / row["ours_ms"]
    row["tflops_effective"] = 2 * size**3 * bsr.density / row["ours_ms"] / 1e9
    if bsr_dense_mm is not None:
        try:
            w_bsr = w.to_sparse_bsr((bs, bs))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["torch_relerr"] = relative_error(bsr_dense_mm(w_bsr, x_t).t(), ref)
                row["torch_ms"] = bench(lambda: bsr_dense_mm(w_bsr, x_t))
            row["torch_speedup"] = row["dense_ms"] / row["torch_ms"]
            row["ours_vs_torch"] = row["torch_ms"] / row["ours_ms"]
        except Exception as err:  # PyTorch's kernel may refuse a shape/dtype: record why
            row["torch_error"] = repr(err)[:300]
    target = TARGETS.get((bs, sp))
    if target is not None:
        row["target"] = target
        row["target_met"] = row["speedup"] >= target
    return row


def dispatcher_check(size: int = 8192, dtype: torch.dtype = torch.float16) -> list[dict]:
    """What BlockSparseLinear(backend="auto") picks for a few token counts and sparsities, with its timings."""
    from sparsity_lab.block.layer import DEFAULT_DISPATCHER, BlockSparseLinear

    rows = []
    g = torch.Generator(device="cuda").manual_seed(2)
    for sp in (0.9, 0.5):
        w = random_block_sparse(size, size, 64, sp, dtype, "cuda", g)
        dispatcher = dataclasses.replace(DEFAULT_DISPATCHER, decisions={})  # the layer's policy, nothing cached
        layer = BlockSparseLinear(BSR.from_dense(w, 64), dispatcher=dispatcher)
        for tokens in (16, 512, 8192):
            x = torch.randn(tokens, size, device="cuda", dtype=dtype, generator=g)
            with torch.no_grad():
                y = layer(x)
            ref = x.double() @ w.double().T
            decision = dispatcher.decisions[layer.dispatch_key(x)]
            rows.append(dict(bs=64, sparsity=sp, tokens=tokens, choice=decision.choice, timings_ms=decision.timings,
                             relerr=relative_error(y, ref)))
            print(rows[-1], flush=True)
    return rows


def autotune_log(variant: str = "pointer") -> dict:
    """The autotuner's per-config timings of its last tuning, where this Triton version keeps them."""
    from sparsity_lab.block.kernel import _autotuned, _autotuned_tma

    timings = getattr(_autotuned_tma if variant == "tma" else _autotuned, "configs_timings", None) or {}
    return {str(c): (list(t) if isinstance(t, (list, tuple)) else t) for c, t in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsity-lab bench block_sparse", description=__doc__)
    parser.add_argument("--out", default="block_sparse_gpu.json", help="results file to write")
    parser.add_argument("--size", type=int, default=8192, help="tokens = in = out features")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which remaining cells are skipped")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--no-torch-bsr", action="store_true", help="do not time PyTorch's bsr_dense_mm")
    args = parser.parse_args(argv)
    if resolve_device("cuda", "block_sparse_gpu.json") is None:
        return 2
    started = time.time()
    figures: dict = {"size": args.size, "dtype": args.dtype, "targets": [
        {"bs": bs, "sparsity": sp, "min_speedup": t} for (bs, sp), t in TARGETS.items()]}
    if not args.skip_correctness:
        figures["correctness"] = correctness()
        bad = [r for r in figures["correctness"] if not r["ok"]]
        print(f"correctness: {len(figures['correctness']) - len(bad)}/{len(figures['correctness'])} ok", flush=True)
        for r in bad:
            print("FAILED", r, flush=True)

    def save(rows: list[dict]) -> None:
        figures["heatmap"] = rows
        figures["autotune"] = autotune_log()
        save_results("block_sparse_gpu", figures, args.out)

    rows = heatmap(args.size, args.block_sizes, args.sparsities, DTYPES[args.dtype], args.budget, started,
                   torch_bsr=not args.no_torch_bsr, on_row=save)
    if time.time() - started < args.budget:
        figures["dispatcher"] = dispatcher_check(args.size, DTYPES[args.dtype])
    save(rows)
    print(f"{'bs':>4} {'sparsity':>8} {'dense ms':>9} {'ours ms':>8} {'variant':>8} {'speedup':>8} {'torch x':>8} "
          f"{'relerr':>8}")
    for r in rows:
        print(f"{r['bs']:>4} {r['sparsity']:>8.2f} {r['dense_ms']:>9.3f} {r['ours_ms']:>8.3f} {r['variant']:>8} "
              f"{r['speedup']:>8.2f} "
              f"{r.get('torch_speedup', float('nan')):>8.2f} {r['relerr']:>8.1e}"
              + (f"  target {r['target']}x {'MET' if r['target_met'] else 'MISSED'}" if "target" in r else ""))
    print("wrote", Path(args.out).resolve(), f"in {time.time() - started:.0f} s")
    ok = all(r["ok"] for r in figures.get("correctness", [])) and all(r["relerr"] < 2e-2 for r in rows)
    print(json.dumps({"all_correct": ok}))
    return 0 if ok else 1
