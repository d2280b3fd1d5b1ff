"""2:4 training under `torch.distributed` DDP: the digits MLP with `Semi24TrainingLinear` layers on several processes.

Each rank trains on its own shard of every batch; DDP all-reduces the gradients, so the dense weights stay equal
on every rank, and since a 2:4 mask is a function of the weights alone, every rank computes the same mask. DDP is
told not to copy rank 0's buffers at every forward, so equal masks come from that computation and are checked,
not copied from rank 0. The CPU uses the gloo backend; CUDA tensors use NCCL, with the same code.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from sparsity_lab.course.data import load_digits
from sparsity_lab.course.models import DigitsMLP
from sparsity_lab.training.layer import sparse24_layers
from sparsity_lab.training.study import sparsify_hidden


def _flat(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Every parameter, and every 2:4 mask, flattened into one vector each (for comparing ranks)."""
    params = torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])
    masks = torch.cat([m.mask.reshape(-1).cpu() for m in sparse24_layers(model).values()])
    return params, masks


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's switch for not copying rank 0's buffers at every forward (renamed in newer PyTorch releases)."""
    import inspect

    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}


def _worker(rank: int, world_size: int, store: str, out_dir: str, steps: int, seed: int, batch_size: int,
            lr: float, device: str, layer_kwargs: dict) -> None:
    """One rank: train `steps` steps with DDP, then save its losses, weights and masks for the parent."""
    backend = "nccl" if device == "cuda" else "gloo"
    torch.set_num_threads(1)  # one CPU thread per rank: the ranks share the machine's cores
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        target = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
        if device == "cuda":
            torch.cuda.set_device(target)
        torch.manual_seed(seed)  # the same initial weights on every rank
        model = DigitsMLP()
        sparsify_hidden(model, **layer_kwargs)
        model = model.to(target)
        initial_masks = _flat(model)[1]
        ddp = DistributedDataParallel(model, **_no_buffer_sync())
        optimizer = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
        data = load_digits()
        generator = torch.Generator().manual_seed(seed)  # the same batch order on every rank
        losses = []
        for _ in range(steps):
            batch = torch.randperm(data.x_train.shape[0], generator=generator)[:batch_size]
            shard = batch[rank::world_size]  # each rank its own part of the batch
            loss = F.cross_entropy(ddp(data.x_train[shard].to(target)), data.y_train[shard].to(target))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(float(mean) / world_size)
        params, masks = _flat(model)
        torch.save({"losses": losses, "params": params, "masks": masks, "flips": int((masks != initial_masks).sum())},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ddp(world_size: int = 2, steps: int = 30, seed: int = 0, batch_size: int = 128, lr: float = 0.1,
            device: str = "cpu", **layer_kwargs) -> dict[str, object]:
    """Train the digits MLP with 2:4 layers on `world_size` processes (gloo on the CPU, NCCL on CUDA) and report
    the loss per step (each rank's shard loss averaged over the ranks: the batch mean when `batch_size` divides
    evenly) and whether every rank ended with the same weights and the same masks."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"{world_size} ranks on CUDA need {world_size} GPUs, found {torch.cuda.device_count()}")
    import torch.multiprocessing as mp

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.spawn(_worker, args=(world_size, store, tmp, steps, seed, batch_size, lr, device, layer_kwargs),
                 nprocs=world_size, join=True)
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(world_size)]
    first = ranks[0]
    return {
        "world_size": world_size,
        "backend": "nccl" if device == "cuda" else "gloo",
        "losses": first["losses"],
        "identical_weights": all(torch.equal(r["params"], first["params"]) for r in ranks),
        "identical_masks": all(torch.equal(r["masks"], first["masks"]) for r in ranks),
        "mask_entries_differing": [int((r["masks"] != first["masks"]).sum()) for r in ranks],
        "mask_entries_flipped": first["flips"],  # how far dynamic masks moved during training (rank 0)
        "seconds": time.perf_counter() - start,
    }
