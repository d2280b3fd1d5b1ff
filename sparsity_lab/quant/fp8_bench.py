"""Benchmark: FP8 2:4 layers against bfloat16 dense, FP8 dense and torchao's FP8 2:4, whole layers, eager and
compiled, correctness first.

For each (M tokens, K in, N out): random bfloat16 activations, a 2:4-pruned bfloat16 weight and a bias. Variants,
each a whole layer (the activations' quantization included):

- ``bf16 dense``: ``F.linear`` -- the baseline of every speed-up;
- ``fp8 dense torch``: PyTorch's own FP8 path, eager per-token quantization and ``torch._scaled_mm`` with rowwise
  scales (what FP8 serving does without sparsity);
- ``ours fp8 dense``: `Fp8Linear` (our Triton quantize, then the same ``torch._scaled_mm``);
- ``ours fp8 2:4``: `Fp8Semi24Linear` (Triton quantize, cuSPARSELt FP8 2:4, Triton rescale writing y
  row-major);
- ``torchao fp8 dense`` / ``torchao fp8 2:4``: torchao's ``Float8DynamicActivationFloat8WeightConfig`` (rowwise),
  PLAIN and SPARSE_CUTLASS packing, where torchao is installed;

and, eager only, ``ours fp8 2:4 matmul``: the cuSPARSELt call alone. Every variant is first checked against the
float64 product of its own FP8 operands (or, for torchao's, the bfloat16 layer within FP8 error); each is timed
eager and under ``torch.compile`` with ``triton.testing.do_bench`` (`sparsity_lab.timing.bench_ms`).

Targets on an H200: ours fp8 2:4 >= 2.2x over bf16 dense at 8192^3 and at 16384 x 4096 -> 14336, >= 1.3x over
fp8 dense torch, ahead of torchao's fp8 2:4, eager and compiled.
``sparsity-lab bench fp8 [--out PATH]`` writes sparsity_lab/recorded/fp8_gpu.json by default; ``--device cpu``
runs a tiny shape through the reference paths (to test this script without a GPU).
Exit status: 0 when every check passed, 1 otherwise (the results file is written either way).
"""

from __future__ import annotations

import argparse
import copy
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.quant import fp8
from sparsity_lab.semi24 import layout
from sparsity_lab.timing import bench_ms, resolve_device

NAME = "fp8_gpu"
GPU_SHAPES = [(8192, 8192, 8192), (16384, 4096, 14336), (16384, 14336, 4096), (4096, 4096, 4096),
              (1024, 4096, 14336)]
CPU_SHAPES = [(32, 64, 96)]
TARGETS = {"bf16 dense": 2.2, "fp8 dense torch": 1.3}  # ours fp8 2:4 over these, at the two targets' shapes
TARGET_SHAPES = [(8192, 8192, 8192), (16384, 4096, 14336)]
EXACT_TOLERANCE = 1e-2  # bfloat16 outputs (and D) of an exact FP8 product: a few roundings of 2**-8
FP8_TOLERANCE = 0.08  # e4m3 on both operands, against the bfloat16 layer


