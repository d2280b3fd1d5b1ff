"""Benchmark: whole real models, dense against their sparse swaps, eager and under ``torch.compile``.

`sparsity-lab bench models [--models vit,llama] [--dtypes bfloat16,float16] [--out PATH]` (GPU; timm and
transformers from the ``models`` extra):

* **ViT-L/16** (timm ``vit_large_patch16_224``, random weights, batch 128 at 224²): every linear but the head
  pruned to 2:4 by magnitude. Variants: dense eager and compiled; PyTorch's ``to_sparse_semi_structured``; ours
  2:4 with every layer forced sparse ("untuned": what a layer-by-layer swap gives) and tuned by `tune_` (each
  group's mode from timings of one transformer block, eager or compiled), eager and compiled; ours 2:4 "column-major
  stream" (`tune_(stream="blocks.0")`: tuned with and without the stream, the faster whole model kept; the row says
  which, and both models' times); int8 2:4
  (`Int8Config`) and FP8 e4m3 2:4 (`Fp8Config`); block-sparse MLPs (64 x 64 blocks at 90% and 50%,
  `BlockSparseConfig`); the int8, FP8 and block swaps also tuned by `tune_` (each group may stay dense).
* **Llama-3-8B-shaped decoder** (``transformers`` ``LlamaForCausalLM`` from a config: hidden 4096, MLP 14336, 32
  heads, 8 KV heads; `--llama-layers` layers, random weights; the decoder stack without the LM head): prefill of
  2048 tokens at batch 1 and 8, and one decode step of 1 new token per sequence at batch 1 and 16, replayed from a
  CUDA graph (`semi24.layer.capture`; no KV cache, so attention covers the new token only and the step is the
  weight-bandwidth-bound part of decode; `--phases decode-compiled`: the same steps compiled by ``torch.compile``
  before capture, where Inductor fuses the small kernels around the linears). Variants: dense, ours 2:4 (`tune_` at
  each shape: eager for prefill, from CUDA graphs for decode, where the decode kernels are candidates; `--phases
  prefill-graphs`: prefill at batch 1 tuned and timed from CUDA graphs, where eager is host-bound), ours 2:4
  with a column-major stream where it is faster (prefill), ours FP8 e4m3 2:4 (`Fp8Config`, tuned; prefill only: at
  batch 8 its MLP linears are the 16 384-token shapes of docs/performance/fp8.md), block-sparse MLPs at 90% (tuned
  from CUDA graphs for decode).
* **The 2:4 decode kernels** (`--models decode`): `semi24.decode_kernel.decode_speed` at the decoder's linears,
  1, 4 and 16 tokens: cuBLAS, cuSPARSELt and our fastest tensor-core and CUDA-core launches.
* **The stream's kernels** (`--models stream`): the column-major norm (`models.column_major_norm.norm_speed`), alone
  and fused with the residual add before it, at both models' shapes, the GELU (`models.gelu.gelu_speed`, with a
  copy of the same bytes) and the attention that reads a 2:4 qkv's output
  (`models.column_major_attention.attention_speed`) at ViT-L's, against PyTorch's on the layout a dense model has,
  per block size.

Every variant is first checked against the dense model with the same pruned weights (relative error of the
output), then timed (`timing.bench_ms`: do_bench's median, L2 flushed). The dense, 2:4 and column-major-stream
ViT variants are profiled (`models.profile`: CUDA time per forward in GEMMs, 2:4 GEMMs, layout copies, attention,
norms, the rest, and the 15 kernels that took longest, by name).
Results are saved after every variant, so a run cut short keeps what it measured. `--variants fp8,block` runs
only the variants whose names contain one of the words (and dense, their baseline); `--update` keeps the rows
of the results file that this run does not measure again, so a run can be split into several; `--phases decode`
runs only the Llama decode steps.
"""

from __future__ import annotations

