"""The Triton 2:4 prune-and-compress kernel, run on the CPU by Triton's interpreter, against PyTorch's CUTLASS
conversion (bit for bit) and our plain-torch pruning.

Triton's interpreter must be switched on before Triton is first imported, so the kernel runs in a child process
(this file run as a script, with TRITON_INTERPRET=1) and the tests read its verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = [  # (dtype, shape, (block_m, block_k))
    ("float16", (64, 64), (32, 64)),
    ("float16", (96, 96), (32, 128)),  # 96 columns: the block halves to 32
    ("bfloat16", (32, 128), (16, 64)),
    ("int8", (48, 128), (16, 64)),
]


def _weight(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        return torch.randint(-100, 100, shape, generator=gen, dtype=torch.int8)
    w = (torch.randn(shape, generator=gen) * 3).to(dtype)
    w[0, :16] = 0  # all-zero groups
    w[1, :8] = 1  # ties everywhere
    w[2, :4] = torch.tensor([0.0, 0.0, 5.0, 0.0])  # a group with one non-zero
    return w


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _run_cases() -> dict[str, dict[str, bool]]:
    """Every check, in this (interpreted) process: {case: {check: passed}}."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass as cutlass

    from sparsity_lab.semi24 import compress_kernel as k24
    from sparsity_lab.semi24 import layout as semi24
    from sparsity_lab.semi24.layout import sparsify

    out = {}
    for name, shape, (block_m, block_k) in CASES:
        dtype = getattr(torch, name)
        w = _weight(shape, dtype, seed=sum(shape))
        values, meta, pruned = k24.prune_and_compress(w, block_m=block_m, block_k=block_k, return_pruned=True)
        expected = sparsify(w)
        ref_values, ref_meta = cutlass(expected)
        our_values, our_meta = semi24.compress(expected)  # the CPU compressor: the same contract
        out[f"{name}-{shape}"] = {"pruned": torch.equal(pruned, expected), "values": _same_bits(values, ref_values),
                                  "meta": meta.dtype == ref_meta.dtype and torch.equal(meta, ref_meta),
                                  "equals semi24.compress": _same_bits(values, our_values)
                                  and torch.equal(meta, our_meta)}
    w = sparsify(_weight((32, 64), torch.float16, seed=3))
    w[5, 8:12] = 0  # fewer than two non-zeros in a group
    values, meta = k24.prune_and_compress(w, prune=False, block_k=64)
    ref_values, ref_meta = cutlass(w)
    out["prune=False"] = {"values": _same_bits(values, ref_values), "meta": torch.equal(meta, ref_meta)}
    return out


@pytest.fixture(scope="module")
def verdicts() -> dict[str, dict[str, bool]]:
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [f"{name}-{shape}" for name, shape, _ in CASES] + ["prune=False"])
def test_kernel_equals_pytorch_cutlass_conversion_bit_for_bit(verdicts, case):
    assert verdicts[case] and all(verdicts[case].values()), verdicts[case]


def test_reference_pruning_keeps_two_largest_ties_to_lower_index():
    from sparsity_lab.semi24.layout import sparsify

    w = torch.tensor([[1.0, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, -0.0, 4.0, 2.0, -2.0, 2.0, 1.0]])
    kept = sparsify(w)
    assert kept.tolist() == [[0.0, -3.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 2.0, -2.0, 0.0, 0.0]]
    assert ((kept.reshape(-1, 4) != 0).sum(1) <= 2).all()


def test_bad_dtype_and_shapes_are_named():
    from sparsity_lab.semi24 import compress_kernel as k24

    with pytest.raises(TypeError, match="float32"):
        k24.prune_and_compress(torch.randn(32, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        k24.prune_and_compress(torch.randn(30, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="columns.*multiple of 32"):
        k24.prune_and_compress(torch.randn(32, 48, dtype=torch.float16))
    with pytest.raises(ValueError, match="multiple of 64"):
        k24.prune_and_compress(torch.zeros(16, 96, dtype=torch.int8))
    with pytest.raises(ValueError, match="2-D"):
        k24.check_shape((4, 32, 32), torch.float16)


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
