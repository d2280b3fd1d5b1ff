"""Exercise 09: will the whole model get faster? Amdahl's law, with the layout bill; and three kernels' arithmetic.

Lecture: lectures/09_end_to_end.ipynb. Grade with `sparsity-lab grade ex09`.

A profile says how many milliseconds of one dense forward each kind of kernel takes, e.g. ViT-L/16 on an H200:
    {"dense GEMM": 20.8, "attention": 2.8, "norms": 3.2, "layout copies": 0.2, "other": 5.8}   (total 32.8 ms)
Swapping linears to 2:4 speeds up only their GEMMs, and each swapped layer whose output leaves column-major may
cost extra re-layout time afterwards.

Write `predicted_forward_ms(profile, gemm_speedup, sparse_fraction=1.0, layout_ms=0.0)`: the predicted ms of the
sparse forward, where
- the GEMM time that goes sparse is sparse_fraction * profile["dense GEMM"] and runs `gemm_speedup` times faster;
- the rest of the dense GEMM time, and every other entry of the profile, stays as it is;
- `layout_ms` is added (the copies the swap's output layouts cost).
So  predicted = total - g + g / gemm_speedup + layout_ms,  with g = sparse_fraction * profile["dense GEMM"].
It raises ValueError, naming the argument, when profile has no "dense GEMM" entry or a negative time,
gemm_speedup <= 0, sparse_fraction is outside [0, 1], or layout_ms < 0. It does not modify `profile`.

Then write `predicted_speedup(profile, gemm_speedup, sparse_fraction=1.0, layout_ms=0.0)`: the dense total over
the predicted sparse forward.

Worked example (the profile above, gemm_speedup = 1.4):
    predicted_forward_ms(profile, 1.4)                  -> 32.8 - 20.8 + 14.857 = 26.857 ms
    predicted_speedup(profile, 1.4)                     -> 1.221   (the ceiling, with free layouts)
    predicted_speedup(profile, 1.4, layout_ms=19.4)     -> 32.8 / 46.257 = 0.709
    predicted_speedup(profile, 1.4, sparse_fraction=0.5) -> 32.8 / 29.829 = 1.100

Last, the column-major stream's norm, in plain PyTorch: a 2:4 layer writes D = yᵀ, so its tokens are the *columns*
of a row-major (C features, M tokens) tensor. Write `layer_norm_columns(d, weight=None, bias=None, eps=1e-5)`:
LayerNorm of every token over its C features, returned in D's layout, a contiguous (C, M) tensor of d's dtype:
    out[c, m] = (d[c, m] - mean_m) / sqrt(var_m + eps) * weight[c] + bias[c]
with mean_m and var_m (biased: divide by C) taken over column m, in float32 (or float64 for a float64 d). It
reduces along dim 0 and never transposes d into a row-major copy. It raises ValueError, naming the argument, when
d is not 2-D, weight or bias is not of shape (C,), or eps < 0. It does not modify d.

Worked example (C = 2 features, M = 2 tokens; token 0 is (1, 3), token 1 is (2, 6)):
    d = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    layer_norm_columns(d, eps=0.0)                                           -> [[-1., -1.], [1., 1.]]
    layer_norm_columns(d, torch.tensor([2.0, 1.0]), torch.tensor([0.0, 10.0]), eps=0.0)
                                                                             -> [[-2., -2.], [11., 11.]]

Last of all, a decode step's product (section 5): at one token a 2:4 layer's time is its weight's bytes, so a decode
kernel multiplies the weight as it lies in the "simple" layout of exercise 05 and never rebuilds the dense W. Write
`matvec_simple(x, values, meta)`: y = x Wᵀ for x (M, K) and W (N, K) given as `values` (N, K/2) and `meta` (uint8,
N x ceil(K/8): byte j holds group 2j's nibble i0 | (i1 << 2) in its low four bits, group 2j + 1's in its high four).
For every group g of four columns of a row n, with kept values v0, v1 at positions i0, i1:
    y[m, n] += v0 * x[m, 4g + i0] + v1 * x[m, 4g + i1]
It picks those entries of x (view x as (M, K/4, 4) and gather along the last dimension), multiplies and sums in
float32 (float64 for float64 inputs) and returns y (M, N) in x's dtype. It raises ValueError, naming the argument,
when x or values is not 2-D, K is not a multiple of 4, values is not (N, K/2), or meta is not uint8 of shape
(N, ceil(K/8)). It modifies none of its inputs.

Worked example (the row of exercise 05, [5, 0, 7, 0,  0, 0, 0, 9], and one token x = [1, 2, ..., 8]):
    values = torch.tensor([[5.0, 7.0, 0.0, 9.0]]);  meta = torch.tensor([[232]], dtype=torch.uint8)
    matvec_simple(torch.arange(1.0, 9.0)[None], values, meta)   -> [[5*1 + 7*3 + 0*7 + 9*8]] = [[98.]]
And the stream's GELU (section 3): GELU(x) = x Φ(x), usually written 0.5 x (1 + erf(x / √2)). For x < -5.5 that
sum rounds to 0 in float32 (erf(x / √2) rounds to -1), and between -5.5 and -4 it keeps only a few correct bits.
Written with the normal tail Q(t) = 1 - Φ(t) = erfc(t / √2) / 2 instead, both signs take one formula that loses
nothing:  GELU(x) = max(x, 0) - |x| Q(|x|)  (for x >= 0: x - x Q(x) = x Φ(x); for x < 0: x Q(-x) = x Φ(x)).
`models.gelu` computes Q as 2 ** h with a polynomial h; here use ``torch.special.erfc``. Write `gelu_from_tail(x)`:
that formula, computed in float32 (float64 for a float64 x), returned in x's dtype and shape. It raises ValueError,
naming x, when x is not a floating-point tensor. It does not modify x.

Worked example (float64):
    gelu_from_tail(torch.tensor([-6.0, 0.0, 1.0], dtype=torch.float64))  -> [-5.9195e-09, 0., 0.8413447]
    F.gelu(torch.tensor(-6.0))                                            -> -0.   (float32: 1 + erf rounded to 0)
    gelu_from_tail(torch.tensor(-6.0))                                    -> -5.9195e-09 (float32, 7 digits right)
"""

import torch


def predicted_forward_ms(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                         layout_ms: float = 0.0) -> float:
    """Predicted ms of the forward with `sparse_fraction` of its dense GEMM time 2:4 sparse."""
    raise NotImplementedError("ex09: write predicted_forward_ms")


def predicted_speedup(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                      layout_ms: float = 0.0) -> float:
    """The dense forward's total over `predicted_forward_ms`."""
    raise NotImplementedError("ex09: write predicted_speedup")


def layer_norm_columns(d: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                       eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm of every column (token) of D (C, M) over its C rows (features), in D's layout."""
    raise NotImplementedError("ex09: write layer_norm_columns")


def matvec_simple(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """y = x Wᵀ for W in the simple 2:4 layout, without rebuilding W."""
    raise NotImplementedError("ex09: write matvec_simple")


def gelu_from_tail(x: torch.Tensor) -> torch.Tensor:
    """GELU(x) = max(x, 0) - |x| Q(|x|), Q the normal tail: no cancellation for negative x."""
    raise NotImplementedError("ex09: write gelu_from_tail")