import argparse
import copy
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsity_lab.checks import relative_error
from sparsity_lab.course.results import RECORDED_DIR, load_results, record_environment, save_results
from sparsity_lab.dispatch import group_name, tunable_layers, tune_
from sparsity_lab.models.column_major_attention import attention_speed
from sparsity_lab.models.column_major_norm import norm_speed
from sparsity_lab.models.gelu import BLOCK as GELU_BLOCK
from sparsity_lab.models.gelu import gelu_speed
from sparsity_lab.models.profile import breakdown, kernel_times, top_kernels
from sparsity_lab.models.stream import is_streamed
from sparsity_lab.semi24.decode_kernel import decode_speed
from sparsity_lab.semi24.matmul import prune24
from sparsity_lab.sparsify import BlockSparseConfig, Fp8Config, Int8Config, Report, Semi24Config, sparsify_
from sparsity_lab.timing import bench_ms, resolve_device

NAME = "models_gpu"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# The largest relative error of a variant's output against its dense model with the same weights (16-bit
# rounding of differently ordered sums; int8 or FP8 quantization of every layer's operands on top).
MAX_RELATIVE_ERROR = {"int8": 0.15, "fp8": 0.25, "other": 0.03}
ROW_KEY = ("model", "dtype", "phase", "batch", "variant", "compiled")  # what makes two rows the same measurement
SECTIONS = ("vit", "llama", "stream", "decode_kernels", "failures")  # the results file's lists of rows
# ----------------------------------------------------------------------------------------------- models
def vit_large(dtype: torch.dtype, device: torch.device) -> nn.Module:
    """timm's ViT-L/16 at 224², random weights, every linear but the head pruned to 2:4 (magnitude)."""
    from sparsity_lab._optional import require

    timm = require("timm", "models")
    torch.manual_seed(0)
    model = timm.create_model("vit_large_patch16_224", pretrained=False).to(device, dtype).eval()
    _prune_linears_24(model, skip=("head",))
    return model


def llama_decoder(dtype: torch.dtype, device: torch.device, layers: int) -> nn.Module:
    """A Llama-3-8B-shaped decoder stack (``LlamaForCausalLM(config).model``, no LM head), random weights, its
    linears pruned to 2:4 (magnitude)."""
    from sparsity_lab._optional import require

    transformers = require("transformers", "models")
    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                                      num_key_value_heads=8, num_hidden_layers=layers, vocab_size=128256,
                                      max_position_embeddings=8192, rope_theta=500000.0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).model.to(dtype).eval()
    model.config.use_cache = False  # every timed call starts afresh: no KV cache growing across calls
    _prune_linears_24(model, skip=())
    return model


def _prune_linears_24(model: nn.Module, skip: tuple[str, ...]) -> None:
    with torch.no_grad():
        for fqn, module in model.named_modules():
            if isinstance(module, nn.Linear) and fqn not in skip and not module.out_features % 64:
                module.weight.copy_(prune24(module.weight))


def block_prune_mlps(model: nn.Module, names: tuple[str, ...], sparsity: float, block: int = 64) -> nn.Module:
    """A copy of `model` whose MLP linears (fqn ending in one of `names`) keep the (1 - sparsity) of their
    `block` x `block` blocks with the largest norms."""
    from sparsity_lab.block.pruning import block_mask

    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for fqn, module in pruned.named_modules():
            if isinstance(module, nn.Linear) and fqn.endswith(names):
                module.weight.mul_(block_mask(module.weight, block, sparsity).to(module.weight.dtype))
    return pruned


