"""The deploy playbook and its roles without hosts: the roles' Python filters, the Grafana
password handling, a syntax check of site.yml against a rendered inventory. The conventions
every role follows (and ansible-lint) are tests/unit/playbooks/test_role_contract.py."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pytest
import yaml
from tests.conftest import REPO_ROOT as ROOT, podsys

PLAYBOOKS = ROOT / "podsys" / "playbooks"


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


def test_grafana_gets_a_generated_admin_password_kept_private_on_the_head():
    tasks = yaml.safe_load((PLAYBOOKS / "roles/monitoring/tasks/grafana.yml").read_text())
    by_name = {t["name"]: t for t in tasks}
    generate = by_name["Generate the Grafana admin password (once)"]
    copy = generate["ansible.builtin.copy"]
    assert copy["mode"] == "0600" and copy["owner"] == "root" and copy["force"] is False
    assert "lookup('ansible.builtin.password', '/dev/null', length=32" in copy["content"]
    assert copy["dest"] == "{{ monitoring_grafana_admin_password_file }}" and generate["no_log"] is True
    reset = by_name["Set the Grafana admin password"]
    command = reset["ansible.builtin.shell"]["cmd"]
    # From the file on stdin, never on a command line; after Grafana has started and made its database.
    assert "reset-admin-password --passwordFromStdin" in command and "< {{ monitoring_grafana_admin_password_file" in command
    assert reset["no_log"] is True
    names = list(by_name)
    assert names.index("Start Grafana") < names.index("Set the Grafana admin password")
    defaults = yaml.safe_load((PLAYBOOKS / "roles/monitoring/defaults/main.yml").read_text())
    assert defaults["monitoring_grafana_admin_password_file"] == "/etc/grafana/podsys-admin-password"


def test_site_playbook_syntax_against_a_rendered_inventory(tmp_path):
    if not shutil.which("ansible-playbook"):
        pytest.skip("ansible-playbook not installed")
    res = podsys("render", ROOT / "manifests/lab.yaml", "--output", tmp_path)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", tmp_path / "inventory/hosts.yml", PLAYBOOKS / "site.yml"],
        capture_output=True, text=True, env={**os.environ, "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles")},
    )
    assert res.returncode == 0, res.stdout + res.stderr
