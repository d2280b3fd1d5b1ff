"""Write lectures/06_block_sparsity.ipynb (then execute it with jupyter nbconvert --execute --inplace)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

cells = [
    md("""# 06 · Block sparsity: skipping whole tiles on the GPU

Unstructured sparsity keeps accuracy well, but a GPU cannot run it fast: the tensor cores multiply dense tiles,
and scattered zeros never form a tile that can be skipped. Dense matrix multiplication is so fast on a GPU that
an unstructured sparse kernel only wins at extreme sparsity.

**Block sparsity** prunes whole `bs x bs` blocks instead. What is left is a set of dense tiles, and a kernel can
walk only those tiles: at 90% block sparsity it does a tenth of the arithmetic. The catch is accuracy: the larger
the block, the coarser the choice of what to keep. This lecture builds both halves:

1. the **BSR** storage of a block-sparse weight;
2. our **Triton kernel** for `y = x W^T` with a BSR weight, and a `BlockSparseLinear` layer whose dispatcher
   falls back to dense wherever dense is faster;
3. the **speedup** against block size and sparsity on an H100, against cuBLAS and PyTorch's own BSR kernel;
4. **block pruning** on the digits: block norms (L1/L2) and learned block masks (supermask-style, as in
   PyTorch's superblock work), and the accuracy we pay for larger blocks."""),
    code("""import os

import torch

GPU = torch.cuda.is_available()
if not GPU:
    # Without a GPU the Triton kernel runs in Triton's CPU interpreter: the variable must be set before the
    # kernels are imported (this notebook's kernel process imports them below, for the first time).
    os.environ["TRITON_INTERPRET"] = "1"

from sparsity_lab.block.layer import BlockSparseLinear, BlockSparseMatrix, swap_block_sparse
from sparsity_lab.block import plots as block_plots
from sparsity_lab.pruning.plots import mask_heatmap
from sparsity_lab.course.results import load_results

torch.manual_seed(0)
print("GPU:", torch.cuda.get_device_name() if GPU else "none (kernel runs in the Triton interpreter)")"""),
    md("""## 1. BSR: block compressed sparse rows

A BSR matrix is CSR whose entries are dense blocks: `crow_indices[r]..crow_indices[r+1]` are the stored blocks of
block-row `r`, `col_indices` their block columns, and `values` the blocks themselves, contiguous. It is the layout
of `torch.sparse_bsr_tensor`; `BlockSparseMatrix` keeps it with int32 indices, the form the kernel reads."""),
    code("""w = torch.randn(8, 12)
keep = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.bool)  # 2 x 3 blocks of 4 x 4
w = w * keep.repeat_interleave(4, 0).repeat_interleave(4, 1)
bsr = BlockSparseMatrix.from_dense(w, block_size=4)
print("crow_indices:", bsr.crow_indices.tolist())
print("col_indices: ", bsr.col_indices.tolist())
print("values:      ", tuple(bsr.values.shape), f"-> {bsr.nnz_blocks} blocks stored, block density {bsr.density:.2f}")
print("round trip exact:", torch.equal(bsr.to_dense(), w),
      "| same as torch's BSR:", torch.equal(bsr.to_torch().to_dense(), w.to_sparse_bsr((4, 4)).to_dense()))
mask_heatmap(w != 0, title="a 2 x 3 grid of 4 x 4 blocks (dark = stored)")"""),
    md("""## 2. The kernel

`sparsity_lab.block.kernel` computes the Linear layer's `y = x W^T (+ b)` for `x` of shape (tokens, in) and
W stored as BSR. **One Triton program owns one block-row of W (bs output features) and a tile of 64-256
tokens**; it walks that block-row's stored blocks, loads the matching `bs`-wide column slab of `x`, and
accumulates `x_slab @ block^T` in float32 on the tensor cores. An empty block-row runs no iteration and writes
zeros (or the bias). Programs are ordered so that a group of token tiles sweeps the block-rows together and both
operands stay in L2. There are two variants: **pointer** (masked loads, any GPU; small blocks are unrolled a few
per step) and **tma** (tiles moved by Hopper's tensor-memory accelerator through tensor descriptors). The tile
sizes are autotuned per problem. fp16, bf16 and fp32 (TF32) inputs are accepted; shapes that are not whole
blocks are zero-padded.

Here it runs on a small problem and is compared with a float64 dense product (on a CPU, in the interpreter)."""),
    code("""from sparsity_lab.block.kernel import bsr_linear

device = "cuda" if GPU else "cpu"
bs, n_out, n_in, tokens = 16, 96, 80, 40
keep = torch.rand(n_out // bs, n_in // bs) < 0.4
keep[0] = False  # an empty block-row
w = torch.randn(n_out, n_in) * keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)
x, bias = torch.randn(tokens, n_in), torch.randn(n_out)
bsr = BlockSparseMatrix.from_dense(w.half(), bs).to(device)
config = None if GPU else {"BLOCK_M": 16, "BLOCKS_PER_STEP": 2, "num_warps": 4, "num_stages": 2}
y = bsr_linear(x.half().to(device), bsr.crow_indices, bsr.col_indices, bsr.values, n_out, bias.half().to(device),
               config=config)
ref = x.half().double() @ w.half().double().T + bias.half().double()
err = float((y.cpu().double() - ref).norm() / ref.norm())
print(f"{bsr.nnz_blocks} of {keep.numel()} blocks stored; relative error against float64: {err:.1e}")
assert err < 2e-3"""),
    md("""## 3. How fast? Block size x sparsity on an H100

The benchmark (`sparsity-lab bench block_sparse`) multiplies an 8192 x 8192 fp16 input by an 8192 x 8192 block-sparse
weight with random blocks kept, checks every result against a float32 reference, and times, in the same run,
dense cuBLAS (`F.linear`), our kernel (the faster of its two variants, each autotuned) and PyTorch's Triton BSR
kernel `torch.sparse._triton_ops.bsr_dense_mm`, all as `triton.testing.do_bench` medians. On a GPU this
notebook reruns a small part of it live; everywhere else it shows the recorded run."""),
    code("""recorded = load_results("block_sparse_gpu")
rows, label = recorded.figures["heatmap"], recorded.label
if GPU:
    import time

    from sparsity_lab.block.bench import heatmap

    # A small live rerun; the first call of each block size autotunes both kernel variants (about a minute).
    rows = heatmap(4096, [64, 128], [0.5, 0.9], torch.float16, budget_s=600, started=time.time())
    label = f"measured live on {torch.cuda.get_device_name()}, torch {torch.__version__}, 4096 x 4096"
print(label)
block_plots.speedup_heatmap(rows, title=f"our kernel: speedup over dense cuBLAS<br><sub>{label}</sub>")"""),
    code("""block_plots.speedup_heatmap(rows, key="torch_speedup",
                            title=f"PyTorch's bsr_dense_mm: speedup over dense cuBLAS<br><sub>{label}</sub>")"""),
    code("""block_plots.speedup_curves(rows,
                           title=f"speedup against sparsity, ideal 1/density dashed<br><sub>{label}</sub>")"""),
    md("""The targets this kernel was written for, and where it stands (recorded run):"""),
    code("""cells = {(r["bs"], r["sparsity"]): r for r in recorded.figures["heatmap"]}
print(recorded.label)
print(f"{'block':>6} {'sparsity':>8} {'dense ms':>9} {'ours ms':>8} {'ours x':>7} {'target':>7} "
      f"{'PyTorch x':>10} {'ideal x':>8}")
for t in recorded.figures["targets"]:
    r = cells[(t["bs"], t["sparsity"])]
    verdict = "met" if r["speedup"] >= t["min_speedup"] else "missed"
    print(f"{t['bs']:>6} {t['sparsity']:>8.0%} {r['dense_ms']:>9.3f} {r['ours_ms']:>8.3f} {r['speedup']:>7.2f} "
          f"{t['min_speedup']:>6.1f}x {r['torch_speedup']:>10.2f} {r['ideal']:>8.1f}  {verdict}")
best = max(recorded.figures["heatmap"], key=lambda r: r["speedup"])
print(f"best cell: {best['bs']}x{best['bs']} at {best['sparsity']:.0%}: {best['speedup']:.2f}x over dense "
      f"(ideal {best['ideal']:.1f}x), {best['ours_vs_torch']:.2f}x faster than PyTorch's kernel")
ok = sum(r["ok"] for r in recorded.figures["correctness"])
print(f"correctness checks in that run: {ok}/{len(recorded.figures['correctness'])} passed")"""),
    md("""Why not the ideal 10x at 90%? Each stored block makes the program read a `tokens x bs` slab of x: the bytes
moved per useful multiply-add grow as `1/bs`, while a dense GEMM reuses each tile of x across 128-256 outputs.
Small blocks are therefore limited by the bandwidth from L2 to the multiprocessors, not by the tensor cores:
16 x 16 blocks only pay off past 90% sparsity, and 64 x 64 blocks at 50% sparsity just about match dense.
Larger blocks also waste less of each tensor-core instruction.

The cell below puts numbers on it for the three target cells. Bytes read from L2 = an **x term**,
`stored blocks x tokens x bs x 2 B` (every stored block reads its slab of x once per token, whatever the tiling),
plus a **W term**, `stored blocks x bs² x 2 B x tokens / BLOCK_M` (every block is read once per token tile).
Dividing by the measured time gives the rate the kernel sustained; it is about the same, 7-8 TB/s, in every cell:
the kernel runs at the L2 bandwidth, and only fewer bytes make it faster."""),
    code("""size = recorded.figures["size"]
print(f"{'block':>6} {'sparsity':>8} {'x term GB':>10} {'W term GB':>10} {'ours ms':>8} {'rate TB/s':>10} "
      f"{'x term alone at that rate':>26} {'target needs':>13}")
for t in recorded.figures["targets"]:
    r = cells[(t["bs"], t["sparsity"])]
    bs, tokens = r["bs"], size
    nnz = r["density"] * (size // bs) ** 2
    x_term = nnz * tokens * bs * 2
    w_term = nnz * bs * bs * 2 * tokens / r["config"]["BLOCK_M"]
    rate = (x_term + w_term) / (r["ours_ms"] * 1e-3)
    print(f"{bs:>6} {t['sparsity']:>8.0%} {x_term / 1e9:>10.2f} {w_term / 1e9:>10.2f} {r['ours_ms']:>8.3f} "
          f"{rate / 1e12:>10.1f} {x_term / rate * 1e3:>23.3f} ms {r['dense_ms'] / t['min_speedup']:>10.3f} ms")"""),
    md("""At 64 x 64 / 50% the x term alone, at the rate the kernel sustains, takes longer than the whole 1.5x
budget: no tiling of this design can reach it. Sharing x slabs between block-rows (a program owning two or four
block-rows, walking the union of their columns) cuts the x term, but at 50% density the union of two rows'
columns is already 75% of all columns, and in Triton the per-block branch that skips absent blocks stops the
software pipelining: that kernel measured slower than dense. The measurements of every variant tried are in
`scripts/NOTES_block_sparse.md`."""),
    md("""## 4. A layer that picks the faster path

`BlockSparseLinear` stores the weight as BSR. With `backend="auto"` a dispatcher times the kernel's variants and
dense cuBLAS once per problem (device, dtype, token count, shape, block size, stored blocks), call by call so that
the host's launch work counts as it does in an eager model, and keeps the fastest; on a CPU it answers dense.
Few tokens leave too little work to hide that launch work, so dense wins there; the TMA variant, which builds
three tensor descriptors on the host per call, loses more of its edge this way than in the heatmap.
`swap_block_sparse` replaces the Linear layers of a model whose block density
is low enough. The recorded run shows what the dispatcher chose for a 8192 x 8192 layer with 64 x 64 blocks:"""),
    code("""for r in recorded.figures.get("dispatcher", []):
    times = ", ".join(f"{k} {v:.3f} ms" for k, v in r["timings_ms"].items())
    print(f"{r['sparsity']:.0%} sparse, {r['tokens']:>5} tokens -> {r['choice']:<8} ({times})")

model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128))
with torch.no_grad():
    keep = torch.rand(8, 8) < 0.25
    model[2].weight.mul_(keep.repeat_interleave(16, 0).repeat_interleave(16, 1))
x = torch.randn(5, 64)
before = model(x)
print("swapped:", swap_block_sparse(model, 16), "->", model[2])
print("same outputs:", torch.allclose(model(x), before, atol=1e-5))"""),
    md("""## 5. Block pruning on the digits

Which blocks to keep? **Saliency**: score each block by the L1 or L2 norm of its weights and keep the highest
(`block_pruning.prune_blocks`). **Learned masks**: give every block a trainable score; the forward pass keeps
the top-scoring blocks, and the backward pass treats that hard top-k as the identity (a straight-through
estimator), so scores and weights train together, as in PyTorch's superblock supermasks
(`block_pruning.learn_block_masks`). Below, a trained digits MLP has its two hidden Linear layers pruned to the
same sparsity with blocks from 1 x 1 (unstructured) to 32 x 32, then fine-tuned for the same few epochs."""),
    code("""from sparsity_lab.block.pruning import accuracy_vs_block_size
from sparsity_lab.course.data import load_digits
from sparsity_lab.course.train import evaluate, trained_mlp

data = load_digits()
mlp = trained_mlp(seed=0, epochs=20, hidden=128, progress=False)
print(f"dense test accuracy: {evaluate(mlp, data.x_test, data.y_test)[1]:.1%}")
SPARSITY = 0.75
acc_rows = accuracy_vs_block_size(mlp, data, [1, 2, 4, 8, 16, 32], SPARSITY, methods=("l2", "learned"), epochs=5)
for r in acc_rows:
    print(f"{r['method']:>8} {r['block_size']:>3}x{r['block_size']:<3} sparsity {r['sparsity']:.1%}: "
          f"one-shot {r['accuracy']:.1%}, fine-tuned {r['finetuned_accuracy']:.1%}")
block_plots.accuracy_vs_block_size(acc_rows,
                                   title=f"digits MLP, {SPARSITY:.0%} of the hidden layers' blocks removed")"""),
    md("""Larger blocks cost accuracy, because the choice of what to keep is coarser; learning the mask claws a good
part of it back at the larger block sizes, where a norm is a poor guide. Put together with the heatmap above, this
is the trade-off of block sparsity: the speed comes from large blocks and high sparsity, the accuracy from small
blocks and low sparsity. Try it: pick a block size and a sparsity and watch the mask and the one-shot accuracy."""),
    code("""from sparsity_lab.block.widgets import block_pruning_explorer

block_pruning_explorer(mlp, data, layer="net.3")"""),
    md("""## Exercise

`exercises/ex06_block_mask.py`: compute block L2 norms and a block mask that drops exactly the requested share
of whole blocks, lowest norm first. Grade it with `sparsity-lab grade ex06`."""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}})
Path(__file__).resolve().parents[1].joinpath("lectures", "06_block_sparsity.ipynb").write_text(nbf.writes(nb))
