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


def _mask_weight(dtype: torch.dtype, tied: bool, seed: int) -> torch.Tensor:
    """A (64, 128) weight whose kernel mask can be read back: no +0.0 (floats) and no zeros (int8), so an entry is
    kept exactly where the pruned output has its bits. `tied` draws from a few magnitudes of both signs (all-zero
    -0.0 groups, +-x ties, int8's -128 against 127)."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        pool = torch.tensor([-128, 127, -127, 1, -1, 5, -5] if tied else list(range(-128, 0)) + list(range(1, 128)))
        return pool[torch.randint(0, len(pool), (64, 128), generator=gen)].to(dtype)
    if tied:
        pool = torch.tensor([-0.0, 1.0, -1.0, 2.0, -2.0, 65504.0 if dtype == torch.float16 else 3.0])
        w = pool[torch.randint(0, len(pool), (64, 128), generator=gen)].to(dtype)
        w[3] = -0.0  # a row of all-zero groups
        return w
    w = torch.randn(64, 128, generator=gen).to(dtype)
    return torch.where(w == 0, torch.tensor(-0.0, dtype=dtype), w)


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
    from sparsity_lab.patterns.masks import nm_mask
    from sparsity_lab.pruning.prune import magnitudes
    from sparsity_lab.training.masks import sparse24_mask

    for name in ("float16", "bfloat16", "int8"):
        for tied in (False, True):
            w = _mask_weight(getattr(torch, name), tied, seed=7)
            pruned = k24.prune_and_compress(w, return_pruned=True)[2]
            bits = {1: torch.int8, 2: torch.int16}[w.element_size()]
            kernel = pruned.view(bits) == w.view(bits)  # no kept entry's bits equal a dropped entry's +0
            out[f"mask-{name}-{'tied' if tied else 'random'}"] = {
                "nm_mask": torch.equal(kernel, nm_mask(magnitudes(w), 2, 4)),
                "semi24.prune": torch.equal(kernel, semi24.prune(w)),
                "sparse24_mask recompress": torch.equal(kernel, sparse24_mask(w, "recompress")),
                "sparsify bits": _same_bits(pruned, sparsify(w)),
            }
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


MASK_CASES = [f"mask-{name}-{kind}" for name in ("float16", "bfloat16", "int8") for kind in ("random", "tied")]


@pytest.mark.parametrize("case", [f"{name}-{shape}" for name, shape, _ in CASES] + ["prune=False"] + MASK_CASES)
def test_kernel_equals_pytorch_cutlass_conversion_and_nm_mask_bit_for_bit(verdicts, case):
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
        k24.check_dense((4, 32, 32), torch.float16)


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
