"""The add-on layers' wheel sets in the offline bundle: planned from the roles' defaults,
downloaded for the target with a real `pip download` (from a local index in PEP 503 "simple"
layout, built here from real wheel archives), listed and signed in CONTENTS.sha256, reused on a
warm rebuild, and found by validate/render when the manifest has no wheelhouse of its own."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from podsys.bundle.addon_packages import roles_dir
from podsys.bundle.addon_wheels import (
    WheelSet,
    build_wheel_sets,
    missing_wheels,
    pip_download_argv,
    target_platforms,
    wheel_sets,
)
from podsys.bundle.build import plan_bundle, verify_bundle, write_contents
from podsys.bundle.repo import SiteKey
from podsys.cluster.load import load_cluster
from podsys.render.build import VARS_FILE, render_files
from tests.conftest import REPO_ROOT
from tests.unit.manifest_samples import assert_problem, line_of

def _notebooks_manifest_text() -> str:
    from tests.unit.render.test_notebooks import NOTEBOOKS
    return NOTEBOOKS


def _models_manifest_text() -> str:
    from tests.unit.addons.test_models import MODELS
    return MODELS


def _write(tmp_path: Path, text: str) -> Path:
    from tests.unit.manifest_samples import MACS, write_manifest
    return write_manifest(tmp_path, text, MACS)


def _defaults(role: str) -> dict:
    return yaml.safe_load((roles_dir() / role / "defaults" / "main.yml").read_text())


# ---------------------------------------------------------------- planning


def test_the_sets_and_their_pins_come_from_the_roles_defaults():
    sets = {s.name: s for s in wheel_sets(["notebooks", "models"])}
    assert list(sets) == ["batchspawner", "mlflow", "mlflow-client"]
    assert list(sets["batchspawner"].requirements) == _defaults("notebooks")["notebooks_wheel_requirements"]
    assert list(sets["mlflow"].requirements) == _defaults("models")["models_server_requirements"]
    assert list(sets["mlflow-client"].requirements) == _defaults("models")["models_client_requirements"]
    assert sets["batchspawner"].no_deps and not sets["mlflow"].no_deps
    assert (sets["mlflow-client"].field_name, sets["batchspawner"].field_name) == ("models.client_wheelhouse", "notebooks.wheelhouse")
    assert wheel_sets(["base", "slurm"]) == []


def test_a_templated_requirement_in_the_defaults_is_refused(tmp_path):
    role = tmp_path / "notebooks" / "defaults"
    role.mkdir(parents=True)
    (role / "main.yml").write_text("notebooks_wheel_requirements: ['batchspawner=={{ v }}']\n")
    with pytest.raises(ValueError, match="notebooks_wheel_requirements must be a list of plain pip requirements"):
        wheel_sets(["notebooks"], roles=tmp_path)


def test_the_plan_lists_the_enabled_layers_sets(tmp_path):
    (tmp_path / "wheelhouse").mkdir()
    (tmp_path / "wheelhouse" / "batchspawner-1.3.0-py3-none-any.whl").write_bytes(b"PK")
    plan = plan_bundle(load_cluster(_write(tmp_path, _notebooks_manifest_text())))
    assert [s.name for s in plan.wheel_sets] == ["batchspawner"]
    assert plan.as_dict()["addon_wheels"] == [{"set": "batchspawner", "layer": "notebooks",
                                               "requirements": ["batchspawner==1.3.0"],
                                               "directory": "wheels/addons/batchspawner/"}]
    assert plan_bundle(load_cluster(_write(tmp_path, _notebooks_manifest_text())), wheels=False).wheel_sets == []
    lab = plan_bundle(load_cluster(REPO_ROOT / "manifests" / "lab.yaml"))
    assert lab.wheel_sets == []


def test_bundle_build_plan_prints_the_sets_and_fetches_nothing(tmp_path):
    """The build machine has no wheels yet (fetching them is the point): no refusal for that."""
    from tests.unit.addons.test_models import _write as write_models
    path = write_models(tmp_path, _models_manifest_text() + "packages: {source: bundle}\n", wheels=False)
    assert not (tmp_path / "wheels").exists()
    assert subprocess.run([sys.executable, "-m", "podsys.cli.main", "validate", str(path)], capture_output=True,
                          cwd=REPO_ROOT).returncode == 2  # validate (and deploy) still want them
    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "bundle", "build", str(path), "--output", str(out),
                           "--plan", "--json"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [(s["set"], s["directory"]) for s in plan["addon_wheels"]] == [
        ("mlflow", "wheels/addons/mlflow/"), ("mlflow-client", "wheels/addons/mlflow-client/")]
    assert "mariadb-server" in plan["packages"]  # the accounting layer's packages are planned too
    assert not out.exists()
    text = subprocess.run([sys.executable, "-m", "podsys.cli.main", "bundle", "build", str(path), "--output", str(out),
                           "--plan"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert text.returncode == 0, text.stderr
    assert "wheels/addons/mlflow-client/ (layer models): mlflow-skinny==" in text.stdout


def test_pip_downloads_for_the_target_python_and_glibc_not_this_machine():
    tags = target_platforms((2, 36))
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_5_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags
    (batchspawner,) = wheel_sets(["notebooks"])
    argv = pip_download_argv(batchspawner, Path("/d"), "3.11", (2, 36))
    pairs = list(zip(argv, argv[1:]))
    assert ("--python-version", "3.11") in pairs and ("--abi", "cp311") in pairs and ("--implementation", "cp") in pairs
    assert "--only-binary=:all:" in argv and "--no-deps" in argv and argv[-1] == "batchspawner==1.3.0"
    (server,) = [s for s in wheel_sets(["models"]) if s.name == "mlflow"]
    assert "--no-deps" not in pip_download_argv(server, Path("/d"), "3.12", (2, 39))


def test_missing_wheels_matches_normalized_names_and_pinned_versions(tmp_path):
    for name in ("mlflow_skinny-3.17.2-py3-none-any.whl", "pymysql-1.2.4-py3-none-any.whl", "notes.txt"):
        (tmp_path / name).write_bytes(b"PK")
    assert missing_wheels(tmp_path, ["mlflow-skinny==3.17.2", "PyMySQL==1.2.4"]) == []
    assert missing_wheels(tmp_path, ["mlflow-skinny==3.18.0", "mlflow", "PyMySQL"]) == ["mlflow-skinny==3.18.0", "mlflow"]


# ---------------------------------------------------------------- downloading from a local index


def _wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real (pure-Python) wheel archive, and its project page in the index: PEP 427 layout
    (dist-info METADATA, WHEEL, RECORD with urlsafe-base64 sha256) and PEP 503 simple pages."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: podsys-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    page = index / name
    page.mkdir(parents=True, exist_ok=True)
    filename = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(page / filename, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(page.glob("*.whl")))
    (page / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    projects = "".join(f'<a href="{p.name}/">{p.name}</a>\n' for p in sorted(index.iterdir()) if p.is_dir())
    (index / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{projects}</body></html>\n")
    return page / filename


@pytest.fixture()
def local_index(tmp_path, monkeypatch):
    """file:// URL of a simple index with `spawner` (no deps wanted), `tracker` -> `driver`.
    pip's own configuration is set aside, so nothing but this index is asked."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    index = tmp_path / "index" / "simple"
    _wheel(index, "spawner", "1.3.0", ("hubcore",))
    _wheel(index, "tracker", "3.0", ("driver>=1",))
    _wheel(index, "driver", "1.2")
    return index


