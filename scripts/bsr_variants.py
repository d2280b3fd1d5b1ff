"""One device call: check and time block-sparse kernel variants on the three target cells against cuBLAS.

The two variants tried here and not adopted (measured slower, scripts/NOTES_block_sparse.md) live in this script,
not in the library: a row-group kernel (x reuse across block-rows) and a persistent one (block-rows by nnz).

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
import triton
import triton.language as tl
from torch.nn import functional as F
from triton.testing import do_bench

from sparsity_lab.block.bench import random_block_sparse
from sparsity_lab.block.layer import BlockSparseMatrix
from sparsity_lab.checks import relative_error
from sparsity_lab.block import kernel as K
from sparsity_lab.block.kernel import _tma_block_product, interpreted

OUT = os.environ.get("OUT", "out")
START = time.time()
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 200.0
results: dict = {"correctness": [], "cells": [], "device": torch.cuda.is_available() and torch.cuda.get_device_name(),
                 "torch": torch.__version__}
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 1


# ---------------------------------------------------------------------------------------------------------------
# Row-group variant: x reuse across block-rows. One program owns R consecutive block-rows and a token tile; it walks
# the union of their block columns, loads each x slab once and does one dot per block present in that column.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _rowgroup_dot(acc, x, w_desc, umap_ptr, e, r: tl.constexpr, R: tl.constexpr, BS: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """acc += x @ block^T when block-row r of the group has a block in union entry e (else acc unchanged)."""
    idx = tl.load(umap_ptr + e * R + r)
    if idx >= 0:
        w = w_desc.load([idx * BS, 0])
        if WIDEN:
            w = w.to(tl.float32)
        acc = tl.dot(x, w.T, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _rowgroup_store(acc, y_desc, bias_ptr, N, m0, row, BS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y[m tile, block-row row] = acc (+ bias); TMA clips rows past M and columns past N."""
    if HAS_BIAS:
        offs_n = row * BS + tl.arange(0, BS)
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc + bias[None, :].to(tl.float32)
    y_desc.store([m0, row * BS], acc.to(y_desc.dtype))


@triton.jit
def _bsr_linear_rowgroup_kernel(
    x_desc, y_desc, w_desc, bias_ptr, gptr_ptr, ucol_ptr, umap_ptr,
    M, N, K, M_BUCKET, NNZ_BUCKET,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, R: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr = False,
):
    """y[m tile, R block-rows] = x[m tile] @ W[R block-rows]^T (+ bias), walking the union of the rows' columns."""
    pid = tl.program_id(0)
    n_tiles_m = tl.cdiv(M, BLOCK_M)
    n_groups = tl.num_programs(0) // n_tiles_m
    per_group = GROUP_M * n_groups
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    g = (pid % per_group) // group_m
    start = tl.load(gptr_ptr + g)
    end = tl.load(gptr_ptr + g + 1)
    m0 = pid_m * BLOCK_M

    acc0 = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
    for e in range(start, end):
        col = tl.load(ucol_ptr + e)
        x = x_desc.load([m0, col * BS])
        if WIDEN:
            x = x.to(tl.float32)
        acc0 = _rowgroup_dot(acc0, x, w_desc, umap_ptr, e, 0, R, BS, INPUT_PRECISION, WIDEN)
        acc1 = _rowgroup_dot(acc1, x, w_desc, umap_ptr, e, 1, R, BS, INPUT_PRECISION, WIDEN)
        if R == 4:
            acc2 = _rowgroup_dot(acc2, x, w_desc, umap_ptr, e, 2, R, BS, INPUT_PRECISION, WIDEN)
            acc3 = _rowgroup_dot(acc3, x, w_desc, umap_ptr, e, 3, R, BS, INPUT_PRECISION, WIDEN)
    _rowgroup_store(acc0, y_desc, bias_ptr, N, m0, g * R, BS, HAS_BIAS)
    _rowgroup_store(acc1, y_desc, bias_ptr, N, m0, g * R + 1, BS, HAS_BIAS)
    if R == 4:
        _rowgroup_store(acc2, y_desc, bias_ptr, N, m0, g * R + 2, BS, HAS_BIAS)
        _rowgroup_store(acc3, y_desc, bias_ptr, N, m0, g * R + 3, BS, HAS_BIAS)


