"""The residual add fused with the norm after it: the kernel (run on the CPU by Triton's interpreter, against PyTorch's
add and a float64 norm), `ColumnMajorNorm.add_forward` and its fallbacks, and `ResidualChain` in a column-major
stream: the same outputs, every add but the last fused, the entry conversion once, training as the blocks do, and
why a chain is not built."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparsity_lab.models import column_major_norm, stream
from sparsity_lab.models.column_major_norm import ColumnMajorNorm, columns, norm_t_reference, to_column_major
from sparsity_lab.models.encoder import Attention, Block, Encoder, Mlp
from sparsity_lab.models.residual_chain import ResidualChain
from sparsity_lab.models.stream import column_major_stream_, is_streamed, remove_column_major_stream_
from sparsity_lab.semi24.layer import Semi24Linear
from sparsity_lab.sparsify import Semi24Config, sparsify_

# (features C, tokens M, dtype, rms, affine, block_m): one tile and two passes, token counts that fit no block
CASES = [(64, 40, "float32", False, True, 0), (96, 33, "float16", True, True, 0),
         (1024, 37, "bfloat16", False, True, 0), (1000, 70, "float32", False, False, 64),
         (3000, 9, "float32", False, True, 0), (4096, 20, "bfloat16", True, True, 0),
         (130, 17, "float16", False, True, 128)]
TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-5}


def _pair(block: type = Block, depth: int = 2) -> tuple[nn.Module, nn.Module, dict]:
    """Our encoder (its blocks of class `block`) swapped to 2:4, and a copy with a column-major stream: qkv dense
    (row-major q, k, v for attention), every other layer writing y column-major, as a 2:4 layer does. The copy's
    `column_major_stream_` report comes third."""
    torch.manual_seed(0)
    models = []
    for _ in range(2):
        model = Encoder(64, depth, 4)
        model.blocks = nn.Sequential(*(block(64, 4, 256) for _ in range(depth)))
        models.append(model.eval())
    reference, model = models
    model.load_state_dict(reference.state_dict())
    for m in models:
        sparsify_(m, Semi24Config())
    report = column_major_stream_(model, "blocks.0")
    for fqn, layer in model.named_modules():
        if isinstance(layer, Semi24Linear):
            layer.mode = "dense" if fqn.endswith("qkv") else "dense-colmajor"
    return reference, model, report


def _run_cases(device: str = "cpu") -> dict[str, dict[str, float]]:
    """Per case: the norm's relative error against float64 (from PyTorch's rounded S), how many elements of S differ
    from PyTorch's ``d + r`` and how many of those are not the float32 sum truncated to bfloat16 (what Triton's
    interpreter does where a GPU rounds to nearest even). Then the chained encoder run with the kernels: its error
    against the unstreamed one and the fused kernel's launches."""
    from sparsity_lab.models.column_major_norm import add_norm_t

    out = {}
    for c, m, name, rms, affine, block_m in CASES:
        dtype = getattr(torch, name)
        gen = torch.Generator().manual_seed(c + m)
        d = (torch.randn(c, m, generator=gen) * 3).to(dtype)  # sums with more bits than the dtype holds
        r = torch.randn(c, m, generator=gen).to(dtype)
        w = (torch.rand(c, generator=gen) + 0.5).to(dtype) if affine else None
        b = torch.randn(c, generator=gen).to(dtype) if affine and not rms else None
        s, y = (t.cpu() for t in add_norm_t(d.to(device), r.to(device), None if w is None else w.to(device),
                                            None if b is None else b.to(device), 1e-5, rms, block_m))
        expected = d + r
        ref = norm_t_reference(expected.double(), None if w is None else w.double(),
                               None if b is None else b.double(), 1e-5, rms)
        wide = d.float() + r.float()
        truncated = (wide.view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
        ok = all(t.shape == d.shape and t.is_contiguous() and t.dtype == dtype for t in (s, y))
        out[f"{c}x{m} {name} rms={rms}"] = {
            "error": float((y.double() - ref).norm() / ref.norm()) if ok else 1.0,
            "s_differs": int((s != expected).sum()) if ok else -1,
            "s_unexplained": int(((s != expected) & (s != truncated)).sum()) if ok else -1}
    launches = []
    launch = column_major_norm._launch

    def counted(d: torch.Tensor, r: torch.Tensor | None, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        launches.append(r is not None)
        return launch(d, r, *args)

    reference, model, _ = _pair()
    model.to(device)
    x = torch.randn(3, 10, 64)
    column_major_norm._launch = counted
    try:
        with torch.no_grad():
            y = model(x.to(device)).cpu()
            expected = reference(x)
    finally:
        column_major_norm._launch = launch
    out["encoder"] = {"error": float((y - expected).norm() / expected.norm()), "fused": launches.count(True),
                      "norms": launches.count(False)}
    return out


def _check_cases(results: dict[str, dict[str, float]], exact_bf16: bool) -> None:
    encoder = results.pop("encoder")
    assert len(results) == len(CASES)
    for (_, _, name, *_), (case, result) in zip(CASES, results.items(), strict=True):
        assert result["error"] < TOLERANCE[name], (case, result)
        assert result["s_unexplained"] == 0, (case, result)
        if name != "bfloat16" or exact_bf16:
            assert result["s_differs"] == 0, (case, result)  # S is bit for bit PyTorch's x + r
    # two blocks: three adds fused (norm2, the next norm1, norm2), two plain norms (the first norm1, the head's)
    assert encoder["fused"] == 3 and encoder["norms"] == 2, encoder
    assert encoder["error"] < 1e-5, encoder


def test_add_norm_kernel_in_triton_interpreter(interpreted) -> None:
    _check_cases(interpreted(__file__), exact_bf16=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_add_norm_kernel_on_gpu() -> None:
    _check_cases(_run_cases("cuda"), exact_bf16=True)


@pytest.fixture
def fused(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The shape of D for each call of the fused op (`_add_norm_t`, what an eager `add_forward` runs)."""
    calls = []
    real = column_major_norm._add_norm_t

    def spy(d: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(d.shape)
        return real(d, *args)

    monkeypatch.setattr(column_major_norm, "_add_norm_t", spy)
    return calls


@pytest.fixture
def entries(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The shape of each input the stream's entry turns column-major."""
    calls = []
    real = stream.to_column_major

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return real(x)

    monkeypatch.setattr(stream, "to_column_major", spy)
    return calls


@pytest.mark.parametrize("kind", [nn.LayerNorm, nn.RMSNorm])
def test_add_forward_fuses_column_major_inputs_and_is_the_add_then_the_norm_otherwise(fused: list,
                                                                                     kind: type) -> None:
    torch.manual_seed(0)
    norm = kind(48)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ours = ColumnMajorNorm.from_norm(norm)
    x, r = torch.randn(3, 7, 48) * 3, torch.randn(3, 7, 48)
    with torch.no_grad():
        s, y = ours.add_forward(to_column_major(x), to_column_major(r))
        assert len(fused) == 1 and columns(s) is not None and columns(y) is not None
        assert torch.equal(s, x + r)
        torch.testing.assert_close(y, norm(x + r), rtol=1e-5, atol=1e-5)
        for a, b in ((x, r), (to_column_major(x), r), (to_column_major(x), to_column_major(r).half())):
            s, y = ours.add_forward(a, b)  # row-major, layouts that differ, dtypes that differ: PyTorch's calls
            assert torch.equal(s, a + b) and torch.equal(y, ours(a + b))
    xg = to_column_major(x).requires_grad_()
    s, y = ours.add_forward(xg, to_column_major(r))  # a gradient is needed: PyTorch's add and norm
    y.sum().backward()
    assert len(fused) == 1 and torch.equal(s, x + r) and torch.equal(y, norm(s)) and xg.grad is not None
    with pytest.raises(ValueError, match="expects 48 features"):
        ours.add_forward(torch.randn(2, 9), torch.randn(2, 9))
    with pytest.raises(ValueError, match="r must have d's shape"):
        column_major_norm.add_norm_t(torch.randn(4, 5), torch.randn(4, 6), None, None, 1e-5, False)


def test_chained_encoder_computes_the_same_and_fuses_every_add_but_the_last(fused: list, entries: list) -> None:
    reference, model, report = _pair(depth=3)
    assert isinstance(model.blocks, ResidualChain) and report["blocks"].changed, str(report)
    assert list(model.state_dict()) == list(reference.state_dict())  # the names and keys stay
    assert model.get_submodule("blocks.0.attn.qkv") is model.blocks[0].attn.qkv
    x = torch.randn(3, 10, 64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
        assert len(fused) == 5 and len(entries) == 1  # norm2, the next norm1, ..., norm2; the entry once
        assert columns(out) is not None
        entries.clear()
        alone = model.blocks[0](x)  # one block called alone, as tune_(block=) times it: its hook still enters
        assert len(entries) == 1 and columns(alone) is not None
        torch.testing.assert_close(alone, reference.blocks[0](x), rtol=1e-5, atol=1e-5)


class LayerScale(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TimmBlock(nn.Module):
    """timm's ViT block as far as the chain looks: its class name, its module, its parts and its forward."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1, self.drop_path1 = (nn.LayerNorm(width), Attention(width, heads),
                                                            LayerScale(width), nn.Identity())
        self.norm2, self.mlp, self.ls2, self.drop_path2 = (nn.LayerNorm(width), Mlp(width, hidden), LayerScale(width),
                                                           nn.Identity())

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


TimmBlock.__name__ = TimmBlock.__qualname__ = "Block"
TimmBlock.__module__ = "timm.models.vision_transformer"


def test_chain_takes_timm_blocks_with_their_layer_scales(fused: list) -> None:
    reference, model, report = _pair(TimmBlock)
    assert isinstance(model.blocks, ResidualChain), str(report)
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert len(fused) == 3


def test_chain_trains_as_its_blocks_do(fused: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """In training the blocks are called one by one; in eval with gradients the chain runs, each add_forward
    through PyTorch's add and norm. Either way the gradients are the unstreamed model's."""
    reference, model, _ = _pair()
    calls = []
    forward = Block.forward
    monkeypatch.setattr(Block, "forward", lambda self, x: (calls.append(self), forward(self, x))[1])
    x = torch.randn(3, 10, 64)
    for training, blocks_called in ((True, 2), (False, 0)):
        for m in (model, reference):
            m.train(training)
            m.zero_grad()
        calls.clear()
        model(x).square().mean().backward()
        assert len(calls) == blocks_called and not fused
        reference(x).square().mean().backward()
        grads = {name: p.grad for name, p in reference.named_parameters() if p.requires_grad}
        assert len(grads) >= 6 and all(grad is not None for grad in grads.values())
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-5)


class Reordered(Block):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp(self.norm2(x))
        return x + self.attn(self.norm1(x))


class Renamed(Block):
    """Only a new name: chained."""


class Stack(nn.Sequential):
    """A Sequential of another name, whose forward could be anything."""


class ScaledNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def _with_blocks(*blocks: nn.Module, container: type = nn.Sequential) -> Encoder:
    torch.manual_seed(0)
    model = Encoder(32, len(blocks), 2)
    model.blocks = container(*blocks)
    return model.eval()


def _scaled_norm_block() -> Block:
    block = Block(32, 2, 128)
    block.norm2 = ScaledNorm(32)
    return block


@pytest.mark.parametrize("build, kwargs, why", [
    (lambda: _with_blocks(Block(32, 2, 128), Reordered(32, 2, 128)), {}, "block 1: Reordered overrides Block's"),
    (lambda: _with_blocks(Block(32, 2, 128), nn.Linear(32, 32)), {}, "block 1 is a Linear: only our encoder's"),
    (lambda: _with_blocks(Block(32, 2, 128), _scaled_norm_block()), {}, "block 1's norm2 is a ScaledNorm"),
    (lambda: _with_blocks(Block(32, 2, 128), container=Stack), {}, "Stack is not a plain nn.Sequential"),
    (lambda: _with_blocks(Block(32, 2, 128), Block(32, 2, 128)), {"first_block": "blocks.1"},
     "starts at block 1, not at the first block of blocks"),
    (lambda: _with_blocks(Block(32, 2, 128)), {"fuse_residual": False}, "fuse_residual=False"),
])
def test_chain_is_not_built_where_the_blocks_are_not_known_saying_why(build, kwargs: dict, why: str) -> None:
    model = build()
    blocks = model.blocks
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = model(x)
        report = column_major_stream_(model, **{"first_block": "blocks.0", **kwargs})
        assert model.blocks is blocks and not report["blocks"].changed and why in report["blocks"].what, str(report)
        assert is_streamed(model) and report["blocks.0.norm1"].changed  # the stream itself is kept
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def _chained(model: nn.Module) -> nn.Module:
    report = column_major_stream_(model, "blocks.0")
    assert report["blocks"].changed, str(report)
    return model


def test_chain_of_renamed_blocks_is_built_but_not_of_the_model_itself() -> None:
    assert isinstance(_chained(_with_blocks(Renamed(32, 2, 128), Block(32, 2, 128))).blocks, ResidualChain)
    torch.manual_seed(0)
    model = nn.Sequential(Block(32, 2, 128), Block(32, 2, 128))
    report = column_major_stream_(model, "0")
    assert not report[""].changed and "the model itself" in report[""].what and type(model) is nn.Sequential


def test_refused_stream_changes_nothing_and_a_removed_one_leaves_a_chain_that_computes_the_same(
        entries: list) -> None:
    model = _with_blocks(Block(32, 2, 128), Block(32, 2, 128))
    blocks = model.blocks
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = model(x)
        with pytest.raises(ValueError, match="'blocks.7' is not a submodule"):
            column_major_stream_(model, "blocks.7")
        assert model.blocks is blocks and type(blocks) is nn.Sequential and isinstance(blocks[0].norm2, nn.LayerNorm)
        chain = _chained(model).blocks
        with pytest.raises(ValueError, match="already column-major"):
            column_major_stream_(model, "blocks.0")
        assert model.blocks is chain
        remove_column_major_stream_(model)
        entries.clear()
        out = model(x)
        assert not is_streamed(model) and not entries and out.is_contiguous()  # no entry: row-major in and out
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        report = column_major_stream_(model, "blocks.0")  # streamed again: the chain kept, entering once
        assert model.blocks is chain and "already a ResidualChain" in report["blocks"].what
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        assert len(entries) == 1
    with pytest.raises(ValueError, match="blocks: already a ResidualChain"):
        ResidualChain.from_sequential(chain)


if __name__ == "__main__":  # run by the `interpreted` fixture, with TRITON_INTERPRET=1
    print(json.dumps(_run_cases()))
