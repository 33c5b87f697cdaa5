"""`podsys status` and `podsys reinstall` against a boot tree and state directory in tmp."""

from __future__ import annotations

import json

import pytest

from podsys.cluster.load import load_cluster
from podsys.provision.render import boot_script, render_files
from tests.conftest import invoke as run

MANIFEST = """\
apiVersion: podsys/v1
kind: Cluster
metadata: {name: cmd}
head: {hostname: head, interface: eno1, address: 10.70.0.1}
networks:
  provision: {cidr: 10.70.0.0/24}
os: {distro: debian, version: "12"}
node_groups:
  - name: c
    hosts: c[1-2]
    hardware: cpu-only
    start_address: 10.70.0.11
    nodes:
      c1: {mac: "02:00:00:70:00:01"}
      c2: {mac: "02:00:00:70:00:02"}
  - name: svc
    hosts: svc1
    hardware: cpu-only
    pxe: false
    start_address: 10.70.0.50
"""


@pytest.fixture
def head(tmp_path):
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(MANIFEST)
    boot = tmp_path / "boot"
    for rel, content in render_files(load_cluster(manifest)).items():
        if rel.startswith("provision/boot/"):
            target = boot / rel.removeprefix("provision/boot/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    return manifest, ["--state-dir", str(tmp_path / "state"), "--boot-root", str(boot)], boot


def test_reinstall_then_status(head):
    manifest, dirs, boot = head
    result = run("reinstall", "c[1-2]", "-m", str(manifest), *dirs, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"boot": "install", "nodes": ["c1", "c2"], "changed": ["c1", "c2"]}
    # what the status service answers c1's next PXE boot with: the install script
    state = json.loads((boot.parent / "state/nodes-state.json").read_text())["nodes"]["c1"]["boot"]
    assert "kernel" in boot_script(render_files(load_cluster(manifest)), "02:00:00:70:00:01", state)
    status = json.loads(run("status", str(manifest), *dirs, "--json").stdout)
    assert [(r["node"], r["boot"], r["state"]) for r in status["nodes"]] == [("c1", "install", "pending"),
                                                                            ("c2", "install", "pending")]


def test_reinstall_refuses_unknown_and_non_pxe_nodes(head):
    manifest, dirs, _ = head
    result = run("reinstall", "svc1", "-m", str(manifest), *dirs)
    assert result.exit_code == 2 and "pxe: false" in result.output
    result = run("reinstall", "c[1-3", "-m", str(manifest), *dirs)
    assert result.exit_code == 2 and "HOSTLIST" in result.output


def test_watch_ends_cleanly_on_ctrl_c(head, monkeypatch):
    manifest, dirs, _ = head

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("podsys.cli.provision.time.sleep", interrupt)
    result = run("status", str(manifest), *dirs, "--watch")
    assert result.exit_code == 0 and "c2" in result.output


def test_status_reads_a_running_service_with_url(head):
    manifest, dirs, _ = head
    result = run("status", str(manifest), "--url", "http://127.0.0.1:9", "--json")
    assert result.exit_code == 1 and "cannot read the status service" in result.output
