"""Value slots: learning where a compressor keeps each kept value, on our own CPU compressor (CUTLASS layout) and on
compressors that do not qualify; the cuSPARSELt use is tested on the GPU in test_sparse_training.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsity_lab.semi24 import layout as semi24
from sparsity_lab.semi24.value_slots import ValueSlotsError, learn
from sparsity_lab.training.masks import transposable_mask


def cutlass_buffer(dense: torch.Tensor) -> torch.Tensor:
    """Our compressor's values and metadata as one byte buffer, the shape of an opaque compressed weight."""
    values, meta = semi24.compress(dense, "cutlass")
    return torch.cat([values.reshape(-1).view(torch.uint8), meta.reshape(-1).view(torch.uint8)])


def split_buffer(dense: torch.Tensor) -> torch.Tensor:
    """Half the values (reversed), the metadata, then the other half: the slots are not one run."""
    values, meta = semi24.compress(dense, "cutlass")
    first, second = values.reshape(-1).flip(0).view(torch.uint8).chunk(2)
    return torch.cat([first, meta.reshape(-1).view(torch.uint8), second])


def weight_and_mask(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return weight, transposable_mask(weight)


def masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype))


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 4), cols=st.integers(1, 4), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**16))
def test_writing_through_learnt_slots_gives_the_compressors_bytes(rows, cols, dtype, seed):
    weight, mask = weight_and_mask(32 * rows, 32 * cols, dtype, seed)
    slots = learn(cutlass_buffer, mask, dtype)
    assert slots.offset == 0 and slots.slots is None  # values first, in one run
    buffer = cutlass_buffer(masked(torch.ones_like(weight), mask))
    slots.write(buffer, weight)  # the full weight: only kept entries are read
    assert torch.equal(buffer, cutlass_buffer(masked(weight, mask)))


def test_slots_that_are_not_one_run_are_scattered():
    weight, mask = weight_and_mask(32, 64, torch.float16)
    slots = learn(split_buffer, mask, torch.float16)
    assert slots.offset is None and slots.slots is not None
    buffer = split_buffer(masked(torch.ones_like(weight), mask))
    slots.write(buffer, weight)
    assert torch.equal(buffer, split_buffer(masked(weight, mask)))


def test_slots_learnt_on_the_transpose_can_read_the_weight_itself():
    weight, mask = weight_and_mask(32, 64, torch.float16)
    index = torch.arange(weight.numel()).reshape(weight.shape)
    slots = learn(cutlass_buffer, mask.T.contiguous(), torch.float16).remap_sources(index.T)
    buffer = cutlass_buffer(masked(torch.ones_like(weight), mask).T.contiguous())
    slots.write(buffer, weight)  # reads W, writes the buffer of W_sᵀ
    assert torch.equal(buffer, cutlass_buffer(masked(weight, mask).T.contiguous()))


def test_digits_cover_indices_past_one_digit():
    # 64 x 64 = 4096 entries > 128: bfloat16 needs two digits of its base
    weight, mask = weight_and_mask(64, 64, torch.bfloat16, seed=3)
    slots = learn(cutlass_buffer, mask, torch.bfloat16)
    assert int(slots.sources.max()) > 128
    assert torch.equal(torch.sort(slots.sources.long()).values, mask.reshape(-1).nonzero().squeeze(1))


@pytest.mark.parametrize("compressor, message", [
    (lambda d: cutlass_buffer(d * 2), "value slots"),  # values scaled: not a permutation
    (lambda d: torch.cat([cutlass_buffer(d), d.abs().amax().reshape(1).view(torch.uint8)]), "value slots"),
    # a flag set by the second digit's probe only (its largest kept value is 4 for 64 x 64 entries)
    (lambda d: torch.cat([cutlass_buffer(d), (d.amax() == 4).to(torch.int16).reshape(1).view(torch.uint8)]),
     "non-value bytes"),
    (lambda d: cutlass_buffer(d)[:-1], "float16 elements"),
])
def test_compressors_that_are_not_a_fixed_permutation_are_refused(compressor, message):
    _, mask = weight_and_mask(64, 64, torch.float16)
    with pytest.raises(ValueSlotsError, match=message):
        learn(compressor, mask, torch.float16)


def test_bad_masks_and_dtypes_say_what_is_wrong():
    _, mask = weight_and_mask(16, 16, torch.float16)
    broken = mask.clone()
    broken[3, 4:8] = True
    with pytest.raises(ValueError, match=r"row 3, group 1 \(columns 4..7\) keeps 4"):
        learn(cutlass_buffer, broken, torch.float16)
    with pytest.raises(ValueError, match="bool"):
        learn(cutlass_buffer, mask.float(), torch.float16)
    with pytest.raises(TypeError, match="float32"):
        learn(cutlass_buffer, mask, torch.float32)


