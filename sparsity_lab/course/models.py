"""Small models for the digits data: big enough to prune meaningfully, small enough for a 2-core CPU."""

from __future__ import annotations

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """64 -> hidden -> hidden -> 10 with ReLU (or tanh, as in the OBD paper's networks)."""

    def __init__(self, hidden: int = 256, activation: str = "relu") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in act:
            raise ValueError(f"activation must be one of {sorted(act)}, got {activation!r}")
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            act[activation](),
            nn.Linear(hidden, hidden),
            act[activation](),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and a linear head for (N, 1, 8, 8) digit images."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
