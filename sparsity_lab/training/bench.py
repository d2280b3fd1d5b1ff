"""Benchmark: forward + backward of a transformer MLP block (Linear -> GELU -> Linear) with 2:4 training layers
against the same block with dense `nn.Linear`, correctness first.

Variants of the 2:4 block (`Semi24TrainingLinear`, cuSPARSELt backend, transposable masks):

* ``dynamic``: a real training step's work: the mask recomputed from |W| and W_s, W_sᵀ compressed again;
* ``fixed mask``: the mask kept, W_s and W_sᵀ written again (the weights change every step): gathered from W
  into cuSPARSELt's buffers through value slots learnt once (`sparsity_lab.semi24.value_slots`), where they can be;
* ``kernels only``: no mask and no compression: the 2:4 step without training's per-step work (its products,
  and the rest of the step: GELU, dW, autograd on column-major activations and gradients).

Each is timed with CUDA events (median of trials after warm-up, eager, back-to-back steps) in the same run as the
dense block, on random inputs and gradients; the breakdown times each part on its own. Target on an H100:
``dynamic`` >= 1.2x over dense for 1024 -> 4096 -> 1024 at >= 8192 tokens, fp16 / bf16.
``sparsity-lab bench sparse_training [--out PATH]`` writes sparsity_lab/recorded/sparse_training_gpu.json;
``--device cpu`` runs a tiny block through the dense reference backend (to test this script without a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.timing import loop_ms, resolve_device
from sparsity_lab.training.layer import SparseMLP
from sparsity_lab.training.pair import sparse_pair

NAME = "sparse_training_gpu"
VARIANTS = ("dynamic", "fixed mask", "kernels only")
TARGET = 1.2
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsity-lab bench sparse_training", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dim", type=int, default=None, help="block width (default 1024; 32 on the CPU)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden width (default 4096; 64 on the CPU)")
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (default 8192,16384,32768,65536)")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="back-to-back steps per timed trial")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def _blocks(dim: int, hidden: int, dtype: torch.dtype, device: torch.device) -> dict[str, SparseMLP]:
    """The dense block and the 2:4 variants, all with the same initial weights."""
    torch.manual_seed(0)
    dense = SparseMLP(dim, hidden, sparse=False, device=device, dtype=dtype)
    backend = "cusparselt" if device.type == "cuda" else "dense"
    blocks: dict[str, SparseMLP] = {"dense": dense}
    for variant in VARIANTS:
        block = SparseMLP(dim, hidden, sparse=True, mask="fixed" if variant != "dynamic" else "dynamic",
                          backend=backend, device=device, dtype=dtype)
        with torch.no_grad():
            for mine, theirs in ((block.fc1, dense.fc1), (block.fc2, dense.fc2)):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
                mine.update_mask()
        blocks[variant] = block
    return blocks


def _step(block: SparseMLP, variant: str, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """One forward + backward; the "dynamic" and "fixed mask" variants first mark the weights as updated (as an
    optimizer step does, without its arithmetic), so each step redoes the layer's per-update work: the mask and
    compression, or the fixed mask's gather. The dense block and "kernels only" skip it."""
    layers = (block.fc1, block.fc2)

    def step() -> None:
        if variant in ("dynamic", "fixed mask"):
            for layer in layers:
                torch.autograd.graph.increment_version(layer.weight)  # what optimizer.step() leaves behind
        block(x).backward(grad)
        x.grad = None
        for layer in layers:
            layer.weight.grad = layer.bias.grad = None

    return step


