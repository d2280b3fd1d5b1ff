"""The MiniLM study: magnitude, Wanda and SparseGPT at 50% unstructured, 2:4 and 4:8, before and after a short
distillation fine-tune, and which layers the damage comes from.

Every pruned model prunes the encoder's 36 linear weights (the 11.9M embedding parameters stay dense) at 50%:

- **magnitude**: `sparsify_(model, PruneConfig(sparsity=0.5, pattern=...))`, |w| per layer;
- **Wanda**: the library's score |W_ij| ||X_j|| (`pruning.saliency.wanda`, here on one layer and its recorded
  inputs), compared per output row for unstructured sparsity as the paper does, per group of M for N:M;
- **SparseGPT**: `pruning.sparsegpt.sparsegpt_prune` on H = 2XᵀX, which also rewrites the kept weights.

Wanda and SparseGPT calibrate sequentially, as both papers do: block by block, and inside a block layer group by
layer group (query/key/value, which share an input; the attention output; the FFN's intermediate; its output),
each group's inputs are recorded with every earlier pruned layer already in place, on the real (non-padding)
tokens of the calibration sentences. Masks are attached with `pruning.prune.apply_mask`.

OBD with the diagonal Hessian of this layer-wise objective is Wanda: h_jj = 2 ||X_j||², so OBD's ½ h_jj w² =
(|w| ||X_j||)², the square of Wanda's score, and ranks every weight the same way (the tests check it). The
end-to-end OBD (the Hessian diagonal of the encoder's own loss) would need second derivatives through 22M
parameters, which the library's estimators are not built for, so it is not in the study.

`finetune` distils the pruned model towards the dense embeddings of the calibration sentences (1 - cosine), with
the masks held fixed by parametrize and the embeddings frozen. `agreement` is measured on evaluation sentences
disjoint from the calibration ones (`evaluate`). `sensitivity` prunes one linear type (in all blocks) or one
block (all its linears) at a time.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sparsity_lab._optional import require
from sparsity_lab.patterns.masks import nm_mask, parse_pattern
from sparsity_lab.pruning.prune import apply_mask, current_mask, ranking_values
from sparsity_lab.pruning.saliency import wanda
from sparsity_lab.pruning.sparsegpt import DEFAULT_BLOCKSIZE, DEFAULT_PERCDAMP, hessian, sparsegpt_prune
from sparsity_lab.sparsify import PruneConfig, sparsify_
from sparsity_lab.transformer.evaluate import MEASURES, agreement
from sparsity_lab.transformer.minilm import LINEAR_TYPES, BertEncoder, batches, linear_names
from sparsity_lab.transformer.text import split_texts

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERNS = ("unstructured", "2:4", "4:8")
SPARSITY = 0.5
# The linears of a block in the order the block computes them; each group shares one input.
GROUPS = (("attn.query", "attn.key", "attn.value"), ("attn.output",), ("ffn.intermediate",), ("ffn.output",))
# LLaMA-2-7B, WikiText-2 perplexity at 2:4 (Sun et al. 2023, Wanda, Table 3); dense 5.12.
LLAMA_2_7B_24 = {"dense": 5.12, "magnitude": 54.6, "sparsegpt": 10.17, "wanda": 11.02}
FAR_BEHIND = 2.0  # "far behind": magnitude's damage at least this many times the worse of Wanda and SparseGPT


@dataclass(frozen=True)
class StudyConfig:
    """Sizes and settings: sentences for calibration and evaluation, tokens per sentence, fine-tuning, SparseGPT."""

    n_calibration: int = 1024
    n_evaluation: int = 768
    max_length: int = 128
    batch_size: int = 64
    finetune_epochs: int = 3
    finetune_batch: int = 32
    finetune_lr: float = 2e-4
    percdamp: float = DEFAULT_PERCDAMP
    blocksize: int = DEFAULT_BLOCKSIZE
    seed: int = 0
    sensitivity_pattern: str = "2:4"


Batch = tuple[torch.Tensor, torch.Tensor]  # (ids, mask)


@dataclass
class StudyData:
    """Tokenised calibration and evaluation sentences, and the dense model's embeddings of both."""

    calibration: list[Batch]
    calibration_targets: list[torch.Tensor]
    evaluation: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (positions, ids, mask)
    labels: list[str]
    dense: torch.Tensor  # evaluation embeddings of the dense model
    calibration_texts: list[str]
    evaluation_texts: list[str]


