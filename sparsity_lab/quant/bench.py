"""Benchmark: int8 + 2:4 against int8 dense (`torch._int_mm`) and fp16 dense, correctness first.

For each (M tokens, K in, N out) it builds random fp16 activations and a 2:4-pruned fp16 weight, quantizes both
(per token, per channel), then

1. checks: every int8 matmul (dense `torch._int_mm`, each sparse backend) equals the exact integer product, and
   every quantized layer matches the float64 product of its dequantized operands;
2. times, only what passed, with ``triton.testing.do_bench`` (`sparsity_lab.timing.bench_ms`: CUDA events, median
   after warm-up, L2 flushed): the matmul cores (int8 in, int32 out), the same cores back to back and replayed from
   a CUDA graph (no per-call host work: this separates cuSPARSELt's planning cost from its kernel), and whole
   layers (fp16 `F.linear`, `Int8Linear`, `Int8Semi24Linear`: quantize + matmul + rescale).

Targets (eager, matmul cores): int8 2:4 >= 1.9x over int8 dense at 8192^3 and >= 1.3x at 4096^3.
``sparsity-lab bench quant_sparse [--out PATH]`` writes sparsity_lab/recorded/quant_sparse_gpu.json by default;
``--device cpu`` runs tiny shapes through the reference paths (to test this script without a GPU).
Exit status: 0 when every check passed, 1 otherwise (the results file is written either way).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from sparsity_lab._optional import triton_available
from sparsity_lab.checks import relative_error as relerr
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.quant import layers as qs
from sparsity_lab.quant.int8 import dequantize, int8_matmul_reference, quantize_per_channel, quantize_per_token
from sparsity_lab.semi24 import layout as semi24
from sparsity_lab.timing import bench_ms, capture_graph, loop_ms, resolve_device

NAME = "quant_sparse_gpu"
GPU_SHAPES = [(8192, 8192, 8192), (4096, 4096, 4096), (4096, 4096, 14336), (4096, 14336, 4096),
              (16384, 4096, 14336), (512, 4096, 4096)]
CPU_SHAPES = [(48, 64, 32)]
TARGETS = {(8192, 8192, 8192): 1.9, (4096, 4096, 4096): 1.3}
SPARSE_BACKENDS = ("cusparselt", "torch_cslt", "torch_cslt_t")  # ours first; PyTorch's ops to compare
LAYER_RTOL = 2e-3  # fp16 output rounding (2**-11 per entry) on top of exact integer arithmetic


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """'8192x8192x8192,4096x4096x4096' -> [(M, K, N), ...]; raises ValueError naming a bad entry."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"shape {item!r} must be MxKxN with positive integers, e.g. 4096x4096x4096")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsity-lab bench quant_sparse", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cuda (default when present) or cpu (tiny shapes, reference paths)")
    parser.add_argument("--shapes", type=parse_shapes, default=None, help="MxKxN,... (tokens x in x out)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default {RECORDED_DIR / (NAME + '.json')} on a GPU, "
                             "./quant_sparse_cpu.json on the CPU)")
    parser.add_argument("--backends", default=",".join(SPARSE_BACKENDS),
                        help="sparse int8 backends to try, comma-separated (see "
                             "sparsity_lab.quant.layers.SPARSE_INT8_BACKENDS)")
    parser.add_argument("--warmup-ms", type=float, default=25.0, help="warm-up time per measurement")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="measured time per measurement")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph timings")
    return parser


def _approx_equal(out: torch.Tensor, target: torch.Tensor) -> bool:
    """bfloat16 output of an exact product: within bf16 rounding (2**-8 relative) of the float64 target."""
    diff = (out.double() - target).abs()
    return bool((diff <= target.abs() * 2.0**-8 + 1e-6 * float(target.abs().max())).all())


DENSE_CORE = {True: "int8_dense_int_mm", False: "int8_dense_reference"}
DENSE_LAYER = {True: "fp16_dense_linear", False: "float_dense_linear"}
APPROX_CORES = ("int8_24_cslt_bf16out", "int8_24_cslt_alpha_bf16out")


