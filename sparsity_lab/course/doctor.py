"""What this machine can run: torch, the GPU, cuSPARSELt, Triton, CUTLASS 2:4, and so which lecture parts
run live here and which show recorded GPU results."""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparsity_lab.course.results import cusparselt_version, triton_version

# What each lecture needs to run all of its cells live; without it the lecture shows recorded results.
LECTURE_NEEDS: dict[str, tuple[str, ...]] = {
    "00_tour": (),
    "01_pruning_obd": (),
    "02_patterns": (),
    "03_formats": (),
    "04_gpu_structure": ("cuda",),
    "05_semi_structured": ("cuda", "cusparselt"),
    "06_block_sparsity": ("cuda", "triton"),
    "07_sparsity_quantization": ("cuda", "cusparselt"),
    "08_sparse_training": ("cuda", "cusparselt"),
}


NO_TRITON = 'not installed (pip install "sparsity_lab[gpu]")'


def find_cusparselt_library() -> Path | None:
    """Where the `nvidia-cusparselt` wheel put libcusparseLt.so.0 (`nvidia/cusparselt/lib` up to 0.8,
    `nvidia/cu13/lib` from 0.10 on), or None."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for pattern in ("cusparselt*/lib/libcusparseLt.so*", "cu1*/lib/libcusparseLt.so*"):
            for candidate in sorted(Path(root).glob(pattern)):
                return candidate
    return None


@dataclass
class Diagnosis:
    """Everything `sparsity-lab doctor` reports, as data."""

    python: str
    torch: str
    device: str
    cuda_capability: tuple[int, int] | None
    cusparselt: str | None
    cusparselt_library: str | None
    triton: str | None
    capabilities: set[str] = field(default_factory=set)

    @property
    def cutlass_24(self) -> bool:
        """PyTorch's CUTLASS 2:4 kernels run on sm8x only (they refuse sm90)."""
        return self.cuda_capability is not None and self.cuda_capability[0] == 8

    def lecture_modes(self) -> dict[str, str]:
        """'live' or 'recorded (needs ...)' for each lecture."""
        modes = {}
        for lecture, needs in LECTURE_NEEDS.items():
            missing = [n for n in needs if n not in self.capabilities]
            modes[lecture] = "live" if not missing else f"recorded GPU results (needs {', '.join(missing)})"
        return modes

    def report(self) -> str:
        """The human-readable report."""
        cap = "none" if self.cuda_capability is None else f"sm_{self.cuda_capability[0]}{self.cuda_capability[1]}"
        lines = [
            f"python            {self.python}",
            f"torch             {self.torch}",
            f"device            {self.device}",
            f"CUDA capability   {cap}",
            f"cuSPARSELt        {self.cusparselt or 'not available'}"
            + (f" ({self.cusparselt_library})" if self.cusparselt_library else ""),
            f"Triton            {self.triton or NO_TRITON}",
            "CUTLASS 2:4       "
            + ("available (sm8x)" if self.cutlass_24 else "not here (PyTorch's CUTLASS 2:4 path runs on sm8x only)"),
            "",
            "lectures:",
        ]
        lines += [f"  {lecture:<26}{mode}" for lecture, mode in self.lecture_modes().items()]
        return "\n".join(lines)


def diagnose() -> Diagnosis:
    """Look at this machine now."""
    cuda = torch.cuda.is_available()
    library = find_cusparselt_library()
    diagnosis = Diagnosis(
        python=platform.python_version(),
        torch=torch.__version__,
        device=torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)",
        cuda_capability=torch.cuda.get_device_capability() if cuda else None,
        cusparselt=cusparselt_version(),
        cusparselt_library=str(library) if library else None,
        triton=triton_version(),
    )
    if cuda:
        diagnosis.capabilities.add("cuda")
    if diagnosis.cusparselt or library:
        diagnosis.capabilities.add("cusparselt")
    if diagnosis.triton:
        diagnosis.capabilities.add("triton")
    return diagnosis