# ---------------------------------------------------------------------------------------------- running
class Recorder:
    """The figures so far, saved after every variant."""

    def __init__(self, out: Path, device: torch.device, log: Callable[[str], None], only: tuple[str, ...] = (),
                 update: bool = False) -> None:
        self.out, self.device, self.log, self.only = out, device, log, only
        self.figures: dict[str, Any] = {section: [] for section in SECTIONS}
        if update and out.exists():
            kept = load_results(out).figures
            self.figures.update({section: kept.get(section, []) for section in SECTIONS})

    def save(self) -> None:
        save_results(NAME, self.figures, self.out, record_environment(self.device))

    def variant(self, section: str, row: dict[str, Any], run: Callable[[], dict[str, Any]],
                baseline: Callable[[], float] | None = None) -> None:
        """Run one variant and save; `baseline` (the dense model's ms) is timed again right after it, so its
        speed-up does not rest on a dense time taken minutes earlier, at another clock."""
        if self.only and row["variant"] != "dense" and not any(word in row["variant"] for word in self.only):
            return
        key = tuple(row.get(k) for k in ROW_KEY)
        for kept in ("failures", section):
            self.figures[kept] = [r for r in self.figures[kept] if tuple(r.get(k) for k in ROW_KEY) != key]
        start = time.time()
        try:
            row.update(run())
            if baseline is not None and row["variant"] != "dense":
                row["dense_ms_adjacent"] = baseline()
        except Exception:  # one variant that fails is recorded and the others still run
            row["failure"] = traceback.format_exc()[-1500:]
            self.figures["failures"].append(dict(row))
        row["seconds"] = round(time.time() - start, 1)
        self.figures[section].append(row)
        self.log(str({k: v for k, v in row.items() if k not in ("profile", "kernels", "tuning", "failure")}))
        if "failure" in row:
            self.log(row["failure"][-600:])
        self.save()


def _checked(model: nn.Module, reference: torch.Tensor, inputs: tuple, limit: float,
             output: Callable[[Any], torch.Tensor] = lambda y: y) -> float:
    with torch.no_grad():
        error = relative_error(output(model(*inputs)), reference)
    if not error <= limit:
        raise AssertionError(f"relative error {error:.3g} against the dense model is above {limit}")
    return error


def _timed(model: Callable, inputs: tuple) -> float:
    with torch.no_grad():
        return bench_ms(lambda: model(*inputs), rep_ms=400.0)


def _replayed(model: Callable, inputs: tuple) -> float:
    """Median ms of `model` on its one input replayed from a CUDA graph (captured now, after warm-up calls)."""
    from sparsity_lab.semi24.layer import capture

    with torch.no_grad():
        graph = capture(lambda x: model(x), inputs[0])
        return bench_ms(lambda: graph(inputs[0]), rep_ms=400.0)


def _set_modes(model: nn.Module, mode: str) -> None:
    for layer in tunable_layers(model).values():
        layer.mode = mode


def _compile(model: nn.Module) -> Callable:
    torch._dynamo.reset()
    return torch.compile(model)


