"""The pretrained MiniLM under int8 and FP8 dynamic quantization, alone and on top of 2:4 (lecture 07): how far
each drifts from the dense model's embeddings.

Each method of `sparsity_lab.quant.layers.METHODS` is applied to the encoder's 36 linear layers (the embeddings
stay float) by `quant.layers.method_model`: per-channel weights and per-token activations, FP8 through the float64
reference (so no FP8 hardware is needed); 2:4 is magnitude pruning (`study.prune`), and the quantized 2:4 models
quantize its weights without pruning again. Nothing is calibrated or fine-tuned: the drift is one-shot, measured by
`study.measure` (`evaluate.agreement` against the dense embeddings, and the module task) on evaluation sentences.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sparsity_lab.quant.layers import METHODS, method_model
from sparsity_lab.transformer.minilm import BertEncoder, linear_names
from sparsity_lab.transformer.study import StudyConfig, StudyData, measure, prune

# One calibration sentence, the fewest `prepare` takes (none is used), and 256 evaluation sentences: the whole
# table takes about 20 s on two CPU cores.
LECTURE_CONFIG = StudyConfig(n_calibration=1, n_evaluation=256)


def quantization_rows(model: BertEncoder, data: StudyData, methods: Sequence[str] = METHODS) -> list[dict[str, Any]]:
    """One row per method: its agreement with the dense embeddings of `data` (`study.measure`) and the seconds
    the quantized model took to build and embed the evaluation sentences; `model` is left as it was."""
    names = set(linear_names(model))
    pruned = prune(model, "magnitude", "2:4", data.calibration, StudyConfig())
    rows = []
    for method in methods:
        start = time.perf_counter()
        scores = measure(method_model(method, model, pruned, lambda module, fqn: fqn in names), data)
        rows.append({"method": method, **scores, "seconds": time.perf_counter() - start})
    return rows
