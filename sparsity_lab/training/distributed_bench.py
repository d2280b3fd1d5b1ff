"""Benchmark: per-GPU training throughput of the transformer MLP block (Linear -> GELU -> Linear) with 2:4 training
layers against the dense block, both under the same DDP or FSDP2 wrapper on `world_size` processes, correctness
first.

Variants: ``dense`` (`nn.Linear`), ``dynamic`` and ``fixed mask`` (`Semi24TrainingLinear`, transposable masks,
cuSPARSELt on CUDA, the dense reference backend on the CPU). A timed step is a real training step on each rank's
own tokens: forward, backward (DDP's all-reduce, or FSDP2's all-gathers and reduce-scatter), SGD step, so dynamic
masks are recomputed and fixed-mask weights re-gathered into cuSPARSELt's buffers every step. Before and after the
timing every rank checks its output against a float32 reference on the full (all-gathered) masked weights and
that its 2:4 operands hold W ⊙ mask of the current weights (`distributed.stale_layers`); the ranks' masks are
compared. Time per step: CUDA events on each rank (the wall clock on the CPU), median of trials of back-to-back
steps, the slowest rank's.

``sparsity-lab bench distributed --strategy ddp,fsdp2 --world-size 1 [--out PATH]`` writes
sparsity_lab/recorded/distributed_gpu.json; ``--device cpu`` runs a tiny block on gloo (its times say nothing
about speed: it tests this script without a GPU).
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F

from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.timing import loop_ms, resolve_device
from sparsity_lab.training.distributed import (
    STRATEGIES,
    check_launch,
    full,
    process_backend,
    rank_context,
    save_rank,
    spawn_ranks,
    stale_layers,
    wrap,
)
from sparsity_lab.training.layer import Semi24TrainingLinear, SparseMLP
from sparsity_lab.training.masks import masked

NAME = "distributed_gpu"
VARIANTS = ("dense", "dynamic", "fixed mask")
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}
LR = 1e-4  # SGD: the step only has to change the weights


def _strategies(text: str) -> list[str]:
    """--strategy: comma-separated names, each one of STRATEGIES."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in STRATEGIES]
    if not names or wrong:
        raise argparse.ArgumentTypeError(f"strategies must be among {STRATEGIES}, got {text!r}")
    return names


def _counts(text: str) -> list[int]:
    """--tokens: comma-separated positive ints."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"tokens must be comma-separated ints >= 1, got {text!r}")
    return counts


def _dtypes(text: str) -> list[torch.dtype]:
    """--dtypes: comma-separated float16 / bfloat16 (what cuSPARSELt trains)."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(name not in ("float16", "bfloat16") for name in names):
        raise argparse.ArgumentTypeError(f"dtypes must be among float16, bfloat16, got {text!r}")
    return [getattr(torch, name) for name in names]


