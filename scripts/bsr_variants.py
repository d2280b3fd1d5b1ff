"""One device call: check and time block-sparse kernel variants on the three target cells against cuBLAS.

Correctness first (odd shapes, bias, empty block-row, NaN-poisoned output, float64 reference), then for each target
cell (8192^2 fp16) dense cuBLAS and every variant/tiling below, each checked against a float32 reference before it is
timed (do_bench median). Prints one line per measurement as it goes and writes everything to $OUT/variants.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
from torch.nn import functional as F
from triton.testing import do_bench

from sparsity_lab.bench.block_sparse import random_block_sparse, relative_error
from sparsity_lab.block_sparse import BlockSparseMatrix
from sparsity_lab.kernels import bsr_matmul as K

OUT = os.environ.get("OUT", "out")
START = time.time()
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0
results: dict = {"correctness": [], "cells": [], "device": torch.cuda.get_device_name(),
                 "torch": torch.__version__}
SMS = torch.cuda.get_device_properties(0).multi_processor_count


def save() -> None:
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "variants.json"), "w") as f:
        json.dump(results, f, indent=1)


def run_variant(kind: str, x, bsr: BlockSparseMatrix, n_out: int, bias, y, cfg: dict, cache: dict):
    bs = bsr.block_size
    if kind == "tma" or kind == "pointer":
        return K.bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, n_out, bias, config=cfg, out=y,
                            variant=kind)
    if kind.startswith("rowgroup"):
        R = int(kind[-1])
        if ("groups", R) not in cache:
            cache[("groups", R)] = K.row_groups(bsr.crow_indices, bsr.col_indices, -(-x.shape[1] // bs), R)
        return K.bsr_linear_rowgroup(x, cache[("groups", R)], bsr.values, n_out, bias, y, cfg)
    if kind == "persistent":
        if "order" not in cache:
            cache["order"] = K.rows_by_nnz(bsr.crow_indices)
        c = dict(cfg)
        progs = c.pop("PROGS") * SMS
        return K.bsr_linear_persistent(x, bsr.crow_indices, bsr.col_indices, bsr.values, n_out, bias, y, c,
                                       cache["order"], progs)
    raise ValueError(kind)


def correctness() -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    cases = [("rowgroup2", torch.float16, bs) for bs in (16, 32, 64, 128)]
    cases += [("rowgroup4", torch.float16, 32), ("rowgroup4", torch.float16, 64), ("rowgroup2", torch.bfloat16, 64),
              ("rowgroup2", torch.float32, 32), ("persistent", torch.float16, 32), ("persistent", torch.float16, 64)]
    for kind, dtype, bs in cases:
        n_out, n_in, m = 5 * bs + 8, 4 * bs + 8, 333
        w = random_block_sparse(n_out, n_in, bs, 0.5, dtype, "cuda", g, empty_rows=1)
        x = torch.randn(m, n_in, device="cuda", generator=g).to(dtype)
        bias = torch.randn(n_out, device="cuda", generator=g).to(dtype)
        bsr = BlockSparseMatrix.from_dense(w, bs, pad=True)
        y = torch.full((m, n_out), float("nan"), device="cuda", dtype=dtype)
        cfg = {"BLOCK_M": 64, "num_warps": 4, "num_stages": 2}
        if kind == "persistent":
            cfg.update(PROGS=1, GROUP_M=2)
        row = dict(kind=kind, dtype=str(dtype), bs=bs)
        try:
            run_variant(kind, x, bsr, n_out, bias, y, cfg, {})
            torch.cuda.synchronize()
            err = relative_error(y, x.double() @ w.double().T + bias.double())
            tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 2e-3}[dtype]
            row.update(relerr=err, ok=err < tol)
        except Exception as e:
            row.update(error=repr(e)[:400], ok=False)
        results["correctness"].append(row)
        print("check", row, flush=True)
    save()


def bench(fn) -> float:
    return float(do_bench(fn, warmup=10, rep=60, return_mode="median"))


PLANS = {
    (64, 0.9): [
        ("tma", {"BLOCK_M": 128, "BLOCKS_PER_STEP": 1, "num_warps": 4, "num_stages": 5}),
        ("rowgroup2", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 3}),
        ("rowgroup4", {"BLOCK_M": 128, "num_warps": 8, "num_stages": 3}),
        ("tma", {"BLOCK_M": 256, "BLOCKS_PER_STEP": 1, "num_warps": 8, "num_stages": 3}),
        ("tma", {"BLOCK_M": 256, "BLOCKS_PER_STEP": 1, "num_warps": 8, "num_stages": 3, "GROUP_M": 2}),
        ("tma", {"BLOCK_M": 512, "BLOCKS_PER_STEP": 1, "num_warps": 8, "num_stages": 2}),
        ("persistent", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 3, "PROGS": 1}),
        ("persistent", {"BLOCK_M": 128, "num_warps": 4, "num_stages": 4, "PROGS": 2}),
        ("persistent", {"BLOCK_M": 128, "num_warps": 4, "num_stages": 4, "PROGS": 2, "FLATTEN": True}),
        ("persistent", {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3, "PROGS": 1, "WARP_SPECIALIZE": True}),
        ("rowgroup2", {"BLOCK_M": 128, "num_warps": 4, "num_stages": 4}),
        ("tma", {"BLOCK_M": 128, "BLOCKS_PER_STEP": 1, "num_warps": 4, "num_stages": 5}),
    ],
    (32, 0.9): [
        ("pointer", {"BLOCK_M": 128, "BLOCKS_PER_STEP": 2, "num_warps": 4, "num_stages": 3}),
        ("rowgroup4", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 3}),
        ("rowgroup4", {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3}),
        ("rowgroup2", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 3}),
        ("tma", {"BLOCK_M": 256, "BLOCKS_PER_STEP": 2, "num_warps": 8, "num_stages": 3}),
        ("tma", {"BLOCK_M": 512, "BLOCKS_PER_STEP": 2, "num_warps": 8, "num_stages": 3}),
        ("persistent", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 4, "PROGS": 1}),
        ("pointer", {"BLOCK_M": 128, "BLOCKS_PER_STEP": 2, "num_warps": 4, "num_stages": 3}),
    ],
    (64, 0.5): [
        ("tma", {"BLOCK_M": 256, "BLOCKS_PER_STEP": 1, "num_warps": 8, "num_stages": 2}),
        ("rowgroup4", {"BLOCK_M": 128, "num_warps": 8, "num_stages": 3}),
        ("rowgroup2", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 3}),
        ("rowgroup2", {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3}),
        ("tma", {"BLOCK_M": 512, "BLOCKS_PER_STEP": 1, "num_warps": 8, "num_stages": 2}),
        ("persistent", {"BLOCK_M": 256, "num_warps": 8, "num_stages": 3, "PROGS": 1}),
    ],
}


def cells() -> None:
    size = 8192
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(size, size, device="cuda", generator=g).half()
    for (bs, sp), plan in PLANS.items():
        w = random_block_sparse(size, size, bs, sp, torch.float16, "cuda", g)
        bsr = BlockSparseMatrix.from_dense(w, bs)
        torch.backends.cuda.matmul.allow_tf32 = False
        ref = F.linear(x.float(), w.float())
        cell = dict(bs=bs, sparsity=sp, density=bsr.density, runs=[])
        results["cells"].append(cell)
        cell["dense_ms"] = bench(lambda w=w: F.linear(x, w))
        print(f"cell bs={bs} sp={sp} density={bsr.density:.4f} dense {cell['dense_ms']:.3f} ms", flush=True)
        cache: dict = {}
        for kind, cfg in plan:
            if time.time() - START > BUDGET:
                print("budget reached", flush=True)
                break
            y = torch.full((size, size), float("nan"), device="cuda", dtype=torch.float16)
            run = dict(kind=kind, cfg=cfg)
            try:
                t0 = time.time()
                run_variant(kind, x, bsr, size, None, y, cfg, cache)
                torch.cuda.synchronize()
                run["compile_s"] = time.time() - t0
                run["relerr"] = relative_error(y, ref)
                run["ms"] = bench(lambda: run_variant(kind, x, bsr, size, None, y, cfg, cache))  # noqa: B023
                run["speedup"] = cell["dense_ms"] / run["ms"]
            except Exception as e:
                run["error"] = repr(e)[:400]
                traceback.print_exc(limit=1)
            cell["runs"].append(run)
            print(f"  {kind:10s} {cfg} -> {run.get('ms', float('nan')):.4f} ms  x{run.get('speedup', 0):.2f} "
                  f"err {run.get('relerr', float('nan')):.1e} compile {run.get('compile_s', 0):.1f}s", flush=True)
            save()
        cell["dense_ms_again"] = bench(lambda w=w: F.linear(x, w))
        save()


if __name__ == "__main__":
    correctness()
    cells()
    print("\nSUMMARY")
    for c in results["cells"]:
        best = min((r for r in c["runs"] if "ms" in r and r["relerr"] < 2e-2), key=lambda r: r["ms"], default=None)
        print(c["bs"], c["sparsity"], "dense", round(c["dense_ms"], 3), round(c["dense_ms_again"], 3), "best",
              best and (best["kind"], best["cfg"], round(best["ms"], 4), round(best["speedup"], 2)))
    print("checks ok:", sum(r["ok"] for r in results["correctness"]), "/", len(results["correctness"]))
