"""One GPU call (2026-12-02, second session): value slots for fixed-mask 2:4 training (issue 9), a cluster
(num_ctas = 2) probe of the block-sparse kernel (issue 7), and the decode host cost on this host (issue 6).

1. value slots on cuSPARSELt (subprocess: a bad buffer write could poison the context): learnt and verified for
   the MLP block's weights and their transposes, fp16 / bf16; gather against cuSPARSELt's compress, timed;
2. GPU tests of the training, value-slot and cuSPARSELt files;
3. the sparse-training benchmark at 8192 .. 65536 tokens (recorded file under $OUT);
4. block-sparse 8192^2 fp16 at 64/90% and 64/50%: the recorded tilings against the same with num_ctas = 2
   (subprocess, timeout), each checked against a float32 reference, against cuBLAS in the same run;
5. the eager hot path at M = 16 (bare ctypes call, our linear, dense) against CUDA-graph replay.

    OUT=/tmp/out python scripts/gpu_check_value_slots.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
T0 = time.time()
REPORT: dict = {}


def log(*parts: object) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *parts, flush=True)


def save() -> None:
    (OUT / "call6.json").write_text(json.dumps(REPORT, indent=1, default=str))


def value_slots_probe() -> dict:
    import torch

    from sparsity_lab.bench._timing import loop_ms
    from sparsity_lab.cusparselt import Semi24Weight
    from sparsity_lab.sparse_training import _masked, transposable_mask

    rows = {}
    for dtype in (torch.float16, torch.bfloat16):
        for n, k in ((4096, 1024), (1024, 4096), (256, 512)):
            w = torch.randn(n, k, device="cuda", dtype=dtype)
            mask = transposable_mask(w)
            for name, dense_mask in (("W", mask), ("WT", mask.T.contiguous())):
                src = w if name == "W" else w.T.contiguous()
                ws = _masked(src, dense_mask)
                weight = Semi24Weight.from_dense(ws)
                key = f"{dtype} {name} {tuple(ws.shape)}"
                t = time.time()
                try:
                    slots = weight.learn_value_slots(dense_mask)
                except Exception as error:  # noqa: BLE001
                    rows[key] = {"error": repr(error)}
                    log(key, rows[key])
                    continue
                learn_s = time.time() - t
                w2 = torch.randn_like(src)
                masked2 = _masked(w2, dense_mask)
                slots.write(weight.compressed, w2)
                got = weight.compressed.clone()
                weight.recompress(masked2)
                rows[key] = {"learn_s": learn_s, "offset": slots.offset, "contiguous": slots.slots is None,
                             "bytes": weight.compressed.numel(), "values": slots.sources.numel(),
                             "equal_to_compress": bool(torch.equal(got, weight.compressed)),
                             "gather_ms": loop_ms(lambda s=slots, b=weight.compressed, w2=w2: s.write(b, w2)),
                             "compress_ms": loop_ms(lambda we=weight, d=masked2: we.recompress(d))}
                log(key, rows[key])
    return rows


def run(cmd: list[str], name: str, timeout: int) -> dict:
    log("run", name, " ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text = p.stdout + p.stderr
        status = f"rc={p.returncode}"
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = "timeout"
    (OUT / f"{name}.log").write_text(text)
    log(name, status, text[-1500:])
    results = [line[7:] for line in text.splitlines() if line.startswith("RESULT ")]
    return {"status": status, "result": json.loads(results[-1]) if results else None}


def bsr_cluster_probe() -> dict:
    import torch
    from torch.nn import functional as F
    from triton.testing import do_bench

    from sparsity_lab.bench.block_sparse import random_block_sparse
    from sparsity_lab.block_sparse import BlockSparseMatrix
    from sparsity_lab.checks import relative_error
    from sparsity_lab.kernels import bsr_matmul as K

    size, out = 8192, {}
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(size, size, device="cuda", generator=g).half()
    plans = {(64, 0.9): [("tma", dict(BLOCK_M=128, BLOCKS_PER_STEP=1, GROUP_M=8, num_warps=4, num_stages=5)),
                         ("tma", dict(BLOCK_M=256, BLOCKS_PER_STEP=1, GROUP_M=2, num_warps=8, num_stages=2,
                                      num_ctas=2)),
                         ("tma", dict(BLOCK_M=256, BLOCKS_PER_STEP=1, GROUP_M=2, num_warps=4, num_stages=4,
                                      num_ctas=2)),
                         ("pointer", dict(BLOCK_M=256, BLOCKS_PER_STEP=1, GROUP_M=2, num_warps=4, num_stages=4,
                                          num_ctas=2))],
             (64, 0.5): [("tma", dict(BLOCK_M=256, BLOCKS_PER_STEP=1, GROUP_M=2, num_warps=8, num_stages=5)),
                         ("tma", dict(BLOCK_M=256, BLOCKS_PER_STEP=1, GROUP_M=2, num_warps=4, num_stages=4,
                                      num_ctas=2))]}
    for (bs, sp), plan in plans.items():
        w = random_block_sparse(size, size, bs, sp, torch.float16, "cuda", g)
        bsr = BlockSparseMatrix.from_dense(w, bs)
        ref = F.linear(x.float(), w.float())
        dense = do_bench(lambda w=w: F.linear(x, w), warmup=10, rep=60, return_mode="median")
        for variant, cfg in plan:
            key = f"{bs}/{sp} {variant} {cfg}"
            y = torch.full((size, size), float("nan"), device="cuda", dtype=torch.float16)
            try:
                K.bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, size, None, config=cfg, out=y,
                             variant=variant)
                torch.cuda.synchronize()
                err = relative_error(y, ref)
                ms = do_bench(lambda v=variant, c=cfg, y=y, b=bsr: K.bsr_linear(
                    x, b.crow_indices, b.col_indices, b.values, size, None, config=c, out=y, variant=v),
                    warmup=10, rep=60, return_mode="median")
                out[key] = {"dense_ms": dense, "ms": ms, "speedup": dense / ms, "relerr": err}
            except Exception as error:  # noqa: BLE001
                out[key] = {"error": repr(error)[:500]}
            print(key, out[key], flush=True)
    return out


def hot_path() -> list:
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ["OUT"] = "/tmp/hotpath_scratch"  # that script opens its own log at import
    import torch
    from gpu_check_hotpath import shape_row

    return [shape_row(16, 4096, 4096), shape_row(16, 4096, 4096, torch.bfloat16), shape_row(128, 4096, 4096)]


def child(name: str) -> None:
    result = {"value_slots": value_slots_probe, "bsr_cluster": bsr_cluster_probe, "hot_path": hot_path}[name]()
    print("RESULT", json.dumps(result, default=str), flush=True)  # the parent keeps it from the log


def main() -> None:
    py = sys.executable
    os.environ.setdefault("PYTHONPATH", os.getcwd())
    me = str(Path(__file__).resolve())
    REPORT["value_slots"] = run([py, me, "value_slots"], "value_slots", 180)
    save()
    REPORT["pytest"] = run([py, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-m", "gpu",
                            "tests/test_sparse_training.py", "tests/test_value_slots.py", "tests/test_cusparselt.py",
                            "tests/test_transposable_kernel.py"], "pytest_gpu", 300)
    save()
    REPORT["bench"] = run([py, "-m", "sparsity_lab", "bench", "sparse_training", "--out",
                           str(OUT / "sparse_training_gpu.json")], "sparse_training_bench", 420)
    save()
    REPORT["bsr_cluster"] = run([py, me, "bsr_cluster"], "bsr_cluster", 200)
    save()
    REPORT["hot_path"] = run([py, me, "hot_path"], "hot_path", 120)
    REPORT["wall_s"] = time.time() - T0
    save()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(sys.argv[1])
    else:
        main()
