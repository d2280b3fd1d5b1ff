"""2:4 training under `torch.distributed`: the digits MLP with `Semi24TrainingLinear` layers on several processes,
under DDP or FSDP2 (`fully_shard`), with the ranks compared every few steps.

DDP: each rank trains on its own shard of every batch; DDP all-reduces the gradients, so the dense weights stay
equal on every rank, and since a 2:4 mask is a function of the weights alone, every rank computes the same mask.
DDP is told not to copy rank 0's buffers at every forward, so equal masks come from that computation and are
checked, not copied from rank 0.

FSDP2: every linear layer is its own `fully_shard` group (then the root), so FSDP all-gathers a layer's whole weight
right before its forward; the layer builds its mask and 2:4 operands from that gathered weight inside the forward
(`Semi24TrainingLinear` keys them on the shard's version), and FSDP reduce-scatters the dense straight-through dW.
Masks are buffers, which FSDP neither shards nor sends: every rank computes its own from the same gathered weight.

The CPU uses the gloo backend (FSDP2 included); CUDA tensors use NCCL, with the same code.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from sparsity_lab.course.data import load_digits
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.training.layer import Semi24TrainingLinear, sparse24_layers
from sparsity_lab.training.masks import masked
from sparsity_lab.training.pair import sparse_pair
from sparsity_lab.training.study import sparsify_hidden

STRATEGIES = ("ddp", "fsdp2")
DEVICES = ("cpu", "cuda")


def check_launch(world_size: int, device: str, strategies: tuple[str, ...] | list[str]) -> None:
    """Refuse, naming the argument, a launch that cannot run (before any process is started)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"{world_size} ranks on CUDA need {world_size} GPUs, found {torch.cuda.device_count()}")


def process_backend(device: str) -> str:
    """The collective backend for `device`: NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device == "cuda" else "gloo"


@contextmanager
def rank_context(rank: int, world_size: int, store: str, device: str) -> Iterator[torch.device]:
    """Join the process group as `rank` and yield this rank's device (GPU `rank` on CUDA), leaving it after."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group(process_backend(device), init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        target = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
        if device == "cuda":
            torch.cuda.set_device(target)
        yield target
    finally:
        dist.destroy_process_group()


def spawn_ranks(worker: Callable[..., None], world_size: int, *args: object) -> list[Any]:
    """Run ``worker(rank, world_size, store, out_dir, *args)`` on `world_size` new processes and return what each
    rank saved with `save_rank` (rank order)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(world_size, os.path.join(tmp, "store"), tmp, *args), nprocs=world_size, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(world_size)]


def save_rank(out_dir: str, rank: int, payload: object) -> None:
    """Hand `payload` to the parent of `spawn_ranks`."""
    torch.save(payload, Path(out_dir) / f"rank{rank}.pt")


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's switch for not copying rank 0's buffers at every forward (renamed in newer PyTorch releases)."""
    import inspect

    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}


def wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """`model` under DDP (buffers not synced) or FSDP2 (each linear layer its own group, then the root), so that
    FSDP gathers a 2:4 layer's whole weight right before its forward; build the optimizer after (FSDP2's DTensors)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "ddp":
        return DistributedDataParallel(model, **_no_buffer_sync())
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in list(model.modules()):
        if module is not model and isinstance(module, (nn.Linear, Semi24TrainingLinear)):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: a sharded DTensor all-gathered (a collective: every rank must call it)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_state(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (full) parameter, and every 2:4 mask, flattened into one CPU vector each (for comparing ranks)."""
    params = torch.cat([full(p).reshape(-1).float().cpu() for p in model.parameters()])
    masks = torch.cat([m.mask.reshape(-1).cpu() for m in sparse24_layers(model).values()])
    return params, masks