def run_vit(dtype: torch.dtype, device: torch.device, recorder: Recorder, batch: int = 128) -> None:
    """Every ViT-L/16 variant at `dtype` (see the module docstring)."""
    base = vit_large(dtype, device)
    x = (torch.randn(batch, 3, 224, 224, device=device, dtype=dtype),)
    with torch.no_grad():
        reference = base(*x)
    common = {"model": "vit_large_patch16_224", "batch": batch, "dtype": str(dtype).replace("torch.", "")}

    def record(variant: str, run: Callable[[], dict[str, Any]], **extra: Any) -> None:
        recorder.variant("vit", {**common, "variant": variant, **extra}, run, lambda: _timed(base, x))

    def dense_run() -> dict[str, Any]:
        return {"ms": _timed(base, x), **_profiled(base, x)}

    record("dense", dense_run, compiled=False)
    record("dense", lambda: {"ms": _timed(_compile(base), x)}, compiled=True)

    def torch_24() -> dict[str, Any]:
        from torch.sparse import to_sparse_semi_structured

        model = copy.deepcopy(base)
        for fqn, module in model.named_modules():
            if isinstance(module, nn.Linear) and fqn != "head":
                module.weight = nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
        return {"rel_error": _checked(model, reference, x, MAX_RELATIVE_ERROR["other"]), "ms": _timed(model, x)}

    record("torch to_sparse_semi_structured", torch_24, compiled=False)

    ours = copy.deepcopy(base)
    report = sparsify_(ours, Semi24Config(), lambda m, fqn: fqn != "head")
    swapped = len(report.changed)

    def untuned(compiled: bool) -> dict[str, Any]:
        _set_modes(ours, "sparse")
        error = _checked(ours, reference, x, MAX_RELATIVE_ERROR["other"])
        run = _compile(ours) if compiled else ours
        out = {"rel_error": error, "ms": _timed(run, x), "swapped": swapped}
        return out | _profiled(run, x)

    def tuned(compiled: bool) -> dict[str, Any]:
        tuning = tune_(ours, x, block="blocks.0", compiled=compiled)
        error = _checked(ours, reference, x, MAX_RELATIVE_ERROR["other"])
        run = _compile(ours) if compiled else ours
        out = {"rel_error": error, "ms": _timed(run, x), "swapped": swapped,
               "modes": _group_modes(ours),
               "tuning": {fqn: entry.what for fqn, entry in tuning.items() if fqn.startswith("blocks.0.")}}
        return out | _profiled(run, x)

    def streamed(compiled: bool) -> dict[str, Any]:
        model = copy.deepcopy(base)
        sparsify_(model, Semi24Config(), lambda m, fqn: fqn != "head")
        tuning = tune_(model, x, block="blocks.0", compiled=compiled, stream="blocks.0")
        out = {"rel_error": _checked(model, reference, x, MAX_RELATIVE_ERROR["other"]),
               "modes": _group_modes(model)} | _stream_choice(model, tuning, "blocks.0")
        run = _compile(model) if compiled else model
        out["ms"] = _timed(run, x)
        return out | _profiled(run, x)

    record("ours 2:4 untuned", lambda: untuned(False), compiled=False)
    record("ours 2:4 untuned", lambda: untuned(True), compiled=True)
    record("ours 2:4 tuned", lambda: tuned(False), compiled=False)
    record("ours 2:4 tuned", lambda: tuned(True), compiled=True)
    record("ours 2:4 column-major stream tuned", lambda: streamed(False), compiled=False)
    record("ours 2:4 column-major stream tuned", lambda: streamed(True), compiled=True)

    def swap_run(source: nn.Module, config: object, keep: Callable[[nn.Module, str], bool], ref: torch.Tensor,
                limit: float, compiled: bool = False, tuned: bool = False) -> dict[str, Any]:
        """A copy of `source` swapped by `config` (the layers `keep` picks), checked against `ref`, tuned by
        `tune_` if asked, timed eager or compiled."""
        model = copy.deepcopy(source)
        sparsify_(model, config, keep)
        out = {"rel_error": _checked(model, ref, x, limit)}
        if tuned:
            out["modes"] = _tuned_modes(model, x, compiled)
        run = _compile(model) if compiled else model
        return out | {"ms": _timed(run, x)}

    def not_head(module: nn.Module, fqn: str) -> bool:
        return fqn != "head"

    for tune in (False, True):
        record("ours int8 2:4" + " tuned" * tune, lambda t=tune: swap_run(
            base, Int8Config(sparse=True, prune=False), not_head, reference, MAX_RELATIVE_ERROR["int8"], tuned=t),
            compiled=False)
    for compiled in (False, True):
        for tune in (False, True):
            record("ours fp8 2:4" + " tuned" * tune, lambda c=compiled, t=tune: swap_run(
                base, Fp8Config(prune=False), not_head, reference, MAX_RELATIVE_ERROR["fp8"], c, t),
                compiled=compiled)
    for sparsity in (0.9, 0.5):
        pruned = block_prune_mlps(base, ("fc1", "fc2"), sparsity)
        with torch.no_grad():
            pruned_reference = pruned(*x)
        for compiled in (False, True):
            for tune in (False, True):
                record(f"ours block 64 {sparsity:.0%} MLP" + " tuned" * tune,
                       lambda c=compiled, t=tune, p=pruned, r=pruned_reference: swap_run(
                           p, BlockSparseConfig(64, max_density=0.6), lambda m, fqn: fqn.endswith(("fc1", "fc2")),
                           r, MAX_RELATIVE_ERROR["other"], c, t),
                       compiled=compiled)
    torch._dynamo.reset()


def _tuned_modes(model: nn.Module, x: tuple, compiled: bool = False) -> dict[str, str]:
    """`tune_` on the model's first transformer block (ViT: ``blocks.0``); the modes it set, by group."""
    tune_(model, x, block="blocks.0", compiled=compiled)
    return _group_modes(model)


def _stream_choice(model: nn.Module, tuning: Report, block: str) -> dict[str, Any]:
    """What `tune_(stream=block)` chose: whether the model kept the stream, why, and both whole models' ms."""
    return {"streamed": is_streamed(model), "stream_choice": tuning[block].what,
            "stream_ms": tuning[block].timings}