def check_block(blocks: dict[str, SparseMLP], x: torch.Tensor, grad: torch.Tensor) -> dict[str, float]:
    """Relative errors of the 2:4 blocks ("dynamic", and "fixed mask" with its weights written by its fixed-mask
    path) against the dense-reference backend in float32 on the same masked weights: output, input gradient,
    and weight gradients."""
    errors = {}
    for variant, prefix in (("dynamic", ""), ("fixed mask", "fixed mask ")):
        block = blocks[variant]
        reference = SparseMLP(block.fc1.in_features, block.fc1.out_features, sparse=True, backend="dense",
                              device=x.device, dtype=torch.float32)
        reference.load_state_dict({k: v.float() if v.is_floating_point() else v
                                   for k, v in block.state_dict().items()})
        modes = block.fc1.mask_mode, block.fc2.mask_mode
        reference.fc1.mask_mode = reference.fc2.mask_mode = "fixed"  # same masks as the block's
        block.fc1.mask_mode = block.fc2.mask_mode = "fixed"
        try:
            for layer in (block.fc1, block.fc2):
                if variant == "fixed mask":
                    layer._loaded_version = None  # load through the fixed-mask path, as its timed steps do
                else:
                    layer.update_mask()  # mask from |W| and cuSPARSELt's compress: the dynamic step's path
            xs, xr = x.detach().clone().requires_grad_(), x.detach().float().requires_grad_()
            y, yr = block(xs), reference(xr)
            y.backward(grad)
            yr.backward(grad.float())
        finally:
            block.fc1.mask_mode, block.fc2.mask_mode = modes
        errors[f"{prefix}y"] = relative_error(y, yr)
        errors[f"{prefix}grad_x"] = relative_error(xs.grad, xr.grad)
        for name in ("fc1", "fc2"):
            errors[f"{prefix}grad_{name}.weight"] = relative_error(getattr(block, name).weight.grad,
                                                                   getattr(reference, name).weight.grad)
            getattr(block, name).weight.grad = getattr(block, name).bias.grad = None
    return errors


def breakdown(blocks: dict[str, SparseMLP], x: torch.Tensor, grad: torch.Tensor, calls: int,
              trials: int) -> list[dict[str, Any]]:
    """Each part of one step on its own: the products of fc1 and fc2 (dense and 2:4), masks, compression."""
    dense, sparse = blocks["dense"], blocks["kernels only"]
    rows = []
    hidden = F.gelu(dense.fc1(x)).detach()

    def timed(fn: Callable[[], object]) -> float:
        return loop_ms(fn, calls=calls, trials=trials, device=x.device)

    def add(part: str, dense_fn: Callable | None, sparse_fn: Callable) -> None:
        rows.append({"part": part, "dense_ms": None if dense_fn is None else timed(dense_fn),
                     "sparse_ms": timed(sparse_fn)})

    for name, inp, g in (("fc1", x, torch.randn_like(hidden)), ("fc2", hidden, grad)):
        d_layer, s_layer = getattr(dense, name), getattr(sparse, name)
        backend = s_layer.backend()
        s_layer(inp.detach())  # loads the compressed weights
        add(f"{name} y = x Wᵀ", lambda i=inp, d=d_layer: F.linear(i, d.weight), lambda i=inp, b=backend:
            b.forward(i, None))
        add(f"{name} dx = dy W", lambda g=g, d=d_layer: g @ d.weight, lambda g=g, b=backend: b.grad_input(g))
        add(f"{name} dW = dyᵀ x", lambda g=g, i=inp: g.T @ i, lambda g=g, i=inp: g.T @ i)
        add(f"{name} mask + W_s + W_sᵀ", None, lambda s=s_layer: sparse_pair(s.weight, None, s.transpose))
        add(f"{name} W_s + W_sᵀ (fixed mask)", None, lambda s=s_layer: sparse_pair(s.weight, s.mask, s.transpose))
        pair = sparse_pair(s_layer.weight, s_layer.mask, s_layer.transpose)[1:]
        add(f"{name} compress W_s, W_sᵀ", None, lambda b=backend, p=pair: b.load(*p))
        if x.is_cuda and backend.load_fixed(s_layer.weight.detach(), s_layer.mask):  # where value slots work here
            add(f"{name} gather W_s, W_sᵀ (fixed mask)", None,
                lambda b=backend, s=s_layer: b.load_fixed(s.weight.detach(), s.mask))
    add("GELU forward", lambda h=hidden: F.gelu(h), lambda h=hidden: F.gelu(h))
    add("GELU backward", lambda h=hidden: torch.ops.aten.gelu_backward(h, h),
        lambda h=hidden: torch.ops.aten.gelu_backward(h, h))
    return rows


