"""Shared pytest setup: the `--grade-from` option the graders use, and GPU skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

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
def interpreted() -> Callable[[str], object]:
    """Run a test file as a script under Triton's CPU interpreter (TRITON_INTERPRET=1 must be set before Triton is
    first imported, so the kernels run in a child process) and return the JSON its last output line holds."""
    pytest.importorskip("triton")

    def run(test_file: str) -> object:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        out = subprocess.run([sys.executable, test_file], env=env, capture_output=True, text=True, timeout=600,
                             cwd=Path(test_file).parent)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="session")
def grade_from(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--grade-from") or os.environ.get("SPARSITY_LAB_GRADE_FROM", "exercises")