def _group_modes(model: nn.Module) -> dict[str, str]:
    """{`dispatch.group_name`: mode} of the model's tunable layers (one entry per group)."""
    return {group_name(fqn, layer): layer.mode for fqn, layer in tunable_layers(model).items()}


def _profiled(model: Callable, inputs: tuple) -> dict[str, Any]:
    """CUDA time per forward by kernel class ("profile") and the kernels that took longest ("kernels")."""
    kernels = kernel_times(lambda: _no_grad(model, inputs))
    return {"profile": breakdown(kernels), "kernels": top_kernels(kernels)}


def _no_grad(model: Callable, inputs: tuple) -> object:
    with torch.no_grad():
        return model(*inputs)


def run_llama(dtype: torch.dtype, device: torch.device, recorder: Recorder, layers: int,
              phases: tuple[str, ...] = ("prefill", "decode")) -> None:
    """Llama-shaped prefill and/or decode steps at `dtype` (see the module docstring)."""
    from sparsity_lab.semi24.layer import capture

    base = llama_decoder(dtype, device, layers)
    hidden = lambda out: out.last_hidden_state  # noqa: E731
    common = {"model": f"Llama-3-8B-shaped, {layers} layers", "dtype": str(dtype).replace("torch.", "")}
    mlp = ("gate_proj", "up_proj", "down_proj")
    ours = copy.deepcopy(base)
    sparsify_(ours, Semi24Config())
    fp8 = copy.deepcopy(base)  # FP8 e4m3 2:4 (prefill only: at decode sizes its per-token quantize is all overhead)
    sparsify_(fp8, Fp8Config(prune=False))
    blocks = block_prune_mlps(base, mlp, 0.9)
    block_dense = blocks
    block_ours = copy.deepcopy(blocks)
    sparsify_(block_ours, BlockSparseConfig(64, max_density=0.2), lambda m, fqn: fqn.endswith(mlp))
    generator = torch.Generator(device=device).manual_seed(0)
    # eager prefill, and at batch 1 also replayed from CUDA graphs: there eager is host-bound (the Python of the
    # decoder's layers takes about as long as their GPU work), so only a replay shows what the GPU gains
    prefills = [(batch, False) for batch in (1, 8) if "prefill" in phases] + [(1, True)] * ("prefill-graphs" in phases)
    for batch, graphs in prefills:
        ids = (torch.randint(0, 128256, (batch, 2048), device=device, generator=generator),)
        with torch.no_grad():
            reference = hidden(base(*ids, use_cache=False))
            block_reference = hidden(block_dense(*ids, use_cache=False))
        for name, model, ref in (("dense", base, reference), ("ours 2:4", ours, reference),
                                 ("ours 2:4 column-major stream", ours, reference), ("ours fp8 2:4", fp8, reference),
                                 ("ours block 64 90% MLP", block_ours, block_reference)):
            def prefill(model: nn.Module = model, ref: torch.Tensor = ref, name: str = name, ids: tuple = ids,
                        graphs: bool = graphs) -> dict[str, Any]:
                call = lambda ids: model(ids, use_cache=False)  # noqa: E731
                out: dict[str, Any] = {}
                if "stream" in name:  # a fresh copy: the stream is chosen anew at each shape
                    model = copy.deepcopy(model)  # `call` runs the copy
                    tuning = tune_(model, ids, block="layers.0", stream="layers.0", graphs=graphs)
                    out |= _stream_choice(model, tuning, "layers.0")
                elif name.startswith("ours"):
                    tuning = tune_(model, ids, block="layers.0", graphs=graphs)
                if name.startswith("ours"):
                    out["tuning"] = {fqn: entry.what for fqn, entry in tuning.items() if fqn.startswith("layers.0.")}
                limit = MAX_RELATIVE_ERROR["fp8" if "fp8" in name else "other"]
                out["rel_error"] = _checked(call, ref, ids, limit, hidden)
                out["ms"] = (_replayed if graphs else _timed)(call, ids)
                return out

            twin = block_dense if "block" in name else base  # the dense model with the same weights, timed after
            recorder.variant("llama", {**common, "phase": "prefill from a CUDA graph" if graphs else "prefill",
                                       "batch": batch, "tokens": 2048, "variant": name}, prefill,
                             lambda twin=twin, ids=ids, graphs=graphs: (_replayed if graphs else _timed)(
                                 lambda i: twin(i, use_cache=False), ids))
    decodes = [compiled for compiled, phase in ((False, "decode"), (True, "decode-compiled")) if phase in phases]
    for compiled in decodes:
        for batch in (1, 16):
            ids = torch.randint(0, 128256, (batch, 1), device=device, generator=generator)
            for name, model in (("dense", base), ("ours 2:4", ours), ("dense block-pruned", block_dense),
                                ("ours block 64 90% MLP", block_ours)):
                def decode(model: nn.Module = model, ids: torch.Tensor = ids, batch: int = batch, name: str = name,
                           compiled: bool = compiled) -> dict[str, Any]:
                    out: dict[str, Any] = {}
                    if name.startswith("ours"):  # tuned again for this step, timed as it will run: from a CUDA graph
                        tuning = tune_(model, (ids,), block="layers.0", graphs=True)
                        out["tuning"] = {fqn: e.what for fqn, e in tuning.items() if fqn.startswith("layers.0.")}
                    step = lambda ids: hidden(model(ids, use_cache=False))  # noqa: E731
                    if compiled:  # Inductor fuses the small kernels around the linears; compiled before capture
                        torch._dynamo.reset()
                        step = torch.compile(step)
                        with torch.no_grad():
                            step(ids)
                    with torch.no_grad():
                        graph = capture(step, ids)
                    ms = bench_ms(lambda: graph(ids), rep_ms=300.0)
                    return out | {"ms": ms, "tokens_per_s": batch / ms * 1e3}

                recorder.variant("llama", {**common, "phase": "decode step (CUDA graph)", "batch": batch,
                                           "variant": name, "compiled": compiled}, decode)
    torch._dynamo.reset()


