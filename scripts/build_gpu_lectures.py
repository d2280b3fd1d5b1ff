"""Build lectures/04_gpu_structure.ipynb, and the GPU half of lectures/05_semi_structured.ipynb (everything from its
"## Part 2" heading on; the CPU half before it is kept as it is), from the cells below; then execute them with
``PYTHONPATH=$PWD jupyter nbconvert --to notebook --execute --inplace lectures/0X_*.ipynb``."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


LECTURE_04 = [
    md("""
# 04 · Why zeros are not free on a GPU, and what structure buys

A pruned weight is mostly zeros, so a matmul with it should be cheaper. The lecture notes put it bluntly: with
*unstructured* sparsity that only pays off beyond ~99% zeros on a CPU, and "on the GPU it is worse" -- dense
matmuls are so fast there that a sparse format rarely catches up. Two ways out:

* **structured pruning**: remove whole rows (output neurons) so that what is left is a *smaller dense* matrix,
  multiplied by the very same dense kernels (cuBLAS); it is fast, but hard on accuracy (lecture 02);
* **semi-structured 2:4 sparsity**: a pattern the hardware itself understands (lecture 05).

This notebook measures all three against the dense matmul: live where a GPU is present, otherwise from results
recorded on an H100 (labelled with where and when).
"""),
    code("""
import torch

from sparsity_lab.gpu import bench as gpu_structure
from sparsity_lab.gpu.plots import structure_speedups
from sparsity_lab.course.results import device_name, load_results

LIVE = torch.cuda.is_available()
print("GPU here:", torch.cuda.get_device_name() if LIVE else "none -- GPU numbers below are recorded ones")
"""),
    md("""
## 1. Sparse formats: what a zero costs

A sparse format stores only the non-zeros and *where* they are. CSR (compressed sparse row) keeps, per row, the
column index of every non-zero. A matmul with it must, for every non-zero, read its index and then fetch the
matching row of the other operand from an unpredictable place. That indirection is the price: one extra index per
value, and irregular memory accesses that neither caches nor SIMD units nor tensor cores like.

First on this machine's CPU, small enough to run anywhere (float32, one thread, fastest of 7 runs, and dense
timed again next to each variant, so that a busy machine slows both alike):
"""),
    code("""
cpu = gpu_structure.run(m=512, k=1024, n=1024, dtype=torch.float32, sparsities=(0.5, 0.9, 0.99), device="cpu",
                        log=lambda line: None)
print(f"512x1024 @ 1024x1024 float32 on {device_name('cpu')}")
for r in cpu["rows"]:
    print(f"sparsity {r['sparsity']:4.0%}: dense {r['dense_ms']:6.2f} ms, CSR {r['csr_ms']:6.2f} ms "
          f"({r['csr_speedup']:5.2f}x of dense), row-pruned {r['row_pruned_ms']:6.2f} ms "
          f"({r['row_pruned_speedup']:5.2f}x; ideal {r['ideal_speedup']:5.1f}x)")
wins = [r["sparsity"] for r in cpu["rows"] if r["csr_speedup"] > 1]
print("on this CPU, CSR beats dense from", f"{min(wins):.0%} zeros" if wins else "none of these sparsities")
"""),
    md("""
## 2. The same on a GPU

Now a 4096 × 4096 × 4096 float16 layer: x (tokens × features) times a pruned weight. For each sparsity *s* the
benchmark times

* **unstructured**: the weight with a random *s* of its entries zeroed, as a CSR matrix, through cuSPARSE's SpMM
  (`torch.sparse.mm`);
* **row pruning**: the same fraction of *rows* removed, so the product is a smaller dense matmul on cuBLAS;
* **2:4** (only at 50%): the semi-structured kernel of lecture 05 (cuSPARSELt through our binding).
"""),
    code("""
if LIVE:
    figures = gpu_structure.run(log=lambda line: None)
    label = f"measured now on {device_name()}, torch {torch.__version__}"
else:
    recorded = load_results("gpu_structure")
    figures, label = recorded.figures, recorded.label
