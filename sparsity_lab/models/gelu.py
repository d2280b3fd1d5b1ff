"""`gelu(x)`: the exact (erf) GELU of a 16-bit tensor in fewer instructions (Triton), for the stream's MLPs.

Why: in ViT-L's streamed forward the GELU over fc1's output (25 216 x 4096 per block) is the largest cost after
the 2:4 GEMMs (docs/performance/models.md): 0.136 ms a call in PyTorch where a copy of the same bytes takes 0.101.
It is not memory that limits it but instructions: an elementwise kernel that moves 4 bytes an element at the copy's
speed has 29-33 instruction slots an element (132 SMs, each issuing 4 warp instructions a cycle, at 1.75-1.98 GHz, over
0.101 ms for 103 M elements), and the erf GELU takes 35 (a probe: this kernel with libdevice's ``erf``, compiled
for sm_90a as scripts/hopper_build.py compiles; the tanh approximation takes 11 and runs at copy speed, but rounds
8.5% of bf16 outputs differently). So compute the erf GELU with fewer instructions:

    GELU(x) = x Φ(x) = max(x, 0) - |x| Q(|x|),    Q(t) = 1 - Φ(t), the normal tail: both signs in one formula
    Q(t) = 2 ** h(t),                             h = log2 Q, smooth on [0, 6]: a polynomial of degree 10 in
                                                  s = t / 3 - 1, in Horner's form (one FMA a coefficient)
    Q(t) = 0 for t >= 6                           Q(6) = 1e-9: below any 16-bit output's resolution for x > 0;
                                                  for x < -6, |GELU| < 6e-9 (PyTorch's float32 formula returns 0
                                                  below -5.5, where 1 + erf rounds to 0)

per element: 12 FMAs, one ``ex2`` (the MUFU unit), two min/max, a compare and a select: 20 instructions an element
in the sm_90a build (hopper_build: the difference between 16 and 8 elements a thread). The coefficients are
`fit_exponent`'s: a minimax fit of h (Lawson's reweighted least squares on Chebyshev nodes; max error 3.6e-7 in h,
1.05e-6 with the coefficients rounded to float32: 7e-7 relative in Q). Accuracy over every bf16 and fp16 input
(tests/test_gelu.py, Triton's interpreter, against float64 rounded once): of the 32 642 bf16 and 31 279 fp16 inputs
with |x| < 6 and a normal GELU, every bf16 output is the correctly rounded one and 17 fp16 outputs are one unit off,
where PyTorch's own CPU kernel rounds 61 and 201 of them otherwise; below 6e-9 the error is below the smallest
normal number; infinities and NaN come out as GELU's limits (inf, 0) and NaN.

Layout: elementwise over the tensor's storage, so any dense layout (a 2:4 layer's column-major y as it lies) is
read once and written once in the same layout. Reference: `gelu_reference` (float64). Benchmark: `gelu_speed`
(ours, PyTorch's, and a copy of the same bytes); `sparsity-lab bench models --models stream` records it at
ViT-L's fc1 shape. Under ``torch.compile`` the kernel is the custom op ``sparsity_lab::gelu``. It has no backward:
a call that needs gradients, a float32 tensor or one on the CPU goes to ``F.gelu``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab._optional import triton_available, triton_interpreting

LIMIT = 6.0  # Q(t) is taken as 0 from here on
# h(t) = log2 Q(t) ~ sum_k H[k] * s**k, s = 2 t / LIMIT - 1: `fit_exponent(10, LIMIT)`, rounded to float32
H = (-9.532934188842773, -14.209527015686035, -6.034056186676025, -0.2043854296207428, 0.09225451201200485,
     -0.03926141560077667, 0.015279823914170265, -0.006132453214377165, 0.0017660469748079777,
     0.0008888055454008281, -0.0007272750372067094)
BLOCK = 2048  # elements a program (16 a thread at 4 warps: two 16-byte loads in flight)

if triton_available():
    import triton
    import triton.language as tl

    _H0, _H1, _H2, _H3, _H4, _H5, _H6, _H7, _H8, _H9, _H10 = (tl.constexpr(c) for c in H)
    _LIMIT, _SCALE = tl.constexpr(LIMIT), tl.constexpr(2.0 / LIMIT)

    @triton.jit
    def _gelu_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = i < n
        x = tl.load(x_ptr + i, mask=inside, other=0.0).to(tl.float32)
        t = tl.minimum(tl.abs(x), _LIMIT)  # clamped: the polynomial stays finite and t * 0 is 0 at |x| = inf
        s = t * _SCALE - 1.0
        h = _H10 * s + _H9
        h = h * s + _H8
        h = h * s + _H7
        h = h * s + _H6
        h = h * s + _H5
        h = h * s + _H4
        h = h * s + _H3
        h = h * s + _H2
        h = h * s + _H1
        h = h * s + _H0
        q = tl.exp2(tl.where(tl.abs(x) < _LIMIT, h, -float("inf")))  # Q(|x|); 0 from LIMIT on and for NaN
        y = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL) - t * q
        tl.store(y_ptr + i, y.to(y_ptr.dtype.element_ty), mask=inside)


def fit_exponent(degree: int = 10, limit: float = LIMIT, points: int = 4000, rounds: int = 50) -> tuple[float, ...]:
    """Coefficients (of s**0, s**1, ...; s = 2 t / limit - 1) of the polynomial of `degree` closest to
    h(t) = log2 Q(t) in the maximum norm on [0, limit], rounded to float32: weighted least squares on Chebyshev
    nodes, reweighted `rounds` times by the error (Lawson's algorithm, which converges to the minimax fit)."""
    from numpy.polynomial import chebyshev

    t = (np.cos(np.pi * (np.arange(points) + 0.5) / points) + 1) * limit / 2
    s = 2 * t / limit - 1
    h = (torch.special.log_ndtr(-torch.from_numpy(t)) / np.log(2)).numpy()
    weights = np.ones(points)
    for _ in range(rounds):
        coefficients = chebyshev.chebfit(s, h, degree, w=np.sqrt(weights))
        weights = weights * np.abs(chebyshev.chebval(s, coefficients) - h)
        weights /= weights.mean()
    return tuple(float(np.float32(c)) for c in chebyshev.cheb2poly(coefficients))


def gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """x Φ(x) in float64: the value each output approximates (Φ(x) = erfc(-x / √2) / 2, accurate in the tail where
    ``torch.special.ndtr`` is not: 2% off at x = -8)."""
    x = x.double()
    return x * 0.5 * torch.special.erfc(-x * 0.5**0.5)


def _kernel_runs(x: torch.Tensor) -> bool:
    return triton_available() and (x.is_cuda or triton_interpreting()) and x.dtype in (torch.float16, torch.bfloat16)


def _storage_order(x: torch.Tensor) -> list[int] | None:
    """The permutation of x's dimensions into the order its storage holds them, where that view is contiguous."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return order if x.permute(order).is_contiguous() else None


def _launch(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """GELU of every element of a contiguous x."""
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        # FMA contraction is what makes Horner's form one instruction a coefficient (Triton 3.10 turns it off)
        _gelu_kernel[(triton.cdiv(n, block),)](x, y, n, BLOCK=block, num_warps=4, enable_fp_fusion=True)
    return y


def _gelu(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """GELU of a contiguous x, row-major out: the kernel where it runs, ``F.gelu`` elsewhere."""
    x = x.contiguous()
    return _launch(x, block) if _kernel_runs(x) else F.gelu(x)


# What ``torch.compile`` sees; an eager call runs `_gelu` itself (an op's dispatch costs host time, as for the norm).
gelu_op = torch.library.custom_op("sparsity_lab::gelu", _gelu, mutates_args=())


@gelu_op.register_fake
def _(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU of x: the Triton kernel for a float16 / bfloat16 x on the GPU without gradients, ``F.gelu``
    otherwise. The result has x's layout where x is dense (a 2:4 layer's column-major y stays column-major):
    the kernel runs over x's storage, seen as the contiguous view its strides give."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16) or (torch.is_grad_enabled() and x.requires_grad):
        return F.gelu(x)  # the kernel is for 16-bit values and has no backward; Inductor fuses F.gelu
    order = _storage_order(x)
    if order is None:
        x, order = x.contiguous(), list(range(x.dim()))
    y = (torch.ops.sparsity_lab.gelu if torch.compiler.is_compiling() else _gelu)(x.permute(order))
    return y.permute(sorted(range(x.dim()), key=order.__getitem__))


class Gelu(nn.Module):
    """``nn.GELU()`` (the exact, erf form) computed by `gelu`: the same values up to the last bit of a few inputs,
    fewer instructions; swapped in by `models.stream.column_major_stream_`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x)


