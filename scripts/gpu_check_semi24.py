"""One GPU call: check every 2:4 piece (binding, layouts, int8, bias, graphs, compressor, Semi24Linear) and time
them, then run the benchmarks. Writes check.json / check.log (and the results files) under $OUT.

    python scripts/gpu_check_semi24.py [--full] [--structure]
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsity_lab.checks import relative_error as relerr

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
LOG = open(OUT / "check.log", "w")  # noqa: SIM115
REPORT: dict = {}
T0 = time.time()


def log(*parts: object) -> None:
    line = f"[{time.time() - T0:6.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.write(line + "\n")
    LOG.flush()


def section(name: str):
    def wrap(fn):
        try:
            REPORT[name] = fn()
            log(f"== {name}: ok")
        except Exception as err:  # keep going: one broken piece must not hide the others
            REPORT[name] = {"error": repr(err)[:500], "trace": traceback.format_exc()[-2000:]}
            log(f"== {name}: FAILED {err!r}\n{traceback.format_exc()}")
        (OUT / "check.json").write_text(json.dumps(REPORT, indent=1, default=str))
        return fn
    return wrap




@section("environment")
def _env():
    from sparsity_lab.semi24 import cusparselt

    cands = [str(p) for p in cusparselt.library_candidates()]
    cusparselt.load_library()
    return {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "candidates": cands,
            "loaded": cusparselt.library_path(), "version": cusparselt.version(),
            "torch_cusparselt": torch.backends.cusparselt.version(),
            "triton": __import__("triton").__version__}


@section("diagnose_binding")
def _diagnose():
    """Each binding variant in its own process (a crash there cannot poison this one); keep the fastest correct."""
    import math
    import subprocess

    from sparsity_lab.semi24 import cusparselt

    shapes = ["16,4096,4096", "4096,4096,4096", "8192,8192,8192"]
    # call 3 showed: D-col and sparse-B are slow or crash for some algorithm ids; D-row is the fast layout
    variants = [("library", "W.xT/D-row"), ("time", "W.xT/D-row")]
    results = []
    for index, (search, layout) in enumerate(variants):
        args = [sys.executable, "scripts/gpu_diag_cslt.py", search, layout, "float16", *shapes]
        if index == 0:
            args.append("--torch")
        proc = subprocess.run(args, capture_output=True, text=True, timeout=150)
        rows = [json.loads(ln[5:]) for ln in proc.stdout.splitlines() if ln.startswith("DIAG ")]
        extra = [json.loads(ln[6:]) for ln in proc.stdout.splitlines() if ln.startswith("DIAG2 ")]
        entry = {"search": search, "layout": layout, "rc": proc.returncode, "rows": rows,
                 "prune": extra[0] if extra else None}
        if proc.returncode != 0:
            entry["crash"] = (proc.stdout + proc.stderr)[-800:]
        good = len(rows) == len(shapes) and all(r.get("relerr", 1) < 1e-2 and r.get("bias_relerr", 1) < 1e-2
                                                for r in rows)
        entry["ok"] = good and proc.returncode == 0
        if entry["ok"]:
            entry["geomean_speedup"] = math.exp(sum(math.log(r["dense_ms"] / r["ours_ms"]) for r in rows) / len(rows))
        log("diag", entry)
        results.append(entry)
    for dtype in ():
        proc = subprocess.run([sys.executable, "scripts/gpu_diag_cslt.py", "default", "W.xT/D-row", dtype,
                               "4096,4096,4096"], capture_output=True, text=True, timeout=150)
        results.append({"dtype": dtype, "out": (proc.stdout + proc.stderr)[-1500:], "rc": proc.returncode})
        log("diag", results[-1])
    ok = [e for e in results if e.get("ok")]
    if ok:
        best = max(ok, key=lambda e: e["geomean_speedup"])
        cusparselt.SEARCH, cusparselt.DEFAULT_LAYOUT = best["search"], best["layout"]
        log("chosen", best["search"], best["layout"], best["geomean_speedup"])
    return {"variants": results, "chosen": [cusparselt.SEARCH, cusparselt.DEFAULT_LAYOUT]}


@section("bias_graph_int8")
def _bias_graph_int8():
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.semi24.layout import sparsify

    out = {}
    x = torch.randn(256, 1024, device="cuda", dtype=torch.float16)
    w = sparsify(torch.randn(512, 1024, device="cuda", dtype=torch.float16))
    b = torch.randn(512, device="cuda", dtype=torch.float16)
    sw = Semi24Weight.from_dense(w)
    out["bias_relerr"] = relerr(sw.linear(x, bias=b), x.float() @ w.float().t() + b.float())
    # graph capture and replay with fresh inputs copied in
    static_x = x.clone()
    sw.linear(static_x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = sw.linear(static_x)
    x2 = torch.randn_like(x)
    static_x.copy_(x2)
    static_y.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    out["graph_relerr"] = relerr(static_y, x2.float() @ w.float().t())
    for m, k, n in ((256, 1024, 512), (4096, 4096, 4096)):
        xi = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
        wi = sparsify(torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8))
        ref = xi.double() @ wi.double().t()
        swi = Semi24Weight.from_dense(wi)
        for od, alpha in ((torch.int32, 1.0), (torch.bfloat16, 0.5), (torch.float16, 0.01), (torch.int8, 0.05)):
            key = f"int8-{m}-{od}"
            try:
                y = swi.linear(xi, out_dtype=od, alpha=alpha)
                exp = ref * alpha
                if od == torch.int8:
                    exp = exp.round().clamp(-128, 127)
                out[key] = relerr(y, exp)
            except Exception as err:
                out[key] = repr(err)[:200]
    log(out)
    return out


@section("sparse_linear")
def _sparse_linear():
    from torch import nn

    from sparsity_lab.semi24.layer import Dispatcher, swap_linears

    model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024), nn.Linear(1024, 10)).cuda().half()
    x = torch.randn(8, 64, 1024, device="cuda", dtype=torch.float16)
    d = Dispatcher()
    report = swap_linears(model, dispatcher=d)
    # reference: same pruned weights, dense
    def dense_forward(inp):
        h = inp
        for layer in model:
            h = F.linear(h, layer.weight, layer.bias) if hasattr(layer, "weight") else layer(h)
        return h
    y = model(x)
    out = {"report": report, "relerr": relerr(y, dense_forward(x).float()),
           "reasons": [getattr(layer, "last_reason", None) for layer in model], "decisions": d.table()}
    for backend in ("torch_cslt",):
        from sparsity_lab.semi24.layer import Semi24Linear

        lin = nn.Linear(4096, 4096).cuda().half()
        sl = Semi24Linear.from_linear(lin, backend=backend, dispatcher=None)
        xx = torch.randn(128, 4096, device="cuda", dtype=torch.float16)
        out[f"{backend}_relerr"] = relerr(sl(xx), F.linear(xx, sl.weight, sl.bias).float())
    log(out)
    return out


@section("paths")
def _paths():
    from sparsity_lab.semi24.matmul import PATHS, check_path, unavailable_reason

    w = torch.randn(1024, 2048, device="cuda", dtype=torch.float16)
    x = torch.randn(512, 2048, device="cuda", dtype=torch.float16)
    b = torch.randn(1024, device="cuda", dtype=torch.float16)
    out = {}
    for path in PATHS:
        reason = unavailable_reason(path, "cuda")
        out[path] = {"unavailable": reason} if reason else {"relerr": check_path(path, w, x, b)}
    log(out)
    return out


if __name__ == "__main__":
    full = "--full" in sys.argv
    if "--structure" in sys.argv or full:
        @section("gpu_structure")
        def _structure():
            from sparsity_lab.gpu import bench as gpu_structure
            from sparsity_lab.course.results import save_results

            figures = gpu_structure.run(log=log)
            save_results("gpu_structure", figures, OUT / "gpu_structure.json")
            return figures

    @section("bench")
    def _bench():
        from sparsity_lab.semi24 import bench as semi24
        from sparsity_lab.course.results import save_results

        figures = semi24.run(quick=not full, dtypes=(torch.float16, torch.bfloat16) if full else (torch.float16,),
                             log=log, partial=OUT / "semi24_gpu.json")
        save_results("semi24_gpu", figures, OUT / "semi24_gpu.json")
        return figures["summary"]

    log("done")
