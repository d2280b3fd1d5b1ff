"""Our own binding to NVIDIA's cuSPARSELt (``libcusparseLt.so.0``) through ctypes, with the plan cached.

Why: ``torch._cslt_sparse_mm`` builds a new cuSPARSELt plan on every call and spends 1-2 ms of host time on
it, so 2:4 matmuls lose to dense cuBLAS for all but the largest shapes. Here the work cuSPARSELt wants done once
is done once:

1. `Semi24Weight.from_dense` describes the weight W (out_features N x in_features K, row-major) as a structured
   matrix, prunes it if asked (cuSPARSELt's strip pruning keeps the two largest |w| of each 1x4 group) and
   compresses it (values + metadata in cuSPARSELt's own layout, an opaque byte buffer).
2. The first call of `Semi24Weight.linear` for a token count M builds a plan for that shape: dense and output
   descriptors, the matmul descriptor, an algorithm choice (`CusparseLtOptions.search`: ``"library"`` has
   cusparseLtMatmulSearch time cuSPARSELt's kernels for this shape once; ``"time"`` does it ourselves;
   ``"default"`` skips it), the final plan and its workspace. The plan is cached under a `PlanKey` (shapes, dtypes,
   bias, x's order, the options) and shared by every weight of that shape.
3. Every later call is one ``cusparseLtMatmul`` launch on torch's current stream, so it also records into a
   CUDA graph. The eager hot path (`Semi24Weight.linear` after the first call of a signature) is one dict lookup,
   one ``new_empty_strided`` for y and one ctypes call whose arguments are pre-built (`_Launch`); the stream comes
   from ``torch._C._cuda_getCurrentRawStream`` (much cheaper than ``current_stream().cuda_stream``). That call
   alone costs ~13 us of host time on an H100 host (cuSPARSELt's own launch code), so a decode-size matmul
   (~10 us kernel) stays host-bound in eager mode; `sparsity_lab.semi24.layer.capture` replays such steps from a
   CUDA graph.

The transpose trick: ``nn.Linear`` computes y = x Wᵀ with x (M, K) and W (N, K), while cuSPARSELt wants the
structured operand first. We compute D = W · xᵀ (N x M): W is the structured A, xᵀ is x itself read with
opB = TRANSPOSE (no copy). D comes back row-major, i.e. yᵀ, and `Semi24Weight.linear` returns y as the transposed
view ``D.t()`` -- what PyTorch's own 2:4 ``F.linear`` returns too. A column-major x (such a view, from the layer
before) is read as it lies (`CusparseLtOptions.column_major_x`). This is the one layout the binding has: the
others measured (D column-major, W as the second operand) were slower and their algorithm search crashed; the
measurements are in docs/performance/semi24.md.

int8: int8 x int8 with int32 accumulation, written as int32, int8 or float16/bfloat16 with a per-tensor scale
``alpha`` (y = alpha · x Wᵀ), for quantized weights and activations.

FP8 (Hopper and later): float8_e4m3fn or float8_e5m2 operands with float32 accumulation, written as bfloat16,
float16 or float32. The scales of FP8 layers are applied after the matmul (`sparsity_lab.quant.fp8`): cuSPARSELt
0.8 refuses its per-channel alpha vector (``CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING``) for FP8 on an H200
(NOT_SUPPORTED), and a per-token scale indexes D's columns, which that vector could not scale anyway.
"""

from __future__ import annotations

import ctypes
import dataclasses
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsity_lab.timing import event_ms

if TYPE_CHECKING:
    from sparsity_lab.semi24.value_slots import ValueSlots

# -------------------------------------------------------------------------------------------------- constants
# cudaDataType_t (library_types.h)
CUDA_DTYPES = {torch.float16: 2, torch.bfloat16: 14, torch.int8: 3, torch.int32: 10, torch.float32: 0,
               torch.float8_e4m3fn: 28, torch.float8_e5m2: 29}
ORDER_COL, ORDER_ROW = 1, 2  # cusparseOrder_t
OP_N, OP_T = 0, 1  # cusparseOperation_t
SPARSITY_50 = 0  # cusparseLtSparsity_t
PRUNE_TILE, PRUNE_STRIP = 0, 1  # cusparseLtPruneAlg_t
ALG_DEFAULT = 0  # cusparseLtMatmulAlg_t
ALG_CONFIG_ID, ALG_CONFIG_MAX_ID, SEARCH_ITERATIONS, SPLIT_K, SPLIT_K_MODE, SPLIT_K_BUFFERS = range(6)
BIAS_POINTER = 8  # cusparseLtMatmulDescAttribute_t
ALIGNMENT = 16  # bytes
# Opaque structs are 512 bytes (0.7+) or 1024 bytes (older); we hand the library more than either needs.
OPAQUE_BYTES = 2048
STATUS_NAMES = {
    0: "SUCCESS", 1: "NOT_INITIALIZED", 2: "ALLOC_FAILED", 3: "INVALID_VALUE", 4: "ARCH_MISMATCH",
    5: "MAPPING_ERROR", 6: "EXECUTION_FAILED", 7: "INTERNAL_ERROR", 8: "MATRIX_TYPE_NOT_SUPPORTED",
    9: "ZERO_PIVOT", 10: "NOT_SUPPORTED", 11: "INSUFFICIENT_RESOURCES",
}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.int8, *FP8_DTYPES)
INT8_OUT_DTYPES = (torch.int32, torch.int8, torch.float16, torch.bfloat16)
FP8_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class CusparseLtError(RuntimeError):
    """A cuSPARSELt call returned an error status, or the library cannot be used here."""