print(label)
print(f"dense {figures['M']}x{figures['K']}x{figures['N']} {figures['dtype']}: {figures['dense_ms']:.3f} ms")
for r in figures["rows"]:
    extra = f"   2:4 {r['semi24_speedup']:.2f}x" if "semi24_speedup" in r else ""
    print(f"sparsity {r['sparsity']:4.0%}: CSR {r['csr_ms']:8.3f} ms = {r['csr_speedup']:6.3f}x of dense   "
          f"row-pruned {r['row_pruned_speedup']:5.2f}x (ideal {r['ideal_speedup']:5.1f}x){extra}")
structure_speedups(figures, caption=label).show()
"""),
    code("""
rows = {r["sparsity"]: r for r in figures["rows"]}
half, ninety = rows[0.5], rows[0.9]
gpu_wins = [s for s, r in rows.items() if r["csr_speedup"] > 1]
print("On the GPU, CSR beats dense from",
      f"{min(gpu_wins):.0%} zeros." if gpu_wins else "none of these sparsities (up to 99%).")
print(f"At 50% zeros the CSR matmul takes {1 / half['csr_speedup']:.0f}x the dense time; at 90% still "
      f"{1 / ninety['csr_speedup']:.0f}x. Removing 90% of the rows instead gives {ninety['row_pruned_speedup']:.1f}x "
      f"(ideal 10x: small matmuls no longer fill the GPU), and 2:4 at 50% gives "
      f"{half.get('semi24_speedup', float('nan')):.2f}x.")
"""),
    md("""
## 3. Why the GPU punishes irregularity

* **Dense kernels are the yardstick.** cuBLAS keeps the tensor cores busy with tiles of A and B staged in shared
  memory; an H100 runs an 8192³ bf16 matmul at ~650-800 TFLOP/s. A sparse kernel must beat *that*, not a naive loop.
* **CSR breaks the tiles.** Each non-zero needs its column index (a 32- or 64-bit integer next to a 16-bit value),
  and the rows of x it touches are scattered, so loads are not coalesced and tensor cores cannot be used: the
  kernel is bound by memory traffic and index arithmetic, and only wins when almost nothing is left.
* **Structure lets dense kernels run.** Dropping whole rows keeps a regular, smaller dense matrix: same kernel,
  fewer FLOPs, with the speedup approaching 1/(1-s) until the matrix gets too small to fill the GPU.

The catch is accuracy: removing whole neurons hurts far more than removing scattered weights. Semi-structured 2:4
sparsity (lecture 05) sits in between: fine-grained enough to keep accuracy, regular enough for the hardware.
"""),
    code("""
# row pruning really is a smaller dense matmul: the kept rows of the output are unchanged
x, w = torch.randn(8, 64), torch.randn(32, 64)
keep = w.norm(dim=1).topk(16).indices.sort().values  # keep the 16 rows with the largest norm
full = x @ w.t()
small = x @ w[keep].t()
print("kept outputs identical:", torch.allclose(full[:, keep], small), "| shape", tuple(small.shape))
"""),
]


LECTURE_05_GPU = [
    md("""
## Part 2 · 2:4 on the GPU: the cuSPARSELt workflow, a fast compressor, and `nn.Linear`

The first half built the 2:4 format on the CPU. Here it runs on sparse tensor cores (Ampere and later): the
hardware reads the kept half of each group of four and its 2-bit positions and skips the rest, so a 2:4 matmul can
do half the math. Theory says 2x; the lecture notes say ~1.6x in practice, depending on the kernel and the shape.

Everything below runs on the CPU too: where it needs a GPU it shows results recorded on an H100, labelled.
"""),
    code("""
import torch

from sparsity_lab.semi24 import cusparselt
from sparsity_lab.gpu.plots import compressor_times, eager_vs_graph, speedup_by_shape
from sparsity_lab.course.results import load_results

LIVE = torch.cuda.is_available()
recorded = load_results("semi24_gpu")
gpu = recorded.figures
print("GPU here:", torch.cuda.get_device_name() if LIVE else "none")
print("recorded results:", recorded.label)
print(f"recorded with our binding on cuSPARSELt {gpu['cusparselt_version']} ({gpu['layout']}, search: {gpu['search']})")
"""),
    md("""
### Step 1 · Prune and compress in one pass