def row_groups(crow_indices: torch.Tensor, col_indices: torch.Tensor, n_block_cols: int, rows_per_group: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The union walk of groups of `rows_per_group` block-rows: (group pointers (G+1,), union columns (E,), block
    index of each row per union entry (E, R), -1 where that row has no block). Built once per weight, on its device."""
    R = rows_per_group
    device = crow_indices.device
    n_r = crow_indices.numel() - 1
    n_g = -(-n_r // R)
    counts = (crow_indices[1:] - crow_indices[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(n_r, device=device), counts)
    idx = torch.full((n_g * R, max(n_block_cols, 1)), -1, dtype=torch.int32, device=device)
    idx[rows, col_indices.long()] = torch.arange(col_indices.numel(), dtype=torch.int32, device=device)
    idx = idx.view(n_g, R, -1).transpose(1, 2)  # (groups, columns, R)
    present = (idx >= 0).any(-1)
    gptr = torch.zeros(n_g + 1, dtype=torch.int32, device=device)
    gptr[1:] = present.sum(1).cumsum(0)
    ucol = present.nonzero()[:, 1].to(torch.int32)  # row-major: ascending columns within each group
    return gptr, ucol, idx[present].contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Persistent variant: a fixed grid walks (token tile, block-row) work items, block-rows in order of decreasing nnz.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _bsr_linear_persistent_kernel(
    x_desc, y_desc, w_desc, bias_ptr, crow_ptr, col_ptr, order_ptr,
    M, N, K, n_rows,
    BS: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr, NUM_PROGS: tl.constexpr,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, WIDEN: tl.constexpr = False,
    FLATTEN: tl.constexpr = False, WARP_SPECIALIZE: tl.constexpr = False,
):
    """The TMA product, persistent: program p takes work items p, p + NUM_PROGS, ...; within a group of GROUP_M
    token tiles the block-rows come heaviest first (order_ptr), so the last items are short."""
    pid = tl.program_id(0)
    n_tiles_m = tl.cdiv(M, BLOCK_M)
    n_items = n_tiles_m * n_rows
    per_group = GROUP_M * n_rows
    for item in tl.range(pid, n_items, NUM_PROGS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
        first_m = (item // per_group) * GROUP_M
        group_m = tl.minimum(n_tiles_m - first_m, GROUP_M)
        pid_m = first_m + (item % per_group) % group_m
        row = tl.load(order_ptr + (item % per_group) // group_m)
        start = tl.load(crow_ptr + row)
        end = tl.load(crow_ptr + row + 1)
        m0 = pid_m * BLOCK_M
        acc = tl.zeros((BLOCK_M, BS), dtype=tl.float32)
        for i in range(start, end):
            acc = _tma_block_product(acc, x_desc, w_desc, col_ptr, i, m0, BS, INPUT_PRECISION, WIDEN)
        _rowgroup_store(acc, y_desc, bias_ptr, N, m0, row, BS, HAS_BIAS)


def _descriptors(x: torch.Tensor, y: torch.Tensor, blocks: torch.Tensor, block_m: int, bs: int) -> tuple:
    """Tensor descriptors for x tiles, y tiles and the stored blocks (a zero block stands in for an empty weight)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    stored = blocks if blocks.shape[0] else torch.zeros(1, bs, bs, dtype=blocks.dtype, device=blocks.device)
    return (TensorDescriptor.from_tensor(x, [block_m, bs]), TensorDescriptor.from_tensor(y, [block_m, bs]),
            TensorDescriptor.from_tensor(stored.view(-1, bs), [bs, bs]))


def bsr_linear_rowgroup(x: torch.Tensor, groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                        blocks: torch.Tensor, out_features: int, bias: torch.Tensor | None, y: torch.Tensor,
                        config: dict, precision: str = "ieee") -> torch.Tensor:
    """Launch the row-group kernel with an explicit tiling {"BLOCK_M", "GROUP_M", "num_warps", "num_stages"};
    `groups` comes from `row_groups` and fixes R."""
    gptr, ucol, umap = groups
    bs = int(blocks.shape[1])
    M, K = x.shape
    R = int(umap.shape[1])
    if R not in (2, 4):
        raise ValueError(f"rows per group must be 2 or 4, got {R}")
    launch = dict(config)
    block_m = launch["BLOCK_M"]
    launch.setdefault("GROUP_M", 8)
    descs = _descriptors(x, y, blocks.contiguous(), block_m, bs)
    grid = ((gptr.numel() - 1) * triton.cdiv(M, block_m),)
    _bsr_linear_rowgroup_kernel[grid](*descs, bias if bias is not None else blocks, gptr, ucol, umap,
                                      M, out_features, K, 0, 0, BS=bs, R=R, HAS_BIAS=bias is not None,
                                      INPUT_PRECISION=precision,
                                      WIDEN=x.dtype == torch.bfloat16 and interpreted(), **launch)
    return y


def bsr_linear_persistent(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor,
                          blocks: torch.Tensor, out_features: int, bias: torch.Tensor | None, y: torch.Tensor,
                          config: dict, row_order: torch.Tensor, num_programs: int,
                          precision: str = "ieee") -> torch.Tensor:
    """Launch the persistent kernel with an explicit tiling {"BLOCK_M", "GROUP_M", "num_warps", "num_stages",
    optional "FLATTEN", "WARP_SPECIALIZE"} on `num_programs` programs; `row_order` lists block-rows heaviest first."""
    bs = int(blocks.shape[1])
    M, K = x.shape
    launch = dict(config)
    block_m = launch["BLOCK_M"]
    launch.setdefault("GROUP_M", 8)
    descs = _descriptors(x, y, blocks.contiguous(), block_m, bs)
    _bsr_linear_persistent_kernel[(num_programs,)](
        *descs, bias if bias is not None else blocks, crow_indices, col_indices, row_order, M, out_features, K,
        crow_indices.numel() - 1, BS=bs, NUM_PROGS=num_programs, HAS_BIAS=bias is not None,
        INPUT_PRECISION=precision, WIDEN=x.dtype == torch.bfloat16 and interpreted(), **launch)
    return y


def rows_by_nnz(crow_indices: torch.Tensor) -> torch.Tensor:
    """Block-rows sorted by stored blocks, most first (int32): the order the persistent kernel takes them in."""
    counts = crow_indices[1:] - crow_indices[:-1]
    return torch.sort(counts, descending=True, stable=True).indices.to(torch.int32)


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
            cache[("groups", R)] = row_groups(bsr.crow_indices, bsr.col_indices, -(-x.shape[1] // bs), R)
        return bsr_linear_rowgroup(x, cache[("groups", R)], bsr.values, n_out, bias, y, cfg)
    if kind == "persistent":
        if "order" not in cache:
            cache["order"] = rows_by_nnz(bsr.crow_indices)
        c = dict(cfg)
        progs = c.pop("PROGS") * SMS
        return bsr_linear_persistent(x, bsr.crow_indices, bsr.col_indices, bsr.values, n_out, bias, y, c,
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