# ------------------------------------------------------------------ the cuSPARSELt backend's fixed-mask path, on a
# CPU stand-in for Semi24Weight whose buffer is our CUTLASS values + metadata (metadata from the non-zeros)
class FakeSemi24Weight:
    compress_calls = 0

    def __init__(self, dense: torch.Tensor) -> None:
        self.shape, self.dtype = tuple(dense.shape), dense.dtype
        self.compressed = cutlass_buffer(dense)

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> "FakeSemi24Weight":
        return cls(dense)

    def recompress(self, dense: torch.Tensor) -> None:
        FakeSemi24Weight.compress_calls += 1
        self.compressed.copy_(cutlass_buffer(dense))

    def dense(self) -> torch.Tensor:
        n, k = self.shape
        values_bytes = n * k  # 2-byte values, half the entries
        values = self.compressed[:values_bytes].view(self.dtype).reshape(n, k // 2)
        meta = self.compressed[values_bytes:].view(semi24.meta_dtype(self.dtype)).reshape(n, -1)
        return semi24.decompress(values, meta)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = x.float() @ self.dense().float().T
        return (y if bias is None else y + bias.float()).to(x.dtype)

    def learn_value_slots(self, mask: torch.Tensor):
        def compress(dense):
            self.recompress(dense)
            return self.compressed

        return learn(compress, mask, self.dtype)


@pytest.fixture
def fake_backend_layer(monkeypatch):
    from sparsity_lab.semi24 import cusparselt
    from sparsity_lab.training.layer import CusparseltBackend, Semi24TrainingLinear

    monkeypatch.setattr(cusparselt, "Semi24Weight", FakeSemi24Weight)

    def make(seed: int = 0) -> Semi24TrainingLinear:
        torch.manual_seed(seed)
        layer = Semi24TrainingLinear(64, 128, mask="fixed", backend="dense", dtype=torch.float16)
        layer._backend, layer._backend_key = CusparseltBackend(), (layer.weight.device, layer.weight.dtype)
        return layer

    return make


def expected(layer, x):
    return (x.float() @ layer.sparse_weight().float().T + layer.bias.float()).to(x.dtype)


def test_fixed_mask_steps_gather_instead_of_compressing(fake_backend_layer):
    layer = fake_backend_layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(16, 64, dtype=torch.float16))  # learns the slots (a few compress calls)
    calls = FakeSemi24Weight.compress_calls
    for _ in range(3):
        layer(torch.randn(16, 64, dtype=torch.float16)).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    x = torch.randn(16, 64, dtype=torch.float16)
    assert torch.equal(layer(x), expected(layer, x))
    assert FakeSemi24Weight.compress_calls == calls  # three weight updates, no compression
    backend = layer.backend()
    assert torch.equal(backend.forward_weight.compressed, cutlass_buffer(layer.sparse_weight()))
    assert torch.equal(backend.backward_weight.compressed, cutlass_buffer(layer.sparse_weight().T.contiguous()))


def test_a_new_mask_is_learnt_and_a_sparser_one_is_compressed(fake_backend_layer):
    layer = fake_backend_layer()
    x = torch.randn(16, 64, dtype=torch.float16)
    layer(x)
    with torch.no_grad():
        layer.mask.copy_(transposable_mask(torch.randn(128, 64)))  # in place: the layer sees the new version
    assert torch.equal(layer(x), expected(layer, x))
    with torch.no_grad():
        layer.mask[:4] = False  # still transposable, but 0 of 4 in some groups: slots need exactly 2 of 4
    assert torch.equal(layer(x), expected(layer, x))
    assert layer.backend().slots_error is None


def test_a_compressor_without_fixed_slots_falls_back_with_a_warning(fake_backend_layer, monkeypatch):
    layer = fake_backend_layer()
    monkeypatch.setattr(FakeSemi24Weight, "learn_value_slots", lambda self, mask: learn(
        lambda d: cutlass_buffer(d * 2), mask, self.dtype))
    x = torch.randn(16, 64, dtype=torch.float16)
    with pytest.warns(UserWarning, match="falls back to cuSPARSELt's compress"):
        y = layer(x)
    assert torch.equal(y, expected(layer, x)) and "value slots" in layer.backend().slots_error


def test_nan_looking_metadata_is_not_taken_for_a_value():
    _, mask = weight_and_mask(32, 32, torch.float16)
    nan_padding = torch.full((2,), 0xFF, dtype=torch.uint8)  # reads as NaN in float16 and never equals itself
    slots = learn(lambda d: torch.cat([cutlass_buffer(d), nan_padding]), mask, torch.float16)
    assert slots.sources.numel() == mask.sum()