@torch.no_grad()
def prepare(model: BertEncoder, config: StudyConfig) -> StudyData:
    """Split the stdlib sentences, tokenise them and embed both sets with the dense `model`."""
    calibration, evaluation = split_texts(config.n_calibration, config.n_evaluation, seed=config.seed)
    cal_texts, eval_texts = [s.text for s in calibration], [s.text for s in evaluation]
    cal = [(ids, mask) for _, ids, mask in batches(model.tokenizer, cal_texts, config.finetune_batch,
                                                   config.max_length)]
    ev = list(batches(model.tokenizer, eval_texts, config.batch_size, config.max_length))
    model.eval()
    data = StudyData(cal, [model.embed(ids, mask) for ids, mask in cal], ev, [s.module for s in evaluation],
                     torch.empty(0), cal_texts, eval_texts)
    data.dense = embed_all(model, data)
    return data


@torch.no_grad()
def embed_all(model: BertEncoder, data: StudyData) -> torch.Tensor:
    """The evaluation sentences' embeddings by `model`, in their original order."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(data.labels), model.config.hidden)
    for index, ids, mask in data.evaluation:
        out[index] = model.embed(ids, mask).float()
    model.train(was_training)
    return out


def measure(model: BertEncoder, data: StudyData) -> dict[str, float]:
    """`evaluate.agreement` of `model` with the dense embeddings, plus the module task's accuracy."""
    return agreement(data.dense, embed_all(model, data), data.labels)


# ------------------------------------------------------------------------------------------------ masks
def row_topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop round(sparsity * in) of every row's lowest scores (Wanda's per-output comparison group; ties: the
    lower index is kept, as everywhere in the library)."""
    values = ranking_values(scores)
    keep = values.shape[1] - round(sparsity * values.shape[1])
    kept = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :keep]
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, kept, True)


def wanda_layer_mask(linear: nn.Linear, x: torch.Tensor, pattern: str, sparsity: float = SPARSITY) -> torch.Tensor:
    """Wanda's mask for one layer from its recorded inputs x (tokens, in): the library's |W| ||X_j|| score, per
    output row (unstructured) or per group of M inputs (N:M)."""
    scores = wanda(linear, x)[""]
    parsed = parse_pattern(pattern)
    if parsed.kind == "nm":
        return nm_mask(scores, parsed.n, parsed.m)
    if parsed.kind == "unstructured":
        return row_topk_mask(scores, sparsity)
    raise ValueError(f"the study prunes unstructured or N:M, got {pattern!r}")


# --------------------------------------------------------------------------------------- sequential pruning
class _Stop(Exception):
    """Raised by the recording hook: the rest of the block is not needed."""


@torch.no_grad()
def record_inputs(block: nn.Module, layer: nn.Module, hidden: Sequence[Batch]) -> torch.Tensor:
    """The inputs (real tokens, in_features) that `layer` of `block` sees over the calibration hidden states; the
    block stops at `layer` (nothing after it is computed)."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple) -> None:
        captured.append(inputs[0])
        raise _Stop

    seen = []
    handle = layer.register_forward_pre_hook(hook)
    try:
        for h, mask in hidden:
            try:
                block(h, mask)
            except _Stop:
                seen.append(captured.pop()[mask].float())
            else:
                raise RuntimeError(f"{type(layer).__name__} was not called by the block's forward")
    finally:
        handle.remove()
    return torch.cat(seen)


class _NoBar:
    """What `_progress` returns when no progress bar is wanted."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm bar (tqdm is a course dependency) or a silent stand-in."""
    return require("tqdm.auto").tqdm(total=total, desc=desc, leave=False) if enabled else _NoBar()


@torch.no_grad()
def sequential_prune_(model: BertEncoder, calibration: Sequence[Batch],
                      prune_group: Callable[[list[nn.Linear], torch.Tensor], None], layers: Iterable[str],
                      progress: bool = False) -> None:
    """Prune `layers` of `model` in place, block by block and group by group, each group's inputs recorded with the
    earlier pruned layers in place; `prune_group(linears, x)` prunes linears that share the inputs x (tokens, in)."""
    wanted = set(layers)
    model.eval()
    hidden = [(model.embeddings(ids), mask) for ids, mask in calibration]
    bar = _progress(len(model.blocks) * len(GROUPS), progress, "sequential calibration")
    for b, block in enumerate(model.blocks):
        for group in GROUPS:
            linears = [block.get_submodule(t) for t in group if f"blocks.{b}.{t}" in wanted]
            if linears:
                prune_group(linears, record_inputs(block, block.get_submodule(group[0]), hidden))
            bar.update()
        if b + 1 < len(model.blocks):
            hidden = [(block(h, mask), mask) for h, mask in hidden]
    bar.close()


