"""What this machine can run: torch, the GPU, cuSPARSELt, Triton, CUTLASS 2:4, and so which lecture parts
run live here and which show recorded GPU results."""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparsity_lab.course.results import cusparselt_version, triton_version


@dataclass(frozen=True)
class LectureNeeds:
    """What a lecture needs: `required` to run at all; `gpu` for its GPU measurements to run live (without it
    they show recorded results, labelled); `cpu_part`: whether anything but those measurements runs live."""

    required: tuple[str, ...] = ()
    gpu: tuple[str, ...] = ()
    cpu_part: bool = True


LECTURE_NEEDS: dict[str, LectureNeeds] = {
    "00_tour": LectureNeeds(),
    "01_pruning_obd": LectureNeeds(),
    "02_patterns": LectureNeeds(),
    "03_formats": LectureNeeds(),
    "04_gpu_structure": LectureNeeds(gpu=("cuda", "cusparselt"), cpu_part=False),
    "05_semi_structured": LectureNeeds(gpu=("cuda", "cusparselt", "triton")),
    "06_block_sparsity": LectureNeeds(required=("triton",), gpu=("cuda",)),  # the kernel runs interpreted on a CPU
    "07_sparsity_quantization": LectureNeeds(gpu=("cuda", "cusparselt", "triton")),
    "08_sparse_training": LectureNeeds(gpu=("cuda", "cusparselt", "triton")),
    "09_end_to_end": LectureNeeds(gpu=("cuda", "cusparselt")),  # whole-model speed recorded (bench models)
    "10_pretrained_transformer": LectureNeeds(),  # its GPU speed is recorded (sparsity-lab bench minilm_gpu)
}


NO_TRITON = 'not installed (pip install "sparsity_lab[gpu]")'
INSTALL = {"triton": 'pip install "sparsity_lab[gpu]" on Linux', "cuda": "an NVIDIA GPU",
           "cusparselt": "PyTorch's CUDA build brings it"}


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
        """For each lecture: whether it runs here, and which of its parts run live or show recorded results."""
        modes = {}
        for lecture, needs in LECTURE_NEEDS.items():
            required = [n for n in needs.required if n not in self.capabilities]
            gpu = [n for n in needs.gpu if n not in self.capabilities]
            if required:
                modes[lecture] = f"cannot run here: needs {', '.join(required)} ({INSTALL[required[0]]})"
            elif not gpu:
                modes[lecture] = "live"
            elif needs.cpu_part:
                modes[lecture] = f"live; its GPU measurements show recorded results (live with {', '.join(gpu)})"
            else:
                modes[lecture] = f"recorded GPU results (live with {', '.join(gpu)})"
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