def run_stream_kernels(dtype: torch.dtype, recorder: Recorder) -> None:
    """The column-major stream's kernels alone, against PyTorch's on the layout a dense model has: the norm at
    ViT-L's (LayerNorm) and the Llama-shaped prefill's (RMSNorm) shapes per token block, the GELU at ViT-L's fc1
    output per program size (and a copy of its bytes), and the attention that reads a 2:4 qkv's output at ViT-L's
    shape per (query, key) block."""
    name = str(dtype).replace("torch.", "")
    norm_speed(25216, 1024, dtype)  # untimed: an idle GPU's clock is still low for the first row
    for tokens, features, rms in ((25216, 1024, False), (16384, 4096, True)):
        kind = "RMSNorm" if rms else "LayerNorm"
        for block_m, residual in ((0, False), (8, False), (16, False), (32, False), (64, False), (0, True)):
            what = f"residual add + {kind}" if residual else kind
            row = {"model": "norm", "dtype": name, "phase": f"{tokens}x{features}", "compiled": False,
                   "variant": f"column-major {what}, block_m {block_m or 'default'}"}
            recorder.variant("stream", row, lambda t=tokens, f=features, r=rms, b=block_m, a=residual: norm_speed(
                t, f, dtype, r, block_m=b, residual=a))
    for block in (GELU_BLOCK // 2, GELU_BLOCK, 2 * GELU_BLOCK):
        row = {"model": "GELU", "dtype": name, "phase": "25216 x 4096 (ViT-L's fc1 output, column-major)",
               "variant": f"ours, {block} elements a program", "compiled": False}
        recorder.variant("stream", row, lambda b=block: gelu_speed(25216, 4096, dtype, block=b))
    for block_m, block_n, warps, stages in ((64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3)):
        row = {"model": "attention", "dtype": name, "phase": "128 images x 197 tokens, 16 heads x 64",
               "variant": f"column-major attention, block {block_m} x {block_n}, {warps} warps, {stages} stages",
               "compiled": False}
        recorder.variant("stream", row, lambda m=block_m, n=block_n, w=warps, s=stages: attention_speed(
            dtype=dtype, block_m=m, block_n=n, warps=w, stages=s))


# The linears of one Llama-3-8B-shaped decoder layer, (out_features, in_features): q and o, k and v, gate and up, down
LLAMA_LINEARS = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))


