"""Whole swapped models: the 2:4 custom op under torch.compile (no graph breaks, no recompiles across batch sizes),
the row-major copy kernel, layer modes and `tune_`'s model-level choice. CPU tests trace and run the op's dense
route; the GPU tests run cuSPARSELt."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from sparsity_lab import Semi24Config, sparsify_, tune_
from sparsity_lab import dispatch as dispatch_module
from sparsity_lab.semi24.layer import Semi24Linear
from sparsity_lab.semi24.ops import semi24_linear_t


class Block(nn.Module):
    """A pre-norm transformer MLP block, as timm's ViT has it: norm, fc1, GELU, fc2, residual add."""

    def __init__(self, width: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def _swapped(depth: int = 2) -> tuple[nn.Module, nn.Module]:
    """(the model with every linear pruned to 2:4 but dense, the same model swapped to Semi24Linear)."""
    torch.manual_seed(0)
    model = Stack(depth)
    sparsify_(model, Semi24Config(), lambda m, fqn: fqn != "head")
    dense = copy.deepcopy(model)
    for name, layer in list(dense.named_modules()):
        if isinstance(layer, Semi24Linear):
            linear = nn.Linear(layer.in_features, layer.out_features)
            linear.weight.data.copy_(layer.weight)
            linear.bias.data.copy_(layer.bias)
            parent, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent), child, linear)
    return dense, model


def test_compiled_swapped_model_has_no_graph_break_and_calls_the_op() -> None:
    dense, model = _swapped()
    x = torch.randn(3, 7, 64)
    with torch.no_grad():  # inference: an input that needs grad traces the dense F.linear (the op has no backward)
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    code = explained.graphs[0].code
    assert code.count("sparsity_lab.semi24_linear_t") == 4  # two blocks, fc1 and fc2 each
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_dynamic_batch_does_not_recompile() -> None:
    dense, model = _swapped()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        compiled(torch.randn(2, 5, 64))
        with torch._dynamo.config.patch(error_on_recompile=True):
            for batch, tokens in ((3, 5), (8, 5), (5, 9)):
                x = torch.randn(batch, tokens, 64)
                torch.testing.assert_close(compiled(x), dense(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_dense_mode_traces_plain_linear() -> None:
    _, model = _swapped(depth=1)
    for layer in model.modules():
        if isinstance(layer, Semi24Linear):
            layer.mode = "dense"
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64))
    assert explained.graph_break_count == 0
    assert "semi24_linear_t" not in explained.graphs[0].code


