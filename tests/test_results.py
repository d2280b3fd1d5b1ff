"""The recorded-results format: round trip, validation, labels, and the files shipped with the package."""

import json

import pytest

from sparsity_lab.course import results


def test_save_then_load_round_trips(tmp_path):
    path = results.save_results("demo", {"rows": [{"M": 16, "ms": 0.5}]}, tmp_path / "demo.json")
    loaded = results.load_results(path)
    assert loaded.name == "demo"
    assert loaded.figures == {"rows": [{"M": 16, "ms": 0.5}]}
    assert set(results.ENVIRONMENT_KEYS) <= set(loaded.environment)


def test_label_names_device_versions_and_date():
    env = {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0", "cusparselt": "0.8.0",
           "python": "3.12", "date": "2026-11-24"}
    label = results.validate({"schema": results.SCHEMA, "name": "x", "environment": env, "figures": {}}).label
    assert label == "recorded on NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, cusparselt 0.8.0, 2026-11-24"


@pytest.mark.parametrize(
    "payload, message",
    [
        ([], "must hold a JSON object"),
        ({"schema": "other"}, "schema must be"),
        ({"schema": results.SCHEMA, "name": "x", "figures": {}}, "missing key 'environment'"),
        ({"schema": results.SCHEMA, "name": "x", "environment": {"device": "cpu"}, "figures": {}}, "environment lacks"),
    ],
)
def test_malformed_files_are_rejected(payload, message):
    with pytest.raises(ValueError, match=message):
        results.validate(payload)


def test_bad_date_is_rejected(tmp_path):
    env = dict(results.record_environment(), date="yesterday")
    with pytest.raises(ValueError, match="ISO date"):
        results.save_results("x", {}, tmp_path / "x.json", environment=env)


def test_unknown_name_lists_recorded_files():
    with pytest.raises(FileNotFoundError, match="recorded ones"):
        results.load_results("no_such_results")


@pytest.mark.parametrize("name", results.recorded_names())
def test_every_shipped_results_file_is_valid(name):
    loaded = results.load_results(name)
    assert json.dumps(loaded.to_json())


@pytest.mark.parametrize(("raw", "text"), [(800, "0.8.0"), (602, "0.6.2"), (1000, "0.10.0"), (1000203, "1.2.3")])
def test_cusparselt_version_decodes_the_header_formula(raw, text):
    assert results.format_cusparselt_version(raw) == text


def test_results_paths_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="must name a .json results file"):
        results.save_results("x", {}, tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()
    with pytest.raises(ValueError, match="a recorded name or a .json path"):
        results.load_results(tmp_path / "x.csv")
