"""`ResidualChain`: an ``nn.Sequential`` of pre-norm transformer blocks that fuses each residual add with the norm
after it (`ColumnMajorNorm.add_forward`), for a column-major stream (`models.stream`).

Why: in a pre-norm block the sum ``x + branch`` is read at once by a norm. Unfused, the add reads x and the branch
and writes s, then the norm reads s and writes its output: five passes over the stream and two launches; fused,
four passes and one launch. The second add of a block meets the *next* block's norm1, so the fusion needs the whole
chain, not one block: what is carried from block to block is s and the branch output still to be added,

    n1 = norm1(x)                                   the first block only
    s, n2 = norm2.add_forward(x, branch1(n1))       branch1 = drop_path1(ls1(attn(.))) for timm, attn(.) for ours
    pending = branch2(n2)                           branch2 = drop_path2(ls2(mlp(.))), mlp(.)
    x, n1 = next.norm1.add_forward(s, pending)      and after the last block x = s + pending

which adds and normalizes exactly what the blocks would (`add_forward` rounds s as PyTorch's add does). Only blocks
known to compute ``x + branch1(norm1(x))`` then ``x + branch2(norm2(x))`` are chained (`unfit`): our encoder's
`Block` and timm's ViT ``Block`` (known by class name and module: timm is not imported), with `ColumnMajorNorm`
norms. The blocks keep their names, so state-dict keys, ``get_submodule`` and calling one block alone are unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from sparsity_lab.models import stream
from sparsity_lab.models.column_major_norm import ColumnMajorNorm
from sparsity_lab.models.encoder import Block

TIMM_BLOCK = ("timm.models.vision_transformer", "Block")  # (module, class name) of timm's pre-norm ViT block
_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _known(block: nn.Module) -> type | None:
    """The pre-norm block class (ours or timm's) that `block` is an instance of, or None."""
    for cls in type(block).__mro__:
        if cls is Block or (cls.__module__, cls.__name__) == TIMM_BLOCK:
            return cls
    return None


def unfit(blocks: nn.Module) -> str | None:
    """Why `ResidualChain.from_sequential` cannot chain `blocks` (None when it can): a plain ``nn.Sequential``
    without hooks of its own, of blocks `_known` to be pre-norm residual blocks, with `ColumnMajorNorm` norms."""
    if isinstance(blocks, ResidualChain):
        return "already a ResidualChain"
    if type(blocks) is not nn.Sequential:
        return f"{type(blocks).__name__} is not a plain nn.Sequential: how it calls its blocks is not known here"
    if not len(blocks):
        return "the nn.Sequential holds no blocks"
    if _hooks(blocks):
        return "the nn.Sequential has hooks of its own, which the module replacing it would not have"
    for name, block in blocks.named_children():
        known = _known(block)
        if known is None:
            return (f"block {name} is a {type(block).__name__}: only our encoder's Block and timm's ViT Block are "
                    f"known to be pre-norm residual blocks")
        if type(block).forward is not known.forward:
            return f"block {name}: {type(block).__name__} overrides Block's forward: what it computes is not known here"
        for norm in ("norm1", "norm2"):
            if not isinstance(getattr(block, norm), ColumnMajorNorm):
                return f"block {name}'s {norm} is a {type(getattr(block, norm)).__name__}, not a ColumnMajorNorm"
    return None


def _hooks(module: nn.Module) -> int:
    """How many hooks `module` has of its own (forward and backward, before and after)."""
    return sum(len(getattr(module, name)) for name in _HOOKS)


def _branch(block: nn.Module, which: int, y: torch.Tensor) -> torch.Tensor:
    """timm's layer scale and drop path on branch `which`'s output, where the block has them (ours has neither)."""
    for name in (f"ls{which}", f"drop_path{which}"):
        if hasattr(block, name):
            y = getattr(block, name)(y)
    return y


class ResidualChain(nn.Sequential):
    """The blocks of an ``nn.Sequential``, the same modules under the same names, run in eval as a chain: each
    residual add fused with the norm after it, and the stream's entry conversion (the first block's hook) done once
    at the start. In training, or where a block or one of its norms has hooks of its own besides that entry hook
    (``tune_`` hooks a block to see its inputs, `stream.layouts` the norms), the blocks are called one by one, as
    ``nn.Sequential`` calls them."""

    @classmethod
    def from_sequential(cls, blocks: nn.Sequential) -> ResidualChain:
        """A chain of `blocks`' blocks (shared, not copied) in `blocks`' mode; a ValueError saying why for a
        Sequential `unfit` refuses."""
        reason = unfit(blocks)
        if reason:
            raise ValueError(f"blocks: {reason}")
        chain = cls(OrderedDict(blocks.named_children()))
        chain.training = blocks.training
        return chain

    def _hooked(self) -> bool:
        """Whether a block or a norm of it has hooks of its own, the stream's entry on the first block aside."""
        hooks = sum(_hooks(m) for block in self for m in (block, block.norm1, block.norm2))
        return hooks > stream.enters_stream(self[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self._hooked():
            return super().forward(x)
        if stream.enters_stream(self[0]):
            x = stream.to_column_major(x)
        pending = None
        for block in self:
            if pending is None:
                n = block.norm1(x)
            else:
                x, n = block.norm1.add_forward(x, pending)
            x, n = block.norm2.add_forward(x, _branch(block, 1, block.attn(n)))
            pending = _branch(block, 2, block.mlp(n))
        return x + pending
