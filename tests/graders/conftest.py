"""Graders import the student's module from exercises/ (default) or the reference from solutions/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_exercise(name: str, source: str) -> ModuleType:
    """Import `<source>/<name>.py` as a fresh module (so exercises and solutions never shadow each other)."""
    path = ROOT / source / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: graders expect {source}/{name}.py")
    spec = importlib.util.spec_from_file_location(f"_graded_{source}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exercise(request: pytest.FixtureRequest, grade_from: str) -> ModuleType:
    """The module under test: the grader file names it in its module-level EXERCISE constant."""
    return load_exercise(request.module.EXERCISE, grade_from)
