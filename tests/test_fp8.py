"""FP8 (e4m3 / e5m2) with and without 2:4: the quantization reference, the Triton quantize and rescale kernels
(in Triton's interpreter on the CPU, bit for bit against the reference), the layers under `sparsify_` and
``torch.compile``, and on a GPU the cuSPARSELt FP8 2:4 matmul against float64 and against PyTorch's own path.

The interpreter checks run in a child process (the `interpreted` fixture runs this file as a script)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from sparsity_lab import Fp8Config, sparsify_
from sparsity_lab.dispatch import tunable_layers
from sparsity_lab.quant import fp8

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _awkward_rows(dtype: torch.dtype) -> torch.Tensor:
    """Rows that test the rounding: random, a zero row, signed zeros, subnormals after scaling, halfway points."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 300, generator=gen) * 3
    x[1] = 0
    x[2, :4] = torch.tensor([-0.0, 0.0, -1e-30, 1e-30])
    x[3, 0] = 1e4  # the rest of row 3 lands among the subnormals
    fmax = torch.finfo(dtype).max
    grid = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    grid = grid[torch.isfinite(grid) & (grid.abs() < fmax)].sort().values
    x[4, 0] = fmax
    x[4, 1 : 1 + 255] = ((grid[:-1] + grid[1:]) / 2)[:255].repeat(2)[:255]  # ties: round to even
    x[5, 0] = -fmax
    x[5, 1:100] = grid[:99]  # exactly representable values stay as they are
    return x


def _run_kernel_checks() -> dict[str, bool | str]:
    """Each interpreter check's outcome (True, False, or the error), in this (interpreted) process."""
    from sparsity_lab.quant import kernels

    results: dict[str, bool | str] = {}

    def check(name: str, fn) -> None:
        try:
            results[name] = bool(fn())
        except Exception as err:  # reported, so a crash names its check
            results[name] = repr(err)

    def same(x: torch.Tensor, dtype: torch.dtype) -> bool:
        q, s = kernels.quantize_per_token_fp8(x, dtype)
        r, t = fp8.quantize_rows_fp8(x, dtype)
        return torch.equal(q.view(torch.uint8), r.view(torch.uint8)) and torch.equal(s, t) and q.is_contiguous()

    for dtype in FP8:
        x = _awkward_rows(dtype)
        check(f"quantize {dtype} awkward rows", lambda x=x, dtype=dtype: same(x, dtype))
        for source in (torch.float32, torch.bfloat16, torch.float16):
            y = (torch.randn(9, 5000, generator=torch.Generator().manual_seed(1)) * 50).to(source)
            check(f"quantize {dtype} from {source}", lambda y=y, dtype=dtype: same(y, dtype))
        check(f"quantize {dtype} strided", lambda dtype=dtype: same(torch.randn(40, 7).T, dtype))
        long_rows = (torch.randn(3, 9000, generator=torch.Generator().manual_seed(2)) * 50).to(torch.bfloat16)
        check(f"quantize {dtype} rows read twice", lambda y=long_rows, dtype=dtype: same(y, dtype))
    check("quantize refuses int8", lambda: _raises(TypeError, kernels.quantize_per_token_fp8, torch.ones(2, 2),
                                                   torch.int8))
    d = torch.randn(90, 70).to(torch.bfloat16)  # D (N, M) as cuSPARSELt writes it; y = D.t() rescaled
    sx, bias = torch.rand(70), torch.randn(90)
    for b in (bias, None):
        def close(b=b) -> bool:
            y = kernels.rescale(d.t(), sx, None, b, torch.bfloat16)
            ref = d.t().float() * sx[:, None] + (0 if b is None else b)
            return y.is_contiguous() and torch.allclose(y.float(), ref, rtol=8e-3, atol=8e-3)
        check(f"rescale float acc, column-major, bias={b is not None}", close)
    return results


def _raises(error: type[Exception], fn, *args) -> bool:
    try:
        fn(*args)
    except error:
        return True
    return False


def test_kernels_match_the_reference_bit_for_bit_in_triton_interpreter(interpreted) -> None:
    results = interpreted(__file__)
    failed = {name: outcome for name, outcome in results.items() if outcome is not True}
    assert len(results) >= 12 and not failed, failed


