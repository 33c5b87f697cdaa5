"""The commands `podsys deploy` and `podsys reinstall` run on the head, run here for real: the
provision role's state tool (podsys.provision.state, stdlib only, under /usr/bin/python3 as on
the head) against a state directory and node list in tmp instead of the head's paths."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest

from podsys.deploy import install_backends
from podsys.deploy.installs import plan_installs, records_from_state_show
from podsys.layout import HEAD_PATHS
from podsys.provision.state import StateStore, load_nodes_file
from tests.conftest import REPO_ROOT


@pytest.fixture
def head(tmp_path, monkeypatch):
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps({"cluster": "pod01", "default_boot_state": "install", "nodes": {
        "gpu001": {"ip": "10.10.1.1", "mac": "b8:3f:d2:00:00:01"},
        "gpu002": {"ip": "10.10.1.2", "mac": "b8:3f:d2:00:00:02"}}}))
    boot = tmp_path / "boot"
    monkeypatch.setattr(install_backends, "HEAD_NODES_FILE", str(nodes))
    monkeypatch.setattr(install_backends, "HEAD_SERVICE_DIR", str(REPO_ROOT))
    monkeypatch.setattr(install_backends, "HEAD_PATHS",
                        dataclasses.replace(HEAD_PATHS, state_dir=str(tmp_path / "state"), boot_root=str(boot)))
    return tmp_path


def on_head(command: str) -> str:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_show_then_reinstall_then_show_as_deploy_reads_it(head):
    on_head(install_backends.state_command("init"))
    on_head(install_backends.state_command("local", ["gpu001", "gpu002"]))
    records = records_from_state_show(on_head(install_backends.state_command("show")))
    assert {n: r.boot for n, r in records.items()} == {"gpu001": "local", "gpu002": "local"}
    assert not plan_installs(records, None)  # a second deploy: nothing to power
    assert on_head(install_backends.state_command("install", ["gpu002"])).strip() == "changed: 1"
    records = records_from_state_show(on_head(install_backends.state_command("show")))
    assert plan_installs(records, None).power == ("gpu002",)
    # What the status service answers gpu002's next PXE boot with (podsys/provision/status.py).
    nodes, default_boot = load_nodes_file(head / "nodes.json")
    store = StateStore(head / "state", None, nodes, default_boot)
    assert (store.boot_state("gpu002"), store.boot_state("gpu001")) == ("install", "local")


def test_command_quotes_what_it_passes():
    command = install_backends.state_command("install", ["gpu001", "a b"])
    assert "'a b'" in command and command.startswith("PYTHONPATH=/opt/podsys-provision /usr/bin/python3 -m ")
