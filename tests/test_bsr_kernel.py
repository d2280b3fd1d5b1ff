"""The Triton BSR kernel against a float64 dense reference.

On the CPU the kernel runs in Triton's interpreter. TRITON_INTERPRET must be set before a kernel is decorated,
and other test modules may import Triton kernels first, so the interpreter cases run in one subprocess started
with TRITON_INTERPRET=1; it reports each case's error (and which kind of kernel object ran) as JSON.
On a GPU the compiled kernel (autotuned) is checked directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from sparsity_lab.block import kernel as bsr_matmul  # noqa: E402
from sparsity_lab.formats.matrices import BSR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (name, variant, dtype, block size, M, N, K, blocks per step, bias, density, empty block-rows)
CASES = [
    ("fp32 odd shapes", "pointer", "float32", 16, 37, 53, 35, 2, True, 0.5, 1),
    ("fp16 odd shapes", "pointer", "float16", 32, 37, 101, 67, 1, True, 0.5, 1),
    ("bf16 odd shapes", "pointer", "bfloat16", 16, 21, 53, 35, 4, False, 0.5, 0),
    ("fp32 whole blocks", "pointer", "float32", 32, 64, 96, 64, 2, False, 0.6, 1),
    ("fp16 tma aligned rows", "tma", "float16", 16, 37, 56, 40, 2, True, 0.5, 1),
    ("bf16 tma", "tma", "bfloat16", 32, 33, 104, 72, 1, True, 0.5, 1),
    ("fp32 tma whole blocks", "tma", "float32", 16, 48, 64, 48, 4, False, 0.7, 2),
    ("fp16 dense weight", "pointer", "float16", 16, 20, 32, 48, 2, False, 1.0, 0),
    ("fp16 all empty, bias", "pointer", "float16", 16, 20, 48, 32, 1, True, 0.0, 0),
    ("fp16 all empty, tma, no bias", "tma", "float16", 16, 20, 48, 32, 1, False, 0.0, 0),
]

CHECKER = r"""
import json, sys
import torch
from sparsity_lab.formats.matrices import BSR
from sparsity_lab.block import kernel as bsr_matmul

results = {}
for name, variant, dtype, bs, m, n, k, per_step, has_bias, density, empty in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(len(results))
    dtype = getattr(torch, dtype)
    keep = torch.rand(-(-n // bs), -(-k // bs), generator=g) < density
    keep[:empty] = False
    if 0 < density and not keep.any():
        keep[-1, -1] = True
    mask = keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:n, :k]
    w = (torch.randn(n, k, generator=g) * mask).to(dtype)
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if has_bias else None
    bsr = BSR.from_dense(w, bs, index_dtype=torch.int32, pad=True)
    out = torch.full((m, n), float("nan"), dtype=dtype)
    config = {"BLOCK_M": 16, "BLOCKS_PER_STEP": per_step, "num_warps": 4, "num_stages": 2}
    y = bsr_matmul.bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, n, bias, config=config,
                              input_precision="ieee", out=out, variant=variant)
    ref = x.double() @ w.double().T + (bias.double() if has_bias else 0)
    finite = bool(torch.isfinite(y).all())
    err = float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)) if finite else float("inf")
    exact_zero = bool((y == 0).all()) if (density == 0 and not has_bias) else None
    results[name] = dict(relerr=err, finite=finite, tma=bsr_matmul.tma_supported(x, n), exact_zero=exact_zero,
                         nonzero_ref=bool(ref.abs().sum() > 0))