# ------------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("dtype", FP8)
def test_quantize_rows_fp8_keeps_each_value_within_half_a_step(dtype: torch.dtype) -> None:
    x = _awkward_rows(dtype)
    q, s = fp8.quantize_rows_fp8(x, dtype)
    assert q.dtype == dtype and s.dtype == torch.float32 and s[1] == 0 and torch.all(q[1].float() == 0)
    back = fp8.dequantize_fp8(q, s, torch.float64)
    mantissa = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}[dtype]
    normal = (x.abs() >= s[:, None] * torch.finfo(dtype).smallest_normal) & (x != 0)
    relative = ((back - x.double()).abs() / x.double().abs())[normal]
    assert relative.max() <= 2.0 ** -(mantissa + 1) + 1e-12  # half a step, relative, for normal values
    assert torch.equal(q[5, 1:100].float(), x[5, 1:100] / s[5])  # grid values come back as they are
    assert fp8.quantize_rows_fp8(x, dtype)[0].float().abs().max() == torch.finfo(dtype).max


def test_fp8_reference_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="2-D floating"):
        fp8.quantize_rows_fp8(torch.ones(3))
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        fp8.quantize_rows_fp8(torch.ones(2, 2), torch.int8)
    with pytest.raises(ValueError, match="format"):
        fp8.fp8_dtype("e3m4")
    with pytest.raises(ValueError, match="format must be one of"):
        sparsify_(nn.Sequential(nn.Linear(8, 8)), Fp8Config(format="int4"))
    with pytest.raises(ValueError, match="backend"):
        fp8.Fp8Linear(8, 8, backend="cutlass")


