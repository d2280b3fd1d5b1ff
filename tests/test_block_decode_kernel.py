"""The Triton block-sparse decode kernel (split-K over each block-row's stored blocks, 1-64 tokens), run on the CPU
by Triton's interpreter against a float64 dense product with the same weight.

The kernel runs in a child process under the interpreter (the `interpreted` fixture runs this file as a script)."""

from __future__ import annotations

import json

import pytest
import torch

CASES = [(1, 128, 192, 32, "float16", True), (5, 96, 64, 16, "bfloat16", False), (20, 64, 128, 64, "float32", True),
         (64, 96, 96, 32, "float16", False)]
TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5}


def _run_cases() -> dict[str, float]:
    """Relative error of each case against float64, in this (interpreted) process."""
    from sparsity_lab.block.decode_kernel import bsr_decode_linear
    from sparsity_lab.formats.matrices import BSR

    errors = {}
    for m, n, k, bs, name, with_bias in CASES:
        dtype = getattr(torch, name)
        gen = torch.Generator().manual_seed(m + n + k)
        keep = torch.rand(n // bs, k // bs, generator=gen) < 0.5
        keep[0] = False  # an empty block-row writes zeros (or the bias)
        keep[-1] = True  # a full one: more blocks than one program's chunk
        w = (torch.randn(n, k, generator=gen) * keep.repeat_interleave(bs, 0).repeat_interleave(bs, 1)).to(dtype)
        bsr = BSR.from_dense(w, bs)
        x = torch.randn(m, k, generator=gen).to(dtype)
        bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
        reference = x.double() @ w.double().t() + (0 if bias is None else bias.double())
        for chunk in (1, k // bs):  # split over K with atomics; one program per block-row writing y directly
            y = bsr_decode_linear(x, bsr.crow_indices.to(torch.int32), bsr.col_indices.to(torch.int32), bsr.values,
                                  n, bias, chunk=chunk)
            errors[f"{m}x{n}x{k} block {bs} {name} chunk {chunk}"] = (
                float((y.double() - reference).norm() / reference.norm()) if y.shape == (m, n) and y.dtype == dtype
                else 1.0)
    return errors


def test_block_decode_kernel_in_triton_interpreter(interpreted) -> None:
    errors = interpreted(__file__)
    assert len(errors) == 2 * len(CASES)
    for case, (*_, name, _bias) in zip(errors, [c for c in CASES for _ in range(2)], strict=True):
        assert errors[case] < TOLERANCE[name], (case, errors[case])


@pytest.mark.gpu
def test_block_decode_is_a_dispatcher_candidate_of_the_block_layer() -> None:
    from sparsity_lab.block.layer import BlockSparseLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 1024, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        keep = torch.rand(16, 8, device="cuda") < 0.2
        linear.weight.mul_(keep.repeat_interleave(64, 0).repeat_interleave(64, 1))
    layer = BlockSparseLinear.from_linear(linear, 64)
    for tokens in (1, 16):
        x = torch.randn(tokens, 512, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            reference = linear(x).double()
            for out in (layer(x), layer.run(x, "decode")):
                assert (out.double() - reference).norm() / reference.norm() < 2e-3
        timings = layer.dispatcher.decisions[layer.dispatch_key(x)].timings
        assert "decode" in timings


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