class CusparseLtUnavailable(CusparseLtError):
    """libcusparseLt.so.0 is not installed (or no CUDA device is present)."""


# -------------------------------------------------------------------------------------------------- loading
INSTALL_HINT = (
    "install NVIDIA's wheel (`pip install nvidia-cusparselt-cu12` or `-cu13`, matching your CUDA; PyTorch's CUDA "
    "wheels already pull it in), then check with `sparsity-lab doctor`"
)


def library_candidates() -> list[Path]:
    """Where libcusparseLt.so.0 may be: the doctor's answer first, then the other nvidia wheel folders
    (``nvidia/cusparselt/lib``, ``nvidia/cu13/lib``, ``nvidia/cu12/lib``) and torch's own lib folder."""
    from sparsity_lab.course.doctor import find_cusparselt_library

    found = []
    first = find_cusparselt_library()
    if first is not None:
        found.append(first)
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        for pattern in ("cusparselt*/lib/libcusparseLt.so*", "cu1*/lib/libcusparseLt.so*"):
            found.extend(sorted(root.glob(pattern)))
    found.extend(sorted((Path(torch.__file__).parent / "lib").glob("libcusparseLt.so*")))
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


_LIB: ctypes.CDLL | None = None
_LIB_PATH: str | None = None
_LOCK = threading.Lock()

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_SIGNATURES = {
    "cusparseLtInit": [_P],
    "cusparseLtDestroy": [_P],
    "cusparseLtGetProperty": [ctypes.c_int, ctypes.POINTER(ctypes.c_int)],
    "cusparseLtDenseDescriptorInit": [_P, _P, _I64, _I64, _I64, ctypes.c_uint32, ctypes.c_int, ctypes.c_int],
    "cusparseLtStructuredDescriptorInit": [
        _P, _P, _I64, _I64, _I64, ctypes.c_uint32, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ],
    "cusparseLtMatDescriptorDestroy": [_P],
    "cusparseLtMatmulDescriptorInit": [_P, _P, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, ctypes.c_int],
    "cusparseLtMatmulDescSetAttribute": [_P, _P, ctypes.c_int, _P, ctypes.c_size_t],
    "cusparseLtMatmulAlgSelectionInit": [_P, _P, _P, ctypes.c_int],
    "cusparseLtMatmulAlgSetAttribute": [_P, _P, ctypes.c_int, _P, ctypes.c_size_t],
    "cusparseLtMatmulAlgGetAttribute": [_P, _P, ctypes.c_int, _P, ctypes.c_size_t],
    "cusparseLtMatmulGetWorkspace": [_P, _P, ctypes.POINTER(ctypes.c_size_t)],
    "cusparseLtMatmulPlanInit": [_P, _P, _P, _P],
    "cusparseLtMatmulPlanDestroy": [_P],
    "cusparseLtMatmul": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int32],
    "cusparseLtMatmulSearch": [_P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int32],
    "cusparseLtSpMMAPrune2": [_P, _P, ctypes.c_int, ctypes.c_int, _P, _P, ctypes.c_int, _P],
    "cusparseLtSpMMAPruneCheck2": [_P, _P, ctypes.c_int, ctypes.c_int, _P, _P, _P],
    "cusparseLtSpMMACompressedSize2": [_P, _P, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
    "cusparseLtSpMMACompress2": [_P, _P, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P],
}


def load_library() -> ctypes.CDLL:
    """Load libcusparseLt.so.0 once (the wheel's copy, else one already on the loader path), or raise
    `CusparseLtUnavailable` saying where we looked and how to install it."""
    global _LIB, _LIB_PATH
    with _LOCK:
        if _LIB is not None:
            return _LIB
        tried = [str(p) for p in library_candidates()] + ["libcusparseLt.so.0"]
        errors = []
        for name in tried:
            try:
                lib = ctypes.CDLL(name)
            except OSError as err:
                errors.append(f"{name}: {err}")
                continue
            for fn, argtypes in _SIGNATURES.items():
                getattr(lib, fn).argtypes = argtypes
                getattr(lib, fn).restype = ctypes.c_int
            _LIB, _LIB_PATH = lib, name
            return lib
        raise CusparseLtUnavailable(
            "cuSPARSELt (libcusparseLt.so.0) was not found; looked at: " + "; ".join(errors) + ". " + INSTALL_HINT
        )