def test_reference_product_is_exact_in_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    q_x, s_x = fp8.quantize_rows_fp8(torch.randn(7, 64, generator=gen))
    q_w, s_w = fp8.quantize_rows_fp8(torch.randn(5, 64, generator=gen))
    y = fp8.fp8_linear_reference(q_x, s_x, q_w, s_w, None, torch.float64)
    exact = fp8.dequantize_fp8(q_x, s_x, torch.float64) @ fp8.dequantize_fp8(q_w, s_w, torch.float64).T
    torch.testing.assert_close(y, exact, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------ layers
def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("format", ["e4m3", "e5m2"])
def test_fp8_layers_are_within_fp8_error_of_the_float_model(sparse: bool, format: str) -> None:  # noqa: A002
    model = _mlp()
    if sparse:  # compare with the same 2:4 weights in float
        from sparsity_lab.semi24 import layout

        for layer in (model[0], model[2]):
            layer.weight.data = layout.sparsify(layer.weight.data)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        reference = model(x)
    report = sparsify_(model, Fp8Config(format=format, sparse=sparse, prune=False))
    kind = fp8.Fp8Semi24Linear if sparse else fp8.Fp8Linear
    assert report.changed == ["0", "2"] and all(type(model[i]) is kind for i in (0, 2))
    y = model(x)
    error = float((y - reference).norm() / reference.norm())
    assert y.shape == reference.shape and error < {"e4m3": 0.08, "e5m2": 0.15}[format]
    assert error > 1e-4  # FP8 really rounds: the layer is not running in float


def test_sparse_fp8_refuses_a_weight_that_is_not_24_and_leaves_the_model_alone() -> None:
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="layer '0'.*nothing was changed"):
        sparsify_(model, Fp8Config(prune=False))
    assert all(type(m) is not fp8.Fp8Semi24Linear for m in model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_half_and_bfloat16_casts_keep_the_fp8_buffers() -> None:
    model = _mlp()
    sparsify_(model, Fp8Config())
    weight = model[0].weight_q.clone()
    model.to(torch.bfloat16)
    assert model[0].weight_q.dtype == torch.float8_e4m3fn and model[0].weight_scale.dtype == torch.float32
    assert torch.equal(model[0].weight_q.view(torch.uint8), weight.view(torch.uint8))
    assert model(torch.randn(4, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_fp8_model_compiles_whole_through_the_quantized_op() -> None:
    model = _mlp()
    sparsify_(model, Fp8Config())
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0
        assert explained.graphs[0].code.count("sparsity_lab.quantized_linear") == 2
        eager = model(x)
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(model), fullgraph=True, dynamic=True)
        torch.testing.assert_close(compiled(x), eager)
        torch.testing.assert_close(compiled(x[:2]), model(x[:2]))
    torch._dynamo.reset()


def test_fp8_layers_are_tunable_and_their_dense_mode_uses_the_fp8_weight() -> None:
    model = _mlp()
    sparsify_(model, Fp8Config())
    assert set(tunable_layers(model)) == {"0", "2"} and model[0].mode == "fp8"
    assert model[0].TUNE_MODES == ("dense", "fp8")
    x = torch.randn(4, 64)
    with torch.no_grad():
        quantized = model(x)
        model[0].mode = model[2].mode = "dense"
        dense = model(x)
    expected = nn.functional.linear(nn.functional.gelu(nn.functional.linear(x, model[0].dequantized_weight(),
                                                                            model[0].bias)),
                                    model[2].dequantized_weight(), model[2].bias)
    torch.testing.assert_close(dense, expected)
    assert not torch.equal(dense, quantized)  # dense mode skips the activations' FP8 rounding
    with pytest.raises(ValueError, match="mode must be one of"):
        model[0].mode = "int8"


def test_fp8_bench_runs_on_the_cpu_and_checks_every_variant(tmp_path) -> None:
    from sparsity_lab.quant import fp8_bench

    out = tmp_path / "fp8.json"
    assert fp8_bench.main(["--device", "cpu", "--out", str(out), "--warmup-ms", "1", "--rep-ms", "2"]) == 0
    row = json.loads(out.read_text())["figures"]["rows"][0]
    assert row["checks"] == {"bf16 dense": True, "ours fp8 2:4": True, "ours fp8 dense": True}
    assert row["rel_error"]["ours fp8 2:4"] < 1e-6 < row["rel_error"]["bf16 dense"]
    assert set(row["speedup"]) == {"ours fp8 2:4 over bf16 dense", "ours fp8 dense over bf16 dense"}


# ------------------------------------------------------------------------------------------------ GPU
def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (compute capability 8.9+)")
@pytest.mark.parametrize("dtype", FP8)
def test_gpu_quantize_kernel_matches_the_reference_bit_for_bit(dtype: torch.dtype) -> None:
    from sparsity_lab.quant import kernels

    x = _awkward_rows(dtype).cuda()
    q, s = kernels.quantize_per_token_fp8(x, dtype)
    r, t = fp8.quantize_rows_fp8(x, dtype)
    assert torch.equal(q.view(torch.uint8), r.view(torch.uint8)) and torch.equal(s, t)


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (compute capability 8.9+)")
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dtype", FP8)
def test_binding_fp8_24_matmul_matches_float64_and_torchs_own_path(dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    from sparsity_lab.semi24 import cusparselt, layout

    gen = torch.Generator().manual_seed(0)
    q_w = layout.sparsify(torch.randn(256, 512, generator=gen) * 0.5).to(dtype).cuda()  # products fit float16
    q_x = (torch.randn(64, 512, generator=gen) * 0.5).to(dtype).cuda()
    weight = cusparselt.Semi24Weight.from_dense(q_w)
    d = weight.linear(q_x, out_dtype=out_dtype)
    exact = q_x.double() @ q_w.double().T
    assert d.shape == (64, 256) and d.dtype == out_dtype and d.stride() == (1, 64)
    tolerance = {"rtol": 1e-2, "atol": 1e-2 * exact.abs().max().item()}
    torch.testing.assert_close(d.double(), exact, **tolerance)
    if dtype == torch.float8_e4m3fn:
        theirs = torch._cslt_sparse_mm(torch._cslt_compress(q_w), q_x.t(), out_dtype=torch.bfloat16)
        torch.testing.assert_close(d.double(), theirs.t().double(), **tolerance)
    with pytest.raises(TypeError, match="FP8 matmuls write"):
        weight.linear(q_x, out_dtype=torch.int32)


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (compute capability 8.9+)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 24, 128])
def test_gpu_fp8_layers_match_the_float64_reference(dtype: torch.dtype, tokens: int) -> None:
    torch.manual_seed(0)
    for config in (Fp8Config(), Fp8Config(sparse=False)):
        model = nn.Sequential(nn.Linear(96, 320), nn.GELU(), nn.Linear(320, 64)).cuda().to(dtype)
        sparsify_(model, config)
        reference = copy.deepcopy(model).cpu().float()
        for layer in reference:
            if isinstance(layer, fp8.Fp8Linear):
                layer.backend = "reference"
        x = torch.randn(tokens, 96, device="cuda", dtype=dtype)
        y, ref = model(x), reference(x.cpu().float())
        assert y.dtype == dtype and y.shape == (tokens, 64)
        torch.testing.assert_close(y.cpu().float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), y)
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (compute capability 8.9+)")
def test_tune_sets_each_fp8_layer_to_a_mode_it_measured() -> None:
    from sparsity_lab import tune_

    model = _mlp().cuda().to(torch.bfloat16)
    sparsify_(model, Fp8Config())
    report = tune_(model, (torch.randn(256, 64, device="cuda", dtype=torch.bfloat16),), rounds=1, warmup=2, reps=5)
    assert set(report) == {"0", "2"} and all(model[i].mode in ("dense", "fp8") for i in (0, 2))


if __name__ == "__main__":
    print(json.dumps(_run_kernel_checks()))
