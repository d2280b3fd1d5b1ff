"""Isolated cuSPARSELt probe (run in a subprocess so a crash cannot poison the caller's CUDA context):

    python scripts/gpu_diag_cslt.py SEARCH LAYOUT DTYPE M K N

prints one JSON line: the relative error of our binding against dense, of torch._cslt_sparse_mm with the same
operand layout, whether our compressed bytes equal torch._cslt_compress's, and the plan's algorithm.
"""

import json
import sys
import time

import torch

from sparsity_lab import cusparselt
from sparsity_lab.kernels.semi24_compress import prune24_reference

search, layout, dtype_name, m, k, n = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
dtype = getattr(torch, dtype_name)
out = {"search": search, "layout": layout, "dtype": dtype_name, "shape": [m, k, n]}


def relerr(y, ref):
    return float((y.double() - ref.double()).norm() / ref.double().norm())


try:
    x = torch.randn(m, k, device="cuda").to(dtype) if dtype != torch.int8 else \
        torch.randint(-8, 8, (m, k), device="cuda", dtype=torch.int8)
    w = torch.randn(n, k, device="cuda").to(dtype) if dtype != torch.int8 else \
        torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    w = prune24_reference(w)
    ref = x.double() @ w.double().t()
    sw = cusparselt.Semi24Weight.from_dense(w)
    torch.cuda.synchronize()
    out["compressed_bytes"] = sw.compressed.numel()
    try:
        tc = torch._cslt_compress(w)
        tb = tc.view(torch.uint8)[: sw.compressed.numel()]
        out["compressed_equal_torch"] = bool(torch.equal(tb, sw.compressed))
        tr = torch._cslt_sparse_mm(tc, x.t(), transpose_result=True,
                                   out_dtype=torch.int32 if dtype == torch.int8 else None)
        tr = tr if tr.shape == (m, n) else tr.t()
        out["torch_cslt_relerr"] = relerr(tr, ref)
    except Exception as err:
        out["torch_error"] = repr(err)[:300]
    t0 = time.time()
    plan = sw.plan_for(x, torch.int32 if dtype == torch.int8 else dtype, layout=layout, search=search)
    torch.cuda.synchronize()
    out["plan_s"] = time.time() - t0
    out["alg"] = [plan.choice.alg_id, plan.choice.split_k]
    out["timings"] = plan.timings
    y = sw.linear(x, layout=layout)
    torch.cuda.synchronize()
    out["relerr"] = relerr(y, ref)
except Exception as err:
    out["error"] = repr(err)[:400]
print("DIAG " + json.dumps(out), flush=True)
if "relerr" in out and dtype != torch.int8:  # cuSPARSELt's own pruning and 2:4 check
    extra = {}
    try:
        pruned_by_cslt = cusparselt.Semi24Weight.from_dense(torch.randn(n, k, device="cuda").to(dtype), prune=True)
        extra["is_24_pruned"] = pruned_by_cslt.is_24(w)
        extra["is_24_random"] = pruned_by_cslt.is_24(torch.randn(n, k, device="cuda").to(dtype))
    except Exception as err:
        extra["error"] = repr(err)[:300]
    print("DIAG2 " + json.dumps(extra), flush=True)