def _wanda_group(pattern: str) -> Callable[[list[nn.Linear], torch.Tensor], None]:
    def prune_group(linears: list[nn.Linear], x: torch.Tensor) -> None:
        for linear in linears:
            apply_mask(linear, wanda_layer_mask(linear, x, pattern))

    return prune_group


def _sparsegpt_group(pattern: str, config: StudyConfig) -> Callable[[list[nn.Linear], torch.Tensor], None]:
    def prune_group(linears: list[nn.Linear], x: torch.Tensor) -> None:
        h = hessian(x)[0]  # one H for the layers that share x
        for linear in linears:
            weight, mask = sparsegpt_prune(linear.weight, h, pattern, SPARSITY, config.blocksize, config.percdamp)
            linear.weight.copy_(weight)
            apply_mask(linear, mask)

    return prune_group


def prune(model: BertEncoder, method: str, pattern: str, calibration: Sequence[Batch], config: StudyConfig,
          layers: Sequence[str] | None = None, progress: bool = False) -> BertEncoder:
    """A copy of `model` with `layers` (default: all 36 linears) pruned at 50% in `pattern` by `method`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    names = list(linear_names(model) if layers is None else layers)
    unknown = set(names) - set(linear_names(model))
    if unknown:
        raise ValueError(f"not linear layers of the encoder: {sorted(unknown)}")
    pruned = copy.deepcopy(model)
    if method == "magnitude":
        sparsify_(pruned, PruneConfig(sparsity=SPARSITY, pattern=pattern), lambda m, fqn: fqn in names)
    else:
        group_fn = _wanda_group(pattern) if method == "wanda" else _sparsegpt_group(pattern, config)
        sequential_prune_(pruned, calibration, group_fn, names, progress)
    return pruned


def pruned_sparsity(model: BertEncoder) -> float:
    """The share of zeros over the encoder's 36 linear weights."""
    weights = [model.get_submodule(n).weight for n in linear_names(model)]
    return float(sum((w == 0).sum() for w in weights)) / sum(w.numel() for w in weights)


