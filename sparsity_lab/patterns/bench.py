"""Benchmark: the full pattern study on the digits MLP (CPU), recorded as `recorded/pattern_study.json`.

`sparsity-lab bench pattern_study [--seeds 10] [--finetune-epochs 5] [--out PATH]`: trains one MLP per seed,
measures every table and sweep point of `sparsity_lab.patterns.study` before and after fine-tuning, and writes the
rows, their per-point summary, the paired 2:4-vs-unstructured (and 1:4-vs-unstructured) differences and the
damage-order checks in one results file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.patterns import study

NAME = "pattern_study"
# (pattern, baseline, sparsity): the comparisons the lecture asks about.
PAIRS = (("2:4", "unstructured", 0.5), ("4:8", "unstructured", 0.5), ("2:4", "4:8", 0.5),
         ("1:4", "unstructured", 0.75), ("2:8", "unstructured", 0.75), ("row", "2:4", 0.5), ("row", "1:4", 0.75))
ORDERS = (("unstructured", "2:4", "row"), ("unstructured", "4:8", "row"))
ORDERS_75 = (("unstructured", "1:4", "row"), ("unstructured", "2:8", "row"))


def figures(rows: list[dict], config: study.StudyConfig, seconds: float) -> dict:
    """The results file's figures: config, rows, summary, paired differences and damage-order checks."""
    summary = study.summarize(rows)
    measures = [m for m in study.MEASURES if m in rows[0]]
    pairs = [study.paired_difference(rows, a, b, s, m) for a, b, s in PAIRS for m in measures]
    orders = [study.damage_order(summary, order, s, m)
              for s, group in ((0.5, ORDERS), (0.75, ORDERS_75)) for order in group for m in measures]
    return {"config": study.config_dict(config), "layers_pruned": list(config.layers), "seconds": seconds,
            "rows": rows, "summary": summary, "paired_differences": pairs, "damage_order": orders}


def main(argv: list[str]) -> int:
    """Run the study and write its results file; prints where."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench pattern_study", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (0..N-1), one trained MLP each")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--no-sweep", action="store_true", help="only the 50%% / 75%% table points")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the MLP is too small to gain from more)")
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / f"{NAME}.json")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the study reports spread over seeds)")
    config = study.StudyConfig(seeds=tuple(range(args.seeds)), hidden=args.hidden, train_epochs=args.train_epochs,
                               finetune_epochs=args.finetune_epochs)
    points = study.study_points(sweep_families=() if args.no_sweep else study.SWEEP_FAMILIES)
    with study.torch_threads(args.threads):  # inside, so the recorded device names the threads used
        start = time.perf_counter()
        rows = study.run_pattern_study(points, config, progress=True, threads=None)
        seconds = time.perf_counter() - start
        path = save_results(NAME, figures(rows, config, seconds), args.out, environment=record_environment("cpu"))
        print(f"{len(rows)} rows ({len(points)} points x {args.seeds} seeds) in {seconds:.0f} s "
              f"on {torch.get_num_threads()} threads -> {path}")
    return 0
