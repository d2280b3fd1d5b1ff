"""Diagonals of the loss Hessian with respect to each layer's weight: exact, Gauss-Newton, Hutchinson, Fisher.

Optimal Brain Damage needs h_kk = d2E/dw_k^2 for every weight. These functions return it as a dict
layer name -> tensor shaped like that layer's weight (the layers of `prune.prunable_layers`), for the
*mean* loss over the samples given:

- `exact_diagonal`: Hessian-vector products with basis vectors (small models: one product per weight);
- `hutchinson_diagonal`: E[z * Hz] over Rademacher z, unbiased but noisy, and it can come out negative;
- `ggn_diagonal`: the exact diagonal of the generalized Gauss-Newton matrix J^T H_out J (C backward passes);
- `lecun_diagonal`: the paper's recursion (LeCun, Denker & Solla 1989): second derivatives back-propagated with the
  Levenberg-Marquardt approximation (f'' terms dropped) and the off-diagonal terms ignored at every layer;
- `fisher_diagonal`: the empirical Fisher, the mean of squared per-sample gradients.

Masked weights (attached with `sparsity_lab.pruning.prune.apply_mask`) are differentiated through the mask, so their
entries come out zero. `ggn_diagonal`, `fisher_diagonal` and `lecun_diagonal` use per-sample tricks valid for
`nn.Linear` layers only; the exact and Hutchinson diagonals work on any model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from sparsity_lab.pruning.prune import prunable_layers

LOSSES = ("ce", "mse")


def model_loss(output: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Mean loss over samples: cross-entropy ("ce") or the paper's squared error 1/2 ||f(x) - onehot(y)||^2 ("mse")."""
    if loss == "ce":
        return F.cross_entropy(output, y)
    if loss == "mse":
        target = F.one_hot(y, output.shape[1]).to(output.dtype)
        return 0.5 * (output - target).pow(2).sum(1).mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same non-zero number of samples, got {x.shape[0]} and {y.shape[0]}")


def weight_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensor behind each prunable layer's weight (the unmasked original when a mask is attached)."""
    out = {}
    for name, module in prunable_layers(model).items():
        if parametrize.is_parametrized(module, "weight"):
            out[name] = module.parametrizations.weight.original
        else:
            out[name] = module.weight
    if not out:
        raise ValueError("the model has no prunable (Linear / Conv) layers")
    return out


def _flat_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, list]:
    params = list(weight_params(model).values())
    value = model_loss(model(x), y, loss)
    grads = torch.autograd.grad(value, params, create_graph=True)
    return torch.cat([g.reshape(-1) for g in grads]), params


