"""`column_major_stream_(model, first_block)`: keep a transformer's residual stream column-major, in place.

Why: cuSPARSELt writes D = W · xᵀ, so every 2:4 layer's y = D.t() is column-major; in a row-major model the
residual add, the LayerNorm and attention must copy it, and those copies cost what sparsity saves (ViT-L/16:
docs/performance/models.md). Turn the model around instead: store the residual stream itself column-major, from
the input of its first block on. Then per block

    norm1 (ColumnMajorNorm: reads and writes column-major)  ->  qkv: 2:4, D = qkvᵀ  ->  attention
    (ColumnMajorAttention: reads q, k, v from D as it lies; or a dense qkv writes row-major q, k, v for SDPA)
    ->  proj: 2:4, y column-major  ->  residual add + norm2 (one kernel: both column-major)  ->  fc1: 2:4 reads
    the norm in place  ->  GELU (`models.gelu`: over D as it lies)  ->  fc2: 2:4  ->  residual add + the next
    block's norm1 (one kernel)

and the only copy left is the one at the stream's entry. Each residual add is fused with the norm that reads its
sum (`ColumnMajorNorm.add_forward`: x and the branch read once, the sum and its norm written once, where an add
then a norm pass over the stream five times); the second add of a block meets the next block's norm1, so the
blocks' ``nn.Sequential`` is run as one `ResidualChain`. A dense layer that writes into the stream takes the
mode "dense-colmajor" (cuBLAS writes yᵀ, the same layout at the same speed); `dispatch.tune_` chooses each
group's mode by timing the streamed model, as for a row-major one, and with ``stream=`` whether the stream is
kept at all (the model tuned with and without it, timed whole: compiled, Inductor's fusions can favour row-major).

What is done: every norm `ColumnMajorNorm` takes (``nn.LayerNorm``, ``nn.RMSNorm``, ``LlamaRMSNorm``) and, with
``attention=True``, every self-attention `ColumnMajorAttention` takes (timm's ViT ``Attention``, our encoder's) is
swapped for one sharing its weights, which takes either layout (so a norm before the stream computes as before); a
forward pre-hook on `first_block` turns its hidden-state input (the first positional argument, or
``hidden_states=``) column-major; with ``gelu_kernel=True``, every exact ``nn.GELU`` becomes `models.gelu.Gelu` (the
same function in fewer instructions: the MLP's largest cost after its GEMMs); with ``fuse_residual=True``, the
``nn.Sequential`` that `first_block` begins becomes a `ResidualChain` where its blocks are known pre-norm blocks
(our encoder's, timm's ViT ``Block``) with swapped norms -- the chain does the entry conversion itself, once, and
the blocks, called alone, are as before. Values are unchanged: the streamed model computes what it computed before,
up to the order of float sums (and the last bit of a few GELU outputs); a call that needs gradients runs PyTorch's
add, norm, GELU and SDPA (the kernels have no backward), so a streamed model trains as before. All or nothing: a
name that is not a submodule, or a model already streamed, is refused before anything changes.
`remove_column_major_stream_` undoes the entry hook (a chain then computes as the blocks do, from a row-major
input); `layouts` shows what each norm, attention and linear reads and writes (its hooks make a chain call its
blocks one by one, unfused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsity_lab.models import column_major_attention, column_major_norm, gelu
from sparsity_lab.models.column_major_attention import ColumnMajorAttention
from sparsity_lab.models.column_major_norm import ColumnMajorNorm, columns, to_column_major

if TYPE_CHECKING:
    from sparsity_lab.sparsify import LayerReport, Report

_HOOK = "_sparsity_lab_column_major_stream"  # the attribute of the first block that holds the hook's handle


def _entry(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The pre-hook: the block's hidden states (first positional argument, or ``hidden_states=``) column-major."""
    if args:
        return (to_column_major(args[0]), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": to_column_major(kwargs["hidden_states"])}
    raise ValueError(f"{type(module).__name__} was called without a positional input or hidden_states=: "
                     f"nothing to turn column-major")


def enters_stream(block: nn.Module) -> bool:
    """Whether `block` carries the stream's entry hook (its hidden-state input is turned column-major). Looks for
    the hook itself, not its handle: ``torch.compile`` traces this and cannot represent a handle."""
    return any(hook is _entry for hook in block._forward_pre_hooks.values())


def column_major_stream_(model: nn.Module, first_block: str, attention: bool = True,
                         fuse_residual: bool = True, gelu_kernel: bool = True) -> Report:
    """Keep `model`'s residual stream column-major from the input of `first_block` (e.g. ``"blocks.0"`` for timm's
    ViT, ``"layers.0"`` for a Hugging Face decoder) on, in place; with `attention`, also swap the self-attention
    modules `ColumnMajorAttention` takes, so a 2:4 qkv's output is read as it lies; with `fuse_residual`, swap the
    ``nn.Sequential`` whose first block is `first_block` for a `ResidualChain` (each residual add fused with the
    norm after it) where `residual_chain.unfit` allows; with `gelu_kernel`, swap each ``nn.GELU`` `gelu.unfit`
    allows for `gelu.Gelu`. Returns a `Report` for the block, every norm, attention and GELU (swapped, or why it
    was left) and for the blocks' container (chained, or why not)."""
    from sparsity_lab.sparsify import LayerReport, Report

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        block = model.get_submodule(first_block)
    except AttributeError as err:
        raise ValueError(f"first_block={first_block!r} is not a submodule of the model; nothing was changed") from err
    if is_streamed(model):
        raise ValueError("the model's residual stream is already column-major; nothing was changed")
    kinds = [(column_major_norm.unfit, ColumnMajorNorm.from_norm, "ColumnMajorNorm: keeps the layout it is given",
              lambda m: isinstance(m, nn.LayerNorm | nn.RMSNorm) or type(m).__name__.endswith("RMSNorm"))]
    if attention:
        kinds.append((column_major_attention.unfit, ColumnMajorAttention.from_attention,
                      "ColumnMajorAttention: reads a column-major qkv as it lies",
                      lambda m: type(m).__name__ == "Attention"))
    if gelu_kernel:
        kinds.append((gelu.unfit, lambda m: gelu.Gelu(), "Gelu: the exact GELU in fewer instructions (Triton)",
                      lambda m: isinstance(m, nn.GELU)))
    report = Report({first_block: LayerReport(True, "its hidden-state input turned column-major (one copy a call)")})
    swaps = {}
    for fqn, module in model.named_modules():
        for unfit, build, what, looks_like in kinds:
            if looks_like(module):
                reason = unfit(module)
                report[fqn] = LayerReport(not reason, f"left as it is: {reason}" if reason else what)
                if not reason:
                    swaps[fqn] = build(module)
    for fqn, swapped in swaps.items():
        parent, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, swapped)
    parent, _, child = first_block.rpartition(".")
    report[parent] = _chain_(model, parent, child, fuse_residual)
    setattr(block, _HOOK, block.register_forward_pre_hook(_entry, with_kwargs=True))
    return report


