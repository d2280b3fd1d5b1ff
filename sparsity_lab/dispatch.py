"""`Dispatcher`: run whichever of a problem's candidate calls measured fastest, measured once per problem.

A layer with several ways to compute the same product (the 2:4 kernel or dense; the block-sparse kernel's variants
or dense) asks `Dispatcher.choose(key, candidates)` with a hashable key naming the problem (shape, dtype, device,
...; a ``NamedTuple`` names the columns of `Dispatcher.table`). The first time a key is seen every candidate is timed
on the GPU (`sparsity_lab.timing.event_ms`: CUDA events around single calls, median after warm-up, so a call's host
launch work counts), and the `Decision` -- the choice, its reason and the timings -- is cached for every later call.
A candidate other than the baseline (dense) is chosen only when it takes at most `margin` times the baseline's time;
one that raises is left out and its error kept. During a CUDA-graph capture nothing is measured: an unknown key
gets the baseline, uncached.

`tune_(model, example)` makes the same decision one level up: per group of layers (every ``blocks.*.mlp.fc1``),
by timing the whole model (or one block) with each mode, so what a layer's output layout costs downstream counts.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sparsity_lab.timing import event_ms, loop_ms

if TYPE_CHECKING:
    from sparsity_lab.sparsify import Report

Candidates = Mapping[str, Callable[[], object]]


@dataclass(frozen=True)
class Decision:
    """What a `Dispatcher` chose for one key, why, and what it measured: median ms per candidate, errors."""

    choice: str
    reason: str
    timings: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Dispatcher:
    """Measures the candidates of each new key once (`warmup` calls, then the median of `reps`) and caches the
    `Decision`. `margin`: a candidate replaces `baseline` only when it takes at most this fraction of the baseline's
    time (0.97: 3% faster), so a dispatched layer is never slower than the baseline beyond timing noise."""

    margin: float = 0.97
    warmup: int = 3
    reps: int = 15
    baseline: str = "dense"
    decisions: dict[tuple, Decision] = field(default_factory=dict)
    interleave: int = 0  # > 0: time the candidates in turn, this many back-to-back calls per sample (`_interleaved`)

    def choose(self, key: tuple, candidates: Callable[[], Candidates]) -> Decision:
        """The cached decision for `key`; if there is none, `candidates()` (name -> call, the baseline among them;
        built only for a new key) are measured now and the fastest kept."""
        decision = self.decisions.get(key)
        if decision is not None:
            return decision
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return Decision(self.baseline, f"no measurement for this problem and a CUDA graph is being captured: "
                                           f"{self.baseline}")
        calls = candidates()
        if self.baseline not in calls:
            raise ValueError(f"the candidates {sorted(calls)} must include the baseline {self.baseline!r}")
        timings: dict[str, float] = {}
        errors: dict[str, str] = {}
        for name, call in calls.items():
            try:
                timings[name] = event_ms(call, self.warmup, 1 if self.interleave else self.reps)
            except Exception as err:  # a candidate that cannot run here is left out, and remembered
                if name == self.baseline:
                    raise
                errors[name] = repr(err)
        if self.interleave:
            timings = _interleaved({name: calls[name] for name in timings}, self.reps, self.interleave)
        others = {name: ms for name, ms in timings.items() if name != self.baseline}
        best = min(others, key=others.get, default=None)
        choice = best if best is not None and others[best] <= self.margin * timings[self.baseline] else self.baseline
        measured = ", ".join(f"{name} {ms:.4f} ms" for name, ms in timings.items())
        failed = "".join(f"; {name} failed: {error}" for name, error in errors.items())
        decision = Decision(choice, f"measured {measured}: {choice}{failed}", timings, errors)
        self.decisions[key] = decision
        return decision

    def table(self) -> list[dict[str, object]]:
        """The decisions so far, one row per key (its fields, by name for a ``NamedTuple`` key), with the choice
        and each candidate's median ms: for printing and recording."""
        rows = []
        for key, decision in self.decisions.items():
            names = getattr(key, "_fields", None) or [f"key{i}" for i in range(len(key))]
            rows.append({**dict(zip(names, (str(value) for value in key), strict=True)), "choice": decision.choice,
                         **{f"{name}_ms": ms for name, ms in decision.timings.items()}})
        return rows


