"""One GPU call (2026-12-02, second session): value slots for fixed-mask 2:4 training (issue 9), a cluster
(num_ctas = 2) probe of the block-sparse kernel (issue 7), and the decode host cost on this host (issue 6).

1. value slots on cuSPARSELt (subprocess: a bad buffer write could poison the context): learnt and verified for
   the MLP block's weights and their transposes, fp16 / bf16; gather against cuSPARSELt's compress, timed;
2. GPU tests of the training, value-slot and cuSPARSELt files;
3. the sparse-training benchmark at 8192 .. 65536 tokens (recorded file under $OUT);
4. block-sparse 8192^2 fp16 at 64/90% and 64/50%: the recorded tilings against the same with num_ctas = 2
   (subprocess, timeout), each checked against a float32 reference, against cuBLAS in the same run;
5. the eager hot path at M = 16 (bare ctypes call, our linear, dense) against CUDA-graph replay.

    OUT=/tmp/out python scripts/gpu_check_value_slots.py          # call 6
    OUT=/tmp/out python scripts/gpu_check_value_slots.py call7    # call 7: diagnosis, profile, bench, hot path
    OUT=/tmp/out python scripts/gpu_check_value_slots.py call8    # call 8: diagnosis, block-sparse heatmap (H200)
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

    from sparsity_lab.timing import loop_ms
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.training.masks import _masked, transposable_mask

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

    from sparsity_lab.block.bench import random_block_sparse
    from sparsity_lab.block.layer import BlockSparseMatrix
    from sparsity_lab.checks import relative_error
    from sparsity_lab.block import kernel as K

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


def slots_diagnosis() -> dict:
    """Call 7: why a gathered (4096, 1024) buffer differed from cuSPARSELt's compress in call 6: determinism of
    compress, where the bytes differ, which values, and what a matmul on each buffer gives."""
    import torch

    from sparsity_lab.checks import relative_error
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.training.masks import _masked, transposable_mask

    rows = {}
    for dtype in (torch.float16, torch.bfloat16):
        for shape in ((4096, 1024), (1024, 4096)):
            for trial in range(2):
                w = torch.randn(shape, device="cuda", dtype=dtype)
                mask = transposable_mask(w)
                ws = _masked(w, mask)
                a, b = Semi24Weight.from_dense(ws), Semi24Weight.from_dense(ws)
                row = {"fresh_equal": bool(torch.equal(a.compressed, b.compressed))}
                a.recompress(ws)
                row["recompress_equal"] = bool(torch.equal(a.compressed, b.compressed))
                slots = a.learn_value_slots(mask)
                for label, w2 in (("randn", torch.randn_like(w)),
                                  ("randn |x|>=0.5", torch.randn_like(w).clamp(min=-8, max=8)),
                                  ("uniform 0.5..1.5", torch.rand_like(w) + 0.5)):
                    if label == "randn |x|>=0.5":
                        w2 = torch.where(w2.abs() < 0.5, torch.where(w2 < 0, -0.5, 0.5), w2.float())
                    w2 = w2.to(dtype)
                    m2 = _masked(w2, mask)
                    slots.write(a.compressed, w2)
                    got = a.compressed.clone()
                    b.recompress(m2)
                    exp = b.compressed.clone()
                    diff = (got != exp).nonzero().squeeze(1)
                    value_bytes = slots.sources.numel() * 2
                    info = {"n_diff_bytes": diff.numel(), "in_values": int((diff < value_bytes).sum()),
                            "first": diff[:8].tolist()}
                    if diff.numel():
                        elems = torch.unique(diff[diff < value_bytes] // 2)[:6]
                        gv, ev = got.view(dtype)[elems].float(), exp.view(dtype)[elems].float()
                        src = slots.sources.long()[elems]
                        info.update(got=gv.tolist(), exp=ev.tolist(), source=w2.reshape(-1)[src].float().tolist())
                    x = torch.randn(64, shape[1], device="cuda", dtype=dtype)
                    ref = x.float() @ m2.float().T
                    info["err_gather"] = relative_error(a.linear(x), ref)
                    info["err_compress"] = relative_error(b.linear(x), ref)
                    row[label] = info
                key = f"{dtype} {shape} trial {trial}"
                rows[key] = row
                print(key, row, flush=True)
    return rows


def profile_fixed() -> dict:
    """Call 7: torch.profiler over fixed-mask and kernels-only steps (fp16, 8192 tokens)."""
    import torch
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_check_training import print_profile

    from sparsity_lab.timing import loop_ms
    from sparsity_lab.training.bench import _blocks, _step

    blocks = _blocks(1024, 4096, torch.float16, torch.device("cuda"))
    x = torch.randn(8192, 1024, device="cuda", dtype=torch.float16, requires_grad=True)
    grad = torch.randn(8192, 1024, device="cuda", dtype=torch.float16)
    out = {}
    for variant in ("dense", "kernels only", "fixed mask", "dynamic"):
        step = _step(blocks[variant], variant, x, grad)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        out[variant] = {"loop_ms": loop_ms(step, calls=5, trials=15)}
        t = time.perf_counter()
        for _ in range(20):
            step()
        out[variant]["host_ms_per_step"] = (time.perf_counter() - t) * 1e3 / 20
        torch.cuda.synchronize()
        print(f"===== {variant} {out[variant]}")
        print_profile(step, rows=16, width=70)
    return out


def child(name: str) -> None:
    result = {"value_slots": value_slots_probe, "bsr_cluster": bsr_cluster_probe, "hot_path": hot_path,
              "diagnosis": slots_diagnosis, "profile": profile_fixed}[name]()
    print("RESULT", json.dumps(result, default=str), flush=True)  # the parent keeps it from the log


def call7() -> None:
    """The second call: diagnosis, profile, the benchmark again (its steps now redo the per-update work), hot path."""
    py, me = sys.executable, str(Path(__file__).resolve())
    REPORT["diagnosis"] = run([py, me, "diagnosis"], "diagnosis", 150)
    save()
    REPORT["profile"] = run([py, me, "profile"], "profile", 150)
    save()
    REPORT["bench"] = run([py, "-m", "sparsity_lab", "bench", "sparse_training", "--out",
                           str(OUT / "sparse_training_gpu.json")], "sparse_training_bench", 300)
    save()
    REPORT["hot_path"] = run([py, me, "hot_path"], "hot_path", 150)
    REPORT["wall_s"] = time.time() - T0
    save()


def call8() -> None:
    """The third call: the diagnosis again (call 7's crashed on a float32 probe), then the block-sparse heatmap and
    GPU tests on this H200 (scripts/gpu_block_sparse.sh)."""
    py, me = sys.executable, str(Path(__file__).resolve())
    REPORT["diagnosis"] = run([py, me, "diagnosis"], "diagnosis", 150)
    save()
    REPORT["block_sparse"] = run(["bash", "scripts/gpu_block_sparse.sh"], "block_sparse", 330)
    REPORT["wall_s"] = time.time() - T0
    save()


def main() -> None:
    py = sys.executable
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
    os.environ.setdefault("PYTHONPATH", os.getcwd())
    if len(sys.argv) > 1 and sys.argv[1] in ("call7", "call8"):
        {"call7": call7, "call8": call8}[sys.argv[1]]()
    elif len(sys.argv) > 1:
        child(sys.argv[1])
    else:
        main()