def run_decode_kernels(dtype: torch.dtype, recorder: Recorder) -> None:
    """The 2:4 decode kernels alone (`semi24.decode_kernel.decode_speed`) at the Llama-shaped decoder's linears,
    1, 4 and 16 tokens, against cuBLAS and cuSPARSELt."""
    name = str(dtype).replace("torch.", "")
    decode_speed(1, 4096, 4096, dtype)  # untimed: an idle GPU's clock is still low for the first row
    for tokens in (1, 4, 16):
        for n, k in LLAMA_LINEARS:
            row = {"model": "2:4 decode kernel", "dtype": name, "phase": f"{tokens} x {k} -> {n}", "compiled": False,
                   "batch": tokens, "variant": "ours against cuBLAS and cuSPARSELt"}
            recorder.variant("decode_kernels", row, lambda t=tokens, n=n, k=k: decode_speed(t, n, k, dtype))


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's speedup over the dense eager row (the one timed right after it where there is one) and, for
    compiled rows, over dense compiled, of its model, dtype and shape: ``{"variant", "compiled",
    "over_dense_eager", "over_dense_compiled"}``."""
    def shape(row: dict[str, Any]) -> tuple:
        return (row.get("model"), row.get("dtype"), row.get("phase"), row.get("batch"))

    dense = {(shape(r), bool(r.get("compiled"))): r["ms"] for r in rows if r.get("variant") == "dense" and "ms" in r}
    out = []
    for row in rows:
        if "ms" not in row:
            continue
        eager = row.get("dense_ms_adjacent") or dense.get((shape(row), False))
        compiled = dense.get((shape(row), True))
        out.append({**{k: row.get(k) for k in ("model", "dtype", "phase", "batch", "variant", "compiled")},
                    "ms": row["ms"], "over_dense_eager": eager / row["ms"] if eager else None,
                    "over_dense_compiled": compiled / row["ms"] if compiled and row.get("compiled") else None})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsity-lab bench models", description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vit,llama,stream,decode",
                        help="comma-separated: vit, llama, stream (the column-major stream's kernels), decode (the "
                             "2:4 decode kernels)")
    parser.add_argument("--dtypes", default="bfloat16,float16", help="comma-separated: bfloat16, float16")
    parser.add_argument("--llama-layers", type=int, default=4, help="decoder layers of the Llama-shaped model")
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / f"{NAME}.json")
    parser.add_argument("--variants", default="", help="comma-separated words: run only variants named with one")
    parser.add_argument("--update", action="store_true", help="keep the results file's rows not measured again")
    parser.add_argument("--phases", default="prefill,decode",
                        help="Llama phases, comma-separated: prefill, prefill-graphs, decode, decode-compiled")
    args = parser.parse_args(argv)
    device = resolve_device("cuda", f"{NAME}.json")
    if device is None:
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    phases = tuple(args.phases.split(","))
    if not set(phases) <= {"prefill", "prefill-graphs", "decode", "decode-compiled"}:
        parser.error(f"--phases takes prefill, prefill-graphs, decode and/or decode-compiled, got {args.phases!r}")
    only = tuple(word for word in args.variants.split(",") if word)
    recorder = Recorder(args.out, device, lambda line: print(line, flush=True), only, args.update)
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        if "vit" in args.models:
            run_vit(dtype, device, recorder)
        if "llama" in args.models:
            run_llama(dtype, device, recorder, args.llama_layers, phases)
        if "stream" in args.models:
            run_stream_kernels(dtype, recorder)
        if "decode" in args.models:
            run_decode_kernels(dtype, recorder)
    recorder.figures["speedups"] = speedups(recorder.figures["vit"] + recorder.figures["llama"])
    recorder.save()
    for row in recorder.figures["speedups"]:
        print(row, flush=True)
    print(f"wrote {args.out}")
    return 1 if recorder.figures["failures"] else 0
