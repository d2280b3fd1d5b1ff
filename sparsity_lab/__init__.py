"""sparsity_lab: neural-network sparsity in PyTorch, as a course and as a library.

`sparsify_(model, config, filter_fn=None)` is the one way to make a model sparse; each technique has a frozen
config (`PruneConfig`, `Semi24Config`, `Int8Config`, `Fp8Config`, `BlockSparseConfig`, `Semi24TrainingConfig`).
`tune_(model, example)` then chooses each swapped layer's route from timings of the whole model. The topics
live in sub-packages (`pruning`, `patterns`, `formats`, `gpu`, `semi24`, `block`, `quant`, `training`), the course
plumbing in `course`. The package needs only torch and numpy; course helpers (plots, widgets, the digits data)
import their extra dependencies lazily and say which extra to install when one is missing.
"""

from sparsity_lab.dispatch import tune_
from sparsity_lab.sparsify import (
    BlockSparseConfig,
    Fp8Config,
    Int8Config,
    LayerReport,
    PruneConfig,
    Report,
    Semi24Config,
    Semi24TrainingConfig,
    sparsify_,
)

__version__ = "0.1.0"
__all__ = ["BlockSparseConfig", "Fp8Config", "Int8Config", "LayerReport", "PruneConfig", "Report", "Semi24Config",
           "Semi24TrainingConfig", "sparsify_", "tune_"]
