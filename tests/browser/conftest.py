"""Options of the browser check: which JupyterLab server to use, where Chromium is, where screenshots go.

The check runs only when it is given a server (`--jupyter-url` or $SPARSITY_LAB_JUPYTER_URL); the default
`python -m pytest` never collects this folder (pyproject.toml's norecursedirs) and never starts a browser.
`scripts/browser_check.py` starts a server from a course environment and runs this folder against it.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("browser check")
    group.addoption("--jupyter-url", default=os.environ.get("SPARSITY_LAB_JUPYTER_URL"),
                    help="a running JupyterLab with its token, e.g. http://127.0.0.1:8888/lab?token=... "
                         "(default: $SPARSITY_LAB_JUPYTER_URL; without one every test is skipped)")
    group.addoption("--chromium", default=os.environ.get("SPARSITY_LAB_CHROMIUM"),
                    help="the Chromium executable (default: $SPARSITY_LAB_CHROMIUM, else `chromium` on PATH)")
    group.addoption("--lecture-timeout", type=float, default=float(os.environ.get("SPARSITY_LAB_LECTURE_TIMEOUT", 900)),
                    help="seconds one lecture may take to run all its cells (default 900)")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Each lecture's time to run all its cells in the browser, and its result."""
    timings = [value for key in ("passed", "failed") for report in terminalreporter.stats.get(key, [])
               if report.when == "call" for name, value in report.user_properties if name == "lecture_timing"]
    if timings:
        terminalreporter.section("lectures in the browser")
        for lecture, seconds, result in sorted(timings):
            terminalreporter.write_line(f"{lecture:<36} {seconds:7.1f} s  {result}")
