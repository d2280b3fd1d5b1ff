"""The Triton quantize / rescale kernels against the eager PyTorch arithmetic of `sparsity_lab.quant.int8`.

On the CPU the kernels run in Triton's interpreter. TRITON_INTERPRET must be set before a kernel is decorated and
other test modules may import Triton kernels first, so the interpreter checks run in one subprocess started with
TRITON_INTERPRET=1 that prints each check's outcome as JSON. On a GPU the compiled kernels are checked directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

CHECKS = r'''
import json
import torch
from sparsity_lab.quant import int8 as q
from sparsity_lab.quant import layers as qs
from sparsity_lab.quant import kernels as k

results = {}

def check(name, fn):
    try:
        results[name] = bool(fn())
    except Exception as err:  # reported, so a crash names its check
        results[name] = repr(err)

def same_quantization(x):
    a, s = k.quantize_per_token(x)
    b, t = q.quantize_per_token(x)
    return torch.equal(a, b) and torch.equal(s, t) and a.is_contiguous()

torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for m, cols in ((5, 37), (3, 5000), (2, 9000), (1, 1)):  # 9000: the row is read twice
        x = (torch.randn(m, cols) * 3).to(dtype)
        if m > 1:
            x[1] = 0
        check(f"quantize {dtype} {m}x{cols}", lambda x=x: same_quantization(x))
check("quantize strided", lambda: same_quantization(torch.randn(33, 7).T))
check("quantize no rows", lambda: k.quantize_per_token(torch.zeros(0, 4))[0].shape == (0, 4))
check("quantize halfway cases round to even", lambda: same_quantization(torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5]])))

acc = torch.randint(-20000, 20000, (70, 90), dtype=torch.int32)
sx, sw, bias = torch.rand(70) * 0.01, torch.rand(90) * 0.01, torch.randn(90)
for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)):
    for b in (bias, None):
        def close(dtype=dtype, tol=tol, b=b):
            y, r = k.rescale(acc, sx, sw, b, dtype), q.rescale(acc, sx, sw, b, dtype)
            return y.dtype == dtype and y.is_contiguous() and torch.allclose(y.float(), r.float(), rtol=tol, atol=tol)
        check(f"rescale {dtype} bias={b is not None}", close)
check("rescale transposed acc", lambda: torch.allclose(k.rescale(acc.T, sw, sx, None, torch.float32),
                                                        q.rescale(acc.T.contiguous(), sw, sx), rtol=1e-6))

lin = torch.nn.Linear(64, 40)
x = torch.randn(3, 11, 64)
check("Int8Linear fused", lambda: torch.allclose(qs.Int8Linear.from_linear(lin, fused=True)(x),
                                                 qs.Int8Linear.from_linear(lin)(x), rtol=1e-5, atol=1e-5))
check("Int8Semi24Linear fused", lambda: torch.allclose(qs.Int8Semi24Linear.from_linear(lin, fused=True)(x),
                                                       qs.Int8Semi24Linear.from_linear(lin)(x), rtol=1e-5, atol=1e-5))
print("RESULTS" + json.dumps(results))
'''


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert line, f"the interpreter run printed no results:\n{done.stdout}\n{done.stderr}"
    return json.loads(line.removeprefix("RESULTS"))


def test_interpreter_checks_all_pass(interpreted):
    failed = {name: outcome for name, outcome in interpreted.items() if outcome is not True}
    assert len(interpreted) >= 20 and not failed, failed


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_compiled_kernels_match_the_eager_arithmetic(dtype):
    from sparsity_lab.quant import int8 as q
    from sparsity_lab.quant import kernels as k

    x = (torch.randn(257, 5000, device="cuda") * 3).to(dtype)
    x[1] = 0
    a, s = k.quantize_per_token(x)
    b, t = q.quantize_per_token(x)
    assert torch.equal(s, t)
    assert int((a.int() - b.int()).abs().max()) <= 1 and float((a != b).float().mean()) < 1e-4
    acc = torch.randint(-20000, 20000, (300, 200), dtype=torch.int32, device="cuda")
    sx, sw, bias = torch.rand(300, device="cuda") * 0.01, torch.rand(200, device="cuda") * 0.01, torch.randn(200,
                                                                                                        device="cuda")
    y = k.rescale(acc.T.contiguous().T, sx, sw, bias, dtype)
    torch.testing.assert_close(y.float(), q.rescale(acc, sx, sw, bias, dtype).float(), rtol=8e-3, atol=8e-3)
