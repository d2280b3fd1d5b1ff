"""Lecture 03's figures carry their data; the format explorer redraws the matrix and its arrays from its controls."""

import pytest
import torch

from sparsity_lab.formats import plots
from sparsity_lab.formats.matrices import BSR, COO, CSR, random_sparse, storage_sweep

MATRIX = torch.tensor([[1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])


def _formats(dense: torch.Tensor, blocksize=(2, 2)):
    return COO.from_dense(dense), CSR.from_dense(dense), BSR.from_dense(dense, blocksize)


def _arrays(table) -> list[list]:
    """The table's columns, one entry per array: a long array's continuation rows (empty but for the contents)
    joined back, and the no-break spaces that keep plotly from drawing a cell blank read as spaces."""
    columns = [[], [], [], [], [], []]
    for row in zip(*table.cells.values, strict=True):
        row = [v.replace(plots.NBSP, " ") if isinstance(v, str) else v for v in row]
        if row[1] == "":
            columns[5][-1] += " " + row[5]
        else:
            for column, value in zip(columns, row, strict=True):
                column.append(value)
    return columns


def test_arrays_figure_draws_the_stored_values_and_every_array_with_its_bytes():
    coo, csr, bsr = _formats(MATRIX)
    fig = plots.format_arrays_figure(coo, csr, bsr)
    heatmap, table = fig.data
    assert heatmap.z[0][0] == 1.5 and heatmap.z[1][3] == -2.0 and heatmap.z[0][1] is None
    assert sum(v is not None for row in heatmap.z for v in row) == csr.nnz == 3
    assert not any(" " in str(v) for column in table.cells.values for v in column), "plotly draws those blank"
    assert max(len(v) for v in table.cells.values[5]) <= plots.CONTENTS_WIDTH
    formats, arrays, dtypes, lengths, nbytes, contents = _arrays(table)
    assert list(arrays[3:6]) == ["crow_indices", "col_indices", "values"] and formats[6] == "BSR 2x2"
    assert list(contents[3:6]) == ["[0, 1, 2, 2, 3]", "[0, 3, 1]", "[1.50, -2.00, 3.00]"]
    assert contents[8] == "[[[1.50 0.00], [0.00 0.00]], [[0.00 0.00], [0.00 -2.00]], [[0.00 0.00], [0.00 3.00]]]"
    assert sum(nbytes[:3]) == coo.nbytes and sum(nbytes[3:6]) == csr.nbytes and sum(nbytes[6:]) == bsr.nbytes
    assert list(lengths[6:]) == [3, 3, 3] and dtypes[0] == "int64"
    assert len(fig.layout.shapes) == bsr.n_blocks == 3, "one box per stored block"
    assert f"CSR {csr.nbytes}" in fig.layout.title.text
    with pytest.raises(ValueError, match="must hold one matrix"):
        plots.format_arrays_figure(coo, csr, BSR.from_dense(torch.eye(2), (1, 1)))


def test_arrays_figure_truncates_long_arrays_and_writes_integers_plainly():
    dense = random_sparse((8, 8), 0.0, seed=0, dtype=torch.int8)
    fig = plots.format_arrays_figure(*_formats(dense), limit=5)
    contents = _arrays(fig.data[1])[5]
    assert contents[2].endswith(", …]") and contents[2].count(",") == 5 and "." not in contents[2]


def test_bytes_chart_has_a_line_per_format_and_dense_as_the_baseline():
    rows = storage_sweep((16, 16), (0.5, 0.9), blocksize=(4, 4))
    fig = plots.bytes_chart(rows, caption="float32, int64 indices")
    assert [t.name for t in fig.data] == ["COO", "CSR", "BSR, unstructured mask", "BSR, block mask", "dense"]
    csr = [r["nbytes"] for r in rows if r["format"] == "csr" and r["pattern"] == "unstructured"]
    assert list(fig.data[1].y) == csr and list(fig.data[1].x) == ["50%", "90%"]
    assert list(fig.data[-1].y) == [1024, 1024] and fig.layout.yaxis.type == "log"
    assert "float32, int64 indices" in fig.layout.title.text
    with pytest.raises(ValueError, match="at least one measurement"):
        plots.bytes_chart([])


ROWS = [{"sparsity": s, "method": m, "ms": ms}
        for s, values in ((0.9, {"dense": 10.0, "a": 20.0, "b": 8.0}), (0.99, {"dense": 10.0, "a": 5.0, "b": 1.0}),
                          (0.995, {"dense": 10.0, "a": 4.0, "b": 0.5}))
        for m, ms in values.items()]
CROSSOVER = {"a": {"sparsity": 0.99, "stays_faster": True}, "b": {"sparsity": 0.9, "stays_faster": True}}


def test_crossover_chart_marks_where_each_method_beats_dense():
    fig = plots.crossover_chart(ROWS, {"dense": "dense (torch.mm)", "a": "A"}, CROSSOVER, caption="recorded on X")
    lines = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in lines] == ["dense (torch.mm)", "A — beats dense from 99%", "b — beats dense from 90%"]
    assert lines[0].line.dash == "dash" and list(lines[1].y) == [20.0, 5.0, 4.0]
    assert list(lines[1].x) == ["90%", "99%", "99.5%"]
    stars = [t for t in fig.data if t.showlegend is False]
    assert [(t.x[0], t.y[0]) for t in stars] == [("99%", 5.0), ("90%", 8.0)]
    assert stars[0].marker.color == lines[1].line.color and stars[0].marker.symbol == "star"
    assert fig.layout.yaxis.type == "log" and "recorded on X" in fig.layout.title.text
    never = plots.crossover_chart(ROWS, crossover={"a": {"sparsity": None}})
    assert [t.name for t in never.data][1] == "a — never beats dense"
    with pytest.raises(ValueError, match="'dense' baseline"):
        plots.crossover_chart([r for r in ROWS if r["method"] != "dense"])


def test_crossover_chart_draws_the_recorded_benchmark():
    from sparsity_lab.course.results import load_results

    recorded = load_results("formats_cpu")
    figures = recorded.figures
    fig = plots.crossover_chart(figures["rows"], figures["labels"], figures["crossover"], caption=recorded.label)
    ours = next(t for t in fig.data if t.name.startswith(figures["labels"]["ours_csr"]))
    expected = [r["ms"] for r in figures["rows"] if r["method"] == "ours_csr"]
    assert list(ours.y) == expected and recorded.label in fig.layout.title.text


def test_explorer_redraws_from_its_controls():
    from sparsity_lab.formats.widgets import build_formats, format_explorer

    box = format_explorer(shape=(8, 8), sparsity=0.5)
    (sparsity, seed), (blocksize, pattern), (dtype, index_dtype) = (row.children for row in box.children[:3])
    figure = box.children[4]

    def stored() -> int:
        return sum(v is not None for row in figure.data[0].z for v in row)

    assert stored() == 32
    sparsity.value = 0.75
    assert stored() == 16 and "16 stored (75% sparse)" in figure.layout.title.text
    blocksize.value, pattern.value = (4, 4), "blocks"
    assert stored() == 16 and len(figure.layout.shapes) == 1, "75% of four 4x4 blocks: one stored block"
    dtype.value, index_dtype.value = "int8", "int32"
    assert list(figure.data[1].cells.values[2][:3]) == ["int32", "int32", "int8"]
    seed.value = 3
    assert stored() == 16
    with pytest.raises(ValueError, match="pattern must be 'unstructured' or 'blocks'"):
        build_formats((4, 4), 0.5, 0, (2, 2), "rows")
