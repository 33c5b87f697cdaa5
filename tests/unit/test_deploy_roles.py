"""The deploy playbook and its roles without hosts: the roles' Python filters, the role layout
every role must have, a syntax check of site.yml against a rendered inventory, ansible-lint."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
DEPLOY_ROLES = ("base", "slurm", "monitoring", "package_proxy", "health")


def load_filters(role: str, module: str):
    path = PLAYBOOKS / "roles" / role / "filter_plugins" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"{role}_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


INDEXTARGETS = """\
http://deb.debian.org/debian/ bookworm main
http://deb.debian.org/debian/ bookworm main
http://deb.debian.org/debian/ bookworm contrib
http://deb.debian.org/debian/ bookworm-updates main
http://deb.debian.org/debian-security/ bookworm-security main
"""


def test_apt_sources_from_indextargets_dedupe_and_group_components():
    f = load_filters("package_proxy", "apt_sources")
    sources = f.package_proxy_sources(INDEXTARGETS.splitlines())
    assert sources == [
        {"uri": "http://deb.debian.org/debian/", "suite": "bookworm", "components": ["main", "contrib"]},
        {"uri": "http://deb.debian.org/debian/", "suite": "bookworm-updates", "components": ["main"]},
        {"uri": "http://deb.debian.org/debian-security/", "suite": "bookworm-security", "components": ["main"]},
    ]
    assert f.package_proxy_mirror(sources) == "http://deb.debian.org/debian/"
    assert f.package_proxy_mirror(sources[2:]) == ""


def test_head_apt_proxy_read_from_apt_config_dump():
    f = load_filters("package_proxy", "apt_sources")
    assert f.package_proxy_apt_proxy(['Acquire::http::Proxy "http://10.254.0.1:3142";']) == "http://10.254.0.1:3142"
    assert f.package_proxy_apt_proxy(['Acquire::http::Proxy "DIRECT";']) == ""
    assert f.package_proxy_apt_proxy(['Acquire::http::Proxy::deb.example "DIRECT";', ""]) == ""


def test_prometheus_target_entry():
    f = load_filters("monitoring", "targets")
    node = {"name": "node01", "ip": "10.0.0.11", "group": "compute", "hardware": "cpu-only"}
    assert f.monitoring_target(node, "9100") == {
        "targets": ["10.0.0.11:9100"],
        "labels": {"node": "node01", "group": "compute", "hardware": "cpu-only"},
    }


@pytest.mark.parametrize("role", DEPLOY_ROLES)
def test_role_layout_and_documented_variables(role):
    base = PLAYBOOKS / "roles" / role
    for part in ("defaults/main.yml", "tasks/main.yml", "handlers/main.yml", "meta/argument_specs.yml", "README.md"):
        assert (base / part).is_file(), f"{role}: missing {part}"
    assert any((base / "templates").iterdir()), f"{role}: no templates"
    defaults = yaml.safe_load((base / "defaults/main.yml").read_text())
    readme = (base / "README.md").read_text()
    undocumented = [name for name in defaults if f"`{name}`" not in readme]
    assert not undocumented, f"{role}/README.md does not list {undocumented}"
    prefix = f"{role}_"
    assert all(name.startswith(prefix) for name in defaults), f"{role}: defaults must start with {prefix}"


def test_site_playbook_syntax_against_a_rendered_inventory(tmp_path):
    if not shutil.which("ansible-playbook"):
        pytest.skip("ansible-playbook not installed")
    res = subprocess.run([sys.executable, "-m", "podsys.cli.main", "render", ROOT / "manifests/lab.yaml", "--output", tmp_path],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", tmp_path / "inventory/hosts.yml", PLAYBOOKS / "site.yml"],
        capture_output=True, text=True, env={**os.environ, "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles")},
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_roles_are_ansible_lint_clean():
    # Debian's ansible-lint (what CI installs) runs with Debian's own ansible-core: /usr/bin goes
    # first so a pip-installed ansible elsewhere on PATH does not shadow it.
    env = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
    lint = shutil.which("ansible-lint", path=env["PATH"])
    if not lint:
        pytest.skip("ansible-lint not installed (Debian package ansible-lint)")
    paths = [str(PLAYBOOKS / "roles" / r) for r in DEPLOY_ROLES]
    res = subprocess.run([lint, "--nocolor", "--offline", "--profile", "production", *paths],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
