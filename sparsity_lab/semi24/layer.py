"""`Semi24Linear`: an ``nn.Linear`` whose weight is 2:4 sparse, run by cuSPARSELt where that is faster.

* `Semi24Linear.from_linear(linear)` prunes the weight to 2:4 (magnitude, ties to the lower index) and keeps
  the pruned dense weight (for the dense fallback) and, on the GPU, the compressed one (built on the first CUDA
  forward, so the module can be built on the CPU and moved with ``.to("cuda")``).
* `sparsify_(model, Semi24Config())` (`sparsity_lab.sparsify`) replaces a model's ``nn.Linear`` layers by
  `Semi24Linear` and reports, per layer, what it did and why.
* A `sparsity_lab.dispatch.Dispatcher` chooses, per `Semi24Key` (M, K, N, dtype, backend), sparse or dense (and, at
  1-64 tokens, our Triton decode kernel, `decode_kernel`) from a short measurement at first use, cached; a shape
  goes sparse only when it measured at least 3% faster (`DEFAULT_DISPATCHER`'s margin). On the CPU, or for a dtype
  or shape the 2:4 kernels cannot take, the layer runs dense with the pruned weight and says why
  (`Semi24Linear.last_reason`).
* `Semi24Linear.mode` fixes the choice instead ("dense", "sparse", "sparse-rowmajor": the 2:4 kernel, then
  `transpose_kernel.row_major` so y leaves row-major, "dense-colmajor": cuBLAS writing yᵀ, the sparse path's
  layout, for a model whose residual stream is column-major (`sparsity_lab.models.stream`), or "decode": the
  decode kernel at 1-64 tokens). A layer timed
  alone cannot see what its column-major y costs the ops after it; `sparsity_lab.dispatch.tune_` times the model (or
  one of its blocks) with each choice and sets the modes, so the swapped model as a whole is never slower than its
  dense self beyond timing noise.
* Under ``torch.compile`` the 2:4 matmul is the custom op `sparsity_lab.semi24.ops.semi24_linear_t` (no graph
  break, dynamic token counts), and Inductor fuses y's transpose into the ops that follow; in mode "decode" it is
  `ops.semi24_decode`, so a compiled decode step keeps the decode kernel.
* `capture(model, example)` (`GraphedCall`) replays a model or layer from a CUDA graph at one input shape. Eager
  decode steps are host-bound: on the H100 host one eager 2:4 call costs ~14-25 us of CPU time (of which ~13 us is
  cuSPARSELt's own launch) against a ~10 us kernel at M = 16, K = N = 4096 -- and dense ``F.linear`` is
  host-bound there too. Replaying from a graph removes that host work (docs/performance/semi24.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab._optional import triton_available
from sparsity_lab.dispatch import Dispatcher
from sparsity_lab.semi24 import ops
from sparsity_lab.semi24.matmul import SPARSE_PATHS, prune24, unavailable_reason
from sparsity_lab.semi24.ops import Semi24Key, dense_t, tokens_multiple
from sparsity_lab.semi24.transpose_kernel import row_major
from sparsity_lab.timing import capture_graph

DEFAULT_DISPATCHER = Dispatcher(margin=0.97)
MODES = ("auto", "dense", "dense-colmajor", "sparse", "sparse-rowmajor", "decode")


class Semi24Linear(nn.Module):
    """y = x Wᵀ + b with a 2:4-pruned W: cuSPARSELt (or another 2:4 backend) where measured faster, else dense.

    Inference only: the weight is frozen, and an input that needs gradients takes the dense path (which
    autograd can differentiate). The sparse path returns y as a transposed (column-major) view, except in mode
    "sparse-rowmajor". `mode` (`MODES`): "auto" lets the dispatcher decide per shape; "dense", "dense-colmajor"
    (y column-major, as the sparse path leaves it), "sparse" and "sparse-rowmajor" fix the route, "decode" takes
    the Triton decode kernel wherever it fits (1-64 tokens) and the 2:4 kernel elsewhere (`sparsity_lab.dispatch.tune_`
    sets them from whole-model timings)."""

    # what `sparsity_lab.dispatch.tune_` chooses among ("auto": the per-shape dispatcher, decode kernel included)
    TUNE_MODES = ("dense", "dense-colmajor", "sparse", "sparse-rowmajor", "auto", "decode")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "cusparselt",
                 dispatcher: Dispatcher | None = DEFAULT_DISPATCHER, prune: bool = True, mode: str = "auto") -> None:
        """`weight` (out_features, in_features) is pruned to 2:4 unless `prune=False`; `dispatcher=None` always
        runs the sparse kernel where it can (no measurement). A CUDA weight is packed now (else on ``.to("cuda")``
        or the first CUDA forward), so ``torch.compile`` finds the packed weight as a buffer."""
        super().__init__()
        if backend not in SPARSE_PATHS:
            raise ValueError(f"backend must be one of {SPARSE_PATHS}, got {backend!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self.dispatcher = dispatcher  # a property: the compiled path refers to it by `ops.dispatcher_id`
        with torch.no_grad():
            pruned = prune24(weight.detach()) if prune else weight.detach().clone()
        self.weight = nn.Parameter(pruned, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._packed = None
        self._packed_for: tuple | None = None
        self._sparse_fn: Callable | None = None
        # (shape, dtype, device, needs grad) -> (sparse call or None, W's address and version it was decided for)
        self._routes: dict[tuple, tuple] = {}
        self._mode = mode
        self._decode_weight: tuple | None = None  # (weight tag, values, meta) for the decode kernel
        self.last_reason = "not run yet"
        # cuSPARSELt's packed weight, for the compiled path (empty until packed; not saved: rebuilt from weight)
        self.register_buffer("compressed", torch.empty(0, dtype=torch.uint8, device=pruned.device), persistent=False)
        self._pack_if_possible()
        if mode == "decode":
            self._decode_operands()

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> Semi24Linear:
        """A `Semi24Linear` with `linear`'s weight pruned to 2:4 and its bias."""
        return cls(linear.weight, linear.bias, **kwargs)

    @property
    def dispatcher(self) -> Dispatcher | None:
        """What decides sparse or dense per shape in mode "auto" (None: always sparse where the kernel runs)."""
        return self._dispatcher

    @dispatcher.setter
    def dispatcher(self, value: Dispatcher | None) -> None:
        self._dispatcher, self._dispatcher_id = value, ops.dispatcher_id(value)
        self.__dict__.get("_routes", {}).clear()

    @property
    def mode(self) -> str:
        """How the layer routes its inputs (`MODES`); setting it forgets the routes decided so far."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._mode = value
        self._routes.clear()
        if value == "decode":  # built now, so a compiled graph finds the decode kernel's operands
            self._decode_operands()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}, 2:4, "
                f"mode={self._mode}")

    def _pack_if_possible(self) -> None:
        """Pack the weight now when cuSPARSELt can run it here (a CUDA weight of a dtype and shape it takes)."""
        w = self.weight
        if (self.backend == "cusparselt" and w.is_cuda and not self.in_features % 64 and not self.out_features % 64
                and unavailable_reason(self.backend, w.device, w.dtype) is None):
            self._pack()

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202  (nn.Module's signature)
        """After ``.to()`` / ``.cuda()`` / ``.half()``: forget the packed weight and repack where cuSPARSELt runs."""
        super()._apply(fn, recurse)
        self._repack()
        return self

    def __getstate__(self) -> dict:
        """Copies and pickles leave cuSPARSELt's handles behind (they are rebuilt from the weight)."""
        state = self.__dict__.copy()
        state.update(_packed=None, _packed_for=None, _sparse_fn=None, _routes={}, _decode_weight=None)
        state["_buffers"] = {**state["_buffers"], "compressed": torch.empty(0, dtype=torch.uint8)}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._repack()

    def _repack(self) -> None:
        """Forget the packed weight and everything decided with it, then pack again where cuSPARSELt runs."""
        self._packed, self._packed_for, self._sparse_fn, self._decode_weight = None, None, None, None
        self._routes.clear()
        self.compressed = torch.empty(0, dtype=torch.uint8, device=self.weight.device)
        self._pack_if_possible()
        if self._mode == "decode":
            self._decode_operands()

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
        if m % tokens_multiple(x.dtype) and self.backend != "cusparselt":
            return f"{m} tokens: {self.backend} needs a multiple of {tokens_multiple(x.dtype)} for {x.dtype}"
        return None

    def _pack(self) -> Callable:
        """The packed weight's matmul (x2, bias) -> y, rebuilt when the weight moved or changed dtype, and
        re-compressed in place (after checking it is still 2:4) when it was changed in place, e.g. by
        ``load_state_dict`` (its version counter moved)."""
        key = (self.weight.device, self.weight.dtype, self.weight.data_ptr())
        if self._packed_for == key and self._packed.version != self.weight._version:
            if self.backend == "cusparselt":
                ops.refresh(self._packed, self.weight.detach())
            else:
                self._packed_for = None
        if self._packed_for != key:
            from sparsity_lab.semi24.matmul import Semi24Matmul

            self._packed = Semi24Matmul(self.weight.detach(), self.backend, prune=False)
            self._packed.version = self.weight._version
            self._packed_for = key
            self._routes.clear()
            if self.backend == "cusparselt":
                self.compressed = self._packed.packed.compressed
                ops.register_packed(self._packed)
            # our binding's own entry point skips Semi24Matmul's reshaping: less host time per call
            self._sparse_fn = self._packed.packed.linear if self.backend == "cusparselt" else self._packed.linear
        return self._sparse_fn

    def sparse_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """The 2:4 kernel on x (M, K), no dispatching."""
        return self._sparse_call(x2.shape[0])(x2, self.bias)

    def _sparse_call(self, m: int) -> Callable:
        """The 2:4 call (x2, bias) -> y for M = `m` tokens in this mode. cuSPARSELt takes token counts in
        multiples of 8 (16 for int8): other counts are padded with zero rows and y cut back to its `m` rows
        (decode steps of 1-7 tokens are weight-bandwidth-bound, so the 8-row kernel costs what the 1-row one
        would); "sparse-rowmajor" copies y to row-major (`transpose_kernel.row_major`)."""
        linear = self._pack()
        pad = -m % tokens_multiple(self.weight.dtype)
        if pad:
            return lambda x, bias: linear(F.pad(x, (0, 0, 0, pad)), bias)[:m].contiguous()
        if self._mode == "sparse-rowmajor":
            return lambda x, bias: row_major(linear(x, bias))
        return linear

    def _route(self, x: torch.Tensor, x2: torch.Tensor) -> str:
        """Decide (once per device, dtype and token count) where this input goes: "dense", "dense-colmajor",
        "sparse" (cuSPARSELt) or "decode" (the Triton decode kernel, a dispatcher candidate at 1-64 tokens)."""
        if self._mode == "dense-colmajor":
            self.last_reason = "dense (pruned weight), y column-major: mode='dense-colmajor'"
            return "dense-colmajor"
        reason = self.sparse_unavailable(x)
        if reason:
            self.last_reason = f"dense (pruned weight): {reason}"
            return "dense"
        if self._mode == "dense":
            self.last_reason = "dense (pruned weight): mode='dense'"
            return "dense"
        self._pack()
        if self._mode == "decode" and self._decode_fits(x2):
            self.last_reason = "decode kernel: mode='decode'"
            return "decode"
        if self._mode != "auto":
            self.last_reason = f"sparse: mode={self._mode!r}"
            return "sparse"
        if self.dispatcher is None:
            self.last_reason = "sparse (no dispatcher)"
            return "sparse"

        def candidates() -> dict[str, Callable[[], torch.Tensor]]:
            calls = {"sparse": lambda: self.sparse_forward(x2), "dense": lambda: F.linear(x2, self.weight, self.bias)}
            if self._decode_fits(x2):
                calls["decode"] = lambda: self._decode_call()(x2, self.bias)
            return calls

        key = Semi24Key(x2.shape[0], self.in_features, self.out_features, x.dtype, self.backend)
        decision = self.dispatcher.choose(key, candidates)
        self.last_reason = decision.reason
        return decision.choice

    def _decode_fits(self, x2: torch.Tensor) -> bool:
        """Whether the Triton decode kernel takes this input: CUDA, 16-bit floats, 1-64 tokens, K a multiple of 64."""
        from sparsity_lab.semi24.decode_kernel import MAX_TOKENS

        return (x2.is_cuda and x2.dtype in (torch.float16, torch.bfloat16) and x2.shape[0] <= MAX_TOKENS
                and not self.in_features % 64 and triton_available())

    def _decode_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This weight in the simple 2:4 layout, (values, meta), for the decode kernel: built on first use and
        rebuilt when the weight changed; empty on the CPU or where the kernel cannot run (the op then runs
        dense)."""
        from sparsity_lab.semi24 import layout

        w = self.weight
        if not (w.is_cuda and w.dtype in (torch.float16, torch.bfloat16) and not self.in_features % 64
                and triton_available()):
            return self._no_decode_operands()
        tag = (w.data_ptr(), w._version, w.dtype)
        if self._decode_weight is None or self._decode_weight[0] != tag:
            self._decode_weight = (tag, *layout.compress(w.detach(), "simple"))
        return self._decode_weight[1:]

    def _no_decode_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty (values, meta): the decode op then runs dense."""
        return self.weight.new_empty(0), torch.empty(0, dtype=torch.uint8, device=self.weight.device)

    def _decode_call(self) -> Callable:
        """The decode kernel's call (x2, bias) -> y with this weight in the simple 2:4 layout."""
        from sparsity_lab.semi24.decode_kernel import decode_linear

        values, meta = self._decode_operands()
        return lambda x, bias: decode_linear(x, values, meta, bias)

    def _dense_colmajor_call(self) -> Callable:
        """(x2, bias) -> y = (W · x2ᵀ + b)ᵀ: dense, y column-major (cuBLAS writes yᵀ row-major)."""
        return lambda x, bias: dense_t(x, self._parameters["weight"], bias).t()

    def _route_for(self, x: torch.Tensor, key: tuple) -> tuple:
        """(sparse call or None for dense, weight address and version it was decided for), cached under `key`."""
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x has shape {tuple(x.shape)}: the layer expects {self.in_features} features last")
        x2 = x.reshape(-1, self.in_features)
        fn = None
        choice = self._route(x, x2)
        if choice != "dense":
            linear = {"decode": self._decode_call, "dense-colmajor": self._dense_colmajor_call}.get(
                choice, lambda: self._sparse_call(x2.shape[0]))()
            if x.dim() == 2:
                fn = linear
            else:
                flat, out_shape = (x2.shape[0], self.in_features), (*x.shape[:-1], self.out_features)
                fn = lambda x, bias: linear(x.reshape(flat), bias).reshape(out_shape)  # noqa: E731
        route = self._routes[key] = (fn, self.weight.data_ptr(), self.weight._version)
        return route

    def _compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What ``torch.compile`` traces: the custom op (D = W · xᵀ) and y = D.t() as a view Inductor fuses into
        the ops after it; dense ``F.linear`` in mode "dense", for PyTorch's backends and for inputs that need grad."""
        if self._mode == "dense-colmajor":
            return dense_t(x.reshape(-1, self.in_features), self.weight, self.bias).t().reshape(
                *x.shape[:-1], self.out_features)
        if (self._mode == "dense" or self.backend != "cusparselt" or x.shape[-1] != self.in_features
                or (x.requires_grad and torch.is_grad_enabled())):
            return F.linear(x, self.weight, self.bias)
        if self._mode == "decode":  # the operands were built when the mode was set (none: dense inside the op)
            values, meta = self._decode_weight[1:] if self._decode_weight is not None else self._no_decode_operands()
            y = torch.ops.sparsity_lab.semi24_decode(x.reshape(-1, self.in_features), self.weight, values, meta,
                                                     self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        dispatcher = self._dispatcher_id if self._mode == "auto" else 0
        d = torch.ops.sparsity_lab.semi24_linear_t(x.reshape(-1, self.in_features), self.weight, self.compressed,
                                                   self.bias, dispatcher)
        return d.t().reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._compiled_forward(x)
        # the eager hot path: one dict lookup, then the 2:4 call (or F.linear); everything else is decided once
        grad = x.requires_grad and torch.is_grad_enabled()
        params = self._parameters
        key = (x.shape, x.dtype, x.get_device(), grad)
        route = self._routes.get(key)
        weight = params["weight"]
        if route is None or route[1] != weight.data_ptr() or route[2] != weight._version:
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