Before a 2:4 matmul the weight must be pruned (keep the two largest |w| of every group of four) and packed:
the kept values (half the columns) plus the metadata, 4 bits per group, in the interleaved order CUTLASS's kernels
read. PyTorch's `to_sparse_semi_structured` does this in several passes; our Triton kernel
(`sparsity_lab.semi24.compress_kernel.prune_and_compress`) reads the weight once and writes values and metadata
once, bit for bit equal to PyTorch's CUTLASS conversion (checked in CI under Triton's interpreter).
"""),
    code("""
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

from sparsity_lab.semi24.layout import sparsify

w = torch.randn(32, 32).half()
pruned = sparsify(w)  # what the kernel computes, in plain torch
values, meta = sparse_semi_structured_from_dense_cutlass(pruned)
print("weight", tuple(w.shape), "-> values", tuple(values.shape), values.dtype,
      "+ metadata", tuple(meta.shape), meta.dtype)
print("first group", w[0, :4].tolist(), "keeps", pruned[0, :4].tolist())
print(f"bytes: dense {w.numel() * 2}, packed {values.numel() * 2 + meta.numel() * 2} "
      f"({(values.numel() * 2 + meta.numel() * 2) / (w.numel() * 2):.4f} of dense)")
"""),
    code("""
if LIVE:
    from triton.testing import do_bench

    from sparsity_lab.semi24.compress_kernel import prune_and_compress

    big = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    v, m, p = prune_and_compress(big, return_pruned=True)
    rv, rm = sparse_semi_structured_from_dense_cutlass(p)
    print("bit-exact with PyTorch:", torch.equal(v.view(torch.int16), rv.view(torch.int16)) and torch.equal(m, rm))
    print(f"ours now: {do_bench(lambda: prune_and_compress(big), return_mode='median'):.3f} ms")
comp = gpu["compressors"]
print(f"recorded, 8192x8192 float16: ours {comp['ours_triton_prune_compress_ms']:.3f} ms, a plain copy "
      f"{comp['copy_ms']:.3f} ms, PyTorch to_sparse_semi_structured "
      f"{comp['torch_to_sparse_semi_structured_ms']:.2f} ms "
      f"({comp['torch_to_sparse_semi_structured_ms'] / comp['ours_triton_prune_compress_ms']:.0f}x slower)")
compressor_times(comp, caption=recorded.label).show()
"""),
    md("""
### Step 2 · The cuSPARSELt workflow, and what PyTorch does on every call

cuSPARSELt (NVIDIA's 2:4 library) wants, in order: a **handle**; a **structured descriptor** for the sparse
matrix and **dense descriptors** for the other operand and the output; **compression** of the sparse matrix
into its own layout; a **matmul descriptor** (operations, compute type); an **algorithm selection** and a search
over its kernels; a **plan** and its workspace; and only then `cusparseLtMatmul`.

`torch._cslt_sparse_mm` redoes the descriptors and the plan on every call (1-2 ms of host time), which is why
PyTorch's 2:4 `F.linear` loses to dense for all but the largest shapes. Our binding (`sparsity_lab.semi24.cusparselt`,
plain ctypes on `libcusparseLt.so.0`) builds and searches a plan once per shape and caches it, so a call is one
kernel launch on PyTorch's current stream (and can be captured in a CUDA graph).

**The transpose trick.** `nn.Linear` computes y = x Wᵀ, but the sparse operand must be the *first* one, A. So we
compute D = W · xᵀ: W is A (N x K, row-major), x is read as B with opB = TRANSPOSE (no copy: the bytes of a
row-major x are xᵀ column-major), and D = yᵀ comes back row-major (N x M) -- so y is the transposed *view* D.t(),
exactly what PyTorch's own 2:4 linear returns. Asking cuSPARSELt for D in column-major order would give a
row-major y directly, but on the H100 its kernels for that layout measured 2x slower (notes in `scripts/notes/`).
"""),
    code("""
layout = cusparselt.choose_layout(gpu["layout"])
m, k, n = 16, 4096, 14336
print(f"layout {layout.name}: W is operand {layout.sparse}, opA/opB = {layout.ops()} (0 = N, 1 = T)")
print("x  described as (rows, cols, ld):", layout.dense_shape(m, k), "row-major: x exactly as PyTorch stores it")
print("D  described as (rows, cols, ld):", layout.output_shape(m, n),
      "row-major" if layout.out_transposed else "column-major", "-> y =", "D.t()" if layout.out_transposed else "D")
