"""Exercise 09: will the whole model get faster? Amdahl's law, with the layout bill.

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
"""

import torch  # noqa: F401  (the course's exercises all import torch; this one needs only arithmetic)


def predicted_forward_ms(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                         layout_ms: float = 0.0) -> float:
    """Predicted ms of the forward with `sparse_fraction` of its dense GEMM time 2:4 sparse."""
    raise NotImplementedError("ex09: write predicted_forward_ms")


def predicted_speedup(profile: dict[str, float], gemm_speedup: float, sparse_fraction: float = 1.0,
                      layout_ms: float = 0.0) -> float:
    """The dense forward's total over `predicted_forward_ms`."""
    raise NotImplementedError("ex09: write predicted_speedup")
