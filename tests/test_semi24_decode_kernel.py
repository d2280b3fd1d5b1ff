"""The Triton 2:4 decode kernels (tensor cores, 1-64 tokens; CUDA cores, 1-8 tokens; simple-layout values and
nibbles), run on the CPU by Triton's interpreter against a float64 dense product with the same pruned weight; and
their operand checks.

The kernel runs in a child process under the interpreter (the `interpreted` fixture runs this file as a script)."""

from __future__ import annotations

import json

import pytest
import torch

CASES = [(1, 64, 64, "float16", True), (5, 96, 128, "bfloat16", False), (16, 64, 192, "float32", True),
         (20, 130, 64, "float16", False), (64, 64, 128, "bfloat16", True), (3, 130, 320, "bfloat16", True),
         (8, 20, 192, "float16", False)]
TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5}


def _run_cases() -> dict[str, float]:
    """Relative error of each case against float64, in this (interpreted) process."""
    from sparsity_lab.semi24 import layout
    from sparsity_lab.semi24.decode_kernel import CUDA_CORE_TOKENS, DEFAULT, DecodeConfig, decode_linear

    split = DecodeConfig(block_n=16, block_k=64, split_k=2, num_warps=4, num_stages=2)  # float32 atomics over K
    # CUDA cores: K tiles past the end of K (320 = 2.5 tiles), rows past N, a split with partial tiles, and K steps
    # unrolled four a turn (320 = 5 steps of 64: one turn and one step left over)
    cuda = [DecodeConfig(8, 128, 1, 4, 1, "cuda"), DecodeConfig(4, 128, 3, 4, 1, "cuda"),
            DecodeConfig(2, 64, 1, 4, 1, "cuda", unroll=4)]

    errors = {}
    for m, n, k, name, with_bias in CASES:
        dtype = getattr(torch, name)
        gen = torch.Generator().manual_seed(m * n + k)
        w = layout.sparsify(torch.randn(n, k, generator=gen)).to(dtype)
        w[0, :8] = 0  # all-zero groups: the nibble still names two positions
        w[1, :4] = torch.tensor([0.0, 0.0, 3.0, 0.0]).to(dtype)  # a group with one non-zero
        values, meta = layout.compress(w, "simple")
        x = torch.randn(m, k, generator=gen).to(dtype)
        bias = torch.randn(n, generator=gen).to(dtype) if with_bias else None
        reference = x.double() @ w.double().t() + (0 if bias is None else bias.double())
        for config in (DEFAULT, split, *(cuda if m <= CUDA_CORE_TOKENS and name != "float32" else ())):
            y = decode_linear(x, values, meta, bias, config)
            ok_layout = y.shape == (m, n) and y.is_contiguous() and y.dtype == dtype
            error = float((y.double() - reference).norm() / reference.norm()) if ok_layout else 1.0
            errors[f"{m}x{n}x{k} {name} {config.cores} split {config.split_k} unroll {config.unroll}"] = error
    return errors


def test_decode_kernel_in_triton_interpreter(interpreted) -> None:
    errors = interpreted(__file__)
    cuda_cases = sum(m <= 8 and name != "float32" for m, _, _, name, _ in CASES)
    assert len(errors) == 2 * len(CASES) + 3 * cuda_cases
    assert sum(" cuda " in case for case in errors) == 3 * cuda_cases == 12
    for case, error in errors.items():
        assert error < TOLERANCE[case.split()[1]], (case, error)


def test_decode_kernel_refuses_operands_that_do_not_fit() -> None:
    pytest.importorskip("triton")
    from sparsity_lab.semi24.decode_kernel import check_operands

    x = torch.randn(4, 64, dtype=torch.float16)
    values, meta = torch.zeros(32, 32, dtype=torch.float16), torch.zeros(32, 8, dtype=torch.uint8)
    check_operands(x, values, meta)
    with pytest.raises(ValueError, match="multiple of 64"):
        check_operands(torch.randn(4, 48, dtype=torch.float16), values, meta)
    with pytest.raises(ValueError, match="do not describe"):
        check_operands(x, values, torch.zeros(32, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="share a float dtype"):
        check_operands(x.float(), values, meta)
    with pytest.raises(TypeError, match="uint8"):
        check_operands(x, values, meta.to(torch.int16))
    with pytest.raises(ValueError, match="at most 64"):
        check_operands(torch.randn(65, 64, dtype=torch.float16), values, meta)


def test_decode_linear_refuses_a_config_that_does_not_fit() -> None:
    pytest.importorskip("triton")
    from sparsity_lab.semi24.decode_kernel import DecodeConfig, decode_linear

    values, meta = torch.zeros(32, 32, dtype=torch.float16), torch.zeros(32, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="CUDA-core kernel is for at most 8"):
        decode_linear(torch.randn(9, 64, dtype=torch.float16), values, meta, config=DecodeConfig(cores="cuda"))
    with pytest.raises(ValueError, match="takes float16 or bfloat16"):
        decode_linear(torch.randn(1, 64), values.float(), meta, config=DecodeConfig(cores="cuda"))
    with pytest.raises(ValueError, match="config.cores must be"):
        decode_linear(torch.randn(1, 64, dtype=torch.float16), values, meta, config=DecodeConfig(cores="gpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_kernel_is_a_dispatcher_candidate_of_the_2_4_layer(dtype: torch.dtype) -> None:
    from sparsity_lab.dispatch import Dispatcher
    from sparsity_lab.semi24.layer import Semi24Linear

    layer = Semi24Linear(torch.randn(512, 256, device="cuda", dtype=dtype), torch.randn(512, device="cuda",
                                                                                         dtype=dtype),
                         dispatcher=Dispatcher())
    for tokens in (1, 16):
        x = torch.randn(tokens, 256, device="cuda", dtype=dtype)
        with torch.no_grad():
            y = layer(x)
            decoded = layer._decode_call()(x, layer.bias)
        reference = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
        for out in (y, decoded):
            assert (out.double() - reference).norm() / reference.norm() < 1e-2
        assert "decode" in layer.last_reason and decoded.is_contiguous()


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_cuda_core_kernel_on_the_gpu_matches_float64(tokens: int) -> None:
    from sparsity_lab.semi24 import layout
    from sparsity_lab.semi24.decode_kernel import CANDIDATES, decode_linear

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    w = layout.sparsify(torch.randn(320, 512, device="cuda", generator=gen)).to(torch.bfloat16)
    x = torch.randn(tokens, 512, device="cuda", generator=gen).to(torch.bfloat16)
    bias = torch.randn(320, device="cuda", generator=gen).to(torch.bfloat16)
    values, meta = layout.compress(w, "simple")
    reference = x.double() @ w.double().t() + bias.double()
    for config in (c for c in CANDIDATES if c.cores == "cuda"):
        y = decode_linear(x, values, meta, bias, config)
        assert y.shape == (tokens, 320) and y.dtype == torch.bfloat16
        assert float((y.double() - reference).norm() / reference.norm()) < 1e-2, config


@pytest.mark.gpu
def test_compiled_layer_in_decode_mode_runs_the_decode_kernel() -> None:
    from sparsity_lab.semi24.layer import Semi24Linear

    layer = Semi24Linear(torch.randn(256, 512, device="cuda", dtype=torch.bfloat16), mode="decode")
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True)(x)
        reference = x.double() @ layer.weight.double().t()
    assert layer._decode_operands()[0].numel() == 256 * 256
    assert float((compiled.double() - reference).norm() / reference.norm()) < 1e-2
    torch._dynamo.reset()


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
