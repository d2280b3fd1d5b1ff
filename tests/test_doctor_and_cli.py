"""`sparsity-lab doctor`, the command-line entry points, and finding the course checkout."""

import subprocess
import sys

import pytest

from sparsity_lab.course import cli, doctor


def test_diagnosis_on_this_machine_is_consistent():
    found = doctor.diagnose()
    modes = found.lecture_modes()
    assert set(modes) == set(doctor.LECTURE_NEEDS)
    assert modes["00_tour"] == "live"
    if "cuda" not in found.capabilities:
        assert found.cuda_capability is None and not found.cutlass_24
        assert modes["04_gpu_structure"].startswith("recorded GPU results (live with cuda")
        assert modes["05_semi_structured"].startswith("live; its GPU measurements show recorded results")


def test_lecture_verdicts_follow_what_each_lecture_needs():
    base = dict(python="3", torch="2", device="cpu", cuda_capability=None, cusparselt=None, cusparselt_library=None)
    bare = doctor.Diagnosis(triton=None, **base).lecture_modes()
    assert bare["06_block_sparsity"].startswith("cannot run here: needs triton")
    assert bare["08_sparse_training"] == ("live; its GPU measurements show recorded results "
                                          "(live with cuda, cusparselt, triton)")
    gpu = doctor.Diagnosis(triton="3", capabilities={"cuda", "cusparselt", "triton"}, **base).lecture_modes()
    assert set(gpu.values()) == {"live"}


def test_cutlass_24_only_on_sm8x():
    base = dict(python="3", torch="2", device="gpu", cusparselt=None, cusparselt_library=None, triton=None)
    assert doctor.Diagnosis(cuda_capability=(8, 0), **base).cutlass_24
    assert not doctor.Diagnosis(cuda_capability=(9, 0), **base).cutlass_24


def test_report_names_every_part():
    text = doctor.diagnose().report()
    for word in ("torch", "CUDA capability", "cuSPARSELt", "Triton", "CUTLASS 2:4", "08_sparse_training"):
        assert word in text


@pytest.mark.parametrize("entry", [[sys.executable, "-m", "sparsity_lab", "doctor"]])
def test_module_entry_point_runs_doctor(entry):
    out = subprocess.run(entry, capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "lectures:" in out


def test_find_course_root_walks_up_and_explains_failure(tmp_path):
    root = cli.find_course_root()
    assert (root / "lectures").is_dir()
    assert cli.find_course_root(root / "sparsity_lab") == root
    with pytest.raises(FileNotFoundError, match="no course checkout found"):
        cli.find_course_root(tmp_path)


def test_lectures_starts_jupyterlab_on_the_lectures_folder(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: calls.append(command) or 0)
    assert cli.main(["lectures", "--no-browser"]) == 0
    (command,) = calls
    assert command[1:4] == ["-m", "jupyter", "lab"]
    assert command[4] == str(cli.find_course_root() / "lectures") and command[5:] == ["--no-browser"]


def test_grade_prints_a_report_and_exits_by_outcome(capsys):
    assert cli.main(["grade", "ex00", "--source", "solutions"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grading solutions/") and "PASS" in out and "FAIL" not in out


def test_bench_rejects_unknown_name(capsys):
    assert cli.main(["bench", "no_such_bench"]) == 2
    assert "no benchmark 'no_such_bench'" in capsys.readouterr().err


def test_grade_rejects_unknown_exercise():
    with pytest.raises(ValueError, match="known exercises"):
        cli.main(["grade", "ex99"])


@pytest.mark.parametrize("folder", ["cusparselt/lib", "cu13/lib"])
def test_cusparselt_library_is_found_where_either_wheel_layout_puts_it(tmp_path, monkeypatch, folder):
    library = tmp_path / "nvidia" / folder / "libcusparseLt.so.0"
    library.parent.mkdir(parents=True)
    library.touch()
    spec = type("Spec", (), {"submodule_search_locations": [str(tmp_path / "nvidia")]})()
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: spec if name == "nvidia" else None)
    assert doctor.find_cusparselt_library() == library


def test_doctor_knows_every_lecture():
    lectures = {path.stem for path in (cli.find_course_root() / "lectures").glob("*.ipynb")}
    assert lectures == set(doctor.LECTURE_NEEDS)
