"""2:4 figures carry the data they draw; the explorer widget follows its controls."""

import torch

from sparsity_lab.semi24 import layout as semi24
from sparsity_lab.semi24 import plots


def test_groups_heatmap_shows_mask_values_and_group_borders():
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5, 4.0, 0.0, 0.0, 1.0]])
    mask = semi24.prune(weight)
    fig = plots.groups_heatmap(weight, mask)
    assert [list(r) for r in fig.data[0].z] == [[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]]
    assert list(fig.data[0].text[0]) == ["1", "-2", "3", "0.5", "4", "0", "0", "1"]
    assert [s.x0 for s in fig.layout.shapes] == [3.5]


def test_simple_meta_bits_spell_the_bytes_msb_first():
    dense = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4, 0, 0, 5, 6]])
    _, meta = semi24.compress(dense, "simple")
    fig = plots.simple_meta_bits(meta, groups=3)
    text = "".join(fig.data[0].text[0])
    assert text == format(int(meta[0, 0]), "08b") + format(int(meta[0, 1]), "08b") == "1101100000001110"
    assert list(fig.data[0].x[:4]) == ["g1 i1 b1", "g1 i1 b0", "g1 i0 b1", "g1 i0 b0"]
    assert list(fig.data[0].x[8:12]) == ["pad b7", "pad b6", "pad b5", "pad b4"] and fig.data[0].x[-1] == "g2 i0 b0"
    assert len(set(fig.data[0].x)) == 16


def test_cutlass_storage_draws_the_reordering():
    fig = plots.cutlass_storage(32, 2, torch.int16)
    assert list(fig.data[0].text[0]) == ["r0 w0", "r8 w0", "r0 w1", "r8 w1", "r16 w0", "r24 w0", "r16 w1", "r24 w1"]
    assert len(fig.data[0].z) == 32 * 2 // 8
    fig = plots.cutlass_storage(16, 2, torch.int32)
    assert list(fig.data[0].text[0]) == ["r0 w0", "r8 w0", "r0 w1", "r8 w1"]
    assert list(fig.data[0].text[1]) == ["r1 w0", "r9 w0", "r1 w1", "r9 w1"]


def test_cutlass_storage_hover_shows_the_stored_bits():
    dense = torch.zeros(32, 32, dtype=torch.float16)
    dense[8, 4] = 1.0  # row 8, group 1 keeps (0, 2): word (8, 0) = 0b1110_1110_1000_1110, stored at offset 1
    values, meta = semi24.compress(dense)
    fig = plots.cutlass_storage(32, 2, torch.int16, meta)
    assert fig.data[0].customdata[0][1] == "1110111010001110"
    assert fig.data[0].customdata[0][0] == "1110111011101110"


def test_memory_bars_stack_metadata_on_values():
    rows = [semi24.footprint(torch.zeros(32, 64, dtype=d), layout) for d in (torch.float16, torch.int8)
            for layout in semi24.LAYOUTS]
    fig = plots.memory_bars(rows)
    dense, values, meta = fig.data
    assert list(dense.y) == [4096, 4096, 2048, 2048]
    assert list(values.y) == [2048, 2048, 1024, 1024]
    assert list(meta.y) == [256, 256, 256, 256] and list(meta.base) == list(values.y)
    assert list(meta.text) == ["56.2%", "56.2%", "62.5%", "62.5%"]


def test_explorer_follows_dtype_and_seed():
    from sparsity_lab.semi24.widgets import compressor_explorer

    box = compressor_explorer(seed=0, show_rows=4)
    (dtype_box, seed_box), status, _, groups, simple, cutlass = box.children[0].children, *box.children[1:]
    assert "float16" in status.value and "torch.int16 (32, 2)" in status.value and "<b>True</b>" in status.value
    assert len(groups.data[0].z) == 4 and len(simple.data[0].z) == 4
    dtype_box.value = "int8"
    assert "torch.int32 (16, 2)" in status.value and len(cutlass.data[0].z) == 16 * 2 // 4
    dtype_box.value = "float32"
    assert "1:2" in groups.layout.title.text and "torch.int16 (32, 4)" in status.value
    before = status.value
    seed_box.value = 3
    assert status.value != before