def build_parser() -> argparse.ArgumentParser:
    """The command line of `sparsity-lab bench distributed`."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", type=_strategies, default=list(STRATEGIES), help="ddp, fsdp2 or ddp,fsdp2")
    parser.add_argument("--world-size", type=int, default=1, help="processes, one GPU each on CUDA (default 1)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dim", type=int, default=None, help="block width (default 1024; 32 on the CPU)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden width (default 4096; 64 on the CPU)")
    parser.add_argument("--tokens", type=_counts, default=None,
                        help="comma-separated tokens per GPU (default 8192,65536; 64 on the CPU)")
    parser.add_argument("--dtypes", type=_dtypes, default=[torch.float16, torch.bfloat16],
                        help="float16,bfloat16 (CUDA only; the CPU runs float32)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--calls", type=int, default=5, help="back-to-back steps per timed trial")
    parser.add_argument("--out", type=Path, default=None)
    return parser


@dataclass(frozen=True)
class _Case:
    """One measured configuration."""

    strategy: str
    dtype: torch.dtype
    tokens: int
    variant: str


@dataclass(frozen=True)
class _Settings:
    """What every case shares."""

    device: str
    dim: int
    hidden: int
    trials: int
    calls: int


def _block(variant: str, dim: int, hidden: int, dtype: torch.dtype, device: torch.device) -> SparseMLP:
    """The block of `variant`, with the same initial weights on every rank and in every variant."""
    torch.manual_seed(0)
    if variant == "dense":
        return SparseMLP(dim, hidden, sparse=False, device=device, dtype=dtype)
    return SparseMLP(dim, hidden, sparse=True, mask="fixed" if variant == "fixed mask" else "dynamic",
                     backend="cusparselt" if device.type == "cuda" else "dense", device=device, dtype=dtype)


def _reference(block: SparseMLP, x: torch.Tensor) -> torch.Tensor:
    """The block's output in float32 from its full (all-gathered) weights, masked where the layer is 2:4."""

    def linear(layer: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor:
        weight = full(layer.weight).float()
        if isinstance(layer, Semi24TrainingLinear):
            weight = masked(weight, layer.mask)
        return F.linear(inp, weight, full(layer.bias).float())

    return linear(block.fc2, F.gelu(linear(block.fc1, x.detach().float())))


def _all_ranks(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on every rank (a collective)."""
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _measure(case: _Case, settings: _Settings, device: torch.device) -> dict[str, Any]:
    """Build, wrap, check, time and check again one case on this rank (peak memory: over the timed steps)."""
    gc.collect()
    block = _block(case.variant, settings.dim, settings.hidden, case.dtype, device)
    model = wrap(block, case.strategy, device)
    optimizer = torch.optim.SGD(block.parameters(), lr=LR)
    generator = torch.Generator(device).manual_seed(1 + dist.get_rank())  # each rank its own tokens
    x = torch.randn(case.tokens, settings.dim, generator=generator, device=device, dtype=case.dtype,
                    requires_grad=True)
    # the gradient of a mean over tokens: steps stay small, so fp16 weights do not overflow over the timed steps
    grad = torch.randn(case.tokens, settings.dim, generator=generator, device=device, dtype=case.dtype) / case.tokens

    def finish(y: torch.Tensor) -> None:
        y.backward(grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        x.grad = None

    def step() -> None:
        finish(model(x))

    def checked_step() -> tuple[float, list[str]]:
        y = model(x)
        checks = relative_error(y, _reference(block, x)), stale_layers(block)
        finish(y)
        return checks

    error, stale = checked_step()
    result: dict[str, Any] = {"error": error, "stale": stale, "ms": None, "peak_memory_mib": None}
    if _all_ranks(error < TOLERANCE[case.dtype] and not stale, device):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step()
        _all_ranks(True, device)  # the ranks start timing together
        result["ms"] = loop_ms(step, settings.calls, settings.trials, device)
        if device.type == "cuda":
            result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["error_after"], result["stale_after"] = checked_step()
    result["masks"] = torch.cat([layer.mask.reshape(-1).cpu() for layer in (block.fc1, block.fc2)
                                 if isinstance(layer, Semi24TrainingLinear)] or [torch.zeros(0, dtype=torch.bool)])
    return result


def _bench_rank(rank: int, world_size: int, store: str, out_dir: str, cases: list[_Case],
                settings: _Settings) -> None:
    """One rank: every case in order (the same order on every rank: each wraps, checks and times collectively)."""
    with rank_context(rank, world_size, store, settings.device) as device:
        save_rank(out_dir, rank, [_measure(case, settings, device) for case in cases])


def measure(strategies: list[str], world_size: int, device: str, dim: int, hidden: int, tokens: list[int],
            dtypes: list[torch.dtype], trials: int = 10, calls: int = 5) -> list[dict[str, Any]]:
    """Per-GPU throughput of every variant under every strategy, dtype and token count on `world_size` processes:
    one row each, with the slowest rank's ms per step, steps/s and tokens/s per GPU, the speedup over the dense
    block under the same wrapper, and the checks."""
    check_launch(world_size, device, strategies)
    for name, value in (("dim", dim), ("hidden", hidden), ("trials", trials), ("calls", calls),
                        ("tokens", min(tokens, default=0))):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    cases = [_Case(s, d, t, v) for s in strategies for d in dtypes for t in tokens for v in VARIANTS]
    ranks = spawn_ranks(_bench_rank, world_size, cases, _Settings(device, dim, hidden, trials, calls))
    rows = []
    for i, case in enumerate(cases):
        results = [r[i] for r in ranks]
        times = [r["ms"] for r in results]
        stale = [f"rank {r}: {name}" for r, res in enumerate(results)
                 for name in (*res["stale"], *res.get("stale_after", []))]
        errors = [max(res["error"], res.get("error_after", 0.0)) for res in results]
        identical = all(torch.equal(res["masks"], results[0]["masks"]) for res in results)
        ms = max(times) if None not in times else None
        rows.append({"strategy": case.strategy, "dtype": str(case.dtype).removeprefix("torch."),
                     "tokens_per_gpu": case.tokens, "variant": case.variant, "ms_per_rank": times, "ms": ms,
                     "steps_per_s": 1e3 / ms if ms else None, "tokens_per_s_per_gpu": case.tokens * 1e3 / ms
                     if ms else None, "relative_error": max(errors), "stale_operands": stale,
                     "identical_masks": identical, "peak_memory_mib": [r["peak_memory_mib"] for r in results],
                     "correct": ms is not None and max(errors) < TOLERANCE[case.dtype] and not stale and identical})
    for row in rows:
        dense = next(r for r in rows if r["variant"] == "dense" and all(
            r[k] == row[k] for k in ("strategy", "dtype", "tokens_per_gpu")))
        row["speedup"] = dense["ms"] / row["ms"] if dense["ms"] and row["ms"] else None
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the results file; 0 when every case was correct (2: bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    try:
        check_launch(args.world_size, device.type, args.strategy)
    except (ValueError, RuntimeError) as error:
        parser.error(f"argument --world-size: {error}")
    tokens = args.tokens or ([8192, 65536] if cuda else [64])
    dtypes = args.dtypes if cuda else [torch.float32]
    dim, hidden = args.dim or (1024 if cuda else 32), args.hidden or (4096 if cuda else 64)
    name = NAME if cuda else "distributed_cpu"
    out = args.out or (RECORDED_DIR / f"{NAME}.json" if cuda else Path(f"{name}.json"))
    environment = record_environment(device)
    started = time.perf_counter()
    rows = measure(args.strategy, args.world_size, device.type, dim, hidden, tokens, dtypes, args.trials, args.calls)
    for row in rows:
        timing = f"{row['ms']:.3f} ms/step, {row['tokens_per_s_per_gpu']:.3g} tokens/s per GPU" if row["ms"] \
            else "not timed"
        if cuda and row["speedup"]:  # gloo on the CPU times the harness, not a speed
            timing += f", {row['speedup']:.2f}x of dense"
        print(f"{row['strategy']:>5} {row['dtype']:>8} {row['tokens_per_gpu']:>6} tokens/GPU {row['variant']:>10}: "
              f"{timing}; error {row['relative_error']:.1e}, correct={row['correct']}", flush=True)
    figures = {"config": {"world_size": args.world_size, "process_backend": process_backend(device.type),
                          "strategies": args.strategy, "dim": dim, "hidden": hidden, "tokens_per_gpu": tokens,
                          "dtypes": [str(d) for d in dtypes], "trials": args.trials, "calls": args.calls,
                          "activation": "gelu", "optimizer": f"SGD lr {LR}",
                          "timing": "CUDA events per rank, eager, median, slowest rank" if cuda
                          else "perf_counter per rank, median, slowest rank (gloo on the CPU: not a speed result)"},
               "rows": rows, "all_correct": all(r["correct"] for r in rows), "wall_s": time.perf_counter() - started}
    path = save_results(name, figures, out, environment)
    print(f"all correct: {figures['all_correct']}; wrote {path}")
    return 0 if figures["all_correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