SPAWNER = WheelSet("batchspawner", "notebooks", ("spawner==1.3.0",), True, ("notebooks", "wheelhouse"))
TRACKER = WheelSet("mlflow", "models", ("tracker==3.0",), False, ("models", "wheelhouse"))


def _build(bundle: Path, sets, index: Path):
    return build_wheel_sets(sets, bundle, bundle / ".work", "3.11", (2, 36), index_url=index.as_uri())


def test_sets_are_downloaded_with_their_dependencies_unless_no_deps(tmp_path, local_index):
    bundle = tmp_path / "bundle"
    results = _build(bundle, [SPAWNER, TRACKER], local_index)
    assert [(r.name, r.files, r.downloaded) for r in results] == [("batchspawner", 1, True), ("mlflow", 2, True)]
    assert sorted(p.name for p in (bundle / "wheels/addons/batchspawner").iterdir()) == ["spawner-1.3.0-py3-none-any.whl"]
    assert sorted(p.name for p in (bundle / "wheels/addons/mlflow").iterdir()) == [
        "driver-1.2-py3-none-any.whl", "tracker-3.0-py3-none-any.whl"]


def test_a_warm_rebuild_downloads_nothing_and_a_changed_pin_downloads_again(tmp_path, local_index):
    bundle = tmp_path / "bundle"
    _build(bundle, [SPAWNER, TRACKER], local_index)
    before = {p: p.stat().st_mtime_ns for p in (bundle / "wheels/addons").rglob("*.whl")}
    shutil.rmtree(local_index)  # a warm rebuild must not need the index at all
    again = _build(bundle, [SPAWNER, TRACKER], local_index)
    assert [r.downloaded for r in again] == [False, False]
    assert {p: p.stat().st_mtime_ns for p in (bundle / "wheels/addons").rglob("*.whl")} == before

    _wheel(local_index, "spawner", "1.4.0")
    newer = WheelSet("batchspawner", "notebooks", ("spawner==1.4.0",), True, ("notebooks", "wheelhouse"))
    (result,) = _build(bundle, [newer], local_index)
    assert result.downloaded
    assert [p.name for p in (bundle / "wheels/addons/batchspawner").iterdir()] == ["spawner-1.4.0-py3-none-any.whl"]
    assert not (bundle / "wheels/addons/mlflow").exists()  # no layer wants it any more


