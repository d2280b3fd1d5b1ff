"""`Dispatcher`: run whichever of a problem's candidate calls measured fastest, measured once per problem.

A layer with several ways to compute the same product (the 2:4 kernel or dense; the block-sparse kernel's variants
or dense) asks `Dispatcher.choose(key, candidates)` with a hashable key naming the problem (shape, dtype, device,
...; a ``NamedTuple`` names the columns of `Dispatcher.table`). The first time a key is seen every candidate is timed
on the GPU (`sparsity_lab.timing.event_ms`: CUDA events around single calls, median after warm-up, so a call's host
launch work counts), and the `Decision` -- the choice, its reason and the timings -- is cached for every later call.
A candidate other than the baseline (dense) is chosen only when it takes at most `margin` times the baseline's time;
one that raises is left out and its error kept. During a CUDA-graph capture nothing is measured: an unknown key
gets the baseline, uncached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from sparsity_lab.timing import event_ms

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
                timings[name] = event_ms(call, self.warmup, self.reps)
            except Exception as err:  # a candidate that cannot run here is left out, and remembered
                if name == self.baseline:
                    raise
                errors[name] = repr(err)
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