def _chain_(model: nn.Module, parent: str, first: str, fuse_residual: bool) -> LayerReport:
    """`model`'s submodule `parent` swapped for a `ResidualChain` where it is a Sequential that `first` begins and
    `residual_chain.unfit` allows; what was done, or why not."""
    from sparsity_lab.models.residual_chain import ResidualChain, unfit
    from sparsity_lab.sparsify import LayerReport

    blocks = model.get_submodule(parent)
    reason = "fuse_residual=False" if not fuse_residual else unfit(blocks)
    if not reason and next(iter(blocks._modules)) != first:
        reason = f"the stream starts at block {first}, not at the first block of {parent}"
    if not reason and not parent:
        reason = "the Sequential of blocks is the model itself, which cannot be replaced in place"
    if reason:
        return LayerReport(False, f"left as it is, residual adds unfused: {reason}")
    owner, _, name = parent.rpartition(".")
    setattr(model.get_submodule(owner), name, ResidualChain.from_sequential(blocks))
    return LayerReport(True, "ResidualChain: each residual add fused with the norm after it (one kernel, add_norm_t)")


def remove_column_major_stream_(model: nn.Module) -> None:
    """Undo `column_major_stream_`: the entry hook removed, the norms left (row-major inputs compute as before)."""
    for module in model.modules():
        handle = module.__dict__.pop(_HOOK, None)
        if handle is not None:
            handle.remove()


def is_streamed(model: nn.Module) -> bool:
    """Whether `column_major_stream_` was applied to `model` (and not removed)."""
    return any(_HOOK in m.__dict__ for m in model.modules())


def layout(x: object) -> str:
    """"row-major", "column-major" (over the flattened tokens, as a 2:4 layer writes) or "strided" for a tensor."""
    if not isinstance(x, torch.Tensor):
        return type(x).__name__
    if x.is_contiguous():
        return "row-major"
    return "column-major" if columns(x) is not None else "strided"


def layouts(model: nn.Module, example: tuple, kinds: tuple[type, ...] = (nn.Linear, nn.LayerNorm, nn.RMSNorm,
                                                                      ColumnMajorNorm, ColumnMajorAttention)
            ) -> dict[str, tuple[str, str]]:
    """{module name: (the layout of its input, of its output)} for each module of `kinds` (swapped linears are
    found by their ``in_features`` and ``mode``, attention modules by their class name), from one call of `model`
    on `example`: where a stream is copied and where not."""
    seen: dict[str, tuple[str, str]] = {}
    handles = []
    for fqn, module in model.named_modules():
        if (isinstance(module, kinds) or (hasattr(module, "in_features") and hasattr(module, "mode"))
                or type(module).__name__.endswith("Attention")):
            def hook(_module: nn.Module, args: tuple, out: object, fqn: str = fqn) -> None:
                seen.setdefault(fqn, (layout(args[0]) if args else "keyword", layout(out)))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for handle in handles:
            handle.remove()
    return seen