results["_kernel"] = type(bsr_matmul._bsr_linear_kernel).__name__
print(json.dumps(results))
"""

TOLERANCE = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 1e-2}


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Run every case once in a TRITON_INTERPRET=1 subprocess; return its report."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(CASES)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cases_really_ran_in_the_interpreter(interpreted):
    assert interpreted["_kernel"] == "InterpretedFunction"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_dense_reference_in_interpreter(interpreted, case):
    name, variant, dtype, *_, density, _empty = case
    result = interpreted[name]
    assert result["finite"], f"{name}: output has NaNs (an element was not written)"
    assert result["relerr"] < TOLERANCE[dtype], f"{name}: relative error {result['relerr']:.2e}"
    if density > 0:
        assert result["nonzero_ref"], f"{name}: the reference is zero, the case tests nothing"
    if result["exact_zero"] is not None:
        assert result["exact_zero"], f"{name}: an all-empty weight without bias must give exact zeros"


def test_tma_cases_took_the_descriptor_path(interpreted):
    """Aligned rows go through the TMA variant, odd rows fall back to pointers."""
    assert interpreted["fp16 tma aligned rows"]["tma"] and interpreted["bf16 tma"]["tma"]
    assert not interpreted["fp16 odd shapes"]["tma"]


def _operands(bs=16, dtype=torch.float16, n=32, k=48):
    w = torch.randn(n, k).to(dtype)
    bsr = BSR.from_dense(w, bs, index_dtype=torch.int32)
    return torch.randn(8, k).to(dtype), bsr


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(x=torch.randn(8, 48, dtype=torch.float64)), TypeError, "dtype"),
        (dict(x=torch.randn(2, 8, 48, dtype=torch.float16)), ValueError, "2-D"),
        (dict(out_features=48), ValueError, "crow_indices must have"),
        (dict(bias=torch.randn(31, dtype=torch.float16)), ValueError, "bias must have shape"),
        (dict(blocks_dtype=torch.float32), TypeError, "blocks have dtype"),
        (dict(crow_dtype=torch.int64), TypeError, "crow_indices must be int32"),
        (dict(variant="cuda"), ValueError, "variant must be"),
        (dict(input_precision="tf64"), ValueError, "input_precision"),
    ],
)
def test_bad_operands_are_refused_before_launch(change, error, message):
    x, bsr = _operands()
    args = dict(x=x, crow_indices=bsr.crow_indices, col_indices=bsr.col_indices, blocks=bsr.values,
                out_features=32, bias=None)
    if "blocks_dtype" in change:
        args["blocks"] = bsr.values.to(change.pop("blocks_dtype"))
    if "crow_dtype" in change:
        args["crow_indices"] = bsr.crow_indices.to(change.pop("crow_dtype"))
    args.update(change)
    with pytest.raises(error, match=message):
        bsr_matmul.bsr_linear(**args)


def test_unsupported_block_size_is_refused():
    w = torch.randn(24, 24, dtype=torch.float16)
    bsr = BSR.from_dense(w, 8, index_dtype=torch.int32)
    with pytest.raises(ValueError, match="block size 8 is not supported"):
        bsr_matmul.bsr_linear(torch.randn(4, 24, dtype=torch.float16), bsr.crow_indices, bsr.col_indices,
                              bsr.values, 24)


def test_tuned_configs_fit_each_block_size():
    """The autotuner's pruned search space is non-empty, respects the shared-memory and step limits, and offers
    both launch groupings (8 token tiles, and 512 tokens) for the large token tiles."""
    for bs in bsr_matmul.SUPPORTED_BLOCK_SIZES:
        kept = bsr_matmul._prune_configs(bsr_matmul._configs(), {}, BS=bs)
        assert kept, f"no config left for block size {bs}"
        for c in kept:
            step = c.kwargs["BLOCKS_PER_STEP"] * bs
            assert step == max(64, bs) and (c.kwargs["BLOCK_M"] + bs) * step * 2 * c.num_stages <= 200 * 1024
        groups = {(c.kwargs["BLOCK_M"], c.kwargs["GROUP_M"]) for c in kept}
        assert {(128, 8), (128, 4)} <= groups, f"block size {bs}: groupings {sorted(groups)}"


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["pointer", "tma"])
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2), (torch.float32, 2e-3)])
@pytest.mark.parametrize("bs", [16, 32, 64, 128])
def test_kernel_on_gpu(variant, dtype, tol, bs):
    """Odd sizes for the pointer variant, 16-byte rows for the TMA one; output poisoned with NaN first."""
    g = torch.Generator(device="cuda").manual_seed(bs)
    n, k, m = (8 * bs + 8, 6 * bs + 8, 1000) if variant == "tma" else (8 * bs + 3, 6 * bs + 5, 1000)
    keep = torch.rand(-(-n // bs), -(-k // bs), device="cuda", generator=g) < 0.4
    keep[0] = False
    mask = keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[:n, :k]
    w = (torch.randn(n, k, device="cuda", generator=g) * mask).to(dtype)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    bias = torch.randn(n, device="cuda", generator=g).to(dtype)
    bsr = BSR.from_dense(w, bs, index_dtype=torch.int32, pad=True)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
    config = {"BLOCK_M": 64, "BLOCKS_PER_STEP": max(1, 64 // bs), "num_warps": 4, "num_stages": 2}
    y = bsr_matmul.bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, n, bias, config=config, out=out,
                              variant=variant)
    assert bsr_matmul.tma_supported(x, n) == (variant == "tma")
    ref = x.double() @ w.double().T + bias.double()
    assert torch.isfinite(y).all()
    assert float((y.double() - ref).norm() / ref.norm()) < tol


@pytest.mark.gpu
def test_autotuned_kernel_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    keep = torch.rand(32, 32, device="cuda", generator=g) < 0.2
    w = (torch.randn(2048, 2048, device="cuda", generator=g) * keep.repeat_interleave(64, 0).repeat_interleave(64, 1))
    w = w.half()
    x = torch.randn(1024, 2048, device="cuda", generator=g).half()
    bsr = BSR.from_dense(w, 64, index_dtype=torch.int32)
    for variant in ("pointer", "tma"):
        y = bsr_matmul.bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, 2048, variant=variant)
        ref = x.double() @ w.double().T
        assert float((y.double() - ref).norm() / ref.norm()) < 2e-3
