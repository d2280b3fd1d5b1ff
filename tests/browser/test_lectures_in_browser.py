"""Every lecture, run in JupyterLab in a real Chromium as a student would: Run > Run All Cells, then one control of
each widget moved.

A lecture fails on: an error in a cell's output (a traceback on stderr, or an error output); an entry at error
level in JupyterLab's log console (where exceptions of widget callbacks go when nothing catches them) or a
browser console error; a widget that does not render (its text repr, "Error displaying widget", "Loading
widget..." after the run); a plotly figure wider than its output area, with titles that overlap or are cut off,
or a legend that needs scrolling; a widget whose figure does not change when one of its controls moves.

Run it with `python scripts/browser_check.py` (starts JupyterLab from a course environment, then this file), or
against a running server: `python -m pytest -p no:cacheprovider -o addopts= --confcutdir tests/browser
tests/browser/test_lectures_in_browser.py --jupyter-url 'http://127.0.0.1:8888/lab?token=...'`. The server
must have autosave off (the check never saves, and must not leave outputs in the lectures) and
notebook windowing "none" (every cell in the DOM); scripts/browser_check.py sets both. Screenshots of a
failure go to $SPARSITY_LAB_BROWSER_ARTIFACTS (default: a new temporary folder), whose path is printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": int(os.environ.get("SPARSITY_LAB_BROWSER_WIDTH", 1400)), "height": 1000}
# "all": also a screenshot of every figure and widget (before and after its control moves), to look at.
ALL_SCREENSHOTS = os.environ.get("SPARSITY_LAB_BROWSER_SCREENSHOTS") == "all"
# A traceback or an exception line: what separates an error on stderr from a warning or a progress bar.
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^-{20,}\s*$|^\w*(Error|Exception)\b.*:", re.M)
UNRENDERED = re.compile(r"\b(VBox|HBox|Box|GridBox|FigureWidget|FloatSlider|IntSlider|Dropdown|ToggleButtons|"
                        r"HTML|Output)\((children|value|options|layout|data)=|Error displaying widget|"
                        r"Loading widget\.\.\.|A Jupyter widget could not be displayed")


# ------------------------------------------------------------------------------------------------------ server
@dataclass
class Server:
    """A running JupyterLab: its base URL (ending in /) and token."""

    base: str
    token: str

    @classmethod
    def from_url(cls, url: str) -> Server:
        parts = urllib.parse.urlsplit(url)
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
        path = parts.path.split("/lab")[0].split("/tree")[0].rstrip("/") + "/"
        return cls(f"{parts.scheme}://{parts.netloc}{path}", token)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def lab(self, path: str) -> str:
        query = urllib.parse.urlencode({"reset": "", "token": self.token})
        return f"{self.base}lab/workspaces/browser-check/tree/{urllib.parse.quote(path)}?{query}"

    def shut_down_kernels_of(self, path: str) -> None:
        for session in self.api("GET", "api/sessions"):
            if session.get("path") == path:
                self.api("DELETE", f"api/sessions/{session['id']}")


def _lectures(config: pytest.Config) -> list[str]:
    url = config.getoption("--jupyter-url")
    if url:
        try:
            listing = Server.from_url(url).api("GET", "api/contents/lectures")
            return sorted(item["name"] for item in listing["content"] if item["name"].endswith(".ipynb"))
        except OSError:
            pass  # the server fixture reports an unreachable server
    return sorted(p.name for p in (ROOT / "lectures").glob("*.ipynb"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lecture" in metafunc.fixturenames:
        metafunc.parametrize("lecture", _lectures(metafunc.config))


@pytest.fixture(scope="session")
def server(pytestconfig: pytest.Config) -> Server:
    url = pytestconfig.getoption("--jupyter-url")
    if not url:
        pytest.skip("no JupyterLab given: pass --jupyter-url (or run scripts/browser_check.py)")
    server = Server.from_url(url)
    try:
        server.api("GET", "api/status")
        autosave = server.api("GET", "lab/api/settings/@jupyterlab/docmanager-extension:plugin")["settings"]
        windowing = server.api("GET", "lab/api/settings/@jupyterlab/notebook-extension:tracker")["settings"]
    except OSError as err:
        pytest.fail(f"JupyterLab at {server.base} does not answer: {err}")
    if autosave.get("autosave", True):
        pytest.fail("the server autosaves documents: the check would write outputs into the lectures. Start it "
                    "with scripts/browser_check.py, or turn Settings > Autosave Documents off")
    if windowing.get("windowingMode") != "none":
        pytest.fail("the server's notebook windowing mode is not 'none' (cells off screen would be missing or "
                    "unlaid out): start it with scripts/browser_check.py, or set it in Settings > Notebook")
    return server


@pytest.fixture(scope="session")
def browser(pytestconfig: pytest.Config):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = (pytestconfig.getoption("--chromium") or shutil.which("chromium")
                  or shutil.which("chromium-browser"))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = os.environ.get("SPARSITY_LAB_BROWSER_ARTIFACTS")
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="sparsity-lab-browser-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------------ the page
RUN_STATE = """() => ({
  busy: Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
    .filter(p => p.textContent.includes('*')).length,
  status: (document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator')
           || {getAttribute: () => null}).getAttribute('data-status'),
})"""

STARTED = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
  .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""

NOT_RUN = """() => {
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));
  return cells.filter(c => c.classList.contains('jp-CodeCell')
                           && !/\\[\\d+\\]/.test((c.querySelector('.jp-InputArea-prompt') || {}).textContent || ''))
    .map(c => cells.indexOf(c));
}"""

OUTPUT_PROBLEMS = """(pattern) => {
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));
  const unrendered = new RegExp(pattern.unrendered, 'm');
  const found = [];
  const mark = (e) => {
    if (!e.hasAttribute('data-browser-check-problem')) {
      window.__checkMarks = (window.__checkMarks || 0) + 1;
      e.setAttribute('data-browser-check-problem', String(window.__checkMarks));
    }
    return e.getAttribute('data-browser-check-problem');
  };
  document.querySelectorAll('.jp-Notebook .jp-OutputArea-output').forEach(out => {
    const cell = cells.indexOf(out.closest('.jp-Cell'));
    const mime = out.getAttribute('data-mime-type') || '';
    const text = out.innerText || '';
    if (mime === 'application/vnd.jupyter.stderr' || mime === 'application/vnd.jupyter.error') {
      found.push({cell, kind: 'stderr', text: text.slice(-3000), mark: mark(out)});
    } else if (mime.startsWith('text/') && unrendered.test(text)) {
      found.push({cell, kind: 'unrendered', text: text.slice(0, 500), mark: mark(out)});
    }
  });
  document.querySelectorAll('.jp-Notebook .jupyter-widgets-view, .jp-Notebook .jp-OutputArea-output')
    .forEach(out => {
      if (out.children.length === 0 && /Error displaying widget|Loading widget/.test(out.textContent))
        found.push({cell: cells.indexOf(out.closest('.jp-Cell')), kind: 'unrendered', text: out.textContent,
                    mark: mark(out)});
    });
  return found;
}"""

# Widgets: the outermost output of a cell that holds a widget view (a nested Output widget is part of it).
MARK_WIDGETS = """() => {
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));
  const outs = Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')).filter(out =>
    !out.parentElement.closest('.jp-OutputArea-output') && out.querySelector('.jupyter-widgets'));
  return outs.map((out, i) => { out.setAttribute('data-browser-check-widget', String(i));
                                return cells.indexOf(out.closest('.jp-Cell')); });
}"""

PLOTS_OF = """(root) => Array.from(root.querySelectorAll('.js-plotly-plot .svg-container'))
  .map(c => c.innerHTML).join('\\n')"""

# Every plotly figure: inside its output area, titles inside the figure and clear of one another, no legend
# scrollbar, no table cell drawn blank that holds text, and heatmap text no smaller than 9 px.
PLOT_PROBLEMS = """() => {
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));
  const found = [];
  const mark = (e) => {
    if (!e.hasAttribute('data-browser-check-problem')) {
      window.__checkMarks = (window.__checkMarks || 0) + 1;
      e.setAttribute('data-browser-check-problem', String(window.__checkMarks));
    }
    return e.getAttribute('data-browser-check-problem');
  };
  const inter = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 2
                       && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 2;
  document.querySelectorAll('.jp-Notebook .js-plotly-plot').forEach(plot => {
    const cell = plot.closest('.jp-Cell');
    const index = cells.indexOf(cell);
    let top = plot.closest('.jp-OutputArea-output');
    while (top && top.parentElement.closest('.jp-OutputArea-output'))
      top = top.parentElement.closest('.jp-OutputArea-output');
    const area = (top || cell).getBoundingClientRect();
    const right = Math.min(area.right, cell.getBoundingClientRect().right);
    const svg = plot.querySelector('svg.main-svg');
    const name = ((plot.querySelector('.gtitle') || {}).textContent || '(untitled)').slice(0, 80);
    const add = (text) => found.push({cell: index, kind: 'figure', text: `"${name}": ${text}`,
                                      mark: mark(plot)});
    if (!svg) { add('no figure drawn'); return; }
    const box = svg.getBoundingClientRect();
    if (box.width < 20 || box.height < 20) { add(`drawn ${box.width}x${box.height} px`); return; }
    if (box.right > right + 1 || box.left < area.left - 1)
      add(`${Math.round(box.width)} px wide, wider than its output area (x ${Math.round(box.left)}..` +
          `${Math.round(box.right)}, output ${Math.round(area.left)}..${Math.round(right)})`);
    const boxes = (selector, kind) => Array.from(plot.querySelectorAll(selector))
      .map(e => ({kind, text: e.textContent.slice(0, 60), r: e.getBoundingClientRect()}))
      .filter(b => b.r.width > 0 && b.r.height > 0 && b.text.trim());
    const titles = boxes('.gtitle', 'title');
    const annotations = boxes('.annotation-text', 'subplot title');
    const axes = boxes('.g-xtitle text, .g-ytitle text', 'axis title');
    const legends = boxes('.legend .bg', 'legend');
    for (const b of [...titles, ...annotations, ...axes])
      if (b.r.left < box.left - 2 || b.r.right > box.right + 2 || b.r.top < box.top - 2 || b.r.bottom > box.bottom + 2)
        add(`${b.kind} "${b.text}" is cut off at the figure's edge`);
    const pairs = [];
    for (const t of titles) for (const o of [...annotations, ...legends]) pairs.push([t, o]);
    annotations.forEach((a, i) => {
      for (const o of [...annotations.slice(i + 1), ...axes, ...legends]) pairs.push([a, o]);
    });
    for (const [a, b] of pairs)
      if (inter(a.r, b.r)) add(`${a.kind} "${a.text}" overlaps ${b.kind} "${b.text}"`);
    plot.querySelectorAll('.legend .scrollbar').forEach(s => {
      const r = s.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) add('its legend needs scrolling');
    });
    const empty = v => v === null || v === undefined || String(v).trim() === '';
    let expectedBlank = 0;
    for (const trace of (plot.data || []).filter(t => t.type === 'table'))
      for (const part of [trace.cells, trace.header])
        for (const column of ((part || {}).values || []))
          for (const v of (Array.isArray(column) ? column : [column])) if (empty(v)) expectedBlank++;
    const blank = Array.from(plot.querySelectorAll('.table .cell-text')).filter(t => !t.textContent.trim()).length;
    if (blank > expectedBlank) add(`${blank - expectedBlank} table cell(s) drawn blank, though they hold text`);
    const small = Array.from(plot.querySelectorAll('.heatmaplayer text, .hm text'))
      .map(t => parseFloat(getComputedStyle(t).fontSize)).filter(s => s > 0 && s < 9);
    if (small.length) add(`heatmap text of ${Math.min(...small)} px: too small to read`);
  });
  return found;
}"""

LOG_ENTRIES = """() => Array.from(document.querySelectorAll('.jp-LogConsole .jp-OutputArea-prompt[data-log-level]'))
  .map(p => ({level: p.getAttribute('data-log-level'),
              text: ((p.nextElementSibling || {}).innerText || '').slice(-3000)}))"""


@dataclass
class Problems:
    """What one lecture got wrong, with the cells to screenshot."""

    lines: list[str] = field(default_factory=list)
    marks: dict[str, str] = field(default_factory=dict)  # a marked element (data-browser-check-problem) -> name

    def add(self, text: str, mark: str | None = None, name: str = "") -> None:
        if text not in self.lines:
            self.lines.append(text)
        if mark is not None and mark not in self.marks:
            self.marks[mark] = name


class Lecture:
    """One notebook open in a page of its own."""

    def __init__(self, page, server: Server, name: str, timeout: float, artifacts: Path) -> None:
        self.page, self.server, self.name, self.timeout, self.artifacts = page, server, name, timeout, artifacts
        self.console: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text[:2000]))
        page.on("pageerror", lambda e: self.console.append(f"uncaught: {e}"[:2000]))

    def open(self) -> None:
        self.page.goto(self.server.lab(f"lectures/{self.name}"))
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=120_000)
        if not self.page.locator("#filebrowser").is_visible():
            self.page.click(".jp-SideBar [data-id='filebrowser']")
        self.page.wait_for_selector("#filebrowser", state="visible")
        self.page.wait_for_timeout(1000)
        dialog = self.page.locator(".jp-Dialog")
        if dialog.count():
            raise RuntimeError(f"JupyterLab opened {self.name} with a dialog: {dialog.first.inner_text()[:500]}")
        self.menu("Edit", "Clear Outputs of All Cells")  # judge this run only, not the outputs stored in the file

    def menu(self, top: str, item: str) -> None:
        self.page.click(f".lm-MenuBar-itemLabel:text-is('{top}')")
        self.page.click(f".lm-Menu-content .lm-Menu-itemLabel:text-is('{item}')")

    def wait_idle(self, timeout: float, settle: float = 1.5) -> None:
        """Until no cell is queued or running and the kernel is idle, for `settle` seconds in a row."""
        deadline, calm_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            state = self.page.evaluate(RUN_STATE)
            if state["busy"] == 0 and state["status"] == "idle":
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since >= settle:
                    return
            else:
                calm_since = None
            self.page.wait_for_timeout(250)
        raise TimeoutError(f"{self.name} still running after {timeout:.0f} s")

    def kernel_ready(self, timeout: float = 180) -> None:
        """Until the server says this notebook's kernel is idle (started and connected): Run All before that
        may be dropped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sessions = [s for s in self.server.api("GET", "api/sessions") if s.get("path") == f"lectures/{self.name}"]
            if sessions and sessions[0]["kernel"].get("execution_state") == "idle" and \
                    self.page.evaluate(RUN_STATE)["status"] == "idle":
                return
            self.page.wait_for_timeout(500)
        raise TimeoutError(f"the kernel of {self.name} did not start in {timeout:.0f} s")

    def run_all(self) -> float:
        self.kernel_ready()
        start = time.monotonic()
        for _attempt in range(3):
            self.menu("Run", "Run All Cells")
            try:
                self.page.wait_for_function(STARTED, timeout=30_000)
                break
            except Exception:  # noqa: BLE001 - the click was lost: try again
                continue
        else:
            raise TimeoutError("Run > Run All Cells did not start any cell")
        self.wait_idle(self.timeout)
        return time.monotonic() - start

    def check_all_ran(self, problems: Problems) -> None:
        """Every code cell has an execution count, unless an earlier cell failed (Run All stops there)."""
        if not problems.lines:
            for cell in self.page.evaluate(NOT_RUN):
                problems.add(f"cell {cell} did not run")

    def check_outputs(self, problems: Problems) -> None:
        for item in self.page.evaluate(OUTPUT_PROBLEMS, {"unrendered": UNRENDERED.pattern}):
            if item["kind"] == "stderr" and not ERROR_TEXT.search(item["text"]):
                continue  # a warning or a progress bar: not an error
            problems.add(f"cell {item['cell']}: {item['kind']} output:\n{item['text']}", item["mark"],
                         f"cell{item['cell']:02d}-{item['kind']}")
        for item in self.page.evaluate(PLOT_PROBLEMS):
            problems.add(f"cell {item['cell']}: figure {item['text']}", item["mark"], f"cell{item['cell']:02d}-figure")

    def check_log_console(self, problems: Problems) -> None:
        if not self.page.locator(".jp-LogConsole").count():
            self.menu("View", "Show Log Console")
            self.page.wait_for_selector(".jp-LogConsole", timeout=10_000)
            self.page.wait_for_timeout(500)
        for entry in self.page.evaluate(LOG_ENTRIES):
            if entry["level"] in ("error", "critical") or ERROR_TEXT.search(entry["text"]):
                problems.add(f"log console ({entry['level']}):\n{entry['text']}")

    def check_console(self, problems: Problems) -> None:
        for text in self.console:
            problems.add(f"browser console error: {text}")

    # ------------------------------------------------------------------------------------------------ widgets
    def exercise_widgets(self, problems: Problems) -> int:
        cells = self.page.evaluate(MARK_WIDGETS)
        for index, cell in enumerate(cells):
            root = self.page.locator(f"[data-browser-check-widget='{index}']")
            if not root.locator(".js-plotly-plot").count():
                continue  # a widget without a figure (none in the lectures today): nothing to compare
            self.snapshot(root, f"widget{index}-cell{cell:02d}-0-first")
            for step, control in enumerate(self._controls(root), start=1):
                before = root.evaluate(PLOTS_OF)
                moved = control()
                if moved is None:
                    continue
                changed = self._wait_for_change(root, before)
                self.wait_idle(120)
                self.snapshot(root, f"widget{index}-cell{cell:02d}-{step}-moved")
                if not changed:
                    mark = root.evaluate("e => { e.setAttribute('data-browser-check-problem', 'w' + "
                                         "e.getAttribute('data-browser-check-widget')); "
                                         "return e.getAttribute('data-browser-check-problem'); }")
                    problems.add(f"cell {cell}: {moved}, and no figure of the widget changed", mark,
                                 f"cell{cell:02d}-widget")
        return len(cells)

    def _wait_for_change(self, root, before: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(300)
            if root.evaluate(PLOTS_OF) != before:
                return True
            state = self.page.evaluate(RUN_STATE)
            if state["status"] == "idle" and time.monotonic() > deadline - timeout + 5:
                # idle for a while after the move and still the same figure: one last look, then give up
                self.page.wait_for_timeout(1000)
                return root.evaluate(PLOTS_OF) != before
        return False

    def _controls(self, root):
        """Callables that each move one control of the widget (its first slider, its first dropdown or toggle)
        and say what they did (None when the control could not move)."""
        page = self.page

        def label_of(control) -> str:
            label = control.locator(".widget-label")
            return label.first.inner_text().strip() if label.count() else "(unlabelled)"

        def slide():
            slider = root.locator(".widget-slider").first
            handle = slider.locator(".noUi-handle").first
            readout = slider.locator(".widget-readout").first
            old = readout.inner_text()
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(200)
            if readout.inner_text() == old:
                page.keyboard.press("ArrowLeft")
                page.wait_for_timeout(200)
            new = readout.inner_text()
            return None if new == old else f"slider '{label_of(slider)}' moved from {old} to {new}"

        def choose():
            dropdown = root.locator(".widget-dropdown").first
            select = dropdown.locator("select")
            values = select.evaluate("s => Array.from(s.options).map(o => o.value)")
            current = select.input_value()
            others = [v for v in values if v != current]
            if not others:
                return None
            select.select_option(others[0])
            return f"dropdown '{label_of(dropdown)}' set from option {current} to {others[0]}"

        def toggle():
            buttons = root.locator(".widget-toggle-buttons").first
            idle = buttons.locator("button:not(.mod-active)")
            if not idle.count():
                return None
            text = idle.first.inner_text()
            idle.first.click()
            return f"toggle '{label_of(buttons)}' set to {text}"

        if root.locator(".widget-slider .noUi-handle").count():
            yield slide
        if root.locator(".widget-dropdown select").count():
            yield choose
        elif root.locator(".widget-toggle-buttons button").count():
            yield toggle

    # --------------------------------------------------------------------------------------------- artifacts
    def snapshot(self, element, name: str) -> None:
        """With SPARSITY_LAB_BROWSER_SCREENSHOTS=all: a screenshot of `element`, to look at."""
        if not ALL_SCREENSHOTS:
            return
        try:
            element.evaluate("e => e.scrollIntoView({block: 'start'})", timeout=5000)
            self.page.wait_for_timeout(300)
            element.screenshot(path=str(self.artifacts / f"{Path(self.name).stem}-{name}.png"), timeout=10_000)
        except Exception as err:  # noqa: BLE001 - a screenshot is a help, not the verdict
            print(f"no screenshot {name}: {err}")

    def snapshot_figures(self) -> None:
        if ALL_SCREENSHOTS:
            figures = self.page.locator(".jp-Notebook .jp-OutputArea-output.js-plotly-plot, "
                                            ".jp-Notebook .jp-OutputArea-output:has(.js-plotly-plot)")
            for i in range(figures.count()):
                self.snapshot(figures.nth(i), f"figure{i:02d}")

    def save_screenshots(self, problems: Problems, folder: Path) -> list[Path]:
        stem = Path(self.name).stem
        paths = []
        for mark, name in problems.marks.items():
            path = folder / f"{stem}-{name}-{mark}.png"
            element = self.page.locator(f"[data-browser-check-problem='{mark}']").first
            try:
                element.evaluate("e => e.scrollIntoView({block: 'start'})", timeout=5000)
                self.page.wait_for_timeout(300)
                box = element.bounding_box()
                if box and box["height"] <= VIEWPORT["height"]:
                    element.screenshot(path=str(path), timeout=10_000)
                else:
                    self.page.screenshot(path=str(path))
                paths.append(path)
            except Exception as err:  # noqa: BLE001 - a screenshot is a help, not the verdict
                print(f"no screenshot of {name}: {err}")
        path = folder / f"{stem}-page.png"
        self.page.screenshot(path=str(path))
        (folder / f"{stem}-problems.txt").write_text("\n\n".join(problems.lines) + "\n")
        return [*paths, path]


def test_lecture_runs_and_its_widgets_respond(lecture: str, server: Server, browser, artifacts: Path,
                                              pytestconfig: pytest.Config, record_property) -> None:
    path = f"lectures/{lecture}"
    server.shut_down_kernels_of(path)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    check = Lecture(page, server, lecture, pytestconfig.getoption("--lecture-timeout"), artifacts)
    problems, seconds, widgets = Problems(), float("nan"), 0
    try:
        check.open()
        seconds = check.run_all()
        check.check_outputs(problems)
        check.check_all_ran(problems)
        check.snapshot_figures()
        widgets = check.exercise_widgets(problems)
        check.check_outputs(problems)  # again: a control's update may have drawn a figure badly or failed
        check.check_log_console(problems)
        check.check_console(problems)
    except Exception as err:  # noqa: BLE001 - reported with the screenshots below
        problems.add(f"the check itself stopped: {type(err).__name__}: {err}")
    finally:
        saved = check.save_screenshots(problems, artifacts) if problems.lines else []
        context.close()
        server.shut_down_kernels_of(path)
    record_property("lecture_timing", (lecture, seconds, f"{widgets} widget(s), "
                                        + (f"{len(problems.lines)} problem(s)" if problems.lines else "OK")))
    if problems.lines:
        pytest.fail(f"{lecture}: {len(problems.lines)} problem(s), screenshots in {artifacts} "
                    f"({', '.join(p.name for p in saved)}):\n\n" + "\n\n".join(problems.lines), pytrace=False)