def unfit(module: nn.Module) -> str | None:
    """Why `Gelu` cannot stand in for `module` (None when it can): only a plain ``nn.GELU(approximate="none")``."""
    if not isinstance(module, nn.GELU):
        return f"{type(module).__name__} is not an nn.GELU"
    if type(module).forward is not nn.GELU.forward:
        return f"{type(module).__name__} overrides nn.GELU's forward: what it computes is not known here"
    if module.approximate != "none":
        return f"nn.GELU(approximate={module.approximate!r}) is not the exact GELU this kernel computes"
    return None


def gelu_speed(tokens: int = 25216, features: int = 4096, dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
               block: int = BLOCK) -> dict[str, float]:
    """Median ms over random values in a 2:4 layer's layout (D = yᵀ, features x tokens): ours (`block` elements a
    program; ``F.gelu`` where the kernel does not run), PyTorch's ``F.gelu``, and a copy of the same bytes (the
    bound); ours' relative error against PyTorch's and the share of outputs whose bits differ."""
    from sparsity_lab.checks import relative_error
    from sparsity_lab.timing import bench_ms

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(features, tokens, device=device, dtype=dtype, generator=gen)  # D = yᵀ, as fc1 writes it
    with torch.no_grad():
        ours, theirs = _gelu(x, block), F.gelu(x)
        out = torch.empty_like(x)
        return {"ours_ms": bench_ms(lambda: _gelu(x, block), device),
                "torch_ms": bench_ms(lambda: F.gelu(x), device),
                "copy_ms": bench_ms(lambda: out.copy_(x), device),
                "rel_error": relative_error(ours, theirs), "bits_differ": (ours != theirs).float().mean().item()}