def stale_layers(model: nn.Module) -> list[str]:
    """The 2:4 layers whose operands are not W ⊙ mask of the current full weight, or whose dynamic mask is not the
    one computed from it (call it after a forward, before the optimizer step): the operands are read back exactly
    through the backend's own product with the identity, so cuSPARSELt's compressed buffers are checked too."""
    stale = []
    for name, layer in sparse24_layers(model).items():
        weight = full(layer.weight)
        backend = layer.backend()
        multiple = getattr(backend, "TOKENS", 1)  # a row count cuSPARSELt takes: its buffers, not a dense fallback
        rows = -(-layer.in_features // multiple) * multiple
        probe = torch.eye(rows, layer.in_features, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            operand = backend.forward(probe, None)[:layer.in_features].T
        fresh = torch.equal(operand, masked(weight, layer.mask))
        if layer.mask_mode == "dynamic":
            fresh = fresh and torch.equal(layer.mask, sparse_pair(weight, None, layer.transpose)[0])
        if not fresh:
            stale.append(name)
    return stale


@dataclass(frozen=True)
class _Training:
    """One distributed digits run's settings (what `_train` gets on every rank)."""

    strategy: str
    steps: int
    seed: int
    batch_size: int
    lr: float
    device: str
    dtype: torch.dtype
    check_every: int
    layer_kwargs: dict


def _train(rank: int, world_size: int, store: str, out_dir: str, run: _Training) -> None:
    """One rank: train `run.steps` steps under the strategy; at every check step, after the forward, which 2:4
    layers hold stale operands, and after the optimizer step, the full weights and masks; saved for the parent."""
    with rank_context(rank, world_size, store, run.device) as target:
        torch.manual_seed(run.seed)  # the same initial weights on every rank
        model = DigitsMLP().to(target, run.dtype)  # on its device before the swap: backend="cusparselt" needs CUDA
        sparsify_hidden(model, **run.layer_kwargs)
        initial_masks = full_state(model)[1]
        wrapped = wrap(model, run.strategy, target)
        optimizer = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=0.9)
        data = load_digits()
        generator = torch.Generator().manual_seed(run.seed)  # the same batch order on every rank
        losses, snapshots = [], []
        for step in range(1, run.steps + 1):
            batch = torch.randperm(data.x_train.shape[0], generator=generator)[:run.batch_size]
            shard = batch[rank::world_size]  # each rank its own part of the batch
            logits = wrapped(data.x_train[shard].to(target, run.dtype))
            loss = F.cross_entropy(logits.float(), data.y_train[shard].to(target))
            check = step % run.check_every == 0 or step == run.steps
            stale = stale_layers(model) if check else []
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(float(mean) / world_size)
            if check:
                params, masks = full_state(model)
                snapshots.append({"step": step, "params": params, "masks": masks, "stale": stale})
        save_rank(out_dir, rank, {"losses": losses, "snapshots": snapshots,
                                  "flips": int((snapshots[-1]["masks"] != initial_masks).sum())})


def _run(strategy: str, world_size: int, steps: int, seed: int, batch_size: int, lr: float, device: str,
         check_every: int | None, dtype: torch.dtype, layer_kwargs: dict) -> dict[str, object]:
    """Check the arguments, train on `world_size` processes, and compare the ranks at every check."""
    check_launch(world_size, device, (strategy,))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)
                                    or check_every < 1):
        raise ValueError(f"check_every must be None (check after the last step) or an int >= 1, got {check_every!r}")
    if batch_size < world_size:
        raise ValueError(f"batch_size ({batch_size}) must be at least world_size ({world_size}): every rank needs a "
                         "shard of every batch")
    start = time.perf_counter()
    run = _Training(strategy, steps, seed, batch_size, lr, device, dtype, check_every or steps, layer_kwargs)
    ranks = spawn_ranks(_train, world_size, run)
    checks = []
    for i, reference in enumerate(ranks[0]["snapshots"]):
        snaps = [r["snapshots"][i] for r in ranks]
        checks.append({
            "step": reference["step"],
            "weight_entries_differing": [int((s["params"] != reference["params"]).sum()) for s in snaps],
            "mask_entries_differing": [int((s["masks"] != reference["masks"]).sum()) for s in snaps],
            "stale_operands": [f"rank {r}: {name}" for r, s in enumerate(snaps) for name in s["stale"]],
        })
    last = checks[-1]
    return {
        "strategy": strategy,
        "world_size": world_size,
        "backend": process_backend(device),
        "losses": ranks[0]["losses"],
        "checks": checks,  # every check_every steps and after the last: ranks against rank 0, stale operands
        "identical_weights": not any(last["weight_entries_differing"]),
        "identical_masks": not any(last["mask_entries_differing"]),
        "identical_throughout": not any(any(c["weight_entries_differing"]) or any(c["mask_entries_differing"])
                                        for c in checks),
        "fresh_operands": not any(c["stale_operands"] for c in checks),
        "mask_entries_differing": last["mask_entries_differing"],
        "mask_entries_flipped": ranks[0]["flips"],  # how far dynamic masks moved during training (rank 0)
        "seconds": time.perf_counter() - start,
    }


def run_ddp(world_size: int = 2, steps: int = 30, seed: int = 0, batch_size: int = 128, lr: float = 0.1,
            device: str = "cpu", check_every: int | None = None, dtype: torch.dtype = torch.float32,
            **layer_kwargs) -> dict[str, object]:
    """Train the digits MLP with 2:4 layers under DDP on `world_size` processes (gloo on the CPU, NCCL on CUDA) and
    report the loss per step (each rank's shard loss averaged over the ranks: the batch mean when `batch_size`
    divides evenly) and whether every rank held the same weights and masks, every `check_every` steps and at the end,
    with 2:4 operands built from the current weights."""
    return _run("ddp", world_size, steps, seed, batch_size, lr, device, check_every, dtype, layer_kwargs)


def run_fsdp(world_size: int = 2, steps: int = 30, seed: int = 0, batch_size: int = 128, lr: float = 0.1,
             device: str = "cpu", check_every: int | None = None, dtype: torch.dtype = torch.float32,
             **layer_kwargs) -> dict[str, object]:
    """`run_ddp` under FSDP2 (`fully_shard`, each linear layer its own group) instead of DDP: the weights are
    compared all-gathered, the masks and operands as each rank built them from the gathered weights."""
    return _run("fsdp2", world_size, steps, seed, batch_size, lr, device, check_every, dtype, layer_kwargs)
