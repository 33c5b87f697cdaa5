"""Bad command-line input (issue 11, "every other command"): exit 2, one line per problem,
every problem in one run, and no line reading `error: : --flag`."""

from __future__ import annotations

import json

import pytest

from podsys.cluster.schema import LAYERS, SUPPORTED_OS_KEYS
from podsys.errors import Problem
from tests.unit.manifest_samples import write_manifest
from tests.conftest import invoke


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_command_line_problem_has_no_empty_file_part():
    assert str(Problem("", None, "--os", "unknown OS 'x'")) == "--os: unknown OS 'x'"
    assert str(Problem("m.yaml", 3, "stack", "bad")) == "m.yaml:3: stack: bad"
    assert str(Problem("m.yaml", None, "", "file not found")) == "m.yaml: file not found"


def test_compat_check_reports_every_bad_option_at_once():
    result = invoke("compat", "check", "--os", "ubuntu-20.04", "--stack", "r999", "--driver", "five-seventy",
                 "--cuda", "latest", "--layers", "base,gpus,slurm,infiniband,fabric", "--gpu", "H1000")
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert [line.split(":", 2)[1].strip() for line in lines] == [
        "--os", "--layers", "--layers", "--driver", "--cuda", "--stack", "--gpu"], lines
    for fragment in ("'ubuntu-20.04'", "'gpus'", "'fabric'", "'five-seventy' is not a version", "'latest' is not a version",
                     "'r999'", "'H1000'"):
        assert fragment in result.output
    assert "error: : " not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, flag", [
    (["compat", "list", "--os", "sles-15"], "--os"),
    (["compat", "list", "--layers", "base,gpu,nvlink"], "--layers"),
    (["compat", "check", "--os", "ubuntu-22.04", "--stack", "r580-cuda13.0", "--driver", "580"], "--driver"),
    (["compat", "check", "--os", "ubuntu-22.04", "--stack", "r580-cuda13.0", "--cuda", "13.0.0.0.x"], "--cuda"),
    (["compat", "check", "--os", "ubuntu-22.04", "--stack", "r580-cuda13.0", "--hardware", "nope"], "--hardware"),
    (["compat", "show", "r999"], "STACK"),
])
def test_bad_option_is_exit_2_naming_the_flag(args, flag):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert error_lines(result) and all(line.startswith(f"error: {flag}: ") for line in error_lines(result)), result.output


def test_compat_lists_come_from_the_schema():
    result = invoke("compat", "list", "--os", "nope")
    assert ", ".join(SUPPORTED_OS_KEYS) in result.output
    result = invoke("compat", "list", "--layers", "nope")
    assert ", ".join(LAYERS) in result.output


def test_valid_driver_and_cuda_overrides_still_check():
    result = invoke("compat", "check", "--os", "ubuntu-22.04", "--stack", "r580-cuda13.0", "--gpu", "H100",
                 "--driver", "535.54.03", "--json")
    assert result.exit_code == 1
    assert any(v["rule"] == "cuda_min_driver" for v in json.loads(result.stdout)["violations"])


def test_status_without_head_state_says_there_is_none(tmp_path):
    manifest = write_manifest(tmp_path)
    state = tmp_path / "no-state"
    result = invoke("status", str(manifest), "--state-dir", str(state))
    assert result.exit_code == 0, result.output
    assert "no install state" in result.output and "pending" not in result.output
    result = invoke("status", str(manifest), "--state-dir", str(state), "--json")
    data = json.loads(result.stdout)
    assert data["state"] == "none" and data["nodes"] == []
    assert not state.exists()  # asking wrote nothing


@pytest.mark.parametrize("url", ["10.0.0.1:8081", "ftp://head", "http://", "http://head:99999", "http://he ad"])
def test_status_url_that_is_not_a_url_is_exit_2(tmp_path, url):
    result = invoke("status", str(write_manifest(tmp_path)), "--url", url)
    assert result.exit_code == 2, result.output
    assert error_lines(result)[0].startswith("error: --url: ")


@pytest.mark.parametrize("command", [["check"], ["status"], ["deploy"]])
def test_missing_manifest_is_exit_2(tmp_path, command):
    result = invoke(*command, str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [f"error: {tmp_path / 'nope.yaml'}: file not found"]


def test_lab_mirror_that_is_not_a_url_is_exit_2_before_anything_is_built(tmp_path):
    result = invoke("lab", "up", "--dir", str(tmp_path / "lab"), "--mirror", "not a url")
    assert result.exit_code == 2, result.output
    assert error_lines(result) == ["error: --mirror: 'not a url' is not an http:// or https:// URL "
                                   "(e.g. http://deb.debian.org/debian)"]
    assert not (tmp_path / "lab").exists()
