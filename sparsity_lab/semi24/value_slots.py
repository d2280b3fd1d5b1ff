"""Where an opaque 2:4 compressor puts each kept value, learnt by compressing probes, so that a weight with a fixed
mask can be re-compressed by one gather instead of a call to the compressor.

Why: 2:4 training with a fixed mask changes the kept values every step but never the pattern, so the compressed
buffer's metadata never changes and its values are a fixed permutation of the kept entries. cuSPARSELt does not
document its buffer layout and its compress costs ~80 us per call for a 4096 x 1024 weight (H200); a gather of
the same values is a copy.

How (`learn`): compress the mask with every kept entry set to -1, then with kept entries set to the digits
(base `DIGIT_BASE[dtype]`, plus one: exact and non-zero in the dtype) of their flat index. Buffer elements that
differ between the two are value slots, the digits read back from them say whose value each slot holds, and
everything else (metadata, padding) is the same in every probe. The result is checked before it is used: every
kept entry has exactly one slot, and writing a random weight through the slots gives the compressor's own bytes,
bit for bit. A compressor whose layout is not a fixed permutation fails that check with `ValueSlotsError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Digits that the dtype holds exactly as integers (after adding one): 11 significant bits for float16, 8 for bfloat16.
# Both are 16-bit types, so buffers are compared as int16 bit patterns.
DIGIT_BASE = {torch.float16: 1024, torch.bfloat16: 128}


class ValueSlotsError(RuntimeError):
    """The compressor's buffer is not a fixed permutation of the kept values plus mask-only bytes."""


@dataclass
class ValueSlots:
    """Slot `slots[i]` of the buffer (read as the weight's dtype) holds flat entry `sources[i]` of the dense weight.
    `offset` is set when the slots are one contiguous run (`slots` is then None): the gather writes in place."""

    sources: torch.Tensor
    slots: torch.Tensor | None
    offset: int | None
    dtype: torch.dtype

    def write(self, buffer: torch.Tensor, dense: torch.Tensor) -> None:
        """Write the kept values of `dense` (any tensor whose flat entries `sources` index) into `buffer`."""
        flat = dense.reshape(-1)
        values = buffer.view(self.dtype)
        if self.offset is not None:
            torch.index_select(flat, 0, self.sources, out=values[self.offset:self.offset + self.sources.numel()])
        else:
            values.index_copy_(0, self.slots, flat.index_select(0, self.sources))

    def remap_sources(self, index: torch.Tensor) -> ValueSlots:
        """The same slots reading `index[sources]` instead: e.g. slots learnt on Wᵀ made to read from W."""
        return ValueSlots(index.reshape(-1)[self.sources.long()].to(self.sources.dtype), self.slots, self.offset,
                          self.dtype)


def _probe(mask: torch.Tensor, kept: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(mask, kept.to(dtype), torch.zeros((), dtype=dtype, device=mask.device))


def learn(compress: Callable[[torch.Tensor], torch.Tensor], mask: torch.Tensor, dtype: torch.dtype) -> ValueSlots:
    """The value slots of `compress` (dense 2:4 tensor of `dtype` -> its compressed buffer, uint8) for `mask`
    (bool, exactly two kept in every group of four along the rows). Runs the compressor 3-5 times."""
    if dtype not in DIGIT_BASE:
        raise TypeError(f"value slots are learnt for {tuple(DIGIT_BASE)}, not {dtype}")
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] % 4:
        raise ValueError(f"mask must be a 2-D bool tensor with a multiple of 4 columns, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    per_group = mask.reshape(mask.shape[0], -1, 4).sum(-1)
    if not bool((per_group == 2).all()):
        row, group = (per_group != 2).nonzero()[0].tolist()
        raise ValueError(f"mask must keep exactly 2 of every 4: row {row}, group {group} (columns "
                         f"{4 * group}..{4 * group + 3}) keeps {int(per_group[row, group])}")
    base, numel = DIGIT_BASE[dtype], mask.numel()
    digits = 1
    while base ** digits < numel:
        digits += 1
    flat_index = torch.arange(numel, device=mask.device).reshape(mask.shape)

    def compressed(kept: torch.Tensor) -> torch.Tensor:
        """The probe's buffer as 16-bit words: compared as bit patterns (metadata may read as NaN in `dtype`)."""
        buffer = compress(_probe(mask, kept, dtype))
        if buffer.numel() % dtype.itemsize:
            raise ValueSlotsError(f"a compressed buffer of {buffer.numel()} bytes is not made of {dtype} elements")
        return buffer.view(torch.int16).clone()

    negative = compressed(torch.full(mask.shape, -1.0, device=mask.device))
    probes = [compressed(flat_index // base ** d % base + 1) for d in range(digits)]
    is_slot = negative != probes[0]
    slots = is_slot.nonzero().squeeze(1)
    kept = mask.reshape(-1).nonzero().squeeze(1)
    if slots.numel() != kept.numel() or not bool((negative[slots].view(dtype) == -1).all()):
        raise ValueSlotsError(f"found {slots.numel()} value slots for {kept.numel()} kept values")
    if any(not torch.equal(p[~is_slot], negative[~is_slot]) for p in probes):
        raise ValueSlotsError("the buffer's non-value bytes depend on the values, not only on the mask")
    sources = sum((p[slots].view(dtype).long() - 1) * base ** d for d, p in enumerate(probes))
    if not torch.equal(torch.sort(sources).values, kept):
        raise ValueSlotsError("the value slots do not hold each kept entry exactly once")
    index_dtype = torch.int32 if numel < 2 ** 31 else torch.int64
    contiguous = torch.equal(slots, torch.arange(int(slots[0]), int(slots[0]) + slots.numel(), device=slots.device))
    result = ValueSlots(sources.to(index_dtype), None if contiguous else slots, int(slots[0]) if contiguous else None,
                        dtype)
    _verify(compress, result, mask, dtype)
    return result


def _verify(compress: Callable[[torch.Tensor], torch.Tensor], slots: ValueSlots, mask: torch.Tensor,
            dtype: torch.dtype) -> None:
    """Writing a random weight through `slots` over another weight's buffer gives the compressor's bytes."""
    generator = torch.Generator(device=mask.device).manual_seed(0)
    magnitude = torch.rand(mask.shape, generator=generator, device=mask.device) + 0.5
    sign = torch.randint(0, 2, mask.shape, generator=generator, device=mask.device) * 2 - 1
    weight = _probe(mask, magnitude * sign, dtype)
    expected = compress(weight).clone()
    buffer = compress(_probe(mask, torch.ones(mask.shape, device=mask.device), dtype))
    slots.write(buffer, weight)
    if not torch.equal(buffer, expected):
        raise ValueSlotsError("a weight written through the learnt slots differs from the compressor's own bytes")
