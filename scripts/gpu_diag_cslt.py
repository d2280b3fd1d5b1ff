"""Isolated cuSPARSELt probe (run in a subprocess so a crash cannot poison the caller's CUDA context):

    python scripts/gpu_diag_cslt.py SEARCH LAYOUT DTYPE [--torch] M,K,N [M,K,N ...]

prints one JSON line per shape: our binding's relative error against dense and its median time against cuBLAS
(and, with --torch, PyTorch's 2:4 F.linear and raw torch._cslt_sparse_mm), then a line on cuSPARSELt's pruning.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from sparsity_lab.semi24 import cusparselt
from sparsity_lab.checks import relative_error as relerr
from sparsity_lab.semi24.layout import sparsify

search, layout, dtype_name = sys.argv[1:4]
with_torch = "--torch" in sys.argv
shapes = [tuple(map(int, a.split(","))) for a in sys.argv[4:] if "," in a]
dtype = getattr(torch, dtype_name)




def bench(fn):
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


for m, k, n in shapes:
    out = {"search": search, "layout": layout, "dtype": dtype_name, "shape": [m, k, n]}
    try:
        if dtype == torch.int8:
            x = torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
            w = sparsify(torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8))
        else:
            x = torch.randn(m, k, device="cuda").to(dtype)
            w = sparsify(torch.randn(n, k, device="cuda").to(dtype))
        ref = x.double() @ w.double().t()
        sw = cusparselt.Semi24Weight.from_dense(w, layout=layout)
        t0 = time.time()
        plan = sw.plan_for(x, torch.int32 if dtype == torch.int8 else dtype, layout=layout, search=search)
        torch.cuda.synchronize()
        out["plan_s"] = time.time() - t0
        out["alg"] = [plan.choice.alg_id, plan.choice.split_k, plan.choice.split_k_mode]
        out["timings"] = plan.timings
        y = sw.linear(x, layout=layout)
        torch.cuda.synchronize()
        out["relerr"] = relerr(y, ref)
        if dtype != torch.int8:
            b = torch.randn(n, device="cuda").to(dtype)
            out["bias_relerr"] = relerr(sw.linear(x, bias=b, layout=layout), ref + b.double())
            out["dense_ms"] = bench(lambda x=x, w=w: F.linear(x, w))
        out["ours_ms"] = bench(lambda x=x, sw=sw: sw.linear(x, layout=layout))
        if with_torch and dtype != torch.int8:
            from torch.sparse import to_sparse_semi_structured

            ws = to_sparse_semi_structured(w)
            out["torch_linear_relerr"] = relerr(F.linear(x, ws), ref)
            out["torch_linear_ms"] = bench(lambda x=x, ws=ws: F.linear(x, ws))
            wc = torch._cslt_compress(w)
            out["torch_cslt_raw_ms"] = bench(lambda x=x, wc=wc: torch._cslt_sparse_mm(wc, x.t()))
    except Exception as err:
        out["error"] = repr(err)[:400]
    print("DIAG " + json.dumps(out), flush=True)
if dtype != torch.int8 and shapes:  # cuSPARSELt's own pruning and 2:4 check
    m, k, n = shapes[0]
    extra = {}
    try:
        pruned_by_cslt = cusparselt.Semi24Weight.from_dense(torch.randn(n, k, device="cuda").to(dtype), prune=True,
                                                            layout=layout)
        extra["is_24_pruned"] = pruned_by_cslt.is_24(sparsify(torch.randn(n, k, device="cuda").to(dtype)))
        extra["is_24_random"] = pruned_by_cslt.is_24(torch.randn(n, k, device="cuda").to(dtype))
    except Exception as err:
        extra["error"] = repr(err)[:300]
    print("DIAG2 " + json.dumps(extra), flush=True)
