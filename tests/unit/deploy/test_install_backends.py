"""The commands `podsys deploy` and `podsys reinstall` run on the head, run here for real: the
provision role's state tool (podsys.provision.state, stdlib only, under /usr/bin/python3 as on
the head) against a state directory and node list in tmp instead of the head's paths."""

from __future__ import annotations

import dataclasses
import json
import stat
import subprocess
from pathlib import Path

import pytest

from podsys.checks.live import Probe, ProbeResult
from podsys.deploy import install_backends
from podsys.deploy.installs import NodeRecord, plan_installs, records_from_state_show
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


# ----------------------------------------------------------------------------- the SSH probe

KEYS = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewKey", "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYNewKey")
OLD_LINE = "gpu001,10.10.1.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldKey\n"
HEAD_LINE = "mu01,10.10.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeadKey\n"


class FakeExecutor:
    """Answers every probe; records what known_hosts held at the moment it would have connected."""

    def __init__(self, known_hosts: Path | None):
        self.known_hosts = known_hosts
        self.seen: list[tuple[str, str]] = []

    def run(self, probe: Probe) -> ProbeResult:
        text = self.known_hosts.read_text() if self.known_hosts else ""
        self.seen.append((probe.host, text))
        return ProbeResult(probe.host, probe.name, probe.command, 0)


def probe_for(tmp_path: Path, access: str = "access: {known_hosts_file: known_hosts}\n"):
    from podsys.cluster.load import load_cluster
    from tests.unit.manifest_samples import VALID, write_manifest

    cluster = load_cluster(write_manifest(tmp_path, VALID + access))
    known_hosts = tmp_path / "known_hosts"
    executor = FakeExecutor(known_hosts if "known_hosts_file" in access else None)
    return install_backends.SSHProbe(cluster, executor=executor), executor, known_hosts


def test_probe_writes_the_reported_keys_before_it_connects(tmp_path):
    probe, executor, known_hosts = probe_for(tmp_path)
    known_hosts.write_text(HEAD_LINE + OLD_LINE)
    known_hosts.chmod(0o600)
    assert probe("gpu001", NodeRecord(state="installed", host_keys=KEYS)) == ""
    expected = HEAD_LINE + "".join(f"gpu001,gpu001.cluster.local,10.10.1.1 {key}\n" for key in KEYS)
    assert executor.seen == [("gpu001", expected)]
    assert known_hosts.read_text() == expected and stat.S_IMODE(known_hosts.stat().st_mode) == 0o600


def test_probe_of_a_node_without_reported_keys_leaves_known_hosts_alone(tmp_path):
    probe, executor, known_hosts = probe_for(tmp_path)
    known_hosts.write_text(OLD_LINE)
    assert probe("gpu001", NodeRecord(state="installed")) == ""
    assert executor.seen == [("gpu001", OLD_LINE)]


def test_without_a_known_hosts_file_new_keys_are_not_trusted_and_nothing_connects(tmp_path):
    probe, executor, _ = probe_for(tmp_path, access="")
    why = probe("gpu001", NodeRecord(state="installed", host_keys=KEYS))
    assert why == "access.known_hosts_file is not set: cannot trust gpu001's new host keys"
    assert executor.seen == []


def test_a_known_hosts_file_that_cannot_be_written_is_the_reason(tmp_path):
    probe, executor, known_hosts = probe_for(tmp_path, access="access: {known_hosts_file: missing/known_hosts}\n")
    why = probe("gpu001", NodeRecord(state="installed", host_keys=KEYS))
    assert why.startswith("cannot write gpu001's new host keys to ") and executor.seen == []
