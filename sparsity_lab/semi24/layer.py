"""`Semi24Linear`: an ``nn.Linear`` whose weight is 2:4 sparse, run by cuSPARSELt where that is faster.

* `Semi24Linear.from_linear(linear)` prunes the weight to 2:4 (magnitude, ties to the lower index) and keeps
  the pruned dense weight (for the dense fallback) and, on the GPU, the compressed one (built on the first CUDA
  forward, so the module can be built on the CPU and moved with ``.to("cuda")``).
* `sparsify_(model, Semi24Config())` (`sparsity_lab.sparsify`) replaces a model's ``nn.Linear`` layers by
  `Semi24Linear` and reports, per layer, what it did and why.
* A `sparsity_lab.dispatch.Dispatcher` chooses, per `Semi24Key` (M, K, N, dtype, backend), sparse or dense from a
  short measurement at first use, cached; a shape goes sparse only when it measured at least 3% faster
  (`DEFAULT_DISPATCHER`'s margin), so a swapped model is never slower than its dense self beyond timing noise. On
  the CPU, or for a dtype or shape the 2:4 kernels cannot take, the layer runs dense with the pruned weight and
  says why (`Semi24Linear.last_reason`).
* `capture(model, example)` (`GraphedCall`) replays a model or layer from a CUDA graph at one input shape. Eager
  decode steps are host-bound: on the H100 host one eager 2:4 call costs ~14-25 us of CPU time (of which ~13 us is
  cuSPARSELt's own launch) against a ~10 us kernel at M = 16, K = N = 4096 -- and dense ``F.linear`` is
  host-bound there too. Replaying from a graph removes that host work (docs/performance/semi24.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab.dispatch import Dispatcher
from sparsity_lab.semi24.matmul import SPARSE_PATHS, prune24, unavailable_reason
from sparsity_lab.timing import capture_graph


class Semi24Key(NamedTuple):
    """The problem a dispatcher decision is made for: tokens M, in_features K, out_features N, dtype, backend."""

    M: int
    K: int
    N: int
    dtype: torch.dtype
    backend: str


DEFAULT_DISPATCHER = Dispatcher(margin=0.97)


class Semi24Linear(nn.Module):
    """y = x Wᵀ + b with a 2:4-pruned W: cuSPARSELt (or another 2:4 backend) where measured faster, else dense.

    Inference only: the weight is frozen, and an input that needs gradients takes the dense path (which
    autograd can differentiate). The sparse path returns y as a transposed (column-major) view."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "cusparselt",
                 dispatcher: Dispatcher | None = DEFAULT_DISPATCHER, prune: bool = True) -> None:
        """`weight` (out_features, in_features) is pruned to 2:4 unless `prune=False`; `dispatcher=None` always
        runs the sparse kernel where it can (no measurement)."""
        super().__init__()
        if backend not in SPARSE_PATHS:
            raise ValueError(f"backend must be one of {SPARSE_PATHS}, got {backend!r}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self.dispatcher = dispatcher
        with torch.no_grad():
            pruned = prune24(weight.detach()) if prune else weight.detach().clone()
        self.weight = nn.Parameter(pruned, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._packed = None
        self._packed_for: tuple | None = None
        self._sparse_fn: Callable | None = None
        self._routes: dict[tuple, tuple] = {}  # (shape, dtype, device, needs grad) -> (sparse call or None, W ptr)
        self.last_reason = "not run yet"

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> Semi24Linear:
        """A `Semi24Linear` with `linear`'s weight pruned to 2:4 and its bias."""
        return cls(linear.weight, linear.bias, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}, 2:4"

    def sparse_unavailable(self, x: torch.Tensor) -> str | None:
        """Why this input cannot take the 2:4 kernel (None when it can)."""
        if x.requires_grad and torch.is_grad_enabled():
            return "x requires grad and the 2:4 kernels have no backward (inference only)"
        reason = unavailable_reason(self.backend, x.device, x.dtype)
        if reason:
            return reason
        if x.dtype != self.weight.dtype:
            return f"input dtype {x.dtype} differs from the weight's {self.weight.dtype}"
        k, n, m = self.in_features, self.out_features, x.numel() // max(x.shape[-1], 1)
        if k % 64 or n % 64:
            return f"in_features={k} and out_features={n} must be multiples of 64 for the 2:4 kernels"
        tokens = 16 if x.dtype == torch.int8 else 8
        if m % tokens:
            return f"{m} tokens: the 2:4 path needs a multiple of {tokens} for {x.dtype}"
        return None

    def _pack(self) -> Callable:
        """The packed weight's matmul (x2, bias) -> y, rebuilt when the weight moved or changed dtype."""
        key = (self.weight.device, self.weight.dtype, self.weight.data_ptr())
        if self._packed_for != key:
            from sparsity_lab.semi24.matmul import Semi24Matmul

            self._packed = Semi24Matmul(self.weight.detach(), self.backend, prune=False)
            self._packed_for = key
            self._routes.clear()
            # our binding's own entry point skips Semi24Matmul's reshaping: less host time per call
            self._sparse_fn = self._packed.packed.linear if self.backend == "cusparselt" else self._packed.linear
        return self._sparse_fn

    def sparse_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """The 2:4 kernel on x (M, K), no dispatching."""
        return self._pack()(x2, self.bias)

    def _route(self, x: torch.Tensor, x2: torch.Tensor) -> bool:
        """Decide (once per device, dtype and token count) whether this input goes to the 2:4 kernel."""
        reason = self.sparse_unavailable(x)
        if reason:
            self.last_reason = f"dense (pruned weight): {reason}"
            return False
        self._pack()
        if self.dispatcher is None:
            self.last_reason = "sparse (no dispatcher)"
            return True
        key = Semi24Key(x2.shape[0], self.in_features, self.out_features, x.dtype, self.backend)
        decision = self.dispatcher.choose(key, lambda: {"sparse": lambda: self.sparse_forward(x2),
                                                        "dense": lambda: F.linear(x2, self.weight, self.bias)})
        self.last_reason = decision.reason
        return decision.choice == "sparse"

    def _route_for(self, x: torch.Tensor, key: tuple) -> tuple:
        """(sparse call or None for dense, weight pointer it was decided for), cached under `key`."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x has shape {tuple(x.shape)}: the layer expects {self.in_features} features last")
        x2 = x.reshape(-1, self.in_features)
        fn = None
        if self._route(x, x2):
            linear = self._sparse_fn
            if x.dim() == 2:
                fn = linear
            else:
                flat, out_shape = (x2.shape[0], self.in_features), (*x.shape[:-1], self.out_features)
                fn = lambda x, bias: linear(x.reshape(flat), bias).reshape(out_shape)  # noqa: E731
        route = self._routes[key] = (fn, self.weight.data_ptr())
        return route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the eager hot path: one dict lookup, then the 2:4 call (or F.linear); everything else is decided once
        grad = x.requires_grad and torch.is_grad_enabled()
        params = self._parameters
        key = (x.shape, x.dtype, x.get_device(), grad)
        route = self._routes.get(key)
        if route is None or route[1] != params["weight"].data_ptr():
            route = self._route_for(x, key)
        fn = route[0]
        if fn is None:
            return F.linear(x, params["weight"], params.get("bias"))
        return fn(x, params.get("bias"))


class GraphedCall:
    """A module (or function) of one input captured into a CUDA graph for a fixed input shape: calling it copies
    the input into the graph's static input, replays the graph and returns the static output (overwritten by the
    next call: clone it to keep it). For decode loops, where eager host work per launch (Python, PyTorch's
    dispatcher, cuSPARSELt's own launch code: ~20-30 us per layer measured on an H100 host) outlasts a 10 us
    kernel; a replay launches every captured kernel for a few microseconds of host time in all."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3) -> None:
        """Capture one call of `fn` on a copy of `example` (`sparsity_lab.timing.capture_graph`: `warmup` calls on
        a side stream first, so plans, dispatcher decisions and allocations are made outside the capture)."""
        if not example.is_cuda:
            raise ValueError(f"CUDA graphs need a CUDA input; example is on {example.device}")
        self.fn = fn
        self.static_input = example.detach().clone()
        with torch.no_grad():
            self.graph, self.static_output = capture_graph(lambda: fn(self.static_input), warmup=warmup,
                                                           device=example.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            raise ValueError(f"this graph was captured for {tuple(self.static_input.shape)} "
                             f"{self.static_input.dtype} inputs, got {tuple(x.shape)} {x.dtype}")
        if x.data_ptr() != self.static_input.data_ptr():
            self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


def capture(module: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3) -> GraphedCall:
    """`GraphedCall(module, example)`: a swapped model (or one layer) replayed from a CUDA graph at one input shape,
    the practical route to kernel-speed decode steps (see `GraphedCall`)."""
    return GraphedCall(module, example, warmup)
