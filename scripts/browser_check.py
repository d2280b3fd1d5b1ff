"""Run every lecture in a real browser: start JupyterLab from a course environment, run the browser check
(tests/browser) against it with a Python that has pytest and playwright, stop the server.

    python scripts/browser_check.py --jupyter-python "$work/course/bin/python" [-- PYTEST_ARGS...]

The server runs from --jupyter-python (an environment made with `pip install -e ".[course]"`: its kernel is
the one the lectures run in), serves this checkout (notebooks run with their own folder as cwd, so
`find_course_root` finds it), and gets settings of its own in a temporary folder: autosave off (the check never
writes outputs into the lectures), every notebook cell in the DOM, no news fetched, and a `python3` kernel that
is --jupyter-python itself. The test runs with this script's Python (or --python). Chromium: $SPARSITY_LAB_CHROMIUM
or `chromium` on PATH (Debian's package; Playwright's own browser download is not needed). Screenshots of
failures: $SPARSITY_LAB_BROWSER_ARTIFACTS, else a new temporary folder; the server's log goes there too.
Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # JupyterLab user settings, plugin -> values
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_environment(home: Path, jupyter_python: str) -> dict[str, str]:
    """Environment of the server: its own settings, workspaces and data folders under `home`, with a python3
    kernel that is `jupyter_python`."""
    settings, workspaces, data = home / "settings", home / "workspaces", home / "data"
    for plugin, values in SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    kernel = data / "kernels" / "python3"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [jupyter_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {"debugger": True}}))
    workspaces.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR")}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workspaces),
               JUPYTER_DATA_DIR=str(data), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    return env


def wait_for(url: str, token: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode} before it answered")
        try:
            request = urllib.request.Request(url + "api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """The server and the kernels it started (its own process group), politely first."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jupyter-python", default=os.environ.get("SPARSITY_LAB_COURSE_PYTHON", sys.executable),
                        help="the course environment's python: runs JupyterLab and the kernels "
                             "(default: $SPARSITY_LAB_COURSE_PYTHON, else this Python)")
    parser.add_argument("--python", default=sys.executable,
                        help="a python with pytest and playwright, for the test (default: this one)")
    parser.add_argument("--root", default=str(ROOT), help="the checkout to serve (default: this one)")
    parser.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    parser.add_argument("--start-timeout", type=float, default=180, help="seconds JupyterLab may take to start")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed on to pytest (e.g. -k 03)")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    artifacts = Path(os.environ.get("SPARSITY_LAB_BROWSER_ARTIFACTS")
                     or tempfile.mkdtemp(prefix="sparsity-lab-browser-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    port, token = args.port or free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="sparsity-lab-jupyter-") as home:
        command = [args.jupyter_python, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                   "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
                   f"--ServerApp.root_dir={root}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI and this machine run as root
        log_path = artifacts / "jupyterlab.log"
        print(f"browser check: JupyterLab from {args.jupyter_python} on {base}, serving {root}; "
              f"screenshots and the server log in {artifacts}", flush=True)
        with open(log_path, "w") as log:
            server = subprocess.Popen(command, cwd=root, env=lab_environment(Path(home), args.jupyter_python),
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                started = time.monotonic()
                wait_for(base, token, server, args.start_timeout)
                print(f"browser check: JupyterLab answered in {time.monotonic() - started:.1f} s", flush=True)
                test = [args.python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
                        "--rootdir", str(root), "--confcutdir", str(root / "tests" / "browser"),
                        str(root / "tests" / "browser" / "test_lectures_in_browser.py"),
                        "--jupyter-url", f"{base}lab?token={token}", *args.pytest_args]
                env = {**os.environ, "SPARSITY_LAB_BROWSER_ARTIFACTS": str(artifacts)}
                return subprocess.call(test, cwd=root, env=env)
            except RuntimeError as err:
                print(f"browser check: {err}; the server's log:\n{log_path.read_text()[-5000:]}", file=sys.stderr)
                return 2
            finally:
                stop(server)


if __name__ == "__main__":
    sys.exit(main())
