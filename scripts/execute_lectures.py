"""Execute lecture notebooks in place and drop the saved widget state (about 5 MB of plotly.js per FigureWidget),
keeping every other output: ``python scripts/execute_lectures.py lectures/05_semi_structured.ipynb ...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path) -> None:
    """Run `path` top to bottom with this checkout's package importable, then strip its widget state."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                    str(path)], check=True, env=env)
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(map(str, (ROOT / "lectures").glob("*.ipynb"))):
        execute(Path(name))
