"""The grading mechanism itself: every grader passes on solutions/ and fails on the untouched stubs."""

import subprocess

import pytest

from sparsity_lab.course.cli import find_course_root
from sparsity_lab.course.grading import format_report, grader_files, run_graders

ROOT = find_course_root()
EXERCISES = sorted({f.stem.removeprefix("test_") for f in grader_files(ROOT)})


def _stubs_are_untouched() -> bool:
    try:
        result = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "exercises"], cwd=ROOT)
    except FileNotFoundError:
        return True
    return result.returncode == 0


def test_every_exercise_has_a_stub_a_solution_and_a_grader():
    assert EXERCISES, "no graders found"
    for name in EXERCISES:
        assert (ROOT / "exercises" / f"{name}.py").exists()
        assert (ROOT / "solutions" / f"{name}.py").exists()


def test_every_grader_passes_on_the_solutions():
    checks = run_graders(ROOT, source="solutions")
    failed = [c for c in checks if not c.passed]
    assert checks and not failed, format_report(failed, "solutions")


@pytest.mark.skipif(not _stubs_are_untouched(), reason="exercises/ has local changes (a student's work)")
def test_every_grader_fails_on_the_untouched_stubs():
    checks = run_graders(ROOT, source="exercises")
    passed = [c for c in checks if c.passed]
    assert checks and not passed, "graders that pass on a stub are bugs:\n" + format_report(passed, "exercises")


def test_report_is_readable():
    checks = run_graders(ROOT, exercise="ex00", source="solutions")
    text = format_report(checks, "solutions")
    assert text.splitlines()[2].startswith(f"ex00: {len(checks)}/{len(checks)} checks passed")