def test_op_passes_torch_library_checks() -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(16, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    empty = torch.empty(0, dtype=torch.uint8)
    for bias in (b, None):
        torch.library.opcheck(semi24_linear_t, (x, w, empty, bias, 0))
        d = semi24_linear_t(x, w, empty, bias, 0)
        assert d.shape == (32, 16) and d.is_contiguous()
        expected = (x.double() @ w.double().t() + (0 if bias is None else bias.double())).t()
        torch.testing.assert_close(d.double(), expected, rtol=1e-5, atol=1e-5)
    x_column_major = torch.randn(64, 16, generator=gen).t()  # a previous 2:4 layer's output, read as it lies
    torch.testing.assert_close(semi24_linear_t(x_column_major, w, empty, b, 0), torch.addmm(b[:, None], w,
                                                                                            x_column_major.t()))


def test_decode_mode_compiles_to_the_decode_op() -> None:
    """In mode "decode" a compiled 2:4 model calls the decode op (which keeps the decode kernel on CUDA) and no
    cuSPARSELt op; on the CPU the op has no decode operands and computes the pruned product densely."""
    dense, model = _swapped(depth=1)
    for layer in model.modules():
        if isinstance(layer, Semi24Linear):
            layer.mode = "decode"
            assert layer._decode_operands()[0].numel() == 0  # the CPU: no decode kernel to feed
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        code = explained.graphs[0].code
        assert code.count("sparsity_lab.semi24_decode") == 2 and "semi24_linear_t" not in code
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), dense(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_decode_op_passes_torch_library_checks() -> None:
    from sparsity_lab.semi24.ops import semi24_decode

    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    values, meta = torch.empty(0), torch.empty(0, dtype=torch.uint8)
    for bias in (b, None):
        torch.library.opcheck(semi24_decode, (x, w, values, meta, bias))
        torch.testing.assert_close(semi24_decode(x, w, values, meta, bias), torch.nn.functional.linear(x, w, bias))


def test_mode_is_checked_and_survives_copies() -> None:
    layer = Semi24Linear(torch.randn(64, 64))
    with pytest.raises(ValueError, match="mode must be one of"):
        layer.mode = "fast"
    with pytest.raises(ValueError, match="mode must be one of"):
        Semi24Linear(torch.randn(64, 64), mode="fast")
    layer.mode = "sparse-rowmajor"
    clone = copy.deepcopy(layer)
    assert clone.mode == "sparse-rowmajor" and clone.compressed.numel() == 0
    x = torch.randn(8, 64)
    torch.testing.assert_close(clone(x), layer(x))
    assert "dense (pruned weight)" in layer.last_reason  # on the CPU every mode runs dense, and says why
    layer.mode = "decode"
    torch.testing.assert_close(layer(x), clone(x))
    assert "dense (pruned weight)" in layer.last_reason


def test_tune_keeps_a_group_sparse_only_where_the_model_got_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in clock: the model's time is a sum over its layers' modes; fc1 is faster sparse, fc2 only
    row-major, and anything costs more than dense for the head-side layers (fc2 transposed)."""
    _, model = _swapped()
    layers = {fqn: m for fqn, m in model.named_modules() if isinstance(m, Semi24Linear)}
    cost = {("fc1", "dense"): 1.0, ("fc1", "sparse"): 0.7, ("fc1", "sparse-rowmajor"): 0.8, ("fc1", "auto"): 1.2,
            ("fc2", "dense"): 1.0, ("fc2", "sparse"): 1.4, ("fc2", "sparse-rowmajor"): 0.9, ("fc2", "auto"): 1.2,
            ("fc1", "dense-colmajor"): 1.0, ("fc2", "dense-colmajor"): 1.5}

    def fake_ms(fn, *args, **kwargs) -> float:
        fn()
        return sum(cost[(fqn.rsplit(".", 1)[1], m.mode)] for fqn, m in layers.items())

    monkeypatch.setattr(dispatch_module, "event_ms", fake_ms)
    monkeypatch.setattr(dispatch_module, "loop_ms", fake_ms)
    report = tune_(model, (torch.randn(2, 8, 64),))
    assert {fqn: m.mode for fqn, m in layers.items()} == {
        "blocks.0.fc1": "sparse", "blocks.0.fc2": "sparse-rowmajor",
        "blocks.1.fc1": "sparse", "blocks.1.fc2": "sparse-rowmajor"}
    assert report["blocks.1.fc1"].changed and report["blocks.1.fc1"].what.startswith("sparse: the model (eager")
    cost[("fc1", "sparse")] = cost[("fc1", "sparse-rowmajor")] = 0.99  # 1% faster: within the margin
    report = tune_(model, (torch.randn(2, 8, 64),), block="blocks.0")
    assert layers["blocks.0.fc1"].mode == "dense" and not report["blocks.0.fc1"].changed
    assert "'blocks.0'" in report["blocks.0.fc1"].what


def test_tune_second_round_sees_later_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """fc1's column-major output pays off only once fc2 is sparse (it reads it as it lies): one round keeps fc1
    dense, the second makes it sparse."""
    _, model = _swapped(depth=1)
    fc1, fc2 = model.blocks[0].fc1, model.blocks[0].fc2

    def fake_ms(fn, *args, **kwargs) -> float:
        fn()
        first = {"dense": 1.0, "sparse": 0.7 if fc2.mode == "sparse" else 1.1, "sparse-rowmajor": 1.05,
                 "auto": 1.3, "dense-colmajor": 1.0}[fc1.mode]
        second = {"dense": 1.0, "sparse": 0.8, "sparse-rowmajor": 0.9, "auto": 1.3, "dense-colmajor": 1.2}
        return first + second[fc2.mode]

    monkeypatch.setattr(dispatch_module, "event_ms", fake_ms)
    monkeypatch.setattr(dispatch_module, "loop_ms", fake_ms)
    tune_(model, (torch.randn(8, 64),), rounds=1)
    assert (fc1.mode, fc2.mode) == ("dense", "sparse")
    report = tune_(model, (torch.randn(8, 64),))
    assert (fc1.mode, fc2.mode) == ("sparse", "sparse") and "round 2" in report["blocks.0.fc1"].what


def test_tune_on_a_block_goes_back_to_dense_if_the_whole_model_got_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    """One block says fc1 sparse is faster; the model as a whole (what the block cannot see) is slower with it:
    every layer goes back to dense, and the report says why. Where the model agrees, the choice stays."""
    _, model = _swapped(depth=2)
    whole = []
    model.register_forward_pre_hook(lambda module, args: whole.append(True))
    model_penalty = {"value": 0.5}

    def fake_ms(fn, *args, **kwargs) -> float:
        whole.clear()
        fn()
        fc1 = model.blocks[0].fc1.mode
        if whole:  # the whole model ran
            return 2.0 + (model_penalty["value"] if fc1 == "sparse" else 0.0)
        return {"sparse": 0.7}.get(fc1, 1.0)

    monkeypatch.setattr(dispatch_module, "event_ms", fake_ms)
    monkeypatch.setattr(dispatch_module, "loop_ms", fake_ms)
    report = tune_(model, (torch.randn(2, 8, 64),), block="blocks.0")
    assert all(m.mode == "dense" for m in model.modules() if isinstance(m, Semi24Linear))
    assert not report["blocks.0.fc1"].changed
    assert report["blocks.0.fc1"].what.startswith("dense: the whole model was slower")
    model_penalty["value"] = -0.5  # the model agrees with the block
    report = tune_(model, (torch.randn(2, 8, 64),), block="blocks.0")
    assert model.blocks[1].fc1.mode == "sparse" and report["blocks.1.fc1"].changed
    tune_(model, (torch.randn(2, 8, 64),), block="blocks.0", check_model=False)
    assert model.blocks[0].fc1.mode == "sparse"


def test_tune_may_keep_a_group_dense_with_column_major_y(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a model whose residual stream is column-major, a dense layer writing yᵀ is what spares the add a copy:
    tune_ may choose "dense-colmajor", and reports the layer as not sparse."""
    _, model = _swapped(depth=1)
    fc2 = model.blocks[0].fc2

    def fake_ms(fn, *args, **kwargs) -> float:
        fn()
        return {"dense-colmajor": 0.9}.get(fc2.mode, 1.0)

    monkeypatch.setattr(dispatch_module, "event_ms", fake_ms)
    monkeypatch.setattr(dispatch_module, "loop_ms", fake_ms)
    report = tune_(model, (torch.randn(8, 64),))
    assert fc2.mode == "dense-colmajor" and not report["blocks.0.fc2"].changed
    assert report["blocks.0.fc2"].what.startswith("dense-colmajor: the model")


def test_decode_modes_are_candidates_only_for_cuda_graph_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode kernels win only where no host work is timed: tune_ tries "decode" with graphs=True alone."""
    _, model = _swapped(depth=1)
    tried: list[tuple[str, bool]] = []

    def fake_trial(members, mode, target, args, kwargs, compiled, graphs):  # noqa: ANN001, ANN202
        tried.append((mode, graphs))
        return lambda: None

    monkeypatch.setattr(dispatch_module, "_trial", fake_trial)
    monkeypatch.setattr(dispatch_module, "event_ms", lambda fn, *args, **kwargs: 1.0)
    monkeypatch.setattr(dispatch_module, "loop_ms", lambda fn, *args, **kwargs: 1.0)
    tune_(model, (torch.randn(1, 64),), rounds=1)
    assert tried and all(mode != "decode" for mode, _ in tried)
    tried.clear()
    tune_(model, (torch.randn(1, 64),), rounds=1, graphs=True)
    assert ("decode", True) in tried


def test_int8_and_block_layers_have_modes_tune_can_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 2:4 and block-sparse layers take "dense" too, so a model tuned with them is never slower than dense."""
    from sparsity_lab import BlockSparseConfig, Int8Config
    from sparsity_lab.block.layer import BlockSparseLinear
    from sparsity_lab.quant.layers import Int8Semi24Linear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    with torch.no_grad():
        model[2].weight.mul_(torch.tensor([[True, False]]).repeat_interleave(64, 0).repeat_interleave(64, 1))
    sparsify_(model, Int8Config(sparse=True), lambda m, fqn: fqn == "0")
    sparsify_(model, BlockSparseConfig(64, max_density=1.0), lambda m, fqn: fqn == "2")
    int8, block = model[0], model[2]
    assert isinstance(int8, Int8Semi24Linear) and isinstance(block, BlockSparseLinear)
    x = torch.randn(16, 64)
    with torch.no_grad():
        quantized = int8(x)
        int8.mode = "dense"
        torch.testing.assert_close(int8(x), x @ int8.dequantized_weight().t() + int8.bias)
        assert (int8(x) - quantized).norm() / quantized.norm() < 0.05  # the same weights, no activation rounding
    for layer, bad in ((int8, "sparse"), (block, "int8")):
        with pytest.raises(ValueError, match="mode must be one of"):
            layer.mode = bad
    cost = {("0", "dense"): 1.0, ("0", "int8"): 1.5, ("2", "dense"): 1.0, ("2", "sparse"): 0.5}

    def fake_ms(fn, *args, **kwargs) -> float:
        fn()
        return cost[("0", int8.mode)] + cost[("2", block.mode)]

    monkeypatch.setattr(dispatch_module, "event_ms", fake_ms)
    monkeypatch.setattr(dispatch_module, "loop_ms", fake_ms)
    report = tune_(model, (x,))
    assert (int8.mode, block.mode) == ("dense", "sparse") and block.backend == "auto"
    assert not report["0"].changed and report["2"].changed
    hidden = torch.randn(16, 128)
    expected = block(hidden)
    block.mode = "decode"  # on the CPU the decode kernel does not fit: the layer falls back (dense here)
    assert block.mode == "decode" and block.backend == "decode"
    torch.testing.assert_close(block(hidden), expected)


def test_tune_refuses_bad_input_and_changes_nothing() -> None:
    with pytest.raises(ValueError, match="no layer tune_ can set"):
        tune_(Stack(), (torch.randn(2, 64),))
    _, model = _swapped()
    with pytest.raises(TypeError, match="tuple"):
        tune_(model, torch.randn(2, 64))
    with pytest.raises(AttributeError):
        tune_(model, (torch.randn(2, 64),), block="no.such.block")
    with pytest.raises(ValueError, match="rounds"):
        tune_(model, (torch.randn(2, 64),), rounds=0)
    assert all(m.mode == "auto" for m in model.modules() if isinstance(m, Semi24Linear))


def test_block_sparse_model_compiles_whole_through_the_bsr_op() -> None:
    from sparsity_lab import BlockSparseConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            keep = torch.rand(layer.out_features // 64, layer.in_features // 64) > 0.5
            layer.weight.mul_(keep.repeat_interleave(64, 0).repeat_interleave(64, 1))
    dense = copy.deepcopy(model)
    sparsify_(model, BlockSparseConfig(64, max_density=1.0))
    x = torch.randn(4, 5, 128)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graphs[0].code.count("sparsity_lab.bsr_linear") == 2
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, dynamic=True)
        for batch in (4, 7):
            x = torch.randn(batch, 5, 128)
            torch.testing.assert_close(compiled(x), dense(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_block_sparse_model_in_decode_mode_keeps_the_decode_kernel_compiled() -> None:
    """A compiled decode step keeps the decode kernel: the op is traced with variant "decode" and the layer's
    widest block-row (no host sync inside a CUDA graph); on the CPU the op computes the same product densely."""
    from sparsity_lab import BlockSparseConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    dense = copy.deepcopy(model)
    sparsify_(model, BlockSparseConfig(64, max_density=1.0))
    for layer in (model[0], model[2]):
        layer.mode = "decode"
    x = torch.randn(2, 128)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        calls = [line for line in explained.graphs[0].code.splitlines() if "bsr_linear" in line]
        widest = [f"'decode', {layer.max_row_blocks})" for layer in (model[0], model[2])]
        assert len(calls) == 2 and all(w in line for w, line in zip(widest, calls, strict=True)), calls
        assert widest == ["'decode', 2)", "'decode', 4)"]  # 128 and 256 input features: 2 and 4 blocks a row
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), dense(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_block_sparse_model_in_dense_mode_compiles_without_graph_breaks() -> None:
    from sparsity_lab import BlockSparseConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    with torch.no_grad():
        model[0].weight[:64].zero_()  # one block-row empty
    dense = copy.deepcopy(model)
    sparsify_(model, BlockSparseConfig(64, max_density=1.0))
    for layer in (model[0], model[2]):
        layer.mode = "dense"  # what tune_ sets where the kernel loses
    model = model.double()  # the dense weight follows a cast of the blocks
    x = torch.randn(3, 128, dtype=torch.float64)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert "bsr_linear" not in explained.graphs[0].code
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), dense.double()(x))
    torch._dynamo.reset()


def test_int8_model_compiles_whole_through_the_int8_op() -> None:
    from sparsity_lab import Int8Config

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    sparsify_(model, Int8Config(sparse=True))
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graphs[0].code.count("sparsity_lab.quantized_linear") == 2
        eager = model(x)
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(model), fullgraph=True, dynamic=True)  # a copy finds its own buffers
        torch.testing.assert_close(compiled(x), eager)
        model[0].mode = "dense"
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ the row-major copy kernel
def _kernel_cases() -> dict[str, bool]:
    """In this (interpreted) process: the kernel against ``contiguous()``, bit for bit, on ragged shapes."""
    from sparsity_lab.semi24.transpose_kernel import row_major

    results = {}
    cases = ((64, 64, torch.float16), (70, 33, torch.bfloat16), (128, 200, torch.float32), (5, 130, torch.int8))
    for m, n, dtype in cases:
        gen = torch.Generator().manual_seed(m * n)
        d = (torch.randn(n, m, generator=gen) * 50).to(dtype)
        y = d.t()
        out = row_major(y)
        results[f"{m}x{n} {dtype}"] = out.is_contiguous() and torch.equal(out, y.contiguous())
    return results