def ceilings(breakdown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dtype, tokens): the step's parts that both blocks run (the six products and the GELU), each timed
    alone, summed for dense and for 2:4, and their ratio: the speedup the 2:4 block would reach with free masks,
    free compression and no host time."""
    sums: dict[tuple[str, int], list[float]] = {}
    for part in breakdown:
        if part["dense_ms"] is None:  # mask and compression: only the 2:4 block has them
            continue
        total = sums.setdefault((part["dtype"], part["tokens"]), [0.0, 0.0])
        total[0] += part["dense_ms"]
        total[1] += part["sparse_ms"]
    return [{"dtype": dtype, "tokens": tokens, "dense_ms": d, "sparse_ms": s, "ceiling": d / s}
            for (dtype, tokens), (d, s) in sums.items()]


def run(dtype: torch.dtype, tokens: int, dim: int, hidden: int, device: torch.device, args) -> dict[str, Any]:
    """Check, then time, every variant at one (dtype, tokens); returns the rows and checks for the results."""
    blocks = _blocks(dim, hidden, dtype, device)
    x = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, dim, device=device, dtype=dtype)
    errors = check_block(blocks, x, grad)
    correct = all(e < TOLERANCE[dtype] for e in errors.values())
    rows = []
    if correct:
        dense_ms = loop_ms(_step(blocks["dense"], "dense", x, grad), args.calls, args.trials, device)
        for variant in VARIANTS:
            ms = loop_ms(_step(blocks[variant], variant, x, grad), args.calls, args.trials, device)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "tokens": tokens, "variant": variant,
                         "dense_ms": dense_ms, "sparse_ms": ms, "speedup": dense_ms / ms})
    fixed = blocks["fixed mask"].fc1.backend()  # checked and timed above: its path is known by now
    gather = "dense backend" if fixed.name == "dense" else fixed.slots_error
    parts = breakdown(blocks, x.detach(), grad, args.calls, args.trials) if correct else []
    for part in parts:
        part.update(dtype=str(dtype).removeprefix("torch."), tokens=tokens)
    return {"rows": rows, "breakdown": parts, "check": {"dtype": str(dtype), "tokens": tokens, "errors": errors,
                                                        "correct": correct,
                                                        "fixed_mask_gather": gather or "on"}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if device is None:
        return 2
    cuda = device.type == "cuda"
    dim, hidden = args.dim or (1024 if cuda else 32), args.hidden or (4096 if cuda else 64)
    tokens = [int(t) for t in (args.tokens or ("8192,16384,32768,65536" if cuda else "64")).split(",")]
    dtypes = [getattr(torch, d.strip()) for d in args.dtypes.split(",")] if cuda else [torch.float32]
    out = args.out or (RECORDED_DIR / f"{NAME}.json" if cuda else Path("sparse_training_cpu.json"))
    environment = record_environment(device)
    started = time.perf_counter()
    rows, parts, checks = [], [], []
    for dtype in dtypes:
        for m in tokens:
            result = run(dtype, m, dim, hidden, device, args)
            rows += result["rows"]
            parts += result["breakdown"]
            checks.append(result["check"])
            for part in result["breakdown"]:
                dense_ms = "" if part["dense_ms"] is None else f"dense {part['dense_ms']:.4f} ms, "
                print(f"    {part['part']:>28}: {dense_ms}2:4 path {part['sparse_ms']:.4f} ms", flush=True)
            for row in result["rows"]:
                print(f"{row['dtype']:>9} M={m:>6} {row['variant']:>13}: dense {row['dense_ms']:.3f} ms, "
                      f"2:4 {row['sparse_ms']:.3f} ms, {row['speedup']:.2f}x", flush=True)
    targets = [{"dtype": r["dtype"], "tokens": r["tokens"], "speedup": r["speedup"], "target": TARGET,
                "met": r["speedup"] >= TARGET} for r in rows if r["variant"] == "dynamic"]
    from sparsity_lab.semi24 import cusparselt

    figures = {"config": {"dim": dim, "hidden": hidden, "tokens": tokens, "dtypes": [str(d) for d in dtypes],
                          "trials": args.trials, "calls": args.calls, "activation": "gelu",
                          "cusparselt_options": dataclasses.asdict(cusparselt.CusparseLtOptions()),
                          "timing": "CUDA events, eager, median"
                          if cuda else "perf_counter, median"},
               "rows": rows, "breakdown": parts, "ceilings": ceilings(parts), "checks": checks, "targets": targets,
               "all_correct": all(c["correct"] for c in checks), "wall_s": time.perf_counter() - started}
    path = save_results(NAME if cuda else "sparse_training_cpu", figures, out, environment)
    for c in figures["ceilings"]:
        print(f"ceiling {c['dtype']} M={c['tokens']}: the parts both blocks run sum to {c['dense_ms']:.3f} ms dense, "
              f"{c['sparse_ms']:.3f} ms 2:4: {c['ceiling']:.2f}x")
    for t in targets:
        print(f"target {t['dtype']} M={t['tokens']}: {t['speedup']:.2f}x (goal >= {TARGET}x) met={t['met']}")
    print(f"all correct: {figures['all_correct']}; wrote {path}")
    return 0 if figures["all_correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