def _unflatten(flat: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in weight_params(model).items():
        out[name] = flat[start : start + p.numel()].reshape(p.shape).detach().clone()
        start += p.numel()
    return out


def _hvp(grad: torch.Tensor, params: list, vector: torch.Tensor) -> torch.Tensor:
    """H @ vector by double backward through the flat gradient (the graph is kept for the next product)."""
    rows = torch.autograd.grad(grad, params, grad_outputs=vector, retain_graph=True)
    return torch.cat([r.reshape(-1) for r in rows]).detach()


def exact_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> dict[str, torch.Tensor]:
    """The exact Hessian diagonal: one Hessian-vector product per weight (e_k^T H e_k), so small models only."""
    _check_data(x, y)
    grad, params = _flat_grad(model, x, y, loss)
    diag = torch.empty(grad.numel(), dtype=grad.dtype)
    basis = torch.zeros_like(grad)
    for k in range(grad.numel()):
        basis[k] = 1.0
        diag[k] = _hvp(grad, params, basis)[k]
        basis[k] = 0.0
    return _unflatten(diag, model)


def hutchinson_diagonal(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", samples: int = 100, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Hutchinson's estimate mean_z[z * Hz] over `samples` Rademacher vectors z: unbiased, noisy, may be negative."""
    _check_data(x, y)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    grad, params = _flat_grad(model, x, y, loss)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(grad)
    for _ in range(samples):
        z = torch.randint(0, 2, grad.shape, generator=generator).to(grad.dtype) * 2 - 1
        total += z * _hvp(grad, params, z)
    return _unflatten(total.detach() / samples, model)


def flat_hvp(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(v -> H v, n) over all prunable weights flattened in layer order: a Hessian you can only multiply by."""
    _check_data(x, y)
    grad, params = _flat_grad(model, x, y, loss)
    return (lambda v: _hvp(grad, params, v.to(grad.dtype))), grad.numel()


def hessian_vector_product(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, vector: dict[str, torch.Tensor], loss: str = "ce"
) -> dict[str, torch.Tensor]:
    """H v for a direction v over the prunable weights (layer name -> tensor), e.g. a deletion step."""
    _check_data(x, y)
    grad, params = _flat_grad(model, x, y, loss)
    flat = torch.cat([vector[name].reshape(-1).to(grad.dtype) for name in weight_params(model)])
    return _unflatten(_hvp(grad, params, flat), model)


def layer_hessian(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """The full Hessian block (n x n, n = the layer's weight count, row-major) of one layer's weight: for OBS."""
    _check_data(x, y)
    params = weight_params(model)
    if layer not in params:
        raise KeyError(f"no prunable layer {layer!r}; layers: {sorted(params)}")
    p = params[layer]
    grad = torch.autograd.grad(model_loss(model(x), y, loss), p, create_graph=True)[0].reshape(-1)
    eye = torch.eye(p.numel(), dtype=grad.dtype)
    rows = torch.autograd.grad(grad, p, grad_outputs=eye, is_grads_batched=True)[0]
    block = rows.reshape(p.numel(), p.numel()).detach()
    return 0.5 * (block + block.T)


Taps = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _linear_taps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Taps]:
    """Run model(x) and return its output and, per Linear layer, (its input, its output tensor in the graph)."""
    taps: Taps = {}
    handles = []
    for name, module in prunable_layers(model).items():
        if not isinstance(module, nn.Linear):
            raise TypeError(f"layer {name!r} is {type(module).__name__}; this estimator handles nn.Linear layers only")

        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            taps[name] = (inputs[0].detach(), output)

        handles.append(module.register_forward_hook(hook))
    try:
        output = model(x)
    finally:
        for h in handles:
            h.remove()
    return output, taps


def _squared_grads(
    output: torch.Tensor, taps: Taps, vector: torch.Tensor, retain: bool
) -> dict[str, torch.Tensor]:
    """Back-propagate `vector` from `output`; per Linear layer sum_n g_n^2 (x) x_n^2, g_n its per-sample output
    gradient: the sum of squared per-sample weight gradients."""
    names = list(taps)
    grads = torch.autograd.grad(output, [taps[n][1] for n in names], grad_outputs=vector, retain_graph=retain)
    return {n: g.pow(2).T @ taps[n][0].pow(2) for n, g in zip(names, grads, strict=True)}


def _output_hessian_sqrt(output: torch.Tensor, loss: str) -> torch.Tensor:
    """S (N, C, C) with S S^T = d2 loss_n / d output^2 for each sample (columns are the backward vectors)."""
    n, c = output.shape
    if loss == "mse":
        return torch.eye(c, dtype=output.dtype).expand(n, c, c)
    if loss == "ce":
        p = output.detach().softmax(1)
        sqrt_p = p.sqrt()
        return torch.diag_embed(sqrt_p) - p.unsqueeze(2) * sqrt_p.unsqueeze(1)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def ggn_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> dict[str, torch.Tensor]:
    """Exact diagonal of the generalized Gauss-Newton matrix (1/N) sum_n J_n^T H_out,n J_n, in C backward passes."""
    _check_data(x, y)
    output, taps = _linear_taps(model, x)
    sqrt_h = _output_hessian_sqrt(output, loss)
    classes = output.shape[1]
    total = {n: torch.zeros(out.shape[1], inp.shape[1], dtype=out.dtype) for n, (inp, out) in taps.items()}
    for c in range(classes):
        for name, value in _squared_grads(output, taps, sqrt_h[:, :, c], retain=c < classes - 1).items():
            total[name] += value
    return {name: total[name] / x.shape[0] for name in prunable_layers(model)}


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal (1/N) sum_n (d loss_n / dw)^2: squared per-sample gradients at the true labels."""
    _check_data(x, y)
    output, taps = _linear_taps(model, x)
    per_sample = torch.autograd.grad(model_loss(output, y, loss) * x.shape[0], output, retain_graph=True)[0]
    squares = _squared_grads(output, taps, per_sample, retain=False)
    return {name: squares[name] / x.shape[0] for name in prunable_layers(model)}


_DERIVATIVES = {
    nn.Tanh: lambda a: 1 - torch.tanh(a).pow(2),
    nn.ReLU: lambda a: (a > 0).to(a.dtype),
    nn.Sigmoid: lambda a: torch.sigmoid(a) * (1 - torch.sigmoid(a)),
    nn.Identity: torch.ones_like,
}


def _chain(model: nn.Module) -> list[nn.Module]:
    """The model's leaf modules in order, checked to be a feed-forward chain of Linear layers and activations."""
    leaves = [m for m in model.modules() if not list(m.children())]
    for m in leaves:
        if not isinstance(m, (nn.Linear, nn.Flatten, *_DERIVATIVES)):
            raise TypeError(f"lecun_diagonal handles chains of Linear, Flatten, {[k.__name__ for k in _DERIVATIVES]}; "
                            f"found {type(m).__name__}")
    return leaves


def lecun_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> dict[str, torch.Tensor]:
    """The OBD paper's diagonal: second derivatives back-propagated layer by layer, Levenberg-Marquardt style.

    At the output, d2E/da^2 is the diagonal of the loss Hessian (1 for squared error, p(1-p) for cross-entropy);
    each layer below gets f'(a)^2 * (W^2)^T d2E/da_next^2, and h_ij = mean_n d2E/da_i^2 * x_j^2. Off-diagonal terms
    and f'' are dropped, which is what makes it one backward pass. Needs a feed-forward chain (like `DigitsMLP`).
    """
    _check_data(x, y)
    chain = _chain(model)
    names = {id(m): n for n, m in prunable_layers(model).items()}
    with torch.no_grad():
        h, records = x, []
        for m in chain:
            records.append(h)
            h = m(h)
        if not torch.allclose(h, model(x), rtol=1e-4, atol=1e-5):
            raise TypeError("lecun_diagonal: the model's leaf modules, run in order, do not reproduce model(x)")
        if loss == "mse":
            d2 = torch.ones_like(h)
        elif loss == "ce":
            p = h.softmax(1)
            d2 = p * (1 - p)
        else:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        out: dict[str, torch.Tensor] = {}
        for m, inp in zip(reversed(chain), reversed(records), strict=True):
            if isinstance(m, nn.Linear):
                out[names[id(m)]] = d2.T @ inp.pow(2) / x.shape[0]
                d2 = d2 @ m.weight.pow(2)
            elif isinstance(m, nn.Flatten):
                d2 = d2.reshape(inp.shape)
            else:
                d2 = d2 * _DERIVATIVES[type(m)](inp).pow(2)
    return {name: out[name] for name in names.values()}


ESTIMATORS = {
    "exact": exact_diagonal,
    "ggn": ggn_diagonal,
    "lecun": lecun_diagonal,
    "hutchinson": hutchinson_diagonal,
    "fisher": fisher_diagonal,
}


def hessian_diagonal(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str = "ggn", loss: str = "ce", **options
) -> dict[str, torch.Tensor]:
    """The Hessian diagonal of every prunable weight by `method` (one of `ESTIMATORS`), as layer name -> tensor."""
    if method not in ESTIMATORS:
        raise ValueError(f"method must be one of {sorted(ESTIMATORS)}, got {method!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return ESTIMATORS[method](model, x, y, loss=loss, **options)
