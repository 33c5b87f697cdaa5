"""The core verbs as a user runs them: exit codes, one-line errors, no tracebacks."""

import json

import yaml

from tests.unit.manifest_samples import MACS, VALID, line_of, write_manifest
from tests.conftest import podsys


def test_validate_ok_and_json(tmp_path):
    path = write_manifest(tmp_path)
    res = podsys("validate", path)
    assert res.returncode == 0, res.stderr
    assert "is valid" in res.stdout
    res = podsys("validate", path, "--json")
    data = json.loads(res.stdout)
    assert data["valid"] is True and data["nodes"] == 4 and data["stack"] == "r580-cuda13.0"


def test_validate_bad_input_exit_2_one_line_per_problem_no_traceback(tmp_path):
    text = VALID.replace("hosts: gpu[001-004]", "hots: gpu[001-004]").replace("distro: ubuntu", "distro: arch")
    path = write_manifest(tmp_path, text)
    res = podsys("validate", path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert f"error: {path}:{line_of(text, 'hots:')}: node_groups[0].hots: unknown key 'hots' (did you mean 'hosts'?)" in lines
    assert any(l.startswith(f"error: {path}:{line_of(text, 'distro')}: os.distro:") for l in lines)
    data = json.loads(podsys("validate", path, "--json").stdout)
    assert data["valid"] is False and len(data["problems"]) == len(lines)


def test_validate_defaults_to_cluster_yaml_in_cwd(tmp_path):
    write_manifest(tmp_path)
    assert podsys("validate", cwd=tmp_path).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    res = podsys("validate", cwd=empty)
    assert res.returncode == 2 and "cluster.yaml: file not found" in res.stderr


def test_render_writes_build_dir_and_allocation(tmp_path):
    path = write_manifest(tmp_path)
    res = podsys("render", path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / ".podsys/build/inventory/hosts.yml").exists()
    assert yaml.safe_load((tmp_path / "cluster.addresses.yaml").read_text())["provision"]["gpu004"] == "10.10.1.4"
    res = podsys("render", path, "--check")
    assert res.returncode == 0 and "0 added, 0 changed, 0 removed" in res.stdout
    write_manifest(tmp_path, VALID.replace("gpu[001-004]", "gpu[001-003]"))
    res = podsys("render", path, "--diff", "--check")
    assert res.returncode == 1
    assert "-gpu004" in res.stdout or "gpu004" in res.stdout


def test_render_bad_input_writes_nothing(tmp_path):
    path = write_manifest(tmp_path, VALID.replace("stack: auto", "stack: bogus"))
    res = podsys("render", path, "--output", tmp_path / "out")
    assert res.returncode == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "cluster.addresses.yaml").exists()


def test_init_writes_valid_starter_and_refuses_overwrite(tmp_path):
    res = podsys("init", "--head-interface", "eno1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cluster.yaml").exists() and (tmp_path / "cluster-macs.csv").exists()
    assert podsys("validate", cwd=tmp_path).returncode == 0
    again = podsys("init", cwd=tmp_path)
    assert again.returncode == 2 and "already exists; use --force" in again.stderr
    assert podsys("init", "--force", cwd=tmp_path).returncode == 0


def test_compat_check_refused_lists_rules_and_sources():
    res = podsys("compat", "check", "--os", "ubuntu-22.04", "--gpu", "H200", "--stack", "r535-cuda12.2")
    assert res.returncode == 1
    assert "H200 needs driver >= 550.90.07" in res.stderr and "source:" in res.stderr
    res = podsys("compat", "check", "--os", "ubuntu-22.04", "--gpu", "H100", "--stack", "r535-cuda12.2", "--cuda", "12.8")
    assert res.returncode == 1 and "CUDA 12.8 needs driver >= 570.26" in res.stderr
    res = podsys("compat", "check", "--os", "ubuntu-22.04", "--gpu", "H200", "--stack", "r580-cuda13.0")
    assert res.returncode == 0 and "allowed" in res.stdout


def test_compat_bad_input_exit_2():
    res = podsys("compat", "check", "--os", "windows-11", "--gpu", "H100", "--stack", "r580-cuda13.0")
    assert res.returncode == 2 and "unknown OS 'windows-11'" in res.stderr
    res = podsys("compat", "show", "r580-cuda13")
    assert res.returncode == 2 and "did you mean 'r580-cuda13.0'" in res.stderr


def test_compat_list_and_show_json():
    rows = json.loads(podsys("compat", "list", "--os", "ubuntu-24.04", "--gpu", "H100", "--json").stdout)
    fits = {r["id"]: r["valid"] for r in rows}
    assert fits == {"r580-cuda13.0": True, "r570-cuda12.8": True, "r550-cuda12.4": False, "r535-cuda12.2": False}
    show = json.loads(podsys("compat", "show", "r535-cuda12.2", "--json").stdout)
    assert show["driver"] == "535.230.02" and show["nccl"] == "2.18.5-1+cuda12.2"
