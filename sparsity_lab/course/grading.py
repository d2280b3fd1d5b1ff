"""Run the graders in tests/graders/ on a student's exercises/ (or on solutions/) and print a short report.

Graders import the code under test through the `exercise` fixture in tests/graders/conftest.py, which reads
the source from the `--grade-from` pytest option or the SPARSITY_LAB_GRADE_FROM environment variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SOURCES = ("exercises", "solutions")


@dataclass(frozen=True)
class Check:
    """One grader test's outcome."""

    exercise: str
    name: str
    passed: bool
    message: str = ""


def grader_files(root: Path, exercise: str | None = None) -> list[Path]:
    """The grader files for `exercise` (e.g. "ex00"), or all of them."""
    files = sorted((root / "tests" / "graders").glob("test_ex*.py"))
    if exercise is not None:
        files = [f for f in files if f.stem.removeprefix("test_").split("_")[0] == exercise]
        if not files:
            known = sorted({f.stem.removeprefix("test_").split("_")[0] for f in grader_files(root)})
            raise ValueError(f"no grader for exercise {exercise!r}; known exercises: {known}")
    return files


def run_graders(root: Path, exercise: str | None = None, source: str = "exercises") -> list[Check]:
    """Run the graders in a pytest subprocess and return one Check per grader test."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    files = grader_files(root, exercise)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
                   f"--junitxml={report}", f"--grade-from={source}", *map(str, files)]
        env = {**os.environ, "SPARSITY_LAB_GRADE_FROM": source}
        subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if not report.exists():
            raise RuntimeError("pytest wrote no report: is pytest installed? (pip install \"sparsity_lab[course]\")")
        return _parse_junit(report)


def _parse_junit(report: Path) -> list[Check]:
    checks = []
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        exercise = module.removeprefix("test_").split("_")[0]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped") is not None
        text = (problem.get("message") or "") if problem is not None else ""
        message = text.splitlines()[0][:200] if text else ""
        checks.append(Check(exercise, case.get("name", "?"), problem is None and not skipped, message))
    return checks


def format_report(checks: list[Check], source: str) -> str:
    """A readable summary: one line per check, a total per exercise."""
    lines = [f"grading {source}/"]
    for exercise in sorted({c.exercise for c in checks}):
        mine = [c for c in checks if c.exercise == exercise]
        passed = sum(c.passed for c in mine)
        lines.append(f"\n{exercise}: {passed}/{len(mine)} checks passed")
        for c in mine:
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}")
            if c.message:
                lines.append(f"        {c.message}")
    return "\n".join(lines)


def grade(root: Path, exercise: str | None = None, source: str = "exercises", verbose: bool = False) -> int:
    """Grade and print the report; exit code 0 only when every check passed."""
    if verbose:
        files = grader_files(root, exercise)
        return subprocess.call([sys.executable, "-m", "pytest", "-o", "addopts=", f"--grade-from={source}",
                                *map(str, files)], cwd=root)
    checks = run_graders(root, exercise, source)
    print(format_report(checks, source))
    return 0 if checks and all(c.passed for c in checks) else 1
