"""Build every Triton kernel of sparsity_lab for a Hopper GPU (sm_90a) on a machine without one, and report what
ptxas gave each variant: registers a thread, local memory (spills), shared memory, barriers inside loops.

The library's own launch code runs on small CPU tensors while Triton's active driver is a stand-in that names an
sm_90 target, and each launch becomes a compile-only warm-up: nothing runs, and each kernel is built as a GPU run
builds it (the same constexprs, warps and stages). Triton's interpreter, in which the tests check what the kernels
compute, accepts programs the compiler rejects; this build catches those, and shows register pressure where no GPU
is at hand (e.g. why a row of 16384 entries held in registers quantizes slower than two passes: 168 registers a
thread, three programs an SM).

    python scripts/hopper_build.py          # one line per kernel variant
    python scripts/hopper_build.py --json   # one JSON line (tests/test_hopper_build.py reads it)

Needs Triton with its NVIDIA backend (ptxas and cuobjdump ship in its wheel); TRITON_INTERPRET must be unset.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCH = 90  # sm_90a: the H100 / H200 the library is measured on
MAX_SHARED = 227 * 1024  # bytes of shared memory a block may take on sm_90 (opted in)
UNHOOKABLE = 3  # the exit status when this Triton cannot build and read sm_90a kernels here (`hookable`)


class _HopperStandIn:
    """The four questions Triton's JIT asks its active driver before it compiles, answered for an sm_90 GPU."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", ARCH, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _nvidia_tool(name: str) -> Path:
    """A binary of the NVIDIA backend that ships in Triton's wheel (ptxas, cuobjdump)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def hookable() -> str | None:
    """Why this Triton cannot build and read sm_90a kernels the way `compile_only` and `resource_usage` do
    (written against Triton 3.6-3.9: no NVIDIA backend, or a JIT of another shape), or None."""
    import inspect

    import triton
    from triton.runtime.jit import JITFunction

    if not _nvidia_tool("cuobjdump").exists():
        return f"Triton {triton.__version__} has no NVIDIA backend (ptxas, cuobjdump)"
    if not {"grid", "warmup"} <= set(inspect.signature(JITFunction.run).parameters):
        return f"Triton {triton.__version__}: JITFunction.run takes no grid and warmup"
    if not hasattr(triton.runtime.driver, "_active"):
        return f"Triton {triton.__version__}: its driver config holds no active driver"
    return None


@contextlib.contextmanager
def compile_only() -> Iterator[list[dict]]:
    """Within it every Triton launch compiles for sm_90a and returns without running; yields the list each build
    is appended to (kernel name, its constexpr keyword arguments, its tensors' dtypes, warps, stages, the
    CompiledKernel)."""
    import triton
    from triton.runtime.jit import JITFunction

    built: list[dict] = []
    launch = JITFunction.run

    def build(self, *args, grid, warmup, **kwargs):
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages", "enable_fp_fusion")}
        constexprs = {k: v for k, v in kwargs.items() if k not in options and not isinstance(v, torch.Tensor)}
        dtypes = [str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor)]
        built.append({"kernel": self.fn.__name__, "module": self.fn.__module__, "constexprs": constexprs,
                      "dtypes": dtypes, "num_warps": kernel.metadata.num_warps,
                      "num_stages": kernel.metadata.num_stages, "compiled": kernel})
        return kernel

    driver = triton.runtime.driver
    previous = driver._active  # None here: without a GPU there is no driver to go back to
    driver.set_active(_HopperStandIn())
    JITFunction.run = build
    try:
        yield built
    finally:
        JITFunction.run = launch
        driver._active = previous


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(_nvidia_tool("cuobjdump")), *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers a thread, stack and local (spilled) bytes, as cuobjdump (shipped in Triton's wheel) reports them,
    the SASS instructions (NOPs left out), and the barriers inside the kernel's loops (instructions between a
    backward branch and its target: a barrier there is data exchanged between warps every step)."""
    dump = _cuobjdump(cubin, "--dump-resource-usage", "-sass")
    found = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", dump))
    code = [(int(at, 16), op) for at, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", dump)]
    loops = [(int(target, 16), at) for at, op in code for target in re.findall(r"\bBRA\s+0x([0-9a-f]+)", op)
             if int(target, 16) < at]
    barriers = sum(1 for at, op in code if re.search(r"\bBAR\b", op) and any(lo <= at <= hi for lo, hi in loops))
    return {**{name.lower(): int(found[name]) for name in ("REG", "STACK", "LOCAL")}, "loop_barriers": barriers,
            "instructions": sum(1 for _, op in code if not re.match(r"(@!?U?P\w+\s+)?NOP\b", op))}


def package_kernels() -> set[str]:
    """`module.name` of every launched Triton kernel in the package (a `@triton.jit` function named `*_kernel`;
    the other jitted functions are helpers compiled into them)."""
    from triton.runtime.jit import JITFunction

    import sparsity_lab

    found = set()
    for info in pkgutil.walk_packages(sparsity_lab.__path__, "sparsity_lab."):
        if info.name.endswith("__main__"):  # the command line, which would run
            continue
        with contextlib.suppress(ImportError):  # modules needing an optional extra hold no kernels
            module = importlib.import_module(info.name)
            found |= {f"{info.name}.{name}" for name, obj in vars(module).items()
                      if isinstance(obj, JITFunction) and name.endswith("_kernel") and obj.fn.__module__ == info.name}
    return found


def _randn(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def _quant() -> None:
    from sparsity_lab.quant import kernels

    for x_dtype in (torch.bfloat16, torch.float16):
        for q_dtype in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2):
            for k in (4096, kernels.ONE_LOAD_UP_TO + 64):  # one load, two
                kernels._quantize(_randn(2, k, dtype=x_dtype), q_dtype)
    col_major = _randn(64, 128).t()  # cuSPARSELt's (N, M) result seen as (M, N)
    kernels.rescale(col_major.to(torch.int32), torch.ones(128), torch.ones(64), _randn(64), torch.bfloat16)
    kernels.rescale(col_major.to(torch.int32), torch.ones(128), torch.ones(64), None, torch.float16)
    kernels.rescale(col_major, torch.ones(128), torch.ones(64), _randn(64), torch.bfloat16)  # FP8: bf16 result
    kernels.rescale(col_major.float(), torch.ones(128), None, None, torch.float32)


def _semi24_decode() -> None:
    from sparsity_lab.semi24 import decode_kernel, layout

    n, k = 256, 1024
    for dtype in (torch.float16, torch.bfloat16):
        values, meta = layout.compress(layout.sparsify(torch.randn(n, k)).to(dtype), "simple")
        for config in decode_kernel.CANDIDATES:
            for tokens in ((1, 8) if config.cores == "cuda" else (16,)):
                decode_kernel.decode_linear(_randn(tokens, k, dtype=dtype), values, meta, config=config)
        decode_kernel.decode_linear(_randn(1, k, dtype=dtype), values, meta, _randn(n, dtype=dtype),
                                    config=decode_kernel.DEFAULT)


def _semi24_kernels() -> None:
    from sparsity_lab.semi24 import compress_kernel, transpose_kernel

    for dtype in (torch.float16, torch.bfloat16, torch.int8):
        dense = torch.randn(64, 256).mul(50).to(dtype)
        compress_kernel.prune_and_compress(dense, return_pruned=dtype != torch.int8)
        compress_kernel.prune_and_compress(dense, prune=False)
    transpose_kernel._launch(_randn(256, 128).t(), 64, 64)


def _training() -> None:
    from sparsity_lab.training import kernel

    for dtype in kernel.SUPPORTED:
        kernel.transposable_prune(_randn(128, 256, dtype=dtype))


def _block() -> None:
    from unittest import mock

    from sparsity_lab.block import decode_kernel, kernel

    def bsr(bs: int, dtype: torch.dtype, out: int = 256, k: int = 512) -> tuple[torch.Tensor, ...]:
        rows, cols = out // bs, k // bs
        crow = torch.arange(0, rows * cols + 1, cols, dtype=torch.int32)
        col = torch.arange(cols, dtype=torch.int32).repeat(rows)
        return crow, col, _randn(rows * cols, bs, bs, dtype=dtype)

    configs = kernel._configs()
    with mock.patch.object(kernel, "tma_supported", lambda x, out_features: True):  # a Hopper GPU
        for bs in kernel.SUPPORTED_BLOCK_SIZES:
            for dtype in kernel.SUPPORTED_DTYPES:
                crow, col, blocks = bsr(bs, dtype)
                x = _randn(256, 512, dtype=dtype)
                kept = kernel._prune_configs(configs, {"BS": bs})
                for variant in ("pointer", "tma"):
                    for c in kept if (bs == 64 and dtype == torch.bfloat16) else kept[:1]:
                        config = {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
                        kernel.bsr_linear(x, crow, col, blocks, 256, _randn(256, dtype=dtype), config=config,
                                          variant=variant)
    for bs in (32, 64):
        for dtype in (torch.float16, torch.bfloat16):
            crow, col, blocks = bsr(bs, dtype)
            for chunk in (None, 1):  # one program a block-row, several (float32 atomics)
                decode_kernel.bsr_decode_linear(_randn(4, 512, dtype=dtype), crow, col, blocks, 256,
                                                _randn(256, dtype=dtype), chunk=chunk)


def _models() -> None:
    from sparsity_lab.models import column_major_attention, column_major_norm, gelu

    for dtype in (torch.bfloat16, torch.float16):
        for block in (gelu.BLOCK // 2, gelu.BLOCK, 2 * gelu.BLOCK):  # 8, 16, 32 elements a thread
            gelu._launch(_randn(64, 32, dtype=dtype), block)

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for c in (1024, 4096, 8192):  # ViT-L's width, Llama-3-8B's, and one past a single pass
            d, r = _randn(c, 64, dtype=dtype), _randn(c, 64, dtype=dtype)
            weight, bias = _randn(c, dtype=dtype), _randn(c, dtype=dtype)
            for residual in (None, r):
                column_major_norm._launch(d, residual, weight, bias, 1e-6, False, 0)
                column_major_norm._launch(d, residual, weight, None, 1e-6, True, 0)
    # (heads, head dim, images of 197 tokens): 16 images make a token count that is a multiple of 16, as at batch
    # 128, so Triton proves rows aligned and loads them in vectors; 2 (394 tokens) load element by element, as at a
    # batch of 2, which at a head dimension of 128 spills 1528 bytes a thread (no model here has such heads)
    for dtype in (torch.bfloat16, torch.float16):
        for heads, head_dim, images in ((16, 64, 16), (16, 64, 2), (8, 32, 16), (8, 32, 2), (8, 128, 16)):
            d = _randn(3 * heads * head_dim, images * 197, dtype=dtype)
            column_major_attention._launch(d, images, heads, 64, 64, 4, 3)


BUILDS: dict[str, Callable[[], None]] = {"quant": _quant, "semi24 decode": _semi24_decode,
                                         "semi24 compress, transpose": _semi24_kernels, "training": _training,
                                         "block": _block, "models": _models}


def build_all() -> dict:
    """Every build of `BUILDS` under `compile_only`: the variants with their resources, and the package's kernels
    that none of them built."""
    import triton

    start, seconds = time.perf_counter(), {}
    with compile_only() as built:
        for name, build in BUILDS.items():
            began = time.perf_counter()
            build()
            seconds[name] = round(time.perf_counter() - began, 1)
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # one cuobjdump a variant, each a subprocess
        usage = list(pool.map(resource_usage, [b["compiled"].asm["cubin"] for b in built]))
    variants = []
    for b, used in zip(built, usage, strict=True):
        constexprs = {k: v if isinstance(v, (bool, int, float, str)) else repr(v) for k, v in b["constexprs"].items()}
        variants.append({**{k: v for k, v in b.items() if k != "compiled"}, "constexprs": constexprs,
                         "shared": b["compiled"].metadata.shared, **used})
    names = {f"{b['module']}.{b['kernel']}" for b in built}
    return {"triton": triton.__version__, "arch": f"sm_{ARCH}a", "variants": variants,
            "not_built": sorted(package_kernels() - names), "build_seconds": seconds,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the kernels would be built for the interpreter, not the GPU")
    if (why := hookable()) is not None:
        print(why, file=sys.stderr)
        sys.exit(UNHOOKABLE)
    report = build_all()
    if args.json:
        print(json.dumps(report))
        return
    for v in report["variants"]:
        flags = ", ".join(f"{k}={v}" for k, v in v["constexprs"].items())
        print(f"{v['kernel']:30} {(v['dtypes'] or ['-'])[0]:9} warps {v['num_warps']:2} stages {v['num_stages']}  "
              f"regs {v['reg']:3}  "
              f"local {v['local']:4}  shared {v['shared']:6}  instructions {v['instructions']:5}  "
              f"loop barriers {v['loop_barriers']:2}  {flags}")
    print(f"{len(report['variants'])} variants built for {report['arch']} by Triton {report['triton']} in "
          f"{report['seconds']} s; not built: {report['not_built'] or 'none'}")


if __name__ == "__main__":
    main()
