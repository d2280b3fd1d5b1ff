"""The one-pass Triton kernel for transposable 2:4 pruning, on the CPU under Triton's interpreter (a child process:
TRITON_INTERPRET=1 must be set before Triton is imported) and, where there is one, on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

CASES = [("float16", (32, 32), (4, 4)), ("bfloat16", (40, 72), (4, 4)), ("float32", (64, 32), (8, 8)),
         ("float16", (8, 4), (4, 4))]


def _run_cases(device: str = "cpu") -> dict[str, dict[str, bool]]:
    from sparsity_lab.training.kernel import transposable_prune
    from sparsity_lab.training.masks import is_transposable_24, transposable_mask

    out = {}
    for name, shape, (tile_rows, tile_cols) in CASES:
        dtype = getattr(torch, name)
        gen = torch.Generator().manual_seed(sum(shape))
        # small integers: every score is exact in float32 and float64, and ties are everywhere
        w = torch.randint(-6, 7, shape, generator=gen).to(dtype).to(device)
        mask, pruned, pruned_t = transposable_prune(w, tile_rows, tile_cols)
        reference = transposable_mask(w)
        expected = torch.where(reference, w, torch.zeros((), dtype=dtype, device=device))
        out[f"{name}-{shape}"] = {"mask": torch.equal(mask, reference), "transposable": is_transposable_24(mask),
                                  "pruned": torch.equal(pruned, expected),
                                  "transpose": torch.equal(pruned_t, expected.T.contiguous())}
    return out


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict[str, bool]]:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [f"{n}-{s}" for n, s, _ in CASES])
def test_kernel_equals_the_torch_reference_in_the_interpreter(interpreted, case):
    failed = [check for check, ok in interpreted[case].items() if not ok]
    assert not failed, f"{case}: {failed}"


def test_kernel_refuses_bad_input():
    from sparsity_lab.training.kernel import transposable_prune

    with pytest.raises(ValueError, match="multiples of 4"):
        transposable_prune(torch.zeros(6, 8))
    with pytest.raises(TypeError, match="dtype"):
        transposable_prune(torch.zeros(8, 8, dtype=torch.int32))


@pytest.mark.gpu
def test_kernel_on_the_gpu():
    results = _run_cases("cuda")
    failed = {case: [c for c, ok in checks.items() if not ok] for case, checks in results.items()}
    assert not any(failed.values()), failed


@pytest.mark.gpu
def test_training_layer_uses_the_kernel_on_the_gpu():
    from sparsity_lab.training.layer import Semi24TrainingLinear
    from sparsity_lab.training.masks import is_transposable_24, transposable_mask

    layer = Semi24TrainingLinear(512, 256, device="cuda", dtype=torch.float16, backend="dense")
    layer(torch.randn(8, 512, device="cuda", dtype=torch.float16)).sum().backward()
    assert is_transposable_24(layer.mask)
    same = (layer.mask == transposable_mask(layer.weight)).float().mean()
    assert same > 0.999  # float32 (kernel) and float32-matmul (torch) scores may rank a rare near-tie apart


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