def run_shape(m: int, k: int, n: int, device: torch.device, backends: list[str], args: argparse.Namespace,
              seed: int = 0) -> tuple[dict[str, Any], dict[str, Callable[[], Any]]]:
    """Check then time one shape eagerly; returns its row for the results file and the checked matmul cores
    (for `add_graph_timings`). A backend that raises is recorded under "errors" and left out; a wrong result
    is a failed check."""
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    weight = torch.randn(n, k, device=device, dtype=dtype, generator=gen)
    weight = semi24.sparsify(weight)
    bias = torch.randn(n, device=device, dtype=dtype, generator=gen)
    q_w, s_w = quantize_per_channel(weight.float())
    q_x, s_x = quantize_per_token(x, check_finite=False)
    row: dict[str, Any] = {"M": m, "K": k, "N": n, "dtype": str(dtype).removeprefix("torch."),
                           "checks": {}, "errors": {}, "ms": {}, "b2b_ms": {}, "graph_ms": {}, "speedup": {}}
    checks, errors = row["checks"], row["errors"]

    exact = int8_matmul_reference(q_x, q_w)
    cores: dict[str, Callable[[], Any]] = {}
    q_w_t = q_w.T
    if cuda:
        cores[DENSE_CORE[True]] = lambda: torch._int_mm(q_x, q_w_t)
    else:
        cores[DENSE_CORE[False]] = lambda: int8_matmul_reference(q_x, q_w)
    sparse_ok = []
    raw_packed = None
    for name in backends:
        backend = qs.get_backend(name)
        if not backend.available():
            errors[f"int8_24_{name}"] = "not available on this machine"
            continue
        try:
            packed = backend.compress(q_w)
        except Exception as err:  # a backend that cannot even compress is reported, not fatal
            errors[f"int8_24_{name}"] = repr(err)[:300]
            continue
        cores[f"int8_24_{name}"] = (lambda b=backend, p=packed: b.matmul(p, q_x))
        sparse_ok.append(name)
        if isinstance(packed, qs._CsltWeight) and (packed.n_pad, packed.k_pad) == (n, k) and m % 16 == 0:
            raw_packed = packed.packed
    for key, fn in list(cores.items()):
        try:
            out = fn()
        except Exception as err:
            errors[key] = repr(err)[:300]
            del cores[key]
            continue
        checks[key] = bool(torch.equal(out.to(torch.int32), exact))

    # PyTorch's cuSPARSELt op with bfloat16 output (as in the anchors), plain and with the weight scales fused as
    # cuSPARSELt's per-row alpha: not exact, checked to bf16 rounding, timed for comparison only.
    approx: dict[str, tuple[Callable[[], Any], torch.Tensor]] = {}
    if raw_packed is not None:
        exact_t = exact.T.double()
        approx["int8_24_cslt_bf16out"] = (
            lambda: torch._cslt_sparse_mm(raw_packed, q_x.T, out_dtype=torch.bfloat16), exact_t)
        approx["int8_24_cslt_alpha_bf16out"] = (
            lambda: torch._cslt_sparse_mm(raw_packed, q_x.T, alpha=s_w, out_dtype=torch.bfloat16),
            exact_t * s_w.double()[:, None])
    for key, (fn, target) in approx.items():
        try:
            checks[key] = _approx_equal(fn(), target)
            cores[key] = fn
        except Exception as err:
            errors[key] = repr(err)[:300]
    del exact, approx

    reference = dequantize(q_x, s_x).double() @ dequantize(q_w, s_w).double().T + bias.double()
    float_ref = x.double() @ weight.double().T + bias.double()
    linear = torch.nn.Linear(k, n, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    layers: dict[str, Callable[[], Any]] = {DENSE_LAYER[cuda]: lambda: F.linear(x, weight, bias)}
    int8_layer = qs.Int8Linear.from_linear(linear, fused=False)
    layers["int8_dense_layer"] = lambda: int8_layer(x)
    fused_variants = (False, True) if cuda and triton_available() else (False,)
    if True in fused_variants:
        fused_layer = qs.Int8Linear.from_linear(linear, fused=True)
        layers["int8_dense_layer_fused"] = lambda: fused_layer(x)
    for name in sparse_ok:
        if checks.get(f"int8_24_{name}"):
            for fused in fused_variants:
                layer = qs.Int8Semi24Linear.from_linear(linear, backend=name, fused=fused, prune=False)
                layers[f"int8_24_layer_{name}" + ("_fused" if fused else "")] = (lambda lay=layer: lay(x))
    row["quantization_relerr_vs_float"] = relerr(int8_layer(x), float_ref)
    for key, fn in list(layers.items()):
        if key == DENSE_LAYER[cuda]:
            continue
        try:
            err = relerr(fn(), reference)
        except Exception as error:
            if not key.endswith("_fused"):  # the Triton variants are optional: reported, not failed
                checks[key] = False
            errors[key] = repr(error)[:300]
            del layers[key]
            continue
        row.setdefault("layer_relerr_vs_dequantized", {})[key] = err
        checks[key] = err < LAYER_RTOL
    del reference, float_ref

    with torch.no_grad():
        for key, fn in {**cores, **layers}.items():
            if checks.get(key, True):
                row["ms"][key] = bench_ms(fn, device, args.warmup_ms, args.rep_ms)
                if cuda and key in cores:  # back to back, no flush: where host work (planning) outlasts the kernel
                    row["b2b_ms"][key] = loop_ms(fn, calls=50, trials=1)
    add_speedups(row)
    row["correct"] = all(checks.values()) and any(key.startswith("int8_24_") for key in checks)
    return row, {key: fn for key, fn in cores.items() if checks.get(key)}


def add_graph_timings(row: dict[str, Any], cores: dict[str, Callable[[], Any]], args: argparse.Namespace) -> None:
    """Time the checked cores replayed from CUDA graphs (no per-call host work), then refresh the speedups."""
    device = torch.device("cuda")
    with torch.no_grad():
        for key, fn in cores.items():
            try:
                row["graph_ms"][key] = bench_ms(capture_graph(fn)[0].replay, device, args.warmup_ms, args.rep_ms)
            except Exception as err:
                row["errors"][f"graph_{key}"] = repr(err)[:300]
    add_speedups(row)


def add_speedups(row: dict[str, Any]) -> None:
    """Speedups of a row from its timings: the best exact (int32-out) sparse core over the int8 dense core (median per
    call, and also back-to-back and from graphs); the bf16-out cores likewise; the best int8 2:4 layer over the fp16
    and int8 dense layers."""
    ms, graph, b2b, speedup = row["ms"], row["graph_ms"], row.get("b2b_ms", {}), row["speedup"]
    dense_core = next((key for key in DENSE_CORE.values() if key in ms), None)
    dense_layer = next((key for key in DENSE_LAYER.values() if key in ms), None)
    exact_cores = {key: t for key, t in ms.items()
                   if key.startswith("int8_24_") and "layer" not in key and key not in APPROX_CORES}
    approx_cores = {key: t for key, t in ms.items() if key in APPROX_CORES}
    if dense_core:
        for label, group in (("core_int8_24", exact_cores), ("core_int8_24_bf16out", approx_cores)):
            if not group:
                continue
            best = min(group, key=group.get)
            row["best_" + label] = best
            speedup[label + "_vs_int8_dense"] = ms[dense_core] / group[best]
            for prefix, times in (("graph_", graph), ("b2b_", b2b)):
                if dense_core in times and best in times:
                    speedup[prefix + label + "_vs_int8_dense"] = times[dense_core] / times[best]
        # every exact sparse core on its own (ours and PyTorch's side by side), eager / back-to-back / graph
        row["speedup_by_backend"] = {
            key: {kind: times[dense_core] / times[key]
                  for kind, times in (("eager", ms), ("b2b", b2b), ("graph", graph))
                  if dense_core in times and key in times}
            for key in exact_cores}
    sparse_layers = {key: t for key, t in ms.items() if key.startswith("int8_24_layer_")}
    int8_layers = {key: t for key, t in ms.items() if key.startswith("int8_dense_layer")}
    if sparse_layers:
        best_layer = min(sparse_layers, key=sparse_layers.get)
        row["best_layer_int8_24"] = best_layer
        if dense_layer:
            speedup["layer_int8_24_vs_float_dense"] = ms[dense_layer] / ms[best_layer]
        if int8_layers:
            speedup["layer_int8_24_vs_int8_dense"] = min(int8_layers.values()) / ms[best_layer]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The target verdicts: eager int8 2:4 core speedup over int8 dense at the shapes that have a target, on the
    exact int32-out cores (or, where none ran, the bf16-out ones; "basis" says which)."""
    verdicts = []
    for row in rows:
        target = TARGETS.get((row["M"], row["K"], row["N"]))
        if target is None:
            continue
        basis, backend = "int32 out", row.get("best_core_int8_24")
        speedup = row["speedup"].get("core_int8_24_vs_int8_dense")
        if speedup is None and "core_int8_24_bf16out_vs_int8_dense" in row["speedup"]:
            basis, backend = "bf16 out", row.get("best_core_int8_24_bf16out")
            speedup = row["speedup"]["core_int8_24_bf16out_vs_int8_dense"]
        verdicts.append({"shape": f"{row['M']}x{row['K']}x{row['N']}", "target": target, "speedup": speedup,
                         "basis": basis, "backend": backend, "met": speedup is not None and speedup >= target})
    return verdicts


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the timings (ms) and speedups, one line per shape and method."""
    lines = []
    for row in rows:
        lines.append(f"M={row['M']} K={row['K']} N={row['N']}  correct={row['correct']}")
        for key, t in row["ms"].items():
            extra = "".join(f"   {label} {row[field][key]:9.4f} ms" for label, field in
                            (("back-to-back", "b2b_ms"), ("graph", "graph_ms")) if key in row.get(field, {}))
            lines.append(f"  {key:<36} {t:9.4f} ms{extra}")
        for key, s in row["speedup"].items():
            lines.append(f"  {key:<36} {s:9.2f}x")
        for key, err in row["errors"].items():
            lines.append(f"  ! {key}: {err}")
    return "\n".join(lines)


def figures_of(rows: list[dict[str, Any]], shapes: list[tuple[int, int, int]], backends: list[str],
               args: argparse.Namespace, cuda: bool, started: float) -> dict[str, Any]:
    """The figures block of the results file."""
    timer = ("triton.testing.do_bench: median of per-call CUDA-event timings after warm-up, L2 flushed between "
             "calls" if cuda else "median of per-call perf_counter timings after warm-up")
    return {
        "config": {"shapes": [list(s) for s in shapes], "sparse_backends": backends, "timer": timer,
                   "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "graphs": cuda and not args.no_graphs,
                   "layer_rtol": LAYER_RTOL},
        "rows": rows,
        "targets": summarize(rows),
        "all_correct": all(r["correct"] for r in rows),
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    shapes = args.shapes or (GPU_SHAPES if cuda else CPU_SHAPES)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in qs.SPARSE_INT8_BACKENDS]
    if unknown:
        print(f"unknown sparse backends {unknown}; registered: {sorted(qs.SPARSE_INT8_BACKENDS)}")
        return 2
    if not cuda:
        backends = ["reference"]
    name = NAME if cuda else "quant_sparse_cpu"
    out = args.out or (RECORDED_DIR / f"{NAME}.json" if cuda else Path("quant_sparse_cpu.json"))
    started = time.perf_counter()
    environment = record_environment(device)  # the device measured on (a --device cpu run on a GPU box says CPU)
    rows, graph_jobs = [], []
    for m, k, n in shapes:
        row, cores = run_shape(m, k, n, device, backends, args)
        rows.append(row)
        if cuda and not args.no_graphs:
            graph_jobs.append((row, cores))
        print(format_table([row]), flush=True)
    save_results(name, figures_of(rows, shapes, backends, args, cuda, started), out, environment)  # eager: safe
    for row, cores in graph_jobs:  # graphs last: a capture that fails cannot spoil the eager numbers
        add_graph_timings(row, cores, args)
    del graph_jobs
    figures = figures_of(rows, shapes, backends, args, cuda, started)
    path = save_results(name, figures, out, environment)
    if cuda and not args.no_graphs:
        print(format_table(rows))
    for verdict in figures["targets"]:
        speedup = "n/a" if verdict["speedup"] is None else f"{verdict['speedup']:.2f}x"
        print(f"target {verdict['shape']}: {speedup} ({verdict['basis']}, goal >= {verdict['target']}x) "
              f"met={verdict['met']}")
    print(f"all correct: {figures['all_correct']}; wrote {path} in {figures['wall_s']:.1f} s")
    return 0 if figures["all_correct"] else 1
