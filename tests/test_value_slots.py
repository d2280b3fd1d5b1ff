"""Value slots: learning where a compressor keeps each kept value, on our own CPU compressor (CUTLASS layout) and on
compressors that do not qualify; the cuSPARSELt use is tested on the GPU in test_sparse_training.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsity_lab import semi24
from sparsity_lab.sparse_training import transposable_mask
from sparsity_lab.value_slots import ValueSlotsError, learn


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