# ------------------------------------------------------------------------------------------------ fine-tune
def finetune(model: BertEncoder, data: StudyData, config: StudyConfig, progress: bool = False) -> list[float]:
    """Distil `model` towards the dense embeddings of the calibration sentences, in place (1 - cosine, AdamW,
    masks held by parametrize, embeddings frozen); returns the mean loss of each epoch."""
    params = [p for name, p in model.named_parameters() if not name.startswith("embeddings.")]
    masks = {n: current_mask(model.get_submodule(n)) for n in linear_names(model)}
    for p in model.embeddings.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=config.finetune_lr, weight_decay=0.0)
    order = list(range(len(data.calibration)))
    rng = random.Random(config.seed)
    bar = _progress(config.finetune_epochs * len(order), progress, "fine-tune")
    losses = []
    model.train()
    for _ in range(config.finetune_epochs):
        rng.shuffle(order)
        total = 0.0
        for i in order:
            ids, mask = data.calibration[i]
            loss = (1.0 - (model.embed(ids, mask) * data.calibration_targets[i]).sum(1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            bar.update()
        losses.append(total / len(order))
    bar.close()
    model.eval()
    for name, mask in masks.items():  # parametrize kept every pruned weight at zero
        weight = model.get_submodule(name).weight
        if bool((weight.detach()[~mask] != 0).any()):
            raise RuntimeError(f"{name}: a pruned weight became nonzero during fine-tuning")
    return losses


# ------------------------------------------------------------------------------------------------- the study
def run_study(model: BertEncoder, data: StudyData, config: StudyConfig, methods: Sequence[str] = METHODS,
              patterns: Sequence[str] = PATTERNS, finetune_epochs: int | None = None, progress: bool = False,
              keep: Sequence[tuple[str, str]] = ()) -> tuple[list[dict[str, Any]], dict[tuple[str, str], BertEncoder]]:
    """One row per (method, pattern): agreement one-shot and after fine-tuning, sparsity, seconds; and the one-shot
    pruned models named in `keep` (method, pattern), for later use. `finetune_epochs` 0 skips fine-tuning."""
    epochs = config.finetune_epochs if finetune_epochs is None else finetune_epochs
    tuned = StudyConfig(**{**asdict(config), "finetune_epochs": epochs})
    rows, kept = [], {}
    for method in methods:
        for pattern in patterns:
            start = time.perf_counter()
            pruned = prune(model, method, pattern, data.calibration, config, progress=progress)
            row = {"method": method, "pattern": pattern, "sparsity": pruned_sparsity(pruned),
                   "prune_seconds": time.perf_counter() - start, **measure(pruned, data)}
            if (method, pattern) in keep:
                kept[method, pattern] = copy.deepcopy(pruned)
            if epochs:
                start = time.perf_counter()
                row["finetune_losses"] = finetune(pruned, data, tuned, progress=progress)
                row["finetune_seconds"] = time.perf_counter() - start
                row.update({f"finetuned_{k}": v for k, v in measure(pruned, data).items()})
            rows.append(row)
    return rows, kept


def sensitivity_groups(model: BertEncoder) -> dict[str, list[str]]:
    """The layer sets pruned alone by `sensitivity`: each linear type in every block, then each block whole."""
    groups = {f"type {t}": linear_names(model, types=(t,)) for t in LINEAR_TYPES}
    groups.update({f"block {b}": linear_names(model, blocks=(b,)) for b in range(len(model.blocks))})
    return groups


def layer_sets(model: BertEncoder) -> dict[str, list[str]]:
    """What the lecture's widget can prune: all 36 linears, each sensitivity group, or one linear alone."""
    return {"all linears": linear_names(model), **sensitivity_groups(model),
            **{name: [name] for name in linear_names(model)}}


def sensitivity(model: BertEncoder, data: StudyData, config: StudyConfig, methods: Sequence[str] = METHODS,
                groups: dict[str, list[str]] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """One row per (method, layer set): the agreement when only that set is pruned (one-shot, in
    `config.sensitivity_pattern`), and its drop from the dense model's 1.0 (1 - spearman)."""
    rows = []
    groups = sensitivity_groups(model) if groups is None else groups
    bar = _progress(len(methods) * len(groups), progress, "sensitivity")
    for method in methods:
        for group, names in groups.items():
            pruned = prune(model, method, config.sensitivity_pattern, data.calibration, config, layers=names)
            scores = measure(pruned, data)
            rows.append({"method": method, "pattern": config.sensitivity_pattern, "group": group,
                         "layers": len(names), **scores, "spearman_drop": 1.0 - scores["spearman"]})
            bar.update()
    bar.close()
    return rows


def dense_row(model: BertEncoder, data: StudyData) -> dict[str, float]:
    """The dense model measured like a pruned one (agreement 1 by construction; the module task's accuracy)."""
    return {"method": "dense", "pattern": "dense", "sparsity": 0.0, **measure(model, data)}


def llama_ordering(rows: Sequence[dict[str, Any]], measure: str = "spearman", pattern: str = "2:4",
                   finetuned: bool = False) -> dict[str, Any]:
    """Does LLaMA-2-7B's 2:4 ordering (SparseGPT < Wanda << magnitude in damage) hold in `rows`? Damage is
    1 - `measure` (every agreement measure is 1 for the dense model); the verdict and its sentence are computed."""
    if measure not in MEASURES[:3]:
        raise ValueError(f"measure must be an agreement measure {MEASURES[:3]}, got {measure!r}")
    key = f"finetuned_{measure}" if finetuned else measure
    found = {r["method"]: 1.0 - r[key] for r in rows if r["pattern"] == pattern and r["method"] in METHODS}
    if set(found) != set(METHODS):
        raise ValueError(f"rows lack {sorted(set(METHODS) - set(found))} at {pattern} for {key}")
    order = sorted(found, key=found.get)
    llama = sorted(METHODS, key=LLAMA_2_7B_24.get)
    ratio = found["magnitude"] / max(found["wanda"], found["sparsegpt"], 1e-12)
    increase = {m: LLAMA_2_7B_24[m] - LLAMA_2_7B_24["dense"] for m in METHODS}
    llama_ratio = increase["magnitude"] / max(increase["wanda"], increase["sparsegpt"])
    same, far = order == llama, ratio >= FAR_BEHIND
    found_text = " < ".join(f"{m} {found[m]:.4f}" for m in order)
    compared = (f"magnitude's damage is {ratio:.1f}x the worse of Wanda and SparseGPT (LLaMA-2-7B's perplexity "
                f"increase: {llama_ratio:.1f}x; far behind means at least {FAR_BEHIND:g}x)")
    if same and far:
        verdict = f"holds here: the same order, and {compared}"
    elif same:
        verdict = f"holds only in part here: the same order, but {compared}"
    else:
        verdict = f"does not hold here: the order differs, and {compared}"
    stage = "after fine-tuning" if finetuned else "one-shot"
    sentence = (f"{stage}, {pattern}, damage = 1 - {measure}: {found_text} (LLaMA-2-7B: {' < '.join(llama)}). "
                f"The LLaMA ordering {verdict}.")
    return {"measure": measure, "pattern": pattern, "finetuned": finetuned, "damage": found, "order": order,
            "llama_order": llama, "same_order": same, "magnitude_ratio": ratio, "holds": same and far,
            "sentence": sentence}
