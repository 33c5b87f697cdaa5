"""The lab cluster for real: containers booted with systemd, reached over SSH (OpenSSH and
paramiko, compute nodes through the head), air-gapped compute nodes, the head's proxy uplink,
and a `lab down` that leaves nothing behind, even after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from podsys.lab import cluster as lab, net as lab_net, proc as lab_proc, proxy as lab_proxy
from tests.conftest import podsys

pytestmark = [pytest.mark.integration, pytest.mark.lab]


def test_every_node_answers_over_openssh_with_pinned_host_keys(lab_cluster):
    machine_ids = set()
    for node in [lab_cluster.head, *lab_cluster.nodes]:
        out = lab_cluster.ssh(node, "hostname; cat /etc/machine-id; systemctl is-system-running || true").stdout.split()
        assert out[0] == node
        machine_ids.add(out[1])
        assert out[2] in ("running", "degraded"), f"{node}: systemd is {out[2]}"
    assert len(machine_ids) == 1 + len(lab_cluster.nodes), "every node needs its own machine-id"
    assert lab_cluster.ssh(lab_cluster.nodes[0], "stat -c %a /root/.ssh/authorized_keys").stdout.strip() == "600"
    assert oct(lab_cluster.private_key.stat().st_mode & 0o777) == "0o600"
    # The head is the jump host for every compute session: sshd must accept many at once.
    assert "maxstartups 100:30:200" in lab_cluster.ssh("head", "sshd -T").stdout
    # Strict host key checking is on: a wrong known_hosts entry must make ssh fail.
    bad = lab_cluster.known_hosts.read_text().replace("ssh-ed25519 AAAA", "ssh-ed25519 AAAB", 1)
    bad_file = lab_cluster.directory / "bad_known_hosts"
    bad_file.write_text(bad)
    proc = subprocess.run(["ssh", "-F", str(lab_cluster.ssh_config), "-o", f"UserKnownHostsFile={bad_file}",
                           lab_cluster.head, "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def test_compute_nodes_reachable_with_paramiko_through_the_head(lab_cluster):
    def client(sock=None, address=None):
        c = paramiko.SSHClient()
        c.load_host_keys(str(lab_cluster.known_hosts))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect(address, username="root", key_filename=str(lab_cluster.private_key), sock=sock,
                  look_for_keys=False, allow_agent=False, timeout=20)
        return c

    head = client(address=lab_cluster.head_ssh_address)
    try:
        for node in lab_cluster.nodes:
            address = lab_cluster.addresses[node]
            channel = head.get_transport().open_channel("direct-tcpip", (address, 22), ("127.0.0.1", 0))
            inner = client(sock=channel, address=address)
            try:
                _, stdout, _ = inner.exec_command("hostname")
                assert stdout.read().decode().strip() == node
            finally:
                inner.close()
    finally:
        head.close()


def test_compute_nodes_reach_the_head_and_nothing_else(lab_cluster):
    proxy_host, proxy_port = lab_cluster.proxy_url.removeprefix("http://").split(":")
    probe = f"timeout 5 bash -c '</dev/tcp/{proxy_host}/{proxy_port}' && echo OPEN || echo CLOSED"
    host_resolvers = {line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                      if line.startswith("nameserver") and len(line.split()) > 1}
    for node in lab_cluster.nodes:
        assert lab_cluster.ssh(node, "ip -4 route show default").stdout.strip() == "", f"{node} has a default route"
        resolv = lab_cluster.ssh(node, "cat /etc/resolv.conf").stdout
        assert not host_resolvers & set(resolv.split()), f"{node} is pointed at the host's DNS server"
        assert lab_cluster.ssh(node, probe).stdout.strip().endswith("CLOSED"), f"{node} reaches the host proxy"
        assert lab_cluster.ssh(node, f"ping -c1 -W2 {lab_cluster.addresses['head']}", check=False).returncode == 0
    # The head: no default route either, but the proxy on its uplink is open.
    assert lab_cluster.ssh("head", "ip -4 route show default").stdout.strip() == ""
    assert lab_cluster.ssh("head", probe).stdout.strip().endswith("OPEN")
    # Bound to the uplink only: not even the host's loopback reaches it.
    assert not lab_proxy.port_open("127.0.0.1", int(proxy_port))


def test_head_fetches_packages_through_the_host_proxy(lab_cluster):
    proc = lab_cluster.ssh("head", "apt-get update", check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Err:" not in proc.stdout
    log = lab_cluster.directory / ".podsys/lab/proxy/log/apt-cacher.log"
    head_uplink = lab_cluster.head_ssh_address

    def head_fetched_index() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        return any(f"|{head_uplink}|" in line and "InRelease" in line for line in lines)

    for _ in range(50):  # acng appends the line once the transfer is accounted
        if head_fetched_index():
            break
        time.sleep(0.1)
    assert head_fetched_index(), "the head's apt-get update did not go through the lab proxy"


def test_lab_yaml_validates_and_renders_for_these_nodes(lab_cluster):
    res = podsys("validate", lab_cluster.manifest, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["nodes"] == len(lab_cluster.nodes)
    status = lab_cluster.status()
    assert status["state"] == "up" and all(n["sshd"] and n["running"] for n in status["nodes"])
    # lab.yaml carries each node's real MAC: the one its provision interface has.
    for node in status["nodes"]:
        mac = lab_cluster.ssh(node["name"], "cat /sys/class/net/eth0/address").stdout.strip()
        assert mac == node["mac"]
        assert f"mac: {mac}" in lab_cluster.manifest.read_text() or node["role"] == "head"


def test_rendered_inventory_reaches_every_node_with_ansible(lab_cluster):
    """The contract with `podsys render`: its inventory (ProxyCommand through the head, the
    lab's key and known_hosts) gets Ansible onto every lab node."""
    build = lab_cluster.directory / "inventory-check"
    res = podsys("render", lab_cluster.manifest, "--output", build)
    assert res.returncode == 0, res.stderr
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"}
    proc = subprocess.run(["ansible", "-i", str(build / "inventory/hosts.yml"), "all", "-m", "ping", "-o"],
                          capture_output=True, text=True, timeout=300, env=env)
    ok = {line.split(" | ")[0] for line in proc.stdout.splitlines() if " | SUCCESS" in line}
    assert ok == {lab_cluster.head, *lab_cluster.nodes}, proc.stdout + proc.stderr


def test_up_again_reports_the_running_lab(lab_cluster):
    before = json.loads((lab_cluster.directory / ".podsys/lab/state.json").read_text())
    state = lab.up(lab_cluster.directory, nodes=len(lab_cluster.nodes))
    assert state["prefix"] == before["prefix"]
    assert state["nodes"] == before["nodes"]  # same containers, nothing rebuilt


def test_stop_and_start_one_node(lab_cluster):
    node = lab_cluster.nodes[-1]
    lab_cluster.stop(node)
    try:
        status = lab_cluster.status()
        assert status["state"] == "degraded"
        assert [n["name"] for n in status["nodes"] if not n["running"]] == [node]
        assert lab_cluster.ssh(node, "true", check=False, timeout=60).returncode != 0
    finally:
        lab_cluster.start(node)
    assert lab_cluster.ssh(node, "hostname").stdout.strip() == node
    assert lab_cluster.status()["state"] == "up"


def _live_processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and lab_proc.proc_alive(int(entry.name)):
            args = lab_proc.proc_cmdline(int(entry.name))
            if any(text in a for a in args):
                found.append(f"{entry.name}: {' '.join(args)}")
    return found


def test_lab_down_after_a_crash_leaves_nothing_and_spares_other_labs(tmp_path, lab_cluster):
    """A second, 2-node lab next to the session's: crash it (kill -9 the proxy and a container),
    `lab down` twice, then nothing with its prefix is left and the other lab still runs."""
    directory = tmp_path / "crashing-lab"
    res = podsys("lab", "up", "--nodes", "2", "--dir", directory)
    assert res.returncode == 0, res.stderr
    assert "podsys deploy" in res.stdout
    state = json.loads((directory / ".podsys/lab/state.json").read_text())
    prefix = state["prefix"]
    assert prefix != lab_cluster.status()["prefix"]
    assert podsys("lab", "ssh", "node02", "hostname", "--dir", directory).stdout.strip() == "node02"

    os.kill(state["proxy"]["pid"], signal.SIGKILL)
    os.kill(state["nodes"]["node01"]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    res = podsys("lab", "status", "--dir", directory)
    assert res.returncode == 1 and "degraded" in res.stdout

    res = podsys("lab", "down", "--dir", directory)
    assert res.returncode == 0, res.stderr
    assert not [ns for ns in lab_net.list_netns() if ns.startswith(prefix + "-")]
    assert lab_net.host_links_with_prefix(prefix) == []
    assert _live_processes_mentioning(prefix + "-") == []
    assert _live_processes_mentioning(str(directory)) == []
    assert lab_net.ip("-o", "-4", "addr", "show").stdout.count(state["plan"]["host_uplink_address"] + "/") == 0
    assert not Path(f"/run/podsys/lab/{prefix}").exists()
    assert str(directory.resolve()) not in Path("/proc/self/mountinfo").read_text()
    assert not (directory / ".podsys/lab/nodes").exists()

    res = podsys("lab", "down", "--dir", directory)
    assert res.returncode == 0 and "nothing to do" in res.stdout
    assert (directory / "lab.yaml").exists() and (directory / ".podsys/lab/ssh/id_ed25519").exists()
    res = podsys("lab", "down", "--purge", "--dir", directory)
    assert res.returncode == 0, res.stderr
    assert not (directory / "lab.yaml").exists() and not (directory / ".podsys/lab").exists()

    # `down` removed this lab's objects and nothing else: the session's lab is untouched.
    assert lab_cluster.status()["state"] == "up"
    assert lab_cluster.ssh(lab_cluster.nodes[0], "true").returncode == 0