def _interleaved(calls: Mapping[str, Callable[[], object]], reps: int, per_sample: int) -> dict[str, float]:
    """Median ms per call of each candidate, sampled in turn (A, B, C, A, B, C, ...; `per_sample` back-to-back
    calls between two CUDA events per sample): a drifting GPU clock then slows every candidate alike, where timing
    one candidate after the other would hand the difference to whichever ran while the clock was high."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            samples[name].append(loop_ms(call, calls=per_sample, trials=1))
    return {name: statistics.median(values) for name, values in samples.items()}


# ------------------------------------------------------------------------------------------- whole models
def group_name(fqn: str, layer: torch.nn.Module) -> str:
    """The group one `tune_` decision covers: the layer's name with block indices starred ("blocks.3.mlp.fc1" ->
    "blocks.*.mlp.fc1"), its class and its shape (layers that share a starred name but not a shape, as in an
    ``nn.Sequential``, are separate groups)."""
    starred = ".".join("*" if part.isdigit() else part for part in fqn.split("."))
    shape = f"{getattr(layer, 'in_features', '?')}x{getattr(layer, 'out_features', '?')}"
    return f"{starred} ({type(layer).__name__} {shape})"


def tunable_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The layers `tune_` can set: those with a ``mode`` and the ``TUNE_MODES`` it may take (e.g. `Semi24Linear`)."""
    return {fqn: m for fqn, m in model.named_modules() if hasattr(m, "TUNE_MODES") and hasattr(m, "mode")}


