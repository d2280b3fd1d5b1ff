"""Shared pytest setup: the `--grade-from` option the graders use, and GPU skipping."""

from __future__ import annotations

import os

import pytest
import torch

try:  # a development dependency: the graders, which students run from the course environment, do not need it
    from hypothesis import settings
except ImportError:
    settings = None

if settings is not None:  # property tests stay quick on CI's 2 cores; deadline off: the first example pays imports
    settings.register_profile("ci", max_examples=60, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--grade-from",
        choices=("exercises", "solutions"),
        default=None,
        help="where graders import the code under test (default: $SPARSITY_LAB_GRADE_FROM or exercises)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def grade_from(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--grade-from") or os.environ.get("SPARSITY_LAB_GRADE_FROM", "exercises")
