"""The `sparsity-lab` command: doctor, lectures, grade, bench."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def find_course_root(start: Path | None = None) -> Path:
    """The checkout that holds `lectures/` and `tests/graders/`, searched upwards from `start` (the cwd)."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "lectures").is_dir() and (candidate / "tests" / "graders").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no course checkout found at or above {here}: run this inside a clone of the sparsity_lab repository "
        "(it needs lectures/ and tests/graders/)"
    )


def _doctor(_: argparse.Namespace) -> int:
    from sparsity_lab.course.doctor import diagnose

    print(diagnose().report())
    return 0


def _lectures(args: argparse.Namespace) -> int:
    root = find_course_root()
    command = [sys.executable, "-m", "jupyter", "lab", str(root / "lectures")] + args.jupyter_args
    print("starting:", " ".join(command))
    return subprocess.call(command)


def _grade(args: argparse.Namespace) -> int:
    from sparsity_lab.course.grading import grade

    root = find_course_root()
    return grade(root, exercise=args.exercise, source=args.source, verbose=args.verbose)


BENCHMARKS = {  # `sparsity-lab bench NAME`: each topic's benchmark module, with `main(argv) -> int`
    "pattern_study": "sparsity_lab.patterns.bench",
    "formats_cpu": "sparsity_lab.formats.bench",
    "gpu_structure": "sparsity_lab.gpu.bench",
    "semi24": "sparsity_lab.semi24.bench",
    "block_sparse": "sparsity_lab.block.bench",
    "quant_sparse": "sparsity_lab.quant.bench",
    "fp8": "sparsity_lab.quant.fp8_bench",
    "sparse_training": "sparsity_lab.training.bench",
    "distributed": "sparsity_lab.training.distributed_bench",
    "minilm_study": "sparsity_lab.transformer.bench",
    "minilm_gpu": "sparsity_lab.transformer.gpu_bench",
    "models": "sparsity_lab.models.bench",
}


def _bench(args: argparse.Namespace) -> int:
    import importlib

    if args.name not in BENCHMARKS:
        print(f"no benchmark {args.name!r}; available: {', '.join(sorted(BENCHMARKS))}", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[args.name]).main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsity-lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="what this machine can run, and which lectures run live")
    doctor.set_defaults(run=_doctor)

    lectures = commands.add_parser("lectures", help="open JupyterLab on lectures/")
    lectures.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="passed on to jupyter lab")
    lectures.set_defaults(run=_lectures)

    grade = commands.add_parser("grade", help="grade your exercises/ (all, or one such as ex00)")
    grade.add_argument("exercise", nargs="?", help="an exercise name such as ex00; all when left out")
    grade.add_argument(
        "--source",
        choices=("exercises", "solutions"),
        default=os.environ.get("SPARSITY_LAB_GRADE_FROM", "exercises"),
        help="grade your exercises/ (default) or the reference solutions/",
    )
    grade.add_argument("-v", "--verbose", action="store_true", help="show pytest's full output")
    grade.set_defaults(run=_grade)

    bench = commands.add_parser("bench", help="run a benchmark and write its results file")
    bench.add_argument("name", help=f"which benchmark: {', '.join(sorted(BENCHMARKS))}")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed on to the benchmark")
    bench.set_defaults(run=_bench)
    return parser


PASS_THROUGH = {"lectures": "jupyter_args", "bench": "bench_args"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args: argparse's REMAINDER drops leading options such as `lectures --no-browser`.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command not in PASS_THROUGH:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        setattr(args, PASS_THROUGH[args.command], unknown + getattr(args, PASS_THROUGH[args.command]))
    return args.run(args)