def unavailable_reason() -> str | None:
    """Why the binding cannot run here (the library not found: `load_library`'s message), or None when it can."""
    try:
        load_library()
    except CusparseLtUnavailable as err:
        return str(err)
    return None


def library_path() -> str | None:
    """The file the binding loaded (None before `load_library`)."""
    return _LIB_PATH


def version() -> tuple[int, int, int]:
    """cuSPARSELt's (major, minor, patch) as the loaded library reports it."""
    lib = load_library()
    parts = []
    for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        check(lib.cusparseLtGetProperty(prop, ctypes.byref(value)), "cusparseLtGetProperty")
        parts.append(value.value)
    return (parts[0], parts[1], parts[2])


def compute_type(dtype: torch.dtype, lib_version: tuple[int, int, int]) -> int:
    """cusparseComputeType for an input dtype: 32-bit float accumulation for 16-bit floats and FP8, 32-bit
    integer for int8 (the enum was renumbered in 0.6: COMPUTE_16F, 32I, TF32 before; 32I, 16F, 32F since)."""
    if dtype not in INPUT_DTYPES:
        raise TypeError(f"cuSPARSELt inputs must be one of {INPUT_DTYPES}, got {dtype}")
    if dtype in FP8_DTYPES and lib_version < (0, 6, 0):
        raise CusparseLtError(f"FP8 needs cuSPARSELt 0.6 or later, found {lib_version}")
    if lib_version >= (0, 6, 0):
        return 0 if dtype == torch.int8 else 2
    if dtype == torch.int8:
        return 1
    return 0


def check(status: int, what: str) -> None:
    """Raise `CusparseLtError` naming the call and the status when `status` is not CUSPARSE_STATUS_SUCCESS."""
    if status != 0:
        raise CusparseLtError(f"{what} failed: CUSPARSE_STATUS_{STATUS_NAMES.get(status, status)} ({status})")


class _Opaque:
    """A 16-byte aligned host buffer for one of cuSPARSELt's opaque structs."""

    __slots__ = ("_raw", "ptr")

    def __init__(self) -> None:
        self._raw = ctypes.create_string_buffer(OPAQUE_BYTES + 16)
        address = ctypes.addressof(self._raw)
        self.ptr = ctypes.c_void_p(address + (-address) % 16)


# -------------------------------------------------------------------------------------------------- handle
_HANDLES: dict[int, _Opaque] = {}


