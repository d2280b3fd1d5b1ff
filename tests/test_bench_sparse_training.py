"""The 2:4 training benchmark on the CPU (dense reference backend): it runs end to end, checks both 2:4 blocks, and
each timed step of the training variants redoes the per-update work that the recorded GPU numbers claim to include."""

import json

import torch

from sparsity_lab.training import bench


def test_cpu_run_writes_checked_rows_for_every_variant(tmp_path):
    out = tmp_path / "st.json"
    assert bench.main(["--device", "cpu", "--trials", "2", "--calls", "1", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert {r["variant"] for r in figures["rows"]} == set(bench.VARIANTS)
    (check,) = figures["checks"]
    assert check["correct"] and {"y", "fixed mask y", "fixed mask grad_fc2.weight"} <= set(check["errors"])


def test_training_variants_redo_their_per_update_work_every_step():
    blocks = bench._blocks(32, 64, torch.float32, torch.device("cpu"))
    x = torch.randn(16, 32, requires_grad=True)
    grad = torch.randn(16, 32)
    for variant, loads_per_step in (("dynamic", 1), ("fixed mask", 1), ("kernels only", 0)):
        layer = blocks[variant].fc1
        step = bench._step(blocks[variant], variant, x, grad)
        step()
        before = layer.backend().loads
        for _ in range(3):
            step()
        assert layer.backend().loads - before == 3 * loads_per_step, variant


def test_ceiling_sums_the_parts_both_blocks_run():
    parts = [{"dtype": "float16", "tokens": 8, "part": "y", "dense_ms": 3.0, "sparse_ms": 2.0},
             {"dtype": "float16", "tokens": 8, "part": "mask", "dense_ms": None, "sparse_ms": 5.0},
             {"dtype": "float16", "tokens": 8, "part": "gelu", "dense_ms": 1.0, "sparse_ms": 1.0},
             {"dtype": "float16", "tokens": 16, "part": "y", "dense_ms": 4.0, "sparse_ms": 2.0}]
    first, second = bench.ceilings(parts)
    assert (first["tokens"], first["dense_ms"], first["sparse_ms"], first["ceiling"]) == (8, 4.0, 3.0, 4 / 3)
    assert (second["tokens"], second["ceiling"]) == (16, 2.0)
