"""The pattern study: how much each sparsity pattern damages the digits MLP, one-shot and after fine-tuning.

For every seed a `DigitsMLP` is trained from that seed; then for every (pattern, sparsity) point a copy has its
hidden layers (`LAYERS`: the 256x64 and 256x256 weights, 97% of the weights; the 10-way classifier stays dense
for every pattern so that row pruning does not delete classes) masked by |w| in that pattern and is measured:

- ``accuracy`` and ``loss`` on the test split, and ``loss_increase`` = loss - the dense model's loss;
- ``weight_error``: ||W - W*M|| / ||W|| over the pruned layers (Frobenius; the share of weight norm removed);
- the same accuracy and loss again after ``finetune_epochs`` of training with the mask held fixed
  (``finetuned_accuracy``, ``finetuned_loss_increase``, still relative to the dense model).

Pairs of patterns are compared seed by seed on the same trained model (`paired_difference`), which removes the
seed-to-seed spread of the dense models from the comparison. `sparsity_lab.patterns.bench` runs the full
study and records it; the lecture runs a small version live.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sparsity_lab.course.data import Digits, load_digits
from sparsity_lab.course.train import evaluate, fit, trained_mlp
from sparsity_lab.patterns.masks import parse_pattern, pattern_masks
from sparsity_lab.pruning.prune import apply_mask, make_permanent

LAYERS = ("net.1", "net.3")
TABLE_PATTERNS = {
    0.5: ("unstructured", "2:4", "4:8", "block 4x4", "block 8x8", "row"),
    0.75: ("unstructured", "1:4", "2:8", "block 4x4", "block 8x8", "row"),
}
SWEEP_FAMILIES = ("unstructured", "N:8", "block 4x4", "block 8x8", "row")
SWEEP_SPARSITIES = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
# Means closer than this are ties (accuracies are float32 means of 0/1 over 450 test images).
TIE = 1e-6
MEASURES = ("accuracy", "loss_increase", "weight_error", "finetuned_accuracy", "finetuned_loss_increase")
# Damage grows with these measures (+1) or shrinks with them (-1, the accuracies).
DAMAGE_SIGN = {"accuracy": -1, "finetuned_accuracy": -1, "loss_increase": 1, "weight_error": 1,
               "finetuned_loss_increase": 1, "loss": 1, "finetuned_loss": 1}


@dataclass(frozen=True)
class StudyConfig:
    """What is trained and how long: the seeds, the MLP's width, training and fine-tuning epochs, pruned layers."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    hidden: int = 256
    train_epochs: int = 30
    finetune_epochs: int = 5
    layers: tuple[str, ...] = LAYERS


def family_of(pattern: str) -> str:
    """The family a pattern belongs to across sparsities: '2:8' -> 'N:8'; other names are their own family."""
    parsed = parse_pattern(pattern)
    return f"N:{parsed.m}" if parsed.kind == "nm" else parsed.name


def family_pattern(family: str, sparsity: float) -> str:
    """The member of `family` at `sparsity`: ('N:8', 0.75) -> '2:8'; a ValueError where N would not be whole."""
    if family.startswith("N:"):
        m = int(family[2:])
        n = m * (1.0 - sparsity)
        if abs(n - round(n)) > 1e-9 or not 0 < round(n) < m:
            raise ValueError(f"family {family!r} has no member at sparsity {sparsity}: N = {m} * (1 - s) = {n:g}")
        return f"{round(n)}:{m}"
    return parse_pattern(family).name


def study_points(
    table: dict[float, Sequence[str]] = TABLE_PATTERNS,
    sweep_families: Sequence[str] = SWEEP_FAMILIES,
    sweep_sparsities: Sequence[float] = SWEEP_SPARSITIES,
) -> list[tuple[str, float]]:
    """The (pattern, sparsity) points to measure: the table's, then the sweep's, without repeats."""
    points = [(parse_pattern(p).name, float(s)) for s, patterns in table.items() for p in patterns]
    points += [(family_pattern(f, s), float(s)) for f in sweep_families for s in sweep_sparsities]
    return list(dict.fromkeys(points))


def relative_weight_error(model: nn.Module, masks: dict[str, torch.Tensor]) -> float:
    """||W - W*M|| / ||W|| over the masked layers together (Frobenius norms)."""
    modules = dict(model.named_modules())
    removed = total = 0.0
    for name, mask in masks.items():
        weight = modules[name].weight.detach().to(torch.float64)
        removed += float((weight * ~mask).pow(2).sum())
        total += float(weight.pow(2).sum())
    return math.sqrt(removed / total) if total else 0.0


