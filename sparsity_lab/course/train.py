"""A plain, seeded training loop with a progress bar, and evaluation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from sparsity_lab.course.data import Digits, load_digits
from sparsity_lab.course.models import DigitsMLP


@dataclass
class History:
    """Per-epoch training loss and test accuracy of one `fit` call."""

    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, leave=False)


def fit(
    model: nn.Module,
    data: Digits,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> History:
    """Train `model` with Adam on `data.x_train`, shuffled with `seed`; returns the per-epoch history.

    Masks attached with `sparsity_lab.pruning.prune.apply_mask` stay in force, so this is also the fine-tuning loop.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History()
    n = data.x_train.shape[0]
    with _progress(epochs, progress, "training") as bar:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * idx.numel()
            history.train_loss.append(total / n)
            history.test_accuracy.append(evaluate(model, data.x_test, data.y_test)[1])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", test_acc=f"{history.test_accuracy[-1]:.3f}")
    return history


def trained_mlp(seed: int = 0, epochs: int = 30, hidden: int = 256, progress: bool = True) -> nn.Module:
    """A DigitsMLP trained from `seed` on the fixed split (about 97% test accuracy, a few seconds on a CPU)."""
    torch.manual_seed(seed)
    model = DigitsMLP(hidden=hidden)
    fit(model, load_digits(), epochs=epochs, seed=seed, progress=progress)
    return model.eval()