print("a plan is cached under", cusparselt.PlanKey(m, k, n, torch.float16, torch.float16, layout.name, 0, 0))
"""),
    code("""
if LIVE:
    import time

    from sparsity_lab.semi24.compress_kernel import prune_and_compress

    x = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    _, _, w24 = prune_and_compress(torch.randn(4096, 4096, device="cuda", dtype=torch.float16), return_pruned=True)
    weight = cusparselt.Semi24Weight.from_dense(w24)  # structured descriptor + compression
    for call in range(3):
        start = time.perf_counter()
        y = weight.linear(x)
        torch.cuda.synchronize()
        print(f"call {call}: {1000 * (time.perf_counter() - start):.2f} ms")  # call 0 builds and searches the plan
    print("plans:", cusparselt.cached_plans())
cube = next(r for r in gpu["linear"] if (r["dtype"], r["M"], r["K"], r["N"]) == ("float16", 8192, 8192, 8192))
print(f"recorded 8192³ float16: first call (plan + cuSPARSELt's search) {1000 * cube['ours_first_call_s']:.0f} ms, "
      f"then {cube['ours_ms']:.3f} ms per call vs dense {cube['dense_ms']:.3f} ms ({cube['speedup']:.2f}x); "
      f"PyTorch's 2:4 F.linear {cube['torch_linear_ms']:.3f} ms")
"""),
    md("""
### Step 3 · Speedup by shape

The benchmark (`sparsity-lab bench semi24`) times every shape from decode (M = 16 tokens) to prefill (M = 16384)
against Llama-like MLP sizes, float16 and bfloat16, each against cuBLAS dense in the same run (median of
`triton.testing.do_bench`, L2 flushed before each call). Solid: our binding; dotted: PyTorch's own 2:4 `F.linear`;
dashed: through the dispatcher of Step 4.
"""),
    code("""
speedup_by_shape(gpu["linear"], "float16", caption=recorded.label).show()
speedup_by_shape(gpu["linear"], "bfloat16", caption=recorded.label).show()
"""),
    code("""
summary = gpu["summary"]
targets = summary["targets"]
print(f"8192³:  {summary['speedup_8192']:.2f}x float16, {summary['speedup_8192_bf16']:.2f}x bfloat16 "
      f"(target >= {targets['speedup_8192']}x)")
print(f"4096³:  {summary['speedup_4096']:.2f}x float16, {summary['speedup_4096_bf16']:.2f}x bfloat16 "
      f"(target >= {targets['speedup_4096']}x)")
print(f"through the dispatcher, worst shape {summary['dispatch_over_dense_worst']:.3f}x dense time "
      f"{summary['dispatch_over_dense_worst_shape']} (target <= {targets['dispatch_over_dense']})")
print(f"eager vs CUDA-graph replay, worst {summary['eager_over_graph_worst']:.2f}x "
      f"{summary['eager_over_graph_worst_shape']} (target <= {targets['eager_over_graph']})")
print(f"compressor 8192² {summary['compress_8192_ms']:.3f} ms (target <= {targets['compress_8192_ms']} ms)")
print("met:", summary["met"])
"""),
    md("""
**Eager vs graph.** A kernel launched from Python pays host time: argument checks, the output allocation, the
ctypes call. When the kernel itself is long (M ≥ 1024 here) that hides behind the GPU; at decode sizes the kernel
takes ~10 µs and the host ~20-30 µs, so eager mode is launch-bound -- for dense cuBLAS too. Capturing the layer in
a CUDA graph (or `torch.compile` with CUDA graphs) removes it:
"""),
    code("""
eager_vs_graph([r for r in gpu["linear"] if r["K"] == r["N"] == 4096], caption=recorded.label).show()
small = next(r for r in gpu["linear"] if (r["dtype"], r["M"], r["K"], r["N"]) == ("float16", 16, 4096, 4096))
print(f"M=16, 4096²: ours {1000 * small['ours_graph_ms']:.1f} µs per call in a graph, "
      f"{1000 * small['ours_loop_ms']:.1f} µs eager (host {small['ours_host_us']:.0f} µs per call); "
      f"dense {1000 * small['dense_graph_ms']:.1f} µs in a graph, "
      f"{1000 * small['dense_loop_ms']:.1f} µs eager")