def handle(device: torch.device) -> _Opaque:
    """The cuSPARSELt handle of a CUDA device (one per device, created on first use)."""
    if device.type != "cuda":
        raise CusparseLtError(f"cuSPARSELt runs on CUDA devices; the tensor is on {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _HANDLES:
        lib = load_library()
        new = _Opaque()
        with torch.cuda.device(index):
            check(lib.cusparseLtInit(new.ptr), "cusparseLtInit")
        _HANDLES[index] = new
    return _HANDLES[index]


# -------------------------------------------------------------------------------------------------- options
SEARCH_MODES = ("time", "library", "default")


@dataclass(frozen=True)
class CusparseLtOptions:
    """How plans are built, part of every `PlanKey`: `search` picks a new plan's algorithm (see `Plan`);
    `column_major_x` reads a column-major x (a previous 2:4 layer's transposed output, or its gradient) as it lies
    instead of copying it to row-major first; `search_column_major_x` searches those plans too (else "default")."""

    search: str = "library"
    column_major_x: bool = True
    search_column_major_x: bool = True

    def __post_init__(self) -> None:
        if self.search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {SEARCH_MODES}, got {self.search!r}")

    def plan_search(self, x_order: int) -> str:
        """The search a new plan for an x stored in `x_order` runs."""
        return self.search if x_order == ORDER_ROW or self.search_column_major_x else "default"


def dense_shape(m: int, k: int, x_order: int = ORDER_ROW) -> tuple[int, int, int]:
    """(rows, cols, ld) of x (M, K) as stored: row-major (ld K) or column-major (ld M); read with opB = TRANSPOSE."""
    return (m, k, k) if x_order == ORDER_ROW else (m, k, m)


def output_shape(m: int, n: int) -> tuple[int, int, int]:
    """(rows, cols, ld) of the output D = W · xᵀ, row-major (N x M, ld M): yᵀ, returned as the view y = D.t()."""
    return (n, m, m)


@dataclass(frozen=True)
class PlanKey:
    """What a cached plan depends on: every shape, dtype, attribute and option baked into it."""

    m: int
    k: int
    n: int
    dtype: torch.dtype
    out_dtype: torch.dtype
    bias_ptr: int
    device: int
    x_order: int  # ORDER_COL: x (M, K) is column-major (xᵀ contiguous) and is read as it lies
    options: CusparseLtOptions


def check_linear_shapes(x_shape: tuple[int, ...], weight_shape: tuple[int, int], dtype: torch.dtype) -> None:
    """Raise naming the dimension when cuSPARSELt cannot take x (M, K) against W (N, K)."""
    n, k = weight_shape
    if len(x_shape) != 2 or x_shape[1] != k:
        raise ValueError(f"x must be (M, {k}) for a weight of shape {tuple(weight_shape)}, got {tuple(x_shape)}")
    multiple = 32 if dtype.itemsize == 1 else 16  # 8-bit types (int8, FP8): 32
    for name, size in (("in_features K", k), ("out_features N", n)):
        if size % multiple:
            raise ValueError(f"{name} = {size}; cuSPARSELt needs a multiple of {multiple} for {dtype}")
    tokens = 16 if dtype.itemsize == 1 else 8  # cuSPARSELt's dense-operand rule (int8 measured: 24 is refused)
    if x_shape[0] % tokens:
        raise ValueError(f"tokens M = {x_shape[0]}; cuSPARSELt needs a multiple of {tokens} for {dtype} "
                         "(pad the batch)")


# -------------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class AlgChoice:
    """The kernel a plan runs: cuSPARSELt's algorithm id and split-K settings (-1: cuSPARSELt decides)."""

    alg_id: int
    split_k: int
    split_k_mode: int
    split_k_buffers: int


_PLANS: dict[PlanKey, Plan] = {}
_CHOSEN: dict[PlanKey, AlgChoice] = {}  # keyed with bias_ptr=0: the choice does not depend on the bias


class Plan:
    """One cuSPARSELt matmul plan with its descriptors, chosen algorithm and workspace, ready to launch.

    A plan does not hold the weight's data pointer, so all weights of one shape, dtype and options share it.
    Its search (`CusparseLtOptions.plan_search`): "default" takes cuSPARSELt's heuristic choice; "time" builds a
    plan per algorithm id, times each and keeps the fastest; "library" asks ``cusparseLtMatmulSearch``. Each
    alternative gets fresh opaque structs (a destroyed plan is never re-initialized in place)."""

    def __init__(self, weight: Semi24Weight, key: PlanKey, sample_x: torch.Tensor) -> None:
        lib = load_library()
        search = key.options.plan_search(key.x_order)
        self.key = key
        self._lib = lib
        self._handle = weight.handle
        self._weight_descriptor = weight.descriptor  # the matmul descriptor refers to it: keep it alive
        self.dense, self.out, self.matmul = _Opaque(), _Opaque(), _Opaque()
        self.alg: _Opaque | None = None
        self.plan: _Opaque | None = None
        self.alpha = ctypes.c_float(1.0)
        self.beta = ctypes.c_float(0.0)
        self._alpha_ref, self._beta_ref = ctypes.byref(self.alpha), ctypes.byref(self.beta)
        self._streams = (ctypes.c_void_p * 1)()
        self._spare: list[tuple[_Opaque, _Opaque]] = []  # plans tried and not kept
        h = self._handle.ptr
        rows, cols, ld = dense_shape(key.m, key.k, key.x_order)
        check(lib.cusparseLtDenseDescriptorInit(h, self.dense.ptr, rows, cols, ld, ALIGNMENT,
                                                CUDA_DTYPES[key.dtype], key.x_order),
              f"cusparseLtDenseDescriptorInit(x {key.m}x{key.k})")
        rows, cols, ld = output_shape(key.m, key.n)
        check(lib.cusparseLtDenseDescriptorInit(h, self.out.ptr, rows, cols, ld, ALIGNMENT,
                                                CUDA_DTYPES[key.out_dtype], ORDER_ROW),
              f"cusparseLtDenseDescriptorInit(out {rows}x{cols} {key.out_dtype})")
        check(lib.cusparseLtMatmulDescriptorInit(h, self.matmul.ptr, OP_N, OP_T, weight.descriptor.ptr,
                                                 self.dense.ptr, self.out.ptr, self.out.ptr,
                                                 compute_type(key.dtype, weight.lib_version)),
              f"cusparseLtMatmulDescriptorInit({key.dtype} -> {key.out_dtype})")
        if key.bias_ptr:
            self._bias = ctypes.c_void_p(key.bias_ptr)
            check(lib.cusparseLtMatmulDescSetAttribute(h, self.matmul.ptr, BIAS_POINTER, ctypes.byref(self._bias),
                                                       ctypes.sizeof(self._bias)),
                  "cusparseLtMatmulDescSetAttribute(BIAS_POINTER)")
        choice_key = dataclasses.replace(key, bias_ptr=0)
        known = _CHOSEN.get(choice_key)
        self.timings: dict[int, float] = {}
        self.searched = known is None and search != "default"
        if known is not None:
            self._build(known)
        elif search == "default":
            self._build(None)
        elif search == "time":
            self._time_algorithms(weight.compressed.data_ptr(), sample_x)
        else:
            self._build(None)
            out = self._new_output(sample_x.device)
            self._streams[0] = torch.cuda.current_stream(sample_x.device).cuda_stream
            check(lib.cusparseLtMatmulSearch(h, self.plan.ptr, ctypes.byref(self.alpha),
                                             weight.compressed.data_ptr(), sample_x.data_ptr(),
                                             ctypes.byref(self.beta), out.data_ptr(), out.data_ptr(),
                                             self.workspace.data_ptr(), self._streams, 1),
                  "cusparseLtMatmulSearch")
            self._build(self._read_choice())  # rebuild from fresh structs with what the search picked
        self.choice = self._read_choice()
        _CHOSEN.setdefault(choice_key, self.choice)

    def _new_output(self, device: torch.device) -> torch.Tensor:
        rows, cols, _ = output_shape(self.key.m, self.key.n)
        return torch.empty((rows, cols), dtype=self.key.out_dtype, device=device)

    def _build(self, choice: AlgChoice | None) -> None:
        """Fresh algorithm selection and plan (with `choice` when given), and a workspace for them."""
        lib, h = self._lib, self._handle.ptr
        if self.plan is not None:
            self._spare.append((self.alg, self.plan))
        self.alg, self.plan = _Opaque(), _Opaque()
        check(lib.cusparseLtMatmulAlgSelectionInit(h, self.alg.ptr, self.matmul.ptr, ALG_DEFAULT),
              "cusparseLtMatmulAlgSelectionInit")
        if choice is not None:
            settings = [(ALG_CONFIG_ID, choice.alg_id)]
            if choice.split_k > 1:
                settings += [(SPLIT_K, choice.split_k), (SPLIT_K_MODE, choice.split_k_mode),
                             (SPLIT_K_BUFFERS, choice.split_k_buffers)]
            for attribute, value in settings:
                data = ctypes.c_int32(value)
                check(lib.cusparseLtMatmulAlgSetAttribute(h, self.alg.ptr, attribute, ctypes.byref(data),
                                                          ctypes.sizeof(data)),
                      f"cusparseLtMatmulAlgSetAttribute({attribute}={value})")
        check(lib.cusparseLtMatmulPlanInit(h, self.plan.ptr, self.matmul.ptr, self.alg.ptr),
              "cusparseLtMatmulPlanInit")
        size = ctypes.c_size_t()
        check(lib.cusparseLtMatmulGetWorkspace(h, self.plan.ptr, ctypes.byref(size)), "cusparseLtMatmulGetWorkspace")
        device = torch.device("cuda", self.key.device)
        self.workspace = torch.empty(max(size.value, 1), dtype=torch.uint8, device=device)
        self._workspace_ptr = self.workspace.data_ptr()

    def _read_choice(self) -> AlgChoice:
        values = []
        for attribute in (ALG_CONFIG_ID, SPLIT_K, SPLIT_K_MODE, SPLIT_K_BUFFERS):
            value = ctypes.c_int32()
            check(self._lib.cusparseLtMatmulAlgGetAttribute(self._handle.ptr, self.alg.ptr, attribute,
                                                            ctypes.byref(value), ctypes.sizeof(value)),
                  f"cusparseLtMatmulAlgGetAttribute({attribute})")
            values.append(value.value)
        return AlgChoice(*values)

    def _time_algorithms(self, weight_ptr: int, x: torch.Tensor, finalists: int = 4) -> None:
        """Build a plan per algorithm id and time it (median of 5 launches); re-time the `finalists` fastest
        side by side (median of 20, interleaved, so clock drift hits them alike) and keep the fastest."""
        self._build(None)
        count = ctypes.c_int32()
        check(self._lib.cusparseLtMatmulAlgGetAttribute(self._handle.ptr, self.alg.ptr, ALG_CONFIG_MAX_ID,
                                                        ctypes.byref(count), ctypes.sizeof(count)),
              "cusparseLtMatmulAlgGetAttribute(CONFIG_MAX_ID)")
        out = self._new_output(x.device)
        built: dict[int, tuple[_Opaque, _Opaque, torch.Tensor]] = {}
        first: dict[int, float] = {}

        def run(alg_id: int, warmup: int = 0, reps: int = 1) -> float:
            self.alg, self.plan, self.workspace = built[alg_id]
            self._workspace_ptr = self.workspace.data_ptr()
            return event_ms(lambda: self.launch(weight_ptr, x, out), warmup, reps)

        for alg_id in range(max(count.value, 1)):
            self._build(AlgChoice(alg_id, 1, 0, 0))
            built[alg_id] = (self.alg, self.plan, self.workspace)
            first[alg_id] = run(alg_id, warmup=2, reps=5)
        best = sorted(first, key=first.get)[:finalists]
        rounds: dict[int, list[float]] = {a: [] for a in best}
        for _ in range(20):
            for alg_id in best:
                rounds[alg_id].append(run(alg_id))
        self.timings = {a: statistics.median(t) for a, t in rounds.items()}
        self.timings.update({a: t for a, t in first.items() if a not in self.timings})
        winner = min(best, key=lambda a: self.timings[a])
        self.alg, self.plan, self.workspace = built[winner]
        self._workspace_ptr = self.workspace.data_ptr()
        self._spare = [(alg, plan) for a, (alg, plan, _) in built.items() if a != winner] + [
            pair for pair in self._spare if all(pair[1] is not b[1] for b in built.values())]

    def launch(self, weight_ptr: int, x: torch.Tensor, out: torch.Tensor, alpha: float = 1.0) -> None:
        """Enqueue one cusparseLtMatmul on torch's current stream: out = alpha · x Wᵀ (+ bias), W at `weight_ptr`
        (the algorithm timing's call; `Semi24Weight.linear` launches through a pre-built `_Launch`)."""
        self.alpha.value = alpha
        self._streams[0] = _current_raw_stream(self.key.device)
        status = self._lib.cusparseLtMatmul(self._handle.ptr, self.plan.ptr, self._alpha_ref, weight_ptr,
                                            x.data_ptr(), self._beta_ref, out.data_ptr(), out.data_ptr(),
                                            self._workspace_ptr, self._streams, 1)
        if status:
            check(status, "cusparseLtMatmul")

    def __del__(self) -> None:
        try:
            for _, plan in [*self._spare, (None, self.plan)]:
                if plan is not None:
                    self._lib.cusparseLtMatmulPlanDestroy(plan.ptr)
            self._lib.cusparseLtMatDescriptorDestroy(self.dense.ptr)
            self._lib.cusparseLtMatDescriptorDestroy(self.out.ptr)
        except Exception:  # interpreter shutdown: the library may be gone already
            pass


def _reads_column_major(x: torch.Tensor, options: CusparseLtOptions) -> bool:
    """Whether x (M, K) is column-major (xᵀ contiguous, e.g. a previous 2:4 layer's output) and `options` let the
    plan read it in place instead of copying it to row-major first."""
    return (options.column_major_x and x.dim() == 2 and x.shape[0] > 1 and x.shape[1] > 1
            and x.stride() == (1, x.shape[0]))


def clear_plans() -> None:
    """Forget every cached plan and algorithm choice (they are rebuilt on next use)."""
    _PLANS.clear()
    _CHOSEN.clear()


def cached_plans() -> dict[PlanKey, AlgChoice]:
    """The plans built so far and the algorithm each one uses."""
    return {key: plan.choice for key, plan in _PLANS.items()}


def _stream_getter():
    """torch's raw current-stream getter (an int; a cheap C call), or a slower fallback on builds without it."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw
    return lambda index: torch.cuda.current_stream(index).cuda_stream


_current_raw_stream = _stream_getter()


class _Launch:
    """Everything one call signature of `Semi24Weight.linear` needs, pre-built: the plan's ctypes arguments as
    ready objects (handle, plan, alpha/beta references, weight and workspace pointers, the stream slot), and the
    output's shape, strides, dtype and device. The eager hot path only reads these attributes."""

    __slots__ = ("owner", "plan", "fn", "handle", "alpha", "alpha_ref", "beta_ref", "weight", "workspace",
                 "streams", "out_shape", "out_stride", "like", "device_index", "contiguous")

    def __init__(self, plan: Plan, weight_ptr: int, out_shape: tuple[int, int], out_stride: tuple[int, int],
                 out_dtype: torch.dtype, device: torch.device, contiguous: bool) -> None:
        self.owner = plan  # keeps the plan (and its workspace) alive even after `clear_plans`
        self.plan = plan.plan.ptr
        self.fn = plan._lib.cusparseLtMatmul
        self.handle = plan._handle.ptr
        self.alpha = ctypes.c_float(1.0)
        self.alpha_ref, self.beta_ref = ctypes.byref(self.alpha), plan._beta_ref
        self.weight = ctypes.c_void_p(weight_ptr)
        self.workspace = ctypes.c_void_p(plan._workspace_ptr)
        self.streams = (ctypes.c_void_p * 1)()
        self.out_shape, self.out_stride = out_shape, out_stride
        self.like = torch.empty(0, dtype=out_dtype, device=device)  # new_empty_strided parses fewer arguments
        self.device_index = plan.key.device
        self.contiguous = contiguous


# -------------------------------------------------------------------------------------------------- weight
_W_OPERAND = (1, OP_N)  # (isSparseA, op) for prune, compress and their check: W is the structured A, as it lies


class Semi24Weight:
    """A 2:4 weight W (N, K) compressed by cuSPARSELt; matmul plans are cached per `PlanKey` and shared by all
    weights of the same shape, dtype and `options`."""

    def __init__(self, weight_shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
                 options: CusparseLtOptions = CusparseLtOptions()) -> None:
        """An empty weight of this shape, with its structured descriptor (use `from_dense` to fill it); its plans
        are built with `options`."""
        if dtype not in INPUT_DTYPES:
            raise TypeError(f"weight dtype must be one of {INPUT_DTYPES}, got {dtype}")
        self.lib = load_library()
        self.lib_version = version()
        self.shape = tuple(weight_shape)
        self.dtype = dtype
        self.device = device
        self.options = options
        self.handle = handle(device)
        self.descriptor = _Opaque()
        n, k = self.shape
        check(self.lib.cusparseLtStructuredDescriptorInit(self.handle.ptr, self.descriptor.ptr, n, k, k, ALIGNMENT,
                                                          CUDA_DTYPES[dtype], ORDER_ROW, SPARSITY_50),
              f"cusparseLtStructuredDescriptorInit(W {n}x{k} {dtype})")
        self.compressed = torch.empty(0, dtype=torch.uint8, device=device)
        self._calls: dict[tuple, _Launch] = {}  # per call signature: everything `linear` needs, checked once

    @classmethod
    def from_dense(cls, dense: torch.Tensor, prune: bool = False,
                   options: CusparseLtOptions = CusparseLtOptions()) -> Semi24Weight:
        """Compress a CUDA weight (N, K) that is 2:4 already (or prune it first with cuSPARSELt's strip pruning
        when `prune=True`: the two largest |w| of each group of four are kept); its plans use `options`."""
        if dense.dim() != 2:
            raise ValueError(f"dense must be 2-D (out_features, in_features), got shape {tuple(dense.shape)}")
        check_linear_shapes((16, dense.shape[1]), tuple(dense.shape), dense.dtype)
        dense = dense.contiguous()
        weight = cls(tuple(dense.shape), dense.dtype, dense.device, options)
        lib, h = weight.lib, weight.handle
        is_a, op = _W_OPERAND
        stream = ctypes.c_void_p(torch.cuda.current_stream(dense.device).cuda_stream)
        if prune:
            pruned = torch.empty_like(dense)
            check(lib.cusparseLtSpMMAPrune2(h.ptr, weight.descriptor.ptr, is_a, op, dense.data_ptr(),
                                            pruned.data_ptr(), PRUNE_STRIP, stream), "cusparseLtSpMMAPrune2")
            dense = pruned
        size, buffer_size = ctypes.c_size_t(), ctypes.c_size_t()
        check(lib.cusparseLtSpMMACompressedSize2(h.ptr, weight.descriptor.ptr, ctypes.byref(size),
                                                 ctypes.byref(buffer_size)), "cusparseLtSpMMACompressedSize2")
        weight.compressed = torch.empty(size.value, dtype=torch.uint8, device=dense.device)
        scratch = torch.empty(max(buffer_size.value, 1), dtype=torch.uint8, device=dense.device)
        check(lib.cusparseLtSpMMACompress2(h.ptr, weight.descriptor.ptr, is_a, op, dense.data_ptr(),
                                           weight.compressed.data_ptr(), scratch.data_ptr(), stream),
              "cusparseLtSpMMACompress2")
        weight._scratch = scratch  # freed with the weight; the compress kernel may still be reading it
        return weight

    def recompress(self, dense: torch.Tensor) -> None:
        """Compress a new 2:4 `dense` (same shape, dtype and device) into this weight's buffer, in place: the
        buffer's address is unchanged, so every cached plan and call signature stays valid (training updates
        the weight every step)."""
        if tuple(dense.shape) != self.shape or dense.dtype != self.dtype or dense.device != self.compressed.device:
            raise ValueError(f"recompress needs a {self.shape} {self.dtype} tensor on {self.compressed.device}, "
                             f"got {tuple(dense.shape)} {dense.dtype} on {dense.device}")
        dense = dense.contiguous()
        is_a, op = _W_OPERAND
        check(self.lib.cusparseLtSpMMACompress2(self.handle.ptr, self.descriptor.ptr, is_a, op, dense.data_ptr(),
                                                self.compressed.data_ptr(), self._scratch.data_ptr(),
                                                ctypes.c_void_p(_current_raw_stream(dense.device.index))),
              "cusparseLtSpMMACompress2")

    def learn_value_slots(self, mask: torch.Tensor) -> ValueSlots:
        """Where this weight's buffer keeps each kept value of the 2:4 `mask` (`sparsity_lab.semi24.value_slots`), so
        a weight with that mask can be written by `ValueSlots.write(self.compressed, dense)` instead of compressed.
        Runs cuSPARSELt's compress on probes, overwriting the buffer: write or compress the real weight after."""
        from sparsity_lab.semi24 import value_slots

        def compress(dense: torch.Tensor) -> torch.Tensor:
            self.recompress(dense)
            return self.compressed

        return value_slots.learn(compress, mask, self.dtype)

    def is_24(self, dense: torch.Tensor) -> bool:
        """cuSPARSELt's own check that `dense` (shaped like this weight) is 2:4 along its rows."""
        valid = torch.zeros(1, dtype=torch.int32, device=dense.device)
        stream = ctypes.c_void_p(torch.cuda.current_stream(dense.device).cuda_stream)
        is_a, op = _W_OPERAND
        check(self.lib.cusparseLtSpMMAPruneCheck2(self.handle.ptr, self.descriptor.ptr, is_a, op,
                                                  dense.contiguous().data_ptr(), valid.data_ptr(), stream),
              "cusparseLtSpMMAPruneCheck2")
        return int(valid.item()) == 0

    def plan_for(self, x: torch.Tensor, out_dtype: torch.dtype, bias: torch.Tensor | None = None) -> Plan:
        """The cached plan for this x (M, K), output dtype and bias; built (and searched) on first use."""
        key = PlanKey(m=x.shape[0], k=self.shape[1], n=self.shape[0], dtype=self.dtype, out_dtype=out_dtype,
                      bias_ptr=0 if bias is None else bias.data_ptr(),
                      device=x.device.index if x.device.index is not None else torch.cuda.current_device(),
                      x_order=ORDER_COL if _reads_column_major(x, self.options) else ORDER_ROW, options=self.options)
        plan = _PLANS.get(key)
        if plan is None:
            if torch.cuda.is_current_stream_capturing():
                raise CusparseLtError(
                    f"no cuSPARSELt plan for {key} yet and a CUDA graph is being captured: run the layer once "
                    "outside the capture (warm-up) so the plan is built first"
                )
            plan = Plan(self, key, x)
            _PLANS[key] = plan
        return plan

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
               alpha: float = 1.0) -> torch.Tensor:
        """y = alpha · x Wᵀ (+ bias) for x (M, K) on the weight's device: one cusparseLtMatmul launch once the
        plan for M exists. int8 weights take int8 x and write int32 (default), int8, float16 or bfloat16; FP8
        weights take x of their dtype and write bfloat16 (default), float16 or float32.
        y is a transposed (column-major) view, as PyTorch's own 2:4 linear returns.

        The first call with a given signature (shape, strides, dtypes, device, bias) checks everything and builds
        a `_Launch`; later calls are one dict lookup, one ``new_empty_strided`` and one ctypes call."""
        signature = (x.shape, x.stride(), x.dtype, x.get_device(), out_dtype, None if bias is None else bias.data_ptr())
        call = self._calls.get(signature)
        if call is None:
            call = self._calls[signature] = self._prepare_call(x, bias, out_dtype)
        if call.contiguous:
            x = x.contiguous()
        out = call.like.new_empty_strided(call.out_shape, call.out_stride)  # dtype and device from the template
        call.streams[0] = _current_raw_stream(call.device_index)
        call.alpha.value = alpha
        out_ptr = out.data_ptr()
        status = call.fn(call.handle, call.plan, call.alpha_ref, call.weight, x.data_ptr(), call.beta_ref, out_ptr,
                         out_ptr, call.workspace, call.streams, 1)
        if status:
            check(status, "cusparseLtMatmul")
        return out

    def _prepare_call(self, x: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype | None) -> _Launch:
        """Check one call signature, build (or find) its plan and return the `_Launch` later calls reuse."""
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the weight is {self.dtype}")
        if x.device != self.compressed.device:
            raise ValueError(f"x is on {x.device} but the weight is on {self.compressed.device}")
        if out_dtype is None:
            out_dtype = {torch.int8: torch.int32, **dict.fromkeys(FP8_DTYPES, torch.bfloat16)}.get(self.dtype,
                                                                                                   self.dtype)
        if self.dtype == torch.int8:
            if out_dtype not in INT8_OUT_DTYPES:
                raise TypeError(f"int8 matmuls write one of {INT8_OUT_DTYPES}, got out_dtype={out_dtype}")
        elif self.dtype in FP8_DTYPES:
            if out_dtype not in FP8_OUT_DTYPES:
                raise TypeError(f"FP8 matmuls write one of {FP8_OUT_DTYPES}, got out_dtype={out_dtype}")
        elif out_dtype != self.dtype:
            raise TypeError(f"{self.dtype} matmuls write {self.dtype}, got out_dtype={out_dtype}")
        check_linear_shapes(tuple(x.shape), self.shape, self.dtype)
        contiguous = not x.is_contiguous() and not _reads_column_major(x, self.options)
        if bias is not None and (bias.shape != (self.shape[0],) or bias.dtype != out_dtype):
            raise ValueError(f"bias must be ({self.shape[0]},) of {out_dtype}, got {tuple(bias.shape)} {bias.dtype}")
        plan = self.plan_for(x.contiguous() if contiguous else x, out_dtype, bias)
        m, n = x.shape[0], self.shape[0]
        # y (M, N) allocated directly as the view the kernel writes: column-major (yᵀ row-major)
        return _Launch(plan, self.compressed.data_ptr(), (m, n), (1, m), out_dtype, x.device, contiguous)