def measure_point(
    model: nn.Module, data: Digits, pattern: str, sparsity: float, config: StudyConfig, seed: int
) -> dict[str, Any]:
    """One row of the study: `model` (trained, dense) pruned in `pattern` at `sparsity`, then fine-tuned."""
    dense_loss, dense_accuracy = evaluate(model, data.x_test, data.y_test)
    pruned = copy.deepcopy(model)
    nm_fixed = parse_pattern(pattern).fixed_sparsity is not None
    masks = pattern_masks(pruned, pattern, None if nm_fixed else sparsity, config.layers)
    modules = dict(pruned.named_modules())
    for name, mask in masks.items():
        apply_mask(modules[name], mask)
    kept = sum(int(m.sum()) for m in masks.values())
    numel = sum(m.numel() for m in masks.values())
    loss, accuracy = evaluate(pruned, data.x_test, data.y_test)
    row = {
        "seed": seed, "pattern": parse_pattern(pattern).name, "family": family_of(pattern),
        "sparsity": float(sparsity), "achieved_sparsity": 1.0 - kept / numel,
        "dense_accuracy": dense_accuracy, "dense_loss": dense_loss,
        "accuracy": accuracy, "loss": loss, "loss_increase": loss - dense_loss,
        "weight_error": relative_weight_error(model, masks),
    }
    if config.finetune_epochs:
        fit(pruned, data, epochs=config.finetune_epochs, seed=seed, progress=False)
        make_permanent(pruned)
        ft_loss, ft_accuracy = evaluate(pruned, data.x_test, data.y_test)
        row.update(finetuned_accuracy=ft_accuracy, finetuned_loss=ft_loss, finetuned_loss_increase=ft_loss - dense_loss)
    return row


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with torch using `threads` CPU threads (None: leave as is), then restore the setting."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_pattern_study(
    points: Iterable[tuple[str, float]],
    config: StudyConfig = StudyConfig(),
    data: Digits | None = None,
    progress: bool = False,
    threads: int | None = 1,
) -> list[dict[str, Any]]:
    """Every point measured on every seed's trained MLP: a list of rows (see `measure_point`).

    Runs on `threads` torch threads (restored after): the MLP is too small to gain from more, and on a shared
    CPU extra threads mostly spin (5x slower measured with 2 threads on 2 busy cores). Results do not depend on it.
    """
    points = list(points)
    data = data if data is not None else load_digits()
    rows = []
    bar = None
    if progress:
        from sparsity_lab._optional import require

        bar = require("tqdm.auto").tqdm(total=len(config.seeds) * len(points), desc="pattern study", leave=False)
    with torch_threads(threads):
        for seed in config.seeds:
            model = trained_mlp(seed=seed, epochs=config.train_epochs, hidden=config.hidden, progress=False)
            for pattern, sparsity in points:
                rows.append(measure_point(model, data, pattern, sparsity, config, seed))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _stats(values: Sequence[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return {"mean": float(t.mean()), "std": std, "min": float(t.min()), "max": float(t.max())}


def summarize(rows: Sequence[dict[str, Any]], measures: Sequence[str] = MEASURES) -> list[dict[str, Any]]:
    """Per (pattern, sparsity): the number of seeds and each measure's mean, std (n-1), min and max over seeds."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["pattern"], row["sparsity"]), []).append(row)
    summary = []
    for (pattern, sparsity), group in groups.items():
        entry = {"pattern": pattern, "family": group[0]["family"], "sparsity": sparsity, "n_seeds": len(group),
                 "achieved_sparsity": group[0]["achieved_sparsity"]}
        for measure in measures:
            if measure in group[0]:
                for stat, value in _stats([r[measure] for r in group]).items():
                    entry[f"{measure}_{stat}"] = value
        summary.append(entry)
    return summary


# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom (checked against scipy in the tests).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_critical_95(df: int) -> float:
    """Student's t two-sided 5% critical value for `df` degrees of freedom (the normal 1.96 past 30)."""
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def paired_difference(
    rows: Sequence[dict[str, Any]], a: str, b: str, sparsity: float, measure: str
) -> dict[str, Any]:
    """measure(a) - measure(b) seed by seed at `sparsity`: mean, std, 95% interval and whether it separates a, b.

    "separates" is a two-sided paired t-test at the 5% level: the mean is more than `t_critical_95(n - 1)`
    standard errors from zero (``ci95`` is that many standard errors). A difference that is the same on every
    seed (std 0) separates when it is not zero.
    """
    def by_seed(pattern: str) -> dict[int, float]:
        return {r["seed"]: r[measure] for r in rows if r["pattern"] == pattern and r["sparsity"] == sparsity}

    first, second = by_seed(parse_pattern(a).name), by_seed(parse_pattern(b).name)
    seeds = sorted(set(first) & set(second))
    if not seeds:
        raise ValueError(f"no seed has both {a!r} and {b!r} at sparsity {sparsity} measured by {measure!r}")
    diffs = [first[s] - second[s] for s in seeds]
    stats = _stats(diffs)
    if len(diffs) < 2:
        raise ValueError(f"a paired difference needs at least 2 seeds, got {len(diffs)}")
    stderr = stats["std"] / math.sqrt(len(diffs))
    ci95 = t_critical_95(len(diffs) - 1) * stderr
    separates = abs(stats["mean"]) > ci95 if stderr > 0 else stats["mean"] != 0
    return {"a": a, "b": b, "sparsity": sparsity, "measure": measure, "n_seeds": len(diffs), "diffs": diffs,
            **stats, "stderr": stderr, "ci95": ci95, "separates": bool(separates)}


def damage_order(
    summary: Sequence[dict[str, Any]], patterns: Sequence[str], sparsity: float, measure: str
) -> dict[str, Any]:
    """Whether mean damage by `measure` grows strictly in the order `patterns` are given (unstructured, 2:4, row).

    Means within `TIE` of each other count as equal, so a tie never "holds".
    """
    means = {}
    for pattern in patterns:
        name = parse_pattern(pattern).name
        entry = next((e for e in summary if e["pattern"] == name and e["sparsity"] == sparsity), None)
        if entry is None or f"{measure}_mean" not in entry:
            raise ValueError(f"the summary has no {measure!r} for {name!r} at sparsity {sparsity}")
        means[name] = entry[f"{measure}_mean"]
    damage = [DAMAGE_SIGN[measure] * means[parse_pattern(p).name] for p in patterns]
    holds = all(y - x > TIE for x, y in zip(damage, damage[1:], strict=False))
    ranked = sorted(means, key=lambda n: DAMAGE_SIGN[measure] * means[n])
    return {"sparsity": sparsity, "measure": measure, "claimed": [parse_pattern(p).name for p in patterns],
            "least_to_most_damage": ranked, "means": means, "holds": holds}


def config_dict(config: StudyConfig) -> dict[str, Any]:
    """The config as JSON-ready data (for results files)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