"""),
    md("""
### Step 4 · Swapping a model's `nn.Linear` layers

`swap_linears(model)` replaces every `nn.Linear` whose sizes the 2:4 kernels take by a `Semi24Linear`: the weight
is pruned to 2:4 (magnitude), kept dense for the fallback and compressed for cuSPARSELt. A **dispatcher** times
sparse against dense the first time it sees a shape (M, K, N, dtype) and remembers the faster, so a swapped model is
never slower than its dense self; on a CPU, or for a dtype the sparse tensor cores do not take, the layer runs the
dense product with the pruned weight and says why.
"""),
    code("""
from torch import nn

from sparsity_lab.semi24.layer import swap_linears

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
dense_twin = [layer.weight.detach().clone() for layer in model if isinstance(layer, nn.Linear)]
report = swap_linears(model)
for name, what in report.items():
    print(f"layer {name}: {what}")
if LIVE:
    model = model.cuda().half()
x = torch.randn(64, 256, device="cuda" if LIVE else "cpu", dtype=torch.float16 if LIVE else torch.float32)
y = model(x)
print("output", tuple(y.shape), "| layer 0 ran:", model[0].last_reason)
kept = (model[0].weight != 0).float().mean().item()
print(f"layer 0 keeps {kept:.0%} of its weights, 2 in every group of 4")
"""),
    code("""
swap, *mlp_rows = gpu["model"]
print("recorded: a Llama-like MLP block (gate, up 4096->14336, down 14336->4096, SiLU), float16, swapped:")
for r in mlp_rows:
    print(f"  M={r['M']:5d}: dense {r['dense_ms']:.3f} ms, swapped {r['sparse_ms']:.3f} ms -> {r['speedup']:.2f}x "
          f"(relative error {r['relerr']:.1e})")
    for name, why in r["routes"].items():
        print(f"      {name:4s} {why}")
"""),
    md("""
The `down` projection stays dense: its input, SiLU(gate)·up, is the product of two transposed (column-major)
outputs, and our binding first copies such an input to row-major -- the dispatcher measured that copy and kept the
dense kernel. Lecture notes' remedy: fuse the transpose into the following elementwise op (`torch.compile`), or
describe the column-major input to cuSPARSELt directly.

### Step 5 · int8: where the quantization lecture picks up

The same binding multiplies int8 by int8 (int32 accumulation) and writes int32, int8, float16 or bfloat16 with a
per-tensor scale. Against PyTorch's dense int8 matmul (`torch._int_mm`):
"""),
    code("""
for r in gpu["int8"]:
    print(f"{r['M']}x{r['K']}x{r['N']}: torch._int_mm {r['int_mm_ms']:.3f} ms; "
          f"2:4 int8 -> int32 {r['int32_ms']:.3f} ms "
          f"({r['int_mm_ms'] / r['int32_ms']:.2f}x), -> bfloat16 {r['bfloat16_ms']:.3f} ms "
          f"({r['int_mm_ms'] / r['bfloat16_ms']:.2f}x); int32 result exact: {r['int32_relerr'] == 0.0}")
"""),
]


def build(cells: list, path: Path) -> None:
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(notebook, path)
    print("wrote", path)


PART_2 = "## Part 2"


def replace_gpu_half(cells: list, path: Path) -> None:
    """Keep the notebook's cells before its "## Part 2" heading and put `cells` after them."""
    notebook = nbformat.read(path, as_version=4)
    starts = [i for i, c in enumerate(notebook.cells) if c.cell_type == "markdown" and c.source.startswith(PART_2)]
    notebook.cells = notebook.cells[: starts[0] if starts else len(notebook.cells)] + cells
    nbformat.write(notebook, path)
    print("wrote", path)


if __name__ == "__main__":
    build(LECTURE_04, ROOT / "lectures" / "04_gpu_structure.ipynb")
    replace_gpu_half(LECTURE_05_GPU, ROOT / "lectures" / "05_semi_structured.ipynb")
