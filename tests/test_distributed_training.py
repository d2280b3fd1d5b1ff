"""2:4 training under DDP and FSDP2: ranks stay identical, operands follow the (sharded) weights, the loss falls, the
distributed benchmark runs; gloo on the CPU, NCCL with cuSPARSELt on GPUs."""

import json
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
from torch import nn

from sparsity_lab.course import cli
from sparsity_lab.training import distributed_bench
from sparsity_lab.training.distributed import check_launch, run_ddp, run_fsdp, stale_layers, wrap
from sparsity_lab.training.layer import Semi24TrainingLinear

STEPS = 30  # enough for the loss to fall well below its start (about 0.43x over the last five steps on digits)
RUNS = {"ddp": run_ddp, "fsdp2": run_fsdp}


def _learned(losses: list[float]) -> bool:
    return sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.fixture(scope="module")
def fsdp_gloo() -> dict:
    return run_fsdp(world_size=2, steps=STEPS, check_every=10)


@pytest.mark.slow
def test_fsdp2_on_gloo_keeps_ranks_identical_and_learns(fsdp_gloo):
    result = fsdp_gloo
    assert (result["strategy"], result["backend"], result["world_size"]) == ("fsdp2", "gloo", 2)
    assert [c["step"] for c in result["checks"]] == [10, 20, 30]
    assert result["identical_throughout"] and result["identical_weights"] and result["identical_masks"]
    assert result["fresh_operands"]  # every check: operands are W ⊙ mask of the gathered weight, masks its own
    assert result["mask_entries_flipped"] > 0  # the masks really moved, identically on both ranks
    assert _learned(result["losses"])


@pytest.mark.slow
def test_check_every_checks_ddp_on_those_steps_and_fsdp2_follows_ddps_losses(fsdp_gloo):
    result = run_ddp(world_size=2, steps=7, check_every=3)
    assert [c["step"] for c in result["checks"]] == [3, 6, 7]  # every third step, and after the last
    for check in result["checks"]:
        assert check["weight_entries_differing"] == check["mask_entries_differing"] == [0, 0]
        assert check["stale_operands"] == []
    # the same seed and batches: FSDP2's reduce-scattered gradients train as DDP's all-reduced ones
    assert result["losses"] == pytest.approx(fsdp_gloo["losses"][:7], rel=1e-5)


@contextmanager
def _one_rank(tmp_path):
    """A gloo process group of this process alone (no spawn)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("foreach", [False, True])  # True: the step writes the shards' local tensors (CUDA's default)
def test_under_fully_shard_operands_follow_every_all_gather(tmp_path, foreach):
    torch.manual_seed(0)
    model = nn.Sequential(Semi24TrainingLinear(16, 32), nn.ReLU(), Semi24TrainingLinear(32, 8))
    layer = model[0]
    with _one_rank(tmp_path):
        wrap(model, "fsdp2", torch.device("cpu"))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, foreach=foreach)
        assert type(layer.weight).__name__ == "DTensor"  # sharded between forwards
        for step in range(3):
            for micro in range(2):  # gradient accumulation: FSDP all-gathers the weight for every forward
                out = model(torch.randn(8, 16, generator=torch.Generator().manual_seed(2 * step + micro)))
                assert stale_layers(model) == []
                out.pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            assert layer.backend().loads == 2 * (step + 1)  # operands from each all-gather: one per forward


def test_stale_layers_flags_a_weight_written_behind_the_layers_back():
    model = nn.Sequential(Semi24TrainingLinear(16, 16), nn.ReLU(), Semi24TrainingLinear(16, 8))
    model(torch.randn(4, 16))
    assert stale_layers(model) == []
    with torch.no_grad():
        model[2].weight.data.mul_(2)  # through .data: the version counter, hence the layer, does not see it
    assert stale_layers(model) == ["2"]


def test_bad_launches_name_the_argument(capsys):
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        run_fsdp(world_size=0)
    with pytest.raises(ValueError, match="device must be one of"):
        run_ddp(device="tpu")
    with pytest.raises(ValueError, match="strategy must be one of"):
        check_launch(1, "cpu", ["zero3"])
    with pytest.raises(ValueError, match="strategy must be one of"):
        wrap(nn.Linear(4, 4), "zero3", torch.device("cpu"))
    with pytest.raises(ValueError, match="check_every must be None"):
        run_ddp(check_every=0)
    with pytest.raises(ValueError, match=r"batch_size \(2\) must be at least world_size \(4\)"):
        run_fsdp(world_size=4, batch_size=2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        run_fsdp(steps=0)
    with pytest.raises(ValueError, match="tokens must be >= 1"):
        distributed_bench.measure(["ddp"], 1, "cpu", 32, 64, [0], [torch.float32])
    for argv, named in ((["--strategy", "ddp,zero3"], "--strategy"), (["--tokens", "8,x"], "--tokens"),
                        (["--dtypes", "float8"], "--dtypes"), (["--device", "cpu", "--world-size", "0"],
                                                               "--world-size")):
        with pytest.raises(SystemExit) as exit_info:
            distributed_bench.main(argv)
        assert exit_info.value.code == 2
        assert f"argument {named}" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_distributed_runs_both_strategies_on_gloo(tmp_path):
    out = tmp_path / "distributed.json"
    argv = ["bench", "distributed", "--device", "cpu", "--strategy", "ddp,fsdp2", "--world-size", "2",
            "--trials", "1", "--calls", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert {"device", "torch", "date"} <= set(results["environment"])
    figures = results["figures"]
    assert figures["config"]["world_size"] == 2 and figures["config"]["process_backend"] == "gloo"
    assert figures["all_correct"]
    rows = figures["rows"]
    assert {(r["strategy"], r["variant"]) for r in rows} == {(s, v) for s in ("ddp", "fsdp2")
                                                             for v in distributed_bench.VARIANTS}
    for row in rows:
        assert len(row["ms_per_rank"]) == 2 and row["ms"] == max(row["ms_per_rank"])
        assert row["tokens_per_s_per_gpu"] == pytest.approx(row["tokens_per_gpu"] * 1e3 / row["ms"])
        assert row["identical_masks"] and row["stale_operands"] == []
    assert all(r["speedup"] == 1.0 for r in rows if r["variant"] == "dense")


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_gpus_on_nccl_with_cusparselt(strategy):
    result = RUNS[strategy](world_size=2, steps=STEPS, device="cuda", dtype=torch.float16, backend="cusparselt",
                            check_every=10)
    assert result["backend"] == "nccl" and result["identical_throughout"] and result["fresh_operands"]
    assert _learned(result["losses"])


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_one_gpu_world_size_1_on_nccl_with_cusparselt(strategy):
    result = RUNS[strategy](world_size=1, steps=STEPS, device="cuda", dtype=torch.float16, backend="cusparselt",
                            check_every=10)
    assert (result["backend"], result["world_size"]) == ("nccl", 1)
    assert result["fresh_operands"] and result["mask_entries_flipped"] > 0
    assert _learned(result["losses"])
