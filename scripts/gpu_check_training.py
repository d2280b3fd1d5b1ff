"""One GPU call for 2:4 training (issue 9) and a re-check of the int8 kernels (issue 8):

1. probe, in a subprocess (a bad cuSPARSELt plan can poison the CUDA context), that our binding reads a
   column-major x in place (x_order=COL): correct against dense, and timed against the copy-to-row-major route;
2. the sparse-training benchmark (recorded file written under $OUT), with column-major reading on, then off;
3. the GPU-marked tests of every test file, and the int8 2:4 benchmark re-recorded.

    OUT=/tmp/out python scripts/gpu_check_training.py
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


def log(*parts: object) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *parts, flush=True)


def probe() -> dict:
    """Column-major x through Semi24Weight.linear: error against dense and time against a row-major copy."""
    import torch
    import torch.nn.functional as F

    from sparsity_lab.semi24 import cusparselt
    from sparsity_lab.timing import loop_ms
    from sparsity_lab.checks import relative_error
    from sparsity_lab.semi24.matmul import prune24

    report = {}
    for search in (False, True):
        cusparselt.SEARCH_COLUMN_MAJOR_X = search
        cusparselt.clear_plans()
        for dtype in (torch.float16, torch.bfloat16):
            for m, k, n in ((8192, 4096, 1024), (8192, 1024, 4096), (16384, 4096, 1024), (256, 512, 256)):
                w = prune24(torch.randn(n, k, device="cuda", dtype=dtype))
                weight = cusparselt.Semi24Weight.from_dense(w)
                x_col = torch.randn(k, m, device="cuda", dtype=dtype).t()  # (M, K), column-major
                x_row = x_col.contiguous()
                ref = F.linear(x_col.float(), w.float())
                y = weight.linear(x_col)
                err = relative_error(y, ref)
                cusparselt.COLUMN_MAJOR_X = False
                y_copy = weight.linear(x_col)
                t_copy = loop_ms(lambda weight=weight, x=x_col: weight.linear(x))
                cusparselt.COLUMN_MAJOR_X = True
                t_col = loop_ms(lambda weight=weight, x=x_col: weight.linear(x))
                t_row = loop_ms(lambda weight=weight, x=x_row: weight.linear(x))
                t_dense = loop_ms(lambda x=x_col, w=w: F.linear(x, w))
                key = f"search={search} {dtype} {m}x{k}x{n}"
                report[key] = {"err": err, "err_copy": relative_error(y_copy, ref), "col_ms": t_col,
                               "copy_ms": t_copy, "row_ms": t_row, "dense_col_x_ms": t_dense}
                log(key, report[key])
    return report


def profile() -> None:
    """torch.profiler over a few forward + backward steps of the dense block and the 2:4 "kernels only" and
    "dynamic" blocks (fp16, 8192 tokens): where the time goes, kernel by kernel, and the host's share."""
    import torch

    from sparsity_lab.training.bench import _blocks, _step

    blocks = _blocks(1024, 4096, torch.float16, torch.device("cuda"))
    x = torch.randn(8192, 1024, device="cuda", dtype=torch.float16, requires_grad=True)
    grad = torch.randn(8192, 1024, device="cuda", dtype=torch.float16)
    for variant in ("dense", "kernels only", "dynamic"):
        step = _step(blocks[variant], variant, x, grad)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        print(f"===== {variant}")
        print_profile(step, rows=14, width=60)


def print_profile(step, rows: int, width: int) -> None:
    """torch.profiler over 5 calls of `step`: the table of its ops and kernels by CUDA time."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=width))


def run(command: list[str], name: str, timeout: int, env: dict | None = None) -> int:
    log("$", " ".join(command))
    with open(OUT / f"{name}.log", "w") as handle:
        try:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                                    env={**os.environ, **(env or {})})
            code = result.returncode
        except subprocess.TimeoutExpired:
            code = -999
    tail = (OUT / f"{name}.log").read_text().splitlines()[-12:]
    log(f"{name}: exit {code}\n  " + "\n  ".join(tail))
    return code


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--profile":
        profile()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        (OUT / "probe.json").write_text(json.dumps(probe(), indent=1))
        return
    summary = {}
    summary["probe"] = run([sys.executable, __file__, "--probe"], "probe", 150)
    column_major_ok = summary["probe"] == 0 and all(
        v["err"] < 2e-2 for v in json.loads((OUT / "probe.json").read_text()).values())
    search_ok = column_major_ok and all(
        v["err"] < 2e-2 for k, v in json.loads((OUT / "probe.json").read_text()).items() if "search=True" in k)
    log("column-major x usable:", column_major_ok, "searchable:", search_ok)
    setup = ("import sys, sparsity_lab.semi24.cusparselt as c; c.COLUMN_MAJOR_X = {col}; c.SEARCH_COLUMN_MAJOR_X = {srch}; "
             "from sparsity_lab.training.bench import main; sys.exit(main(sys.argv[1:]))")
    summary["bench"] = run([sys.executable, "-c", setup.format(col=column_major_ok, srch=search_ok),
                            "--out", str(OUT / "sparse_training_gpu.json")], "bench", 200)
    if column_major_ok:
        summary["bench_copy"] = run([sys.executable, "-c", setup.format(col=False, srch=False), "--dtypes",
                                     "float16", "--out", str(OUT / "sparse_training_copy.json")], "bench_copy", 100)
    summary["pytest"] = run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
                             "-m", "gpu", "--continue-on-collection-errors", "tests"], "pytest", 150,
                            {"SPARSITY_LAB_COLUMN_MAJOR_X": str(int(column_major_ok))})
    summary["quant"] = run([sys.executable, "-m", "sparsity_lab", "bench", "quant_sparse", "--out",
                            str(OUT / "quant_sparse_gpu.json")], "quant", 120)
    (OUT / "summary.json").write_text(json.dumps({**summary, "column_major_ok": column_major_ok,
                                                  "search_ok": search_ok}, indent=1))
    log("done", summary)


if __name__ == "__main__":
    main()