def test_a_changed_file_is_downloaded_again(tmp_path, local_index):
    bundle = tmp_path / "bundle"
    _build(bundle, [SPAWNER], local_index)
    wheel = bundle / "wheels/addons/batchspawner/spawner-1.3.0-py3-none-any.whl"
    wheel.write_bytes(b"not the downloaded file")
    (result,) = _build(bundle, [SPAWNER], local_index)
    assert result.downloaded and zipfile.is_zipfile(wheel)


def test_a_failed_download_names_the_set_and_keeps_nothing(tmp_path, local_index):
    from podsys.errors import PodsysError

    missing = WheelSet("batchspawner", "notebooks", ("spawner==9.9",), True, ("notebooks", "wheelhouse"))
    with pytest.raises(PodsysError, match=r"pip download of batchspawner \(spawner==9.9\) failed"):
        _build(tmp_path / "bundle", [missing], local_index)
    assert not (tmp_path / "bundle" / "wheels/addons/batchspawner").exists()


@pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("gpgv") is None, reason="gpg/gpgv not installed")
def test_the_signed_contents_list_the_wheels_and_verify_names_a_tampered_one(tmp_path, local_index):
    bundle = tmp_path / "bundle"
    _build(bundle, [SPAWNER, TRACKER], local_index)
    key = SiteKey(bundle / "keys")
    key.ensure("podsys test <podsys@test.invalid>")
    (bundle / "repo").mkdir()
    key.export_public(bundle / "repo")
    write_contents(bundle, key)
    key.stop_agent()
    listed = {line.split("  ", 1)[1] for line in (bundle / "CONTENTS.sha256").read_text().splitlines()}
    assert {"wheels/addons/batchspawner/spawner-1.3.0-py3-none-any.whl", "wheels/addons/mlflow/driver-1.2-py3-none-any.whl",
            "wheels/addons/mlflow/tracker-3.0-py3-none-any.whl"} <= listed
    assert not any(name.startswith(".work") for name in listed)
    report = verify_bundle(bundle)
    assert report.ok, report.problems

    tampered = bundle / "wheels/addons/mlflow/driver-1.2-py3-none-any.whl"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    (bundle / "wheels/addons/mlflow/extra-1.0-py3-none-any.whl").write_bytes(b"PK")
    report = verify_bundle(bundle)
    assert report.problems == ["wheels/addons/mlflow/extra-1.0-py3-none-any.whl: not in CONTENTS.sha256 (added after the build)",
                               "wheels/addons/mlflow/driver-1.2-py3-none-any.whl: sha256 mismatch (tampered or corrupt)"]


