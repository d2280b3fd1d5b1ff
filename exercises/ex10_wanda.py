"""Exercise 10: Wanda, pruning by weights and activations, for one linear layer.

Lecture: lectures/10_pretrained_transformer.ipynb. Grade with `sparsity-lab grade ex10`.

Wanda (Sun et al. 2023) prunes a trained layer y = x Wᵀ without retraining and without second derivatives: a
weight matters as much as it moves the output, so its score is its magnitude times the size of the input it
multiplies, measured on calibration inputs x (tokens, in_features):

    score_ij = |W_ij| * ||X_j||_2        (||X_j||: the L2 norm of input feature j over all calibration tokens)

and the weights are compared **within each output row** (each output neuron loses the same share of its
inputs), not across the whole layer. Write:

`wanda_scores(weight, x)`: the scores, shaped like `weight` (out, in). `x` may have any leading dimensions
(..., in_features): every row of `x.reshape(-1, in_features)` is one token. Raise ValueError when the last
dimension of `x` is not in_features. Do not modify `weight` or `x`.

`wanda_mask(weight, x, sparsity=0.5, nm=None)`: a boolean mask shaped like `weight` (True = keep):
- `nm=None`: in every row, the round(sparsity * in_features) lowest scores are dropped (exactly that many per
  row), the others kept; raise ValueError when `sparsity` is not in [0, 1);
- `nm=(n, m)`: N:M along the input dimension: in every row, each group of m consecutive inputs keeps its n
  highest scores (exactly n); `sparsity` is ignored; raise ValueError unless 0 < n < m and m divides in_features.
Ties (equal scores in a row or group) may be broken any way you like; the graders use distinct values.

Worked example:

    weight = [[1.0, -2.0,  3.0, -4.0],        x = [[3.0, 0.0, 1.0, 2.0],     ||X_j|| = [5, 1, 1, 2]
              [0.5,  6.0, -1.0,  1.0]]             [4.0, 1.0, 0.0, 0.0]]

    wanda_scores(weight, x) = [[5.0, 2.0, 3.0, 8.0],
                               [2.5, 6.0, 1.0, 2.0]]
    wanda_mask(weight, x, 0.5)         = [[True, False, False, True],    (magnitude alone would keep -4 and 3:
                                          [True, True,  False, False]]    [[False, False, True, True], ...])
    wanda_mask(weight, x, nm=(1, 2))   = [[True, False, False, True],    (groups: inputs 0-1 and 2-3)
                                          [False, True, False, True]]

Hint: `x.reshape(-1, x.shape[-1]).norm(dim=0)` gives ||X_j||; `torch.argsort(scores, dim=1)` sorts every row;
for N:M, `scores.reshape(out, in // m, m)` puts every group on the last axis.
"""

import torch


def wanda_scores(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 over the calibration tokens in `x` (..., in_features), shaped like `weight`."""
    raise NotImplementedError("ex10: write wanda_scores")


def wanda_mask(weight: torch.Tensor, x: torch.Tensor, sparsity: float = 0.5,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Wanda's boolean mask (True = keep): per output row at `sparsity`, or N:M along the inputs with nm=(n, m)."""
    raise NotImplementedError("ex10: write wanda_mask")
