"""Solution to exercise 10: Wanda, pruning by weights and activations, for one linear layer."""

import torch


def wanda_scores(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 over the calibration tokens in `x` (..., in_features), shaped like `weight`."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but the weight has in_features={weight.shape[1]}")
    norms = x.detach().reshape(-1, x.shape[-1]).norm(dim=0)  # one norm per input feature, over every token
    return weight.detach().abs() * norms.to(weight.dtype)


def wanda_mask(weight: torch.Tensor, x: torch.Tensor, sparsity: float = 0.5,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Wanda's boolean mask (True = keep): per output row at `sparsity`, or N:M along the inputs with nm=(n, m)."""
    scores = wanda_scores(weight, x)
    out_features, in_features = scores.shape
    if nm is not None:
        n, m = nm
        if not 0 < n < m or in_features % m:
            raise ValueError(f"N:M needs 0 < n < m and m dividing in_features={in_features}, got {n}:{m}")
        groups = scores.reshape(out_features, in_features // m, m)
        drop = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]  # the m - n lowest of every group
        return torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).reshape(scores.shape)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    drop = torch.argsort(scores, dim=1, stable=True)[:, : round(sparsity * in_features)]  # lowest of each row
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, drop, False)