def test_row_major_kernel_in_triton_interpreter(interpreted) -> None:
    results = interpreted(__file__)
    assert results and all(results.values()), results


def test_row_major_falls_back_for_other_layouts() -> None:
    from sparsity_lab.semi24.transpose_kernel import is_column_major, row_major

    y = torch.randn(8, 4)
    assert row_major(y) is y and not is_column_major(y)
    assert is_column_major(torch.randn(4, 8).t())


# --------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_model_runs_cusparselt_and_fuses_the_transpose(dtype: torch.dtype) -> None:
    dense, model = _swapped()
    dense, model = dense.to("cuda", dtype), model.to("cuda", dtype)
    layers = [m for m in model.modules() if isinstance(m, Semi24Linear)]
    assert all(m.compressed.numel() > 0 for m in layers)  # packed on .to("cuda")
    for m in layers:
        m.mode = "sparse"
    x = torch.randn(4, 64, 64, device="cuda", dtype=dtype)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        ref = dense.float()(x.float())
        y = compiled(x)
        eager = model(x)
    for out in (y, eager):
        assert (out.float() - ref).norm() / ref.norm() < 2e-2
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with torch.no_grad():
        _, codes = run_and_get_code(torch.compile(model, fullgraph=True), x)
    source = "\n".join(codes)
    assert "semi24_linear_t" in source and "aten.clone" not in source and "copy_" not in source
    torch._dynamo.reset()


