"""One JSON format for measurements, so lectures can show GPU numbers recorded elsewhere.

A results file is::

    {"schema": "sparsity_lab.results/1",
     "name": "semi24_linear",
     "environment": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "triton": "3.6.0",
                     "cusparselt": "0.8.0", "python": "3.12.3", "date": "2026-11-24"},
     "figures": {...anything JSON...}}

`record_environment()` fills the environment block on the machine that measures; `save_results` writes the
file; `load_results` reads and validates it, from a path or by name from the recorded files shipped in
`sparsity_lab/recorded/`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SCHEMA = "sparsity_lab.results/1"
RECORDED_DIR = Path(__file__).resolve().parents[1] / "recorded"
ENVIRONMENT_KEYS = ("device", "torch", "triton", "cusparselt", "python", "date")


def device_name(device: torch.device | str | None = None) -> str:
    """A human name for the device that measures: the GPU's name, or the CPU's."""
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def triton_version() -> str | None:
    """Triton's version, or None when it is not installed."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def cusparselt_version() -> str | None:
    """cuSPARSELt's version as PyTorch sees it ("0.8.0"), or None where it is not available."""
    backend = getattr(torch.backends, "cusparselt", None)
    if backend is None or not backend.is_available():
        return None
    raw = backend.version()
    if raw is None:
        return None
    return format_cusparselt_version(int(raw))


def format_cusparselt_version(raw: int) -> str:
    """cusparseLt.h's CUSPARSELT_VERSION (major * 1000000 + minor * 100 + patch) as "major.minor.patch"."""
    return f"{raw // 1_000_000}.{raw % 1_000_000 // 100}.{raw % 100}"


def record_environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """The environment block of a results file, read off this machine now."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "cusparselt": cusparselt_version(),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
    }


@dataclass(frozen=True)
class Results:
    """A validated results file: where and when it was measured, and the figures."""

    name: str
    environment: dict[str, Any]
    figures: Any

    @property
    def label(self) -> str:
        """'recorded on <device>, torch <v>, <date>': the caption a lecture puts on recorded numbers."""
        env = self.environment
        extras = "".join(f", {k} {env[k]}" for k in ("triton", "cusparselt") if env.get(k))
        return f"recorded on {env['device']}, torch {env['torch']}{extras}, {env['date']}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "name": self.name, "environment": self.environment, "figures": self.figures}


def validate(payload: Any, source: str = "results") -> Results:
    """Check a decoded results file and return it as `Results`; raise ValueError naming what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError(f"{source}: a results file must hold a JSON object, got {type(payload).__name__}")
    if payload.get("schema") != SCHEMA:
        raise ValueError(f"{source}: schema must be {SCHEMA!r}, got {payload.get('schema')!r}")
    for key in ("name", "environment", "figures"):
        if key not in payload:
            raise ValueError(f"{source}: missing key {key!r}")
    env = payload["environment"]
    missing = [k for k in ENVIRONMENT_KEYS if not isinstance(env, dict) or k not in env]
    if missing:
        raise ValueError(f"{source}: environment lacks {missing}")
    try:
        _dt.date.fromisoformat(env["date"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: environment.date must be an ISO date, got {env['date']!r}") from err
    return Results(name=payload["name"], environment=env, figures=payload["figures"])


def save_results(name: str, figures: Any, path: str | Path, environment: dict[str, Any] | None = None) -> Path:
    """Write `figures` with this machine's environment (or the one given) as a results file at `path` (.json)."""
    if Path(path).suffix != ".json":
        raise ValueError(f"path must name a .json results file, got {str(path)!r}")
    results = validate(
        {"schema": SCHEMA, "name": name, "environment": environment or record_environment(), "figures": figures}
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_json(), indent=1, sort_keys=False) + "\n")
    return path


def load_results(name_or_path: str | Path) -> Results:
    """Read a results file from a path, or by name from the recorded files shipped with the package."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECORDED_DIR / f"{name_or_path}.json"
    elif path.suffix != ".json":
        raise ValueError(f"name_or_path must be a recorded name or a .json path, got {str(name_or_path)!r}")
    if not path.exists():
        known = sorted(p.stem for p in RECORDED_DIR.glob("*.json"))
        raise FileNotFoundError(f"no results file {str(name_or_path)!r}; recorded ones: {known}")
    return validate(json.loads(path.read_text()), source=str(path))


def recorded_names() -> list[str]:
    """Names of the results files shipped with the package."""
    return sorted(p.stem for p in RECORDED_DIR.glob("*.json"))
