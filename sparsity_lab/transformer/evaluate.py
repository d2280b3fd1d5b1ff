"""How far a pruned sentence encoder drifts from the dense one, on evaluation sentences it never saw.

With no labelled benchmark offline, the dense model's own embeddings are the reference (`agreement`):

- ``spearman``: Spearman rank correlation between the dense and the pruned pairwise cosine similarities (all
  N(N-1)/2 pairs): does the pruned model still rank sentence pairs as the dense one does? (1 = the same order);
- ``recall_at_10``: the share of each sentence's 10 nearest neighbours (dense) that are also among its 10 nearest
  (pruned), averaged over sentences;
- ``mean_cosine``: the mean cosine between each sentence's pruned and dense embedding.

`module_accuracy` adds a small labelled task that the docstring sentences bring along: leave-one-out 1-nearest
neighbour accuracy at telling which stdlib module a sentence came from (chance is about 1 / number of modules).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

NEIGHBOURS = 10
MEASURES = ("spearman", "recall_at_10", "mean_cosine", "module_accuracy")


def ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor in float64, tied values sharing the mean of their ranks (as Spearman needs)."""
    if values.ndim != 1:
        raise ValueError(f"ranks needs a 1-D tensor, got shape {tuple(values.shape)}")
    ordered, order = torch.sort(values.to(torch.float64), stable=True)
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2  # mean of ranks end - count + 1 .. end
    out = torch.empty_like(ordered)
    out[order] = torch.repeat_interleave(mean_rank, counts)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally long 1-D tensors (ties get mean ranks)."""
    if a.shape != b.shape or a.ndim != 1 or a.numel() < 2:
        raise ValueError(f"spearman needs two 1-D tensors of the same length >= 2, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-300))


def pairwise_cosines(embeddings: torch.Tensor) -> torch.Tensor:
    """The cosine similarity of every pair i < j of rows, as one 1-D tensor (row-major upper triangle)."""
    unit = F.normalize(embeddings.to(torch.float64), dim=1)
    rows, cols = torch.triu_indices(len(unit), len(unit), offset=1)
    return (unit @ unit.T)[rows, cols]


def _neighbours(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    unit = F.normalize(embeddings.to(torch.float64), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-torch.inf)  # a sentence is not its own neighbour
    return similarity.topk(k, dim=1).indices


def neighbour_recall(dense: torch.Tensor, pruned: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Mean over sentences of |dense top-k ∩ pruned top-k| / k (cosine neighbours, the sentence itself excluded)."""
    if not 1 <= k < len(dense):
        raise ValueError(f"k must be in [1, {len(dense) - 1}] for {len(dense)} sentences, got {k}")
    a, b = _neighbours(dense, k), _neighbours(pruned, k)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).sum(1)
    return float(hits.double().mean() / k)


def mean_cosine(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """Mean cosine between each sentence's pruned and dense embedding."""
    return float(F.cosine_similarity(dense.to(torch.float64), pruned.to(torch.float64), dim=1).mean())


def module_accuracy(embeddings: torch.Tensor, labels: Sequence[str]) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of predicting each sentence's label from the others'."""
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(labels)} labels for {len(embeddings)} embeddings")
    nearest = _neighbours(embeddings, 1)[:, 0]
    return sum(labels[int(j)] == label for j, label in zip(nearest, labels, strict=True)) / len(labels)


def agreement(dense: torch.Tensor, pruned: torch.Tensor, labels: Sequence[str] | None = None,
              k: int = NEIGHBOURS) -> dict[str, float]:
    """The pruned embeddings' agreement with the dense ones (and, with `labels`, the module task's accuracy)."""
    if dense.shape != pruned.shape:
        raise ValueError(f"dense {tuple(dense.shape)} and pruned {tuple(pruned.shape)} embeddings differ in shape")
    out = {"spearman": spearman(pairwise_cosines(dense), pairwise_cosines(pruned)),
           f"recall_at_{k}": neighbour_recall(dense, pruned, k),
           "mean_cosine": mean_cosine(dense, pruned)}
    if labels is not None:
        out["module_accuracy"] = module_accuracy(pruned, labels)
    return out
