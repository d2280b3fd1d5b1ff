"""One GPU call: the eager hot path of our cuSPARSELt binding and Semi24Linear against CUDA-graph replay (host cost
broken down), GraphedCall for decode, then the int8 2:4 benchmark through our binding and the GPU tests.
Writes hotpath.json / hotpath.log (and quant_sparse_gpu.json, quant.log, pytest.log) under $OUT.

    python scripts/gpu_check_hotpath.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsity_lab import timing as _timing
from sparsity_lab.checks import relative_error as relerr

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
LOG = open(OUT / "hotpath.log", "w")  # noqa: SIM115
REPORT: dict = {}
T0 = time.time()


def log(*parts: object) -> None:
    line = f"[{time.time() - T0:6.1f}s] " + " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.write(line + "\n")
    LOG.flush()


def section(name):
    def wrap(fn):
        try:
            REPORT[name] = fn()
            log(f"== {name}: ok")
        except Exception as err:
            REPORT[name] = {"error": repr(err)[:500], "trace": traceback.format_exc()[-2000:]}
            log(f"== {name}: FAILED {err!r}\n{traceback.format_exc()}")
        (OUT / "hotpath.json").write_text(json.dumps(REPORT, indent=1, default=str))
        return fn
    return wrap


def loop_ms(fn):
    return _timing.loop_ms(fn, calls=50)


def graph_ms(fn):
    return _timing.graph_ms(fn, calls=50)


def host_us(fn, calls=2000):
    return _timing.host_us(fn, calls=calls, trials=5)


@section("environment")
def _env():
    from sparsity_lab.semi24 import cusparselt

    cusparselt.load_library()
    return {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "cusparselt": cusparselt.version(),
            "loaded": cusparselt.library_path(), "python": sys.version.split()[0], "cpu": os.cpu_count()}


@section("correctness")
def _correct():
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.semi24.matmul import prune24
    from sparsity_lab.semi24.layer import GraphedCall, Semi24Linear

    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        for m in (16, 128, 200):
            w = prune24(torch.randn(1024, 512, device="cuda", dtype=dtype))
            x = torch.randn(m, 512, device="cuda", dtype=dtype)
            b = torch.randn(1024, device="cuda", dtype=dtype)
            ws = Semi24Weight.from_dense(w)
            ref = x.double() @ w.double().t()
            y = ws.linear(x)
            y2 = ws.linear(x)
            yb = ws.linear(x, bias=b)
            ya = ws.linear(x, alpha=0.5)
            xt = torch.randn(512, m, device="cuda", dtype=dtype).t()  # non-contiguous input
            out[f"{dtype}-{m}"] = {"relerr": relerr(y, ref), "repeat_equal": bool(torch.equal(y, y2)),
                                   "bias": relerr(yb, ref + b.double()), "alpha": relerr(ya, 0.5 * ref),
                                   "noncontig": relerr(ws.linear(xt), xt.double() @ w.double().t()),
                                   "shape": list(y.shape), "stride": list(y.stride())}
    wi = prune24(torch.randint(-100, 100, (256, 256), device="cuda", dtype=torch.int8))
    xi = torch.randint(-100, 100, (64, 256), device="cuda", dtype=torch.int8)
    yi = Semi24Weight.from_dense(wi).linear(xi, out_dtype=torch.int32)
    out["int8_exact"] = bool(torch.equal(yi.long().cpu(), xi.long().cpu() @ wi.long().cpu().t()))
    layer = Semi24Linear(torch.randn(1024, 512, device="cuda", dtype=torch.float16),
                         torch.randn(1024, device="cuda", dtype=torch.float16), dispatcher=None)
    x = torch.randn(2, 8, 512, device="cuda", dtype=torch.float16)
    ref = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    out["sparse_linear_3d"] = relerr(layer(x), ref)
    out["sparse_linear_3d_again"] = relerr(layer(x), ref)
    graphed = GraphedCall(layer, x)
    x2 = torch.randn_like(x)
    out["graphed"] = relerr(graphed(x2).clone(), F.linear(x2.double(), layer.weight.double(), layer.bias.double()))
    log(json.dumps(out))
    return out


def shape_row(m, k, n, dtype=torch.float16):
    from sparsity_lab.semi24 import cusparselt as c
    from sparsity_lab.semi24.cusparselt import Semi24Weight
    from sparsity_lab.semi24.matmul import prune24
    from sparsity_lab.semi24.layer import Semi24Linear

    w = prune24(torch.randn(n, k, device="cuda", dtype=dtype))
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    ws = Semi24Weight.from_dense(w)
    y = ws.linear(x)
    call = next(iter(ws._calls.values()))
    out = call.like.new_empty_strided(call.out_shape, call.out_stride)
    xp, op = x.data_ptr(), out.data_ptr()
    stream = c._current_raw_stream(0)
    call.streams[0] = stream

    def raw():  # the floor from Python: the one ctypes call, every argument ready, output pre-allocated
        call.fn(call.handle, call.plan, call.alpha_ref, call.weight, xp, call.beta_ref, op, op, call.workspace,
                call.streams, 1)

    layer = Semi24Linear(w, None, dispatcher=None, prune=False)
    layer(x)
    row = {"M": m, "K": k, "N": n, "dtype": str(dtype).removeprefix("torch.")}
    fns = {"ours": lambda: ws.linear(x), "raw_ctypes": raw, "sparse_linear": lambda: layer(x),
           "dense": lambda: F.linear(x, w)}
    for name, fn in fns.items():
        row[f"{name}_loop_ms"] = loop_ms(fn)
        row[f"{name}_graph_ms"] = graph_ms(fn) if name != "raw_ctypes" else None
        row[f"{name}_host_us"] = host_us(fn, calls=100 if m * k * n >= 4096**3 else 2000)
    row["raw_ctypes_graph_ms"] = row["ours_graph_ms"]
    for name in fns:
        row[f"{name}_eager_over_graph"] = row[f"{name}_loop_ms"] / row[f"{name}_graph_ms"]
    if m <= 128:
        row["empty_strided_host_us"] = host_us(lambda: torch.empty_strided(call.out_shape, call.out_stride,
                                                                        dtype=call.like.dtype, device="cuda"))
        row["new_empty_strided_host_us"] = host_us(lambda: call.like.new_empty_strided(call.out_shape,
                                                                                       call.out_stride))
        row["raw_stream_host_us"] = host_us(lambda: c._current_raw_stream(0))
        row["torch_stream_host_us"] = host_us(lambda: torch.cuda.current_stream().cuda_stream)
    del y
    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return row


@section("hot_path")
def _hot():
    rows = []
    for shape in [(16, 4096, 4096), (128, 4096, 4096), (16, 4096, 14336), (16, 14336, 4096),
                  (4096, 4096, 4096), (8192, 8192, 8192)]:
        rows.append(shape_row(*shape))
    rows.append(shape_row(16, 4096, 4096, torch.bfloat16))
    return rows


@section("decode_model")
def _decode():
    """A Llama-like MLP block stack (4 blocks, 4096 <-> 14336), M = 16 tokens: eager vs capture() replay, ours vs
    dense, dispatcher on."""
    from sparsity_lab.semi24.layer import Dispatcher, capture, swap_linears

    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(4096, 14336, bias=False)
            self.down = torch.nn.Linear(14336, 4096, bias=False)

        def forward(self, x):
            return x + self.down(F.gelu(self.up(x)))

    dense = torch.nn.Sequential(*[Block() for _ in range(4)]).cuda().half().eval()
    import copy

    sparse = copy.deepcopy(dense)
    dispatcher = Dispatcher()
    swap_linears(sparse, dispatcher=dispatcher)
    out = {}
    for m in (16, 128):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            sparse(x)
            for name, model in (("dense", dense), ("sparse", sparse)):
                out[f"{name}_{m}_eager_ms"] = loop_ms(lambda model=model, x=x: model(x), calls=20)
                graphed = capture(model, x)
                out[f"{name}_{m}_capture_ms"] = loop_ms(lambda g=graphed, x=x: g(x), calls=20)
                out[f"{name}_{m}_host_us"] = host_us(lambda model=model, x=x: model(x), calls=200)
    out["decisions"] = dispatcher.table()
    log(json.dumps(out, default=str))
    return out


@section("quant_bench")
def _quant():
    cmd = [sys.executable, "-c", "import sys; from sparsity_lab.quant.bench import main; "
           "sys.exit(main(sys.argv[1:]))", "--out", str(OUT / "quant_sparse_gpu.json")]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=165)
    (OUT / "quant.log").write_text(proc.stdout[-60000:] + "\nSTDERR\n" + proc.stderr[-20000:])
    log(proc.stdout[-3000:])
    return {"rc": proc.returncode, "wall_s": time.time() - t}


@section("pytest")
def _pytest():
    remaining = 285 - (time.time() - T0)
    if remaining < 30:
        return {"skipped": f"{remaining:.0f} s left"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "tests/test_cusparselt.py", "tests/test_sparse_linear.py", "tests/test_quant_sparse.py",
                           "tests/test_int8_quant_kernels.py", "tests/test_quantization.py",
                           "tests/test_bench_semi24.py"],
                          capture_output=True, text=True, timeout=remaining - 5)
    (OUT / "pytest.log").write_text(proc.stdout[-30000:] + proc.stderr[-5000:])
    log(proc.stdout[-1500:])
    return {"rc": proc.returncode, "tail": proc.stdout[-300:]}
