"""`podsys layers` lists every layer the manifest accepts, core and add-on, and what it names
exists: each role is a role of the playbooks, each smoke test a test module, each section a
manifest key. Add-on roles carry the parts every role must have."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from podsys.cluster.layer_catalogue import CATALOGUE
from podsys.cluster.schema import ADDON_LAYERS, Layer, Manifest
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
ROLES = ROOT / "podsys" / "playbooks" / "roles"


def test_every_layer_the_manifest_accepts_is_listed_once():
    assert sorted(info.name for info in CATALOGUE) == sorted(get_args(Layer))
    assert {info.name for info in CATALOGUE if info.kind == "add-on"} == set(ADDON_LAYERS)


def test_what_each_layer_names_exists():
    for info in CATALOGUE:
        for role in info.roles:
            assert (ROLES / role / "tasks" / "main.yml").is_file(), f"{info.name}: role {role} missing"
        assert (ROOT / info.smoke).is_file(), f"{info.name}: smoke test {info.smoke} missing"
        for section in (info.section or "").split(", "):
            if section:
                assert section in Manifest.model_fields, f"{info.name}: no manifest section {section}"


def test_addon_roles_have_the_parts_every_role_has():
    for info in CATALOGUE:
        if info.kind != "add-on":
            continue
        for role in info.roles:
            base = ROLES / role
            for part in ("defaults/main.yml", "handlers/main.yml", "meta/main.yml", "meta/argument_specs.yml", "README.md"):
                assert (base / part).is_file(), f"{role}: {part} missing"
            defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
            specs = {name for entry in yaml.safe_load((base / "meta/argument_specs.yml").read_text())["argument_specs"].values()
                     for name in entry.get("options", {})}
            readme = (base / "README.md").read_text()
            for var in defaults:
                assert var.startswith(f"{role}_") and var in specs and f"`{var}`" in readme, f"{role}: {var}"


def test_podsys_layers_lists_them_all():
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "layers", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listed = {entry["name"]: entry for entry in json.loads(proc.stdout)}
    assert set(listed) == set(get_args(Layer))
    assert listed["accounting"]["kind"] == "add-on" and "slurmdbd" in listed["accounting"]["packages"]
    assert listed["accounting"]["section"] == "accounts"
    text = subprocess.run([sys.executable, "-m", "podsys.cli.main", "layers"], capture_output=True, text=True).stdout
    for name in get_args(Layer):
        assert f"\n{name} (" in "\n" + text


def test_addon_roles_are_ansible_lint_clean():
    # Debian's ansible-lint (what CI installs) with Debian's ansible-core: /usr/bin first.
    env = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
    lint = shutil.which("ansible-lint", path=env["PATH"])
    if not lint:
        pytest.skip("ansible-lint not installed (Debian package ansible-lint)")
    roles = [str(ROLES / role) for info in CATALOGUE if info.kind == "add-on" for role in info.roles]
    res = subprocess.run([lint, "--nocolor", "--offline", "--profile", "production", *roles],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
