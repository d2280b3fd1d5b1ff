"""scikit-learn's bundled digits (8x8 images, 10 classes): real data that needs no download.

The split is fixed (stratified, 75% train / 25% test, seed 0) so every lecture, exercise and test sees
the same numbers. Pixel values 0..16 are scaled to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from sparsity_lab._optional import require

SPLIT_SEED = 0
TEST_FRACTION = 0.25


@dataclass(frozen=True)
class Digits:
    """The fixed train/test split as float32 inputs and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_features(self) -> int:
        return int(self.x_train[0].numel())

    def as_images(self) -> Digits:
        """The same split with inputs shaped (N, 1, 8, 8) for convolutional models."""
        return Digits(self.x_train.reshape(-1, 1, 8, 8), self.y_train, self.x_test.reshape(-1, 1, 8, 8), self.y_test)


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets")
    model_selection = require("sklearn.model_selection")
    bunch = datasets.load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return tuple(
        model_selection.train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    )


def load_digits(images: bool = False) -> Digits:
    """The digits split as tensors (flat 64-feature vectors, or (N, 1, 8, 8) images when `images`)."""
    x_train, x_test, y_train, y_test = _arrays()
    data = Digits(*(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)))
    return data.as_images() if images else data
