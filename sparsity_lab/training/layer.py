"""2:4 sparse training: a linear layer whose weight is pruned to 2:4 in the forward pass and still learns.

The layer keeps a dense weight W (the optimizer's copy) and a boolean 2:4 mask. Each step:

* forward: y = x W_sᵀ + b with W_s = W ⊙ mask (2:4 along each row: the inputs of every output);
* backward for the input: dx = dy W_s, which on sparse tensor cores needs W_sᵀ to be 2:4 as well. Two ways:
  ``transpose="transposable"`` picks, in every 4x4 tile, the mask with two kept entries in each row *and* each
  column that keeps the most magnitude (Hubara et al., 2021: one of 90 patterns), so W_sᵀ is 2:4 too and dx is
  exact; ``transpose="recompress"`` prunes W_sᵀ to 2:4 again (dx then uses a further-pruned weight, an
  approximation);
* backward for the weight: the straight-through estimator, dW = dyᵀ x for *every* entry, kept or not, so pruned
  weights keep learning and can come back when the mask is recomputed; ``srste_decay`` adds SR-STE's
  λ · (1 - mask) ⊙ W, which pulls pruned weights towards zero so the mask settles (Zhou et al., 2021).

``mask="dynamic"`` recomputes the mask from |W| whenever W has changed (once per optimizer step, however many
forwards the step accumulates); ``mask="fixed"`` keeps the one it was
given (or computed once). Masks depend only on the weights, so data-parallel replicas (DDP), whose weights stay
equal, compute equal masks.

Under FSDP2 (``fully_shard``) the weight is a sharded DTensor between forwards and FSDP's all-gathered tensor
during them: the mask and the 2:4 operands are built in the forward from that gathered, full weight. FSDP copies
each all-gather into the same gathered tensor with its version counter held still, and a foreach or fused
optimizer step (CUDA's default) on the sharded DTensors moves no version counter either, so the layer watches FSDP
swap its weight (``__setattr__``) and takes each all-gather as a new weight: operands are rebuilt once per forward
(with a "dynamic" mask, the mask too, from the same weights between steps: the same mask).

Backends: ``"dense"`` multiplies by the masked dense weight (any device: the CPU reference); ``"cusparselt"``
runs the forward and the input gradient through our cuSPARSELt binding (`sparsity_lab.semi24.cusparselt`) with W_s and
W_sᵀ compressed again after each optimizer step (in place, so cached plans stay valid); with a fixed
transposable mask, written from W by a gather into cuSPARSELt's buffers instead (`sparsity_lab.semi24.value_slots`).
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from sparsity_lab.training.masks import TRANSPOSE_MODES, masked, sparse24_mask
from sparsity_lab.training.pair import sparse_pair

MASK_MODES = ("dynamic", "fixed")
TRAINING_BACKENDS = ("auto", "dense", "cusparselt")


class _Pair:
    """One load's W_s and the weight the input gradient uses (W_sᵀ, or its re-pruned version): given, or made
    from (W, mask) on first use (the fixed-mask path fills cuSPARSELt's buffers from W and rarely needs them)."""

    def __init__(self, weight_s: torch.Tensor | None = None, weight_t: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> None:
        self._s, self._t, self._weight, self._mask = weight_s, weight_t, weight, mask

    @property
    def weight_s(self) -> torch.Tensor:
        if self._s is None:
            self._s = masked(self._weight, self._mask)
        return self._s

    @property
    def weight_t(self) -> torch.Tensor:
        if self._t is None:
            self._t = self.weight_s.T.contiguous()  # only the transposable mode builds a pair from (W, mask)
        return self._t


class DenseBackend:
    """The reference: every product with the masked dense weight (CPU or GPU, any float dtype)."""

    name = "dense"

    loads = 0  # how many times `load` ran: a backward whose forward saw another load uses its own W_sᵀ

    def load(self, weight_s: torch.Tensor, weight_t: torch.Tensor) -> None:
        """Hold W_s and the weight the input gradient uses (W_sᵀ, or its 2:4 re-pruned version)."""
        self.pair = _Pair(weight_s, weight_t)
        self.loads += 1

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, self.pair.weight_s, bias)

    def grad_input(self, grad_y: torch.Tensor) -> torch.Tensor:
        return grad_y @ self.pair.weight_t.T


class CusparseltBackend:
    """Forward and input gradient on sparse tensor cores through our cuSPARSELt binding: W_s (N, K) and
    W_sᵀ (K, N) are compressed once and then recompressed in place after every weight update. With a fixed
    transposable mask (`load_fixed`) both buffers are written from W by one gather each, through value slots
    learnt once per mask (`sparsity_lab.semi24.value_slots`): cuSPARSELt's compress runs only when the mask changes."""

    name = "cusparselt"

    TOKENS = 8  # cuSPARSELt's multiple for the dense operand's rows (fp16 / bf16); other batches go dense

    def __init__(self) -> None:
        self.forward_weight = None
        self.backward_weight = None
        self.loads = 0
        self._slots: tuple | None = None  # (mask key, mask copy, forward slots, backward slots)
        self.slots_error: str | None = None  # why the value-slot path is off for this backend (None: it is on)

    def _ensure_weights(self, weight_s: torch.Tensor, weight_t: torch.Tensor) -> bool:
        """Compressed weights of these shapes exist (True) or were made now from `weight_s`, `weight_t` (False)."""
        from sparsity_lab.semi24.cusparselt import Semi24Weight

        if self.forward_weight is not None and self.forward_weight.shape == tuple(weight_s.shape):
            return True
        self.forward_weight = Semi24Weight.from_dense(weight_s)
        self.backward_weight = Semi24Weight.from_dense(weight_t)
        self._slots = None
        return False

    def load(self, weight_s: torch.Tensor, weight_t: torch.Tensor) -> None:
        self.pair = _Pair(weight_s, weight_t)  # also for batches cuSPARSELt cannot take
        self.loads += 1
        if self._ensure_weights(weight_s, weight_t):
            self.forward_weight.recompress(weight_s)
            self.backward_weight.recompress(weight_t)

    def load_fixed(self, weight: torch.Tensor, mask: torch.Tensor) -> bool:
        """Load W ⊙ mask for a transposable `mask` that training keeps fixed, by gathering W's kept values into
        both buffers. False (nothing loaded; `load` instead) for a mask that keeps fewer than two of some four, or
        where value slots cannot be learnt here (`slots_error` says why, and a warning once). The mask is known by
        its address and version: change it in place (``copy_``, `Semi24TrainingLinear.update_mask`), not through
        ``.data``."""
        from sparsity_lab.semi24.value_slots import ValueSlotsError

        if self.slots_error is not None:
            return False
        key = (mask.data_ptr(), mask._version, tuple(mask.shape))
        if self._slots is None or self._slots[0] != key or self.forward_weight.shape != tuple(weight.shape):
            try:
                self._learn_slots(weight, mask, key)
            except ValueSlotsError as error:
                self.slots_error = str(error)
                warnings.warn(f"2:4 training falls back to cuSPARSELt's compress every step: {error}", stacklevel=2)
                return False
            except ValueError:  # learn's mask check: fewer than two of some four, which compress takes and slots do not
                self._slots = (key, None, None, None)
                return False
        _, mask_copy, forward_slots, backward_slots = self._slots
        if mask_copy is None:
            return False
        forward_slots.write(self.forward_weight.compressed, weight)
        backward_slots.write(self.backward_weight.compressed, weight)
        self.pair = _Pair(weight=weight, mask=mask_copy)
        self.loads += 1
        return True

    def _learn_slots(self, weight: torch.Tensor, mask: torch.Tensor, key: tuple) -> None:
        """Value slots of both buffers for `mask`, the backward one reading W's entries (Wᵀ[i, j] = W[j, i])."""
        mask = mask.clone()
        weight_s = masked(weight, mask)
        self._ensure_weights(weight_s, weight_s.T.contiguous())
        n, k = weight.shape
        w_index = torch.arange(n * k, device=weight.device).reshape(n, k)
        forward_slots = self.forward_weight.learn_value_slots(mask)
        backward_slots = self.backward_weight.learn_value_slots(mask.T.contiguous()).remap_sources(w_index.T)
        self._slots = (key, mask, forward_slots, backward_slots)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.shape[0] % self.TOKENS:
            return F.linear(x, self.pair.weight_s, bias)
        return self.forward_weight.linear(x, bias=bias)  # bias added in cuSPARSELt's epilogue

    def grad_input(self, grad_y: torch.Tensor) -> torch.Tensor:
        if grad_y.shape[0] % self.TOKENS:
            return grad_y @ self.pair.weight_t.T
        return self.backward_weight.linear(grad_y)


def cusparselt_unavailable(weight: torch.Tensor) -> str | None:
    """Why the cuSPARSELt backend cannot train `weight` here (None when it can)."""
    if weight.device.type != "cuda":
        return f"the cusparselt backend needs a CUDA weight; this one is on {weight.device}"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"the cusparselt backend trains float16 or bfloat16 weights, not {weight.dtype}"
    n, k = weight.shape
    if n % 16 or k % 16:
        return f"the cusparselt backend needs both sizes of the weight to be multiples of 16, got {(n, k)}"
    from sparsity_lab.semi24.cusparselt import unavailable_reason

    return unavailable_reason()


# -------------------------------------------------------------------------------------------------- autograd
class Semi24TrainingFunction(torch.autograd.Function):
    """y = x W_sᵀ + b with the backend's 2:4 products; dW by the straight-through estimator (+ SR-STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                backend: DenseBackend | CusparseltBackend, srste_decay: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = backend.forward(x2, bias)
        # a later forward (gradient accumulation) may load a new W_s before this backward runs: keep this one's
        # W_sᵀ (a reference: loads rebind, never write into it) and mask (a clone: masks are updated in place)
        ctx.save_for_backward(x2, weight, mask.clone() if srste_decay else None)
        ctx.backend, ctx.srste_decay, ctx.has_bias, ctx.shape = backend, srste_decay, bias is not None, shape
        ctx.pair, ctx.loads = backend.pair, backend.loads
        # not a view of y: FSDP2 warns on view outputs (an in-place op on one would drop its pre-backward hook)
        return torch.ops.aten._unsafe_view(y, (*shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x2, weight, mask = ctx.saved_tensors
        grad_y = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.backend.loads == ctx.loads:
                grad_x = ctx.backend.grad_input(grad_y)
            else:  # the backend holds a newer weight now: the dense product with this forward's W_sᵀ
                grad_x = grad_y @ ctx.pair.weight_t.T
            grad_x = grad_x.reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            grad_w = grad_y.T @ x2  # straight through: every entry, kept or pruned
            if ctx.srste_decay:
                grad_w = grad_w + ctx.srste_decay * masked(weight, ~mask)  # pulls pruned weights to zero
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


def sparse24_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                    transpose: str = "transposable", srste_decay: float = 0.0) -> torch.Tensor:
    """Functional 2:4 training linear on the dense reference backend (any device, differentiable)."""
    backend = DenseBackend()
    backend.load(*sparse_pair(weight, mask, transpose)[1:])
    return Semi24TrainingFunction.apply(x, weight, bias, mask, backend, srste_decay)


# -------------------------------------------------------------------------------------------------- layer
def _is_dtensor(value: object) -> bool:
    """Whether `value` is a DTensor (FSDP2's sharded parameter), without importing torch.distributed.tensor."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


class Semi24TrainingLinear(nn.Module):
    """A linear layer trained with a 2:4 weight: dense master weight, 2:4 mask (a buffer), 2:4 products.

    `mask`: "dynamic" (recomputed from |W| every training step) or "fixed"; `transpose`: "transposable" or
    "recompress" (how the input gradient gets a 2:4 Wᵀ); `srste_decay`: SR-STE's λ (0 = plain STE);
    `backend`: "dense", "cusparselt" or "auto" (cuSPARSELt where it can run, else dense).
    The layer notices a new weight or mask through autograd's version counters: change the mask buffer in place
    (``layer.mask.copy_(m)``) or with `update_mask`, never through ``.data``, which those counters do not see."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mask: str = "dynamic",
                 transpose: str = "transposable", srste_decay: float = 0.0, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self._shard: tuple | None = None  # under FSDP2: (sharded weight, the gathered weight FSDP made from it)
        self._shards_seen = 0  # how many sharded weights were swapped in: a new one is never judged by an old key
        self._gathers = 0  # how many times FSDP2 swapped the gathered weight in (once per forward and backward)
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
        if transpose not in TRANSPOSE_MODES:
            raise ValueError(f"transpose must be one of {TRANSPOSE_MODES}, got {transpose!r}")
        if backend not in TRAINING_BACKENDS:
            raise ValueError(f"backend must be one of {TRAINING_BACKENDS}, got {backend!r}")
        if srste_decay < 0:
            raise ValueError(f"srste_decay must be >= 0, got {srste_decay}")
        if in_features % 4 or out_features % 4:
            raise ValueError(f"Semi24TrainingLinear({in_features}, {out_features}) needs in_features and out_features "
                             "to "
                             "be multiples of 4: the forward groups inputs by 4, the input gradient (Wᵀ) outputs")
        self.in_features, self.out_features = in_features, out_features
        self.mask_mode, self.transpose, self.srste_decay, self.backend_name = mask, transpose, srste_decay, backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        nn.Linear.reset_parameters(self)
        self.register_buffer("mask", sparse24_mask(self.weight, transpose))
        self._backend: DenseBackend | CusparseltBackend | None = None
        self._backend_key: tuple | None = None
        self._loaded_version: tuple | None = None  # (*weight key, mask version) loaded (`_weight_key`)
        self._mask_of: tuple | None = None  # the weight key the mask was computed from

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> Semi24TrainingLinear:
        """A Semi24TrainingLinear with `linear`'s weight and bias (the mask computed from that weight)."""
        kwargs.setdefault("device", linear.weight.device)
        kwargs.setdefault("dtype", linear.weight.dtype)
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, **kwargs)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.update_mask()
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mask={self.mask_mode}, transpose={self.transpose}, srste_decay={self.srste_decay}, "
                f"backend={self.backend_name}")

    @torch.no_grad()
    def update_mask(self) -> None:
        """Recompute the 2:4 mask from the current weight (what ``mask="dynamic"`` does after every weight update).
        Call it, too, after writing the weight through ``.data``, which autograd's version counter does not see."""
        self._load(recompute_mask=True)

    def __setattr__(self, name: str, value: object) -> None:
        # FSDP2 swaps parameters through setattr on modules that define their own __setattr__ (else by writing
        # _parameters), so this sees every swap between the sharded weight and the gathered one
        super().__setattr__(name, value)
        if name == "weight":
            self._note_weight(value)

    def _note_weight(self, weight: object) -> None:
        """Track FSDP2's swaps: a DTensor is a shard; the first plain weight after it is the one FSDP gathers
        from it (the same tensor at every all-gather); any other plain weight is the caller's own."""
        shard = self._shard
        if _is_dtensor(weight):
            if shard is None or weight is not shard[0]:
                self._shards_seen += 1
                self._shard = (weight, None)
        elif shard is not None and shard[1] is None:
            self._shard = (shard[0], weight)
            self._gathers += 1
        elif shard is not None and weight is shard[1]:
            self._gathers += 1
        elif shard is not None:
            self._shard = None

    def _weight_key(self) -> tuple[int, ...]:
        """What says the weight changed: its version and address; for FSDP2's gathered weight, which FSDP refills
        in place with its version held still, the all-gather it came from: an optimizer step on the shards is not
        seen by any version counter when it runs foreach or fused (the default on CUDA), so every gather counts
        as a new weight."""
        shard = self._shard
        if shard is not None and self.weight is shard[1]:
            return (-1, self._shards_seen, self._gathers)
        return (self.weight._version, self.weight.data_ptr())

    def backend(self) -> DenseBackend | CusparseltBackend:
        """The backend in use: for ``backend="auto"``, cuSPARSELt where it can run, chosen per device and dtype."""
        key = (self.weight.device, self.weight.dtype)
        if self._backend is None or self._backend_key != key:
            name = self.backend_name
            reason = cusparselt_unavailable(self.weight) if name != "dense" else None
            if name == "cusparselt" and reason:
                raise RuntimeError(f"Semi24TrainingLinear(backend='cusparselt'): {reason}")
            self._backend = DenseBackend() if name == "dense" or reason else CusparseltBackend()
            self._backend_key, self._loaded_version = key, None
        return self._backend

    def sparse_weight(self) -> torch.Tensor:
        """W ⊙ mask: the 2:4 weight the forward pass multiplies by (detached)."""
        return masked(self.weight.detach(), self.mask)

    @torch.no_grad()
    def _load(self, recompute_mask: bool) -> None:
        """Hand the backend this step's W_s and W_sᵀ (recomputing the mask first when asked): for a fixed
        transposable mask on cuSPARSELt, written from W straight into the compressed buffers."""
        backend = self.backend()
        if not recompute_mask and self.mask_mode == "fixed" and self.transpose == "transposable" \
                and isinstance(backend, CusparseltBackend) and backend.load_fixed(self.weight.detach(), self.mask):
            self._loaded_version = (*self._weight_key(), self.mask._version)
            return
        mask, weight_s, weight_t = sparse_pair(self.weight, None if recompute_mask else self.mask, self.transpose)
        if recompute_mask:
            self.mask.copy_(mask)
            self._mask_of = self._weight_key()
        backend.load(weight_s, weight_t)
        self._loaded_version = (*self._weight_key(), self.mask._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has shape {tuple(x.shape)}: the layer expects {self.in_features} features last")
        backend = self.backend()
        weight = self._weight_key()
        dynamic = self.training and self.mask_mode == "dynamic" and torch.is_grad_enabled()
        if dynamic and self._mask_of != weight:  # the weight moved since the mask was computed
            self._load(recompute_mask=True)
        elif self._loaded_version != (*weight, self.mask._version):  # an optimizer step, a new mask
            self._load(recompute_mask=False)
        return Semi24TrainingFunction.apply(x, self.weight, self.bias, self.mask, backend, self.srste_decay)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding W ⊙ mask (for export, or for the inference `Semi24Linear` swap)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.sparse_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def to_dense_linears(model: nn.Module) -> list[str]:
    """Replace, in place, every Semi24TrainingLinear by an nn.Linear holding its 2:4 weight; returns the names."""
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, Semi24TrainingLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.to_linear())
            replaced.append(name)
    return replaced


def sparse24_layers(model: nn.Module) -> dict[str, Semi24TrainingLinear]:
    """The Semi24TrainingLinear layers of `model` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Semi24TrainingLinear)}


class SparseMLP(nn.Module):
    """The transformer MLP block the speed target is set on: Linear(d, h) -> GELU -> Linear(h, d), either dense
    (`nn.Linear`) or with 2:4 training layers (`sparse=True`, kwargs to `Semi24TrainingLinear`)."""

    def __init__(self, dim: int = 1024, hidden: int = 4096, sparse: bool = True, **kwargs) -> None:
        super().__init__()
        layer = (lambda i, o: Semi24TrainingLinear(i, o, **kwargs)) if sparse else (
            lambda i, o: nn.Linear(i, o, device=kwargs.get("device"), dtype=kwargs.get("dtype")))
        self.fc1, self.fc2 = layer(dim, hidden), layer(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
