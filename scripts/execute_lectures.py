"""Execute lecture notebooks in place, keeping every output but the widgets': their saved state would be about
5 MB of plotly.js per FigureWidget, and without it a stored widget shows only its raw text repr (``VBox(...)``),
so widget outputs are dropped and appear when the cell runs.
``python scripts/execute_lectures.py lectures/05_semi_structured.ipynb ...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def execute(path: Path) -> None:
    """Run `path` top to bottom with this checkout's package importable, then strip its widget state."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                    str(path)], check=True, env=env)
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if WIDGET_VIEW not in out.get("data", {})]
    nbformat.write(notebook, path)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(map(str, (ROOT / "lectures").glob("*.ipynb"))):
        execute(Path(name))