def torch_fp8_dense(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PyTorch's own FP8 layer: per-token scales and quantization in plain torch ops, ``torch._scaled_mm`` rowwise."""
    fmax = torch.finfo(q_w.dtype).max
    s_x = x.abs().amax(dim=1, keepdim=True).float() / fmax
    q_x = (x.float() / s_x).clamp(-fmax, fmax).to(q_w.dtype)
    return torch._scaled_mm(q_x, q_w.t(), scale_a=s_x, scale_b=s_w[None, :], bias=bias, out_dtype=torch.bfloat16)


def torchao_layers(linear: nn.Linear) -> dict[str, nn.Module]:
    """torchao's FP8 rowwise layers (PLAIN and SPARSE_CUTLASS packing) of `linear`; empty without torchao."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        from torchao.quantization.quantize_.workflows.float8.float8_packing_format import Float8PackingFormat
    except ImportError:
        return {}
    layers = {}
    for name, packing in (("torchao fp8 dense", "PLAIN"), ("torchao fp8 2:4", "SPARSE_CUTLASS")):
        model = nn.Sequential(copy.deepcopy(linear))
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), packing_format=getattr(Float8PackingFormat, packing)))
        layers[name] = model
    return layers


def run_shape(m: int, k: int, n: int, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Check, then time, every variant at one shape; a variant that raises or fails its check is recorded and
    left untimed."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    linear = nn.Linear(k, n, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(layout.sparsify(torch.randn(n, k, device=device, dtype=dtype, generator=gen)))
    row: dict[str, Any] = {"M": m, "K": k, "N": n, "dtype": str(dtype).removeprefix("torch."), "checks": {},
                           "errors": {}, "rel_error": {}, "ms": {}, "compiled_ms": {}, "speedup": {}}
    sparse = fp8.Fp8Semi24Linear.from_linear(linear, prune=False)
    dense_fp8 = fp8.Fp8Linear.from_linear(linear)
    q_x, s_x = fp8.quantize_rows_fp8(x)
    exact = fp8.fp8_linear_reference(q_x, s_x, sparse.weight_q, sparse.weight_scale, linear.bias, torch.float64)
    variants: dict[str, tuple[Callable[[], torch.Tensor], torch.Tensor, float]] = {
        "bf16 dense": (lambda: F.linear(x, linear.weight, linear.bias), exact, FP8_TOLERANCE),
        "ours fp8 2:4": (lambda: sparse(x), exact, EXACT_TOLERANCE),
        "ours fp8 dense": (lambda: dense_fp8(x), exact, EXACT_TOLERANCE),
    }
    if cuda:
        weight = sparse.packed_weight()
        unscaled = (exact - linear.bias.double()) / (s_x.double()[:, None] * sparse.weight_scale.double()[None, :])
        variants["ours fp8 2:4 matmul"] = (lambda: weight.linear(q_x), unscaled, EXACT_TOLERANCE)
        bias = linear.bias.detach()
        variants["fp8 dense torch"] = (lambda: torch_fp8_dense(x, dense_fp8.weight_q, dense_fp8.weight_scale, bias),
                                       exact, EXACT_TOLERANCE)
        for name, layer in torchao_layers(linear).items():
            variants[name] = (lambda layer=layer: layer(x), exact, FP8_TOLERANCE)
    with torch.no_grad():
        for name, (fn, target, tolerance) in list(variants.items()):
            try:
                error = relative_error(fn(), target)
            except Exception:
                row["errors"][name] = traceback.format_exc()[-400:]
                del variants[name]
                continue
            row["rel_error"][name] = error
            row["checks"][name] = error <= tolerance
        for name, (fn, _, _) in variants.items():
            if not row["checks"][name]:
                continue
            row["ms"][name] = bench_ms(fn, device, args.warmup_ms, args.rep_ms)
            if cuda and not args.no_compile and name != "ours fp8 2:4 matmul":
                try:
                    torch._dynamo.reset()
                    compiled = torch.compile(fn)
                    compiled()
                    row["compiled_ms"][name] = bench_ms(compiled, device, args.warmup_ms, args.rep_ms)
                except Exception:
                    row["errors"][f"{name} compiled"] = traceback.format_exc()[-400:]
    torch._dynamo.reset()
    add_speedups(row)
    return row


def add_speedups(row: dict[str, Any]) -> None:
    """Each variant's speed-up over bf16 dense in the same mode (eager over eager, compiled over compiled), and
    ours fp8 2:4 over fp8 dense torch and over torchao's fp8 2:4."""
    for mode in ("ms", "compiled_ms"):
        times = row[mode]
        for name, ms in times.items():
            if name != "bf16 dense" and "bf16 dense" in times:
                row["speedup"][f"{name} over bf16 dense" + (" (compiled)" if mode == "compiled_ms" else "")] = (
                    round(times["bf16 dense"] / ms, 3))
        for other in ("fp8 dense torch", "torchao fp8 2:4"):
            if "ours fp8 2:4" in times and other in times:
                row["speedup"][f"ours fp8 2:4 over {other}" + (" (compiled)" if mode == "compiled_ms" else "")] = (
                    round(times[other] / times["ours fp8 2:4"], 3))


def gpu_available() -> bool:
    """Whether the GPU variants run here: a CUDA GPU with FP8 tensor cores (compute capability 8.9 or later) and
    our cuSPARSELt binding loaded."""
    from sparsity_lab.semi24 import cusparselt

    return (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
            and cusparselt.unavailable_reason() is None)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `sparsity-lab bench fp8` (lecture 07 reads its timing options with it too)."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench fp8", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--shapes", default=None, help="MxKxN,... (tokens x in x out)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default {RECORDED_DIR / (NAME + '.json')} on a GPU, ./fp8_cpu.json on "
                             "the CPU)")
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile timings")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device, f"{NAME}.json")
    if device is None:
        return 1
    from sparsity_lab.quant.bench import parse_shapes

    shapes = parse_shapes(args.shapes) if args.shapes else (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    out = args.out or (RECORDED_DIR / f"{NAME}.json" if device.type == "cuda" else Path("fp8_cpu.json"))
    try:
        import torchao

        environment = record_environment(device) | {"torchao": torchao.__version__}
    except ImportError:
        environment = record_environment(device) | {"torchao": None}
    rows = []
    for m, k, n in shapes:
        rows.append(run_shape(m, k, n, device, args))
        print({key: rows[-1][key] for key in ("M", "K", "N", "ms", "compiled_ms", "speedup", "errors")}, flush=True)
        save_results(NAME, {"rows": rows}, out, environment)
    print(f"wrote {out}")
    return 0 if all(all(r["checks"].values()) and not r["errors"] for r in rows) else 1