def _block_inputs(model: torch.nn.Module, block: torch.nn.Module, example: tuple) -> tuple[tuple, dict]:
    """The positional and keyword inputs `block` receives when the model runs on `example` (the first call)."""
    seen: list[tuple[tuple, dict]] = []

    def grab(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not seen:
            seen.append((args, kwargs))

    hook = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(*example)
    finally:
        hook.remove()
    if not seen:
        raise ValueError("block was not called when the model ran on example")
    return seen[0]


def tune_(model: torch.nn.Module, example: tuple, block: str | None = None, compiled: bool = False,
          graphs: bool = False, margin: float = 0.97, rounds: int = 2, warmup: int = 5, reps: int = 15,
          check_model: bool = True, stream: str | None = None, start: str = "dense") -> Report:
    """Choose each tunable layer's mode by timing the model as a whole, in place; returns a `Report` saying, per layer,
    what was chosen and the timings it rests on.

    Why: a layer timed alone (what `Dispatcher` does per shape) cannot see what its output layout costs the ops
    after it -- a 2:4 layer's column-major y is free for a GELU and the next 2:4 layer but makes a residual add,
    LayerNorm or attention copy it. Here the layers are grouped by name with block indices starred (every
    ``blocks.*.mlp.fc1`` is one group). Starting from every layer in mode `start` ("dense"; "sparse" where the
    layouts only pay off together, as in a column-major stream), each group in model order takes the mode
    (``TUNE_MODES``) under which the model -- or only its submodule `block` (e.g. ``"blocks.0"``), run on the inputs
    it receives from `example` -- measured fastest, if that is at most `margin` of the time with the group dense;
    `rounds` passes over the groups let a choice see the ones made after it (fc1's column-major output pays off only
    once fc2 reads it as it lies). The modes are timed in turn (`reps` samples of 3 back-to-back calls each, medians
    compared), so clock drift cannot pick the winner. `compiled=True` times ``torch.compile`` of it instead
    (recompiled per trial), for a model that will be compiled: there Inductor fuses the transposes. `graphs=True`
    times each trial replayed from a CUDA graph, for a model that will run that way (decode steps, where eager
    launch overhead would hide every difference); only then is a "decode" mode (the decode kernels) a candidate.
    `check_model` (when tuning on a `block`): the whole model is then timed with the chosen modes against every
    layer dense, in turn, the same way; if the choices made it slower every layer goes back to "dense", since
    one block cannot see everything the model does with its outputs. `stream` (a block name, e.g. ``"blocks.0"``):
    the layout is a choice too -- a copy of the model gets a column-major residual stream from that block on
    (`models.stream.column_major_stream_`) and is tuned the same way, starting from "sparse" (from dense, a
    single 2:4 group in a dense stream pays for layouts the others would share), then timed whole with those
    modes and with every layer "sparse" (the faster kept); both whole models are timed in turn, and `model`
    becomes the streamed one (with the copy's modes) only if it took at most `margin` of the row-major
    time, as for a layer's mode; otherwise it stays row-major with its own."""
    from sparsity_lab.sparsify import LayerReport, Report

    for fqn, layer in tunable_layers(model).items():
        if start not in layer.TUNE_MODES:
            raise ValueError(f"start={start!r} is not a mode of {fqn} ({type(layer).__name__}: {layer.TUNE_MODES}); "
                             f"nothing was changed")
    if stream is not None:
        return _tune_with_stream(model, example, stream, dict(
            block=block, compiled=compiled, graphs=graphs, margin=margin, rounds=rounds, warmup=warmup, reps=reps,
            check_model=check_model), start)
    layers = tunable_layers(model)
    if not layers:
        raise ValueError("model has no layer tune_ can set (swap some first, e.g. sparsify_(model, Semi24Config()))")
    if not isinstance(example, tuple):
        raise TypeError(f"example must be a tuple of the model's inputs, got {type(example).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if compiled and graphs:
        raise ValueError("choose compiled=True or graphs=True, not both")
    target = model if block is None else model.get_submodule(block)
    args, kwargs = (example, {}) if block is None else _block_inputs(model, target, example)
    groups: dict[str, list[torch.nn.Module]] = {}
    for fqn, layer in layers.items():
        groups.setdefault(group_name(fqn, layer), []).append(layer)
    previous = {fqn: layer.mode for fqn, layer in layers.items()}
    dispatcher = Dispatcher(margin=margin, warmup=warmup, reps=reps, interleave=3)
    chosen: dict[str, Decision] = {}
    try:
        for layer in layers.values():
            layer.mode = start
        for round_ in range(rounds):
            for name, members in groups.items():
                modes = [m for m in members[0].TUNE_MODES if m != "dense"
                         and not (compiled and m == "sparse-rowmajor") and not (m == "decode" and not graphs)]
                chosen[name] = dispatcher.choose((name, round_), lambda members=members, modes=modes: {
                    mode: _trial(members, mode, target, args, kwargs, compiled, graphs)
                    for mode in ("dense", *modes)})
                for layer in members:
                    layer.mode = chosen[name].choice
        verdict = None
        if check_model and block is not None and any(layer.mode != "dense" for layer in layers.values()):
            tuned = {layer: layer.mode for layer in layers.values()}
            verdict = Dispatcher(margin=1.0, warmup=warmup, reps=reps, interleave=3, baseline="dense").choose(
                ("the model",), lambda: {
                    name: _trial_modes(modes, model, example, {}, compiled, graphs)
                    for name, modes in (("dense", dict.fromkeys(tuned, "dense")), ("tuned", tuned))})
            for layer, mode in tuned.items():
                layer.mode = mode if verdict.choice == "tuned" else "dense"
    except BaseException:
        for fqn, layer in layers.items():
            layer.mode = previous[fqn]
        raise
    finally:
        if compiled:
            torch._dynamo.reset()
    where = "the model" if block is None else f"{block!r}"
    how = "compiled" if compiled else "CUDA graph" if graphs else "eager"
    report = Report()
    for fqn, layer in layers.items():
        decision = chosen[group_name(fqn, layer)]
        what = f"{decision.choice}: {where} ({how}, round {rounds}) {decision.reason}"
        if verdict is not None and verdict.choice == "dense":
            what = f"dense: the whole model was slower with the block's choices ({verdict.reason}); {what}"
        report[fqn] = LayerReport(not layer.mode.startswith("dense"), what, decision.timings)
    return report


def _tune_with_stream(model: torch.nn.Module, example: tuple, stream: str, options: dict, start: str) -> Report:
    """`tune_` with `stream`: the model tuned row-major from `start` and a copy tuned with a column-major stream from
    `stream`, starting from "sparse", the two timed whole, in turn; `model` left as the faster one. Refused before
    anything changes where the block is missing or the model is already streamed."""
    import copy

    from sparsity_lab.models.stream import column_major_stream_, is_streamed
    from sparsity_lab.sparsify import LayerReport

    try:
        model.get_submodule(stream)
    except AttributeError as err:
        raise ValueError(f"stream={stream!r} is not a submodule of the model; nothing was changed") from err
    if is_streamed(model):
        raise ValueError("the model's residual stream is already column-major: pass the model without it, "
                         "stream= times both; nothing was changed")
    streamed = copy.deepcopy(model)  # tune_ checks `example` on the copy first: a refusal leaves `model` as it was
    streamed_report = column_major_stream_(streamed, stream)
    streamed_report.update(tune_(streamed, example, **options, start="sparse"))
    compiled, graphs = options["compiled"], options["graphs"]
    _prefer_all_sparse(streamed, example, streamed_report, options)
    previous = {layer: layer.mode for layer in tunable_layers(model).values()}
    report = tune_(model, example, **options, start=start)
    try:
        verdict = Dispatcher(margin=options["margin"], warmup=options["warmup"], reps=options["reps"], interleave=3,
                             baseline="row-major").choose(("the stream",), lambda: {
            "row-major": _trial_modes({}, model, example, {}, compiled, graphs),
            "column-major stream": _trial_modes({}, streamed, example, {}, compiled, graphs)})
    except BaseException:
        for layer, mode in previous.items():
            layer.mode = mode
        raise
    finally:
        if compiled:
            torch._dynamo.reset()
    if verdict.choice == "row-major":
        report[stream] = LayerReport(False, f"row-major: the whole model {verdict.reason}", verdict.timings)
        return report
    column_major_stream_(model, stream)
    modes = {fqn: layer.mode for fqn, layer in tunable_layers(streamed).items()}
    for fqn, layer in tunable_layers(model).items():
        layer.mode = modes[fqn]
    streamed_report[stream] = LayerReport(True, f"column-major stream from here on: the whole model "
                                                f"{verdict.reason}", verdict.timings)
    return streamed_report


def _prefer_all_sparse(streamed: torch.nn.Module, example: tuple, report: Report, options: dict) -> None:
    """The streamed model timed whole with its tuned modes and with every layer "sparse" (the layout the stream is
    built for), in turn; the faster kept, and said in `report`. A block timed alone cannot see the copies a dense
    layer's row-major output costs the next block (compiled, Inductor lays a block's output out as it likes)."""
    from sparsity_lab.sparsify import LayerReport

    layers = tunable_layers(streamed)
    tuned = {layer: layer.mode for layer in layers.values()}
    every = dict.fromkeys(layers.values(), "sparse")
    if tuned == every:
        return
    compiled, graphs = options["compiled"], options["graphs"]
    try:
        verdict = Dispatcher(margin=1.0, warmup=options["warmup"], reps=options["reps"], interleave=3,
                             baseline="tuned").choose(("every layer sparse",), lambda: {
            "tuned": _trial_modes(tuned, streamed, example, {}, compiled, graphs),
            "every layer sparse": _trial_modes(every, streamed, example, {}, compiled, graphs)})
    finally:
        if compiled:
            torch._dynamo.reset()
    chosen = every if verdict.choice == "every layer sparse" else tuned
    for fqn, layer in layers.items():
        layer.mode = chosen[layer]
        if verdict.choice == "every layer sparse":
            report[fqn] = LayerReport(True, f"sparse: the whole streamed model {verdict.reason} (the block had "
                                            f"chosen {tuned[layer]!r})", verdict.timings)


def _trial(members: list[torch.nn.Module], mode: str, target: torch.nn.Module, args: tuple, kwargs: dict,
           compiled: bool, graphs: bool) -> Callable[[], object]:
    """One timed call of `target` with the group `members` set to `mode` (`_trial_modes`)."""
    return _trial_modes(dict.fromkeys(members, mode), target, args, kwargs, compiled, graphs)


def _trial_modes(modes: dict[torch.nn.Module, str], target: torch.nn.Module, args: tuple, kwargs: dict,
                 compiled: bool, graphs: bool) -> Callable[[], object]:
    """One timed call of `target` with each layer of `modes` set to its mode: compiled afresh when `compiled`;
    with `graphs`, captured now (the modes set for the capture) and replayed."""
    run = target
    if compiled:
        torch._dynamo.reset()  # earlier trials' graphs would fill Dynamo's cache and push this one to eager
        run = torch.compile(target)

    def call() -> object:
        for layer, mode in modes.items():
            if layer.mode != mode:
                layer.mode = mode
        with torch.no_grad():
            return run(*args, **kwargs)

    if graphs:
        from sparsity_lab.timing import capture_graph

        tensors = [t for t in (*target.parameters(), *target.buffers()) if t.is_cuda]  # int8 layers hold buffers
        graph, _ = capture_graph(call, device=tensors[0].device if tensors else None)
        return graph.replay
    return call