# ---------------------------------------------------------------- deploy: which directory


def _bundle_manifest(tmp_path: Path, bundle: Path, source: str = "bundle") -> Path:
    text = _notebooks_manifest_text() + f"packages: {{source: {source}, bundle_path: {bundle}}}\n"
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _write(tmp_path, text)


def _problems(path: Path):
    from podsys.errors import InputError
    with pytest.raises(InputError) as info:
        load_cluster(path)
    return info.value.problems


def test_render_takes_the_bundles_set_when_the_manifest_has_no_wheelhouse(tmp_path):
    bundle = tmp_path / "srv" / "bundle"
    (bundle / "wheels/addons/batchspawner").mkdir(parents=True)
    (bundle / "wheels/addons/batchspawner/batchspawner-1.3.0-py3-none-any.whl").write_bytes(b"PK")
    cluster = load_cluster(_bundle_manifest(tmp_path / "site", bundle))
    rendered = yaml.safe_load(render_files(cluster)[VARS_FILE])
    assert rendered["podsys_notebooks"]["wheelhouse"] == str(bundle / "wheels/addons/batchspawner")

    (tmp_path / "site" / "wheelhouse").mkdir()  # the site's own directory wins when it exists
    (tmp_path / "site" / "wheelhouse" / "batchspawner-1.3.0-py3-none-any.whl").write_bytes(b"PK")
    rendered = yaml.safe_load(render_files(load_cluster(tmp_path / "site" / "cluster.yaml"))[VARS_FILE])
    assert rendered["podsys_notebooks"]["wheelhouse"] == str(tmp_path / "site" / "wheelhouse")


def test_neither_wheelhouse_nor_bundle_set_is_one_problem_naming_both(tmp_path):
    bundle = tmp_path / "srv" / "bundle"
    path = _bundle_manifest(tmp_path / "site", bundle)
    text = path.read_text()
    assert_problem(_problems(path), path, line_of(text, "notebooks:"), "notebooks.wheelhouse",
                   f"neither {tmp_path / 'site' / 'wheelhouse'} nor the offline bundle's "
                   f"{bundle / 'wheels/addons/batchspawner'} exists (build the bundle with layer 'notebooks' on")


def test_a_bundle_set_without_the_pinned_wheel_is_named(tmp_path):
    bundle = tmp_path / "srv" / "bundle"
    (bundle / "wheels/addons/batchspawner").mkdir(parents=True)
    (bundle / "wheels/addons/batchspawner/batchspawner-1.2.0-py3-none-any.whl").write_bytes(b"PK")
    path = _bundle_manifest(tmp_path / "site", bundle)
    assert_problem(_problems(path), path, line_of(path.read_text(), "notebooks:"), "notebooks.wheelhouse",
                   f"{bundle / 'wheels/addons/batchspawner'} has no wheel for batchspawner==1.3.0")


def test_without_a_bundle_source_the_bundle_is_not_looked_at(tmp_path):
    bundle = tmp_path / "srv" / "bundle"
    (bundle / "wheels/addons/batchspawner").mkdir(parents=True)
    (bundle / "wheels/addons/batchspawner/batchspawner-1.3.0-py3-none-any.whl").write_bytes(b"PK")
    path = _bundle_manifest(tmp_path / "site", bundle, source="proxy")
    assert_problem(_problems(path), path, line_of(path.read_text(), "notebooks:"), "notebooks.wheelhouse",
                   f"{tmp_path / 'site' / 'wheelhouse'} does not exist")


def test_validate_names_a_missing_models_client_wheelhouse_in_one_line(tmp_path):
    from tests.unit.addons.test_models import _write as write_models
    path = write_models(tmp_path, _models_manifest_text())
    shutil.rmtree(tmp_path / "wheels" / "mlflow-client")
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "validate", str(path)], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{path}:" in lines[0] and ": models.client_wheelhouse: " in lines[0]
    assert f"{tmp_path / 'wheels' / 'mlflow-client'} does not exist" in lines[0]
