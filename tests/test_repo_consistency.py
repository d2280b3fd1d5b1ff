"""Files that must agree: environment.yml with pyproject.toml, README's test command with .ci/run."""

import re

import tomllib
import yaml

from sparsity_lab.course.cli import find_course_root

ROOT = find_course_root()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONDA_NAMES = {"torch": "pytorch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_names = {_name(d) for d in conda}
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert CONDA_NAMES.get(_name(requirement), _name(requirement)) in conda_names, requirement
    torch_pin = next(r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "torch")
    assert any(d.replace(" ", "") == "pytorch" + torch_pin[len("torch"):] for d in conda), "torch floors differ"
    python = next(d for d in conda if _name(d) == "python").split("=")[-1]
    floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, floor.split(".")))
    assert "-e .[course]" in pip, "environment.yml must install the repo with the course extras"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci, f".ci/run must run README's test command: {command}"


def test_ci_builds_the_course_environment_with_readmes_first_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- course-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md must mark its course command with <!-- course-command -->"
    install, _, launch = match.group(1).strip().partition(" && ")
    assert launch == "sparsity-lab lectures", "the course command installs, then starts JupyterLab"
    assert install in (ROOT / ".ci" / "run").read_text(), f".ci/run must build the course environment with: {install}"


def test_readme_quick_start_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## The library\n.*?```python\n(.+?)\n```", readme, re.DOTALL)
    assert block, "README.md must keep a python quick start under '## The library'"
    namespace: dict = {}
    exec(compile(block.group(1), "README quick start", "exec"), namespace)
    assert namespace["sparsity_of"](namespace["model"].net[1].weight) == 0.75


def test_course_extra_has_what_widgets_and_grading_need():
    course = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["course"]}
    assert {"jupyterlab", "ipywidgets", "plotly", "scikit-learn", "tqdm", "anywidget", "pytest"} <= course


def test_stored_lectures_show_no_raw_widget_reprs():
    """A stored widget without its state shows only `VBox(children=(...` until the cell runs: none are stored."""
    import json

    for path in sorted((ROOT / "lectures").glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                text = "".join(data.get("text/plain", ""))
                assert "application/vnd.jupyter.widget-view+json" not in data, f"{path.name}: a stored widget"
                assert not text.startswith(("VBox(", "HBox(", "FigureWidget(")), f"{path.name}: {text[:40]}"
        assert "widgets" not in notebook["metadata"], f"{path.name} stores widget state"