@pytest.mark.gpu
def test_weight_loaded_in_place_is_recompressed_or_refused() -> None:
    """A layer packed on construction, then given new weights by load_state_dict (in place, same address): eager
    and compiled both use the new weights; weights that are not 2:4 are refused, not silently miscompressed."""
    from sparsity_lab.semi24.matmul import prune24

    layer = Semi24Linear(torch.randn(128, 128, device="cuda", dtype=torch.float16), mode="sparse")
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    new = prune24(torch.randn(128, 128, device="cuda", dtype=torch.float16))
    with torch.no_grad():
        layer(x)
        layer.load_state_dict({"weight": new, "bias": None} if layer.bias is not None else {"weight": new})
        torch.testing.assert_close(layer(x), x @ new.t(), rtol=2e-3, atol=2e-2)
        torch._dynamo.reset()
        compiled = torch.compile(layer, fullgraph=True)
        layer.weight.copy_(prune24(torch.randn_like(new)))
        torch.testing.assert_close(compiled(x), x @ layer.weight.t(), rtol=2e-3, atol=2e-2)
        layer.weight.copy_(torch.randn_like(new))  # not 2:4
        with pytest.raises(ValueError, match="no longer 2:4"):
            layer(x)
    torch._dynamo.reset()


@pytest.mark.gpu
def test_row_major_kernel_on_gpu_and_sparse_rowmajor_mode() -> None:
    from sparsity_lab.semi24.transpose_kernel import row_major

    d = torch.randn(3000, 2000, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(row_major(d.t()), d.t().contiguous())
    layer = Semi24Linear(torch.randn(256, 128, device="cuda", dtype=torch.float16), mode="sparse-rowmajor")
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        y = layer(x)
    assert y.is_contiguous() and layer.last_reason.startswith("sparse")
    torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.weight), rtol=2e-3, atol=2e-2)


if __name__ == "__main__":
    print(json.dumps(_kernel_cases()))
