"""The lab's pure parts: mirror discovery, the address/MAC/name plan, and the files derived from
it (lab.yaml, known_hosts, ssh_config, networkd units, apt-cacher-ng config). No root needed."""

import os
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from podsys.lab import cluster as lab, plan as lab_plan, proc as lab_proc, proxy as lab_proxy
from podsys.cluster.load import load_cluster
from podsys.cluster.schema import Manifest
from tests.conftest import podsys as _podsys

HOST_DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


# --- mirror -----------------------------------------------------------------------------------


def test_one_line_sources_options_comments_and_deb_src():
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian/ bookworm main contrib # tail\n"
    )
    sources = lab_plan.parse_one_line_sources(text)
    assert [s.types for s in sources] == [("deb-src",), ("deb",)]
    assert sources[1].uris == ("http://mirror.example/debian/",)
    assert sources[1].components == ("main", "contrib")
    assert lab_plan.pick_debian_mirror(sources) == "http://mirror.example/debian"


def test_deb822_skips_security_and_disabled_stanzas():
    sources = lab_plan.parse_deb822_sources(HOST_DEB822)
    assert len(sources) == 2
    assert sources[0].suites == ("bookworm", "bookworm-updates")
    assert lab_plan.pick_debian_mirror(sources) == "http://deb.debian.org/debian"
    disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
    only_security = HOST_DEB822.split("\n\n")[1]
    assert lab_plan.pick_debian_mirror(lab_plan.parse_deb822_sources(disabled + only_security)) is None


def test_host_mirror_reads_sources_list_d_and_ignores_other_suffixes(tmp_path):
    (tmp_path / "sources.list").write_text("# moved to sources.list.d\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "google.list.disabled-by-farm").write_text("deb http://other.example/apt stable main\n")
    (parts / "debian.sources").write_text(HOST_DEB822)
    assert lab_plan.host_debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list").write_text("deb http://first.example/debian bookworm main\n")
    assert lab_plan.host_debian_mirror(tmp_path) == "http://first.example/debian"
    assert lab_plan.host_debian_mirror(tmp_path / "missing") is None


# --- the plan ---------------------------------------------------------------------------------


def test_plan_is_deterministic_and_distinct_per_directory(tmp_path):
    a1 = lab_plan.plan_lab(tmp_path / "a", 3)
    a2 = lab_plan.plan_lab(tmp_path / "a", 3)
    assert a1 == a2
    others = [lab_plan.plan_lab(tmp_path / f"d{i}", 3) for i in range(40)]
    slots = {p.slot for p in others}
    assert len(slots) >= 39  # a 14-bit hash: an occasional clash, handled by _choose_plan
    by_slot = {p.slot: p for p in others}
    assert len({p.provision_cidr for p in by_slot.values()}) == len(by_slot)
    assert len({p.uplink_cidr for p in by_slot.values()}) == len(by_slot)
    assert len({p.prefix for p in by_slot.values()}) == len(by_slot)


def test_plan_addresses_names_and_macs(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 3, slot=0x1234)
    assert plan.prefix == "pl1234"
    prov = IPv4Network(plan.provision_cidr)
    up = IPv4Network(plan.uplink_cidr)
    assert prov.subnet_of(lab_plan.PROVISION_POOL) and prov.prefixlen == 24
    assert up.subnet_of(lab_plan.UPLINK_POOL) and up.prefixlen == 30
    assert [n.hostname for n in plan.nodes] == ["head", "node01", "node02", "node03"]
    assert plan.head.address == str(prov.network_address + 1)
    assert [n.address for n in plan.compute] == [str(prov.network_address + i) for i in (11, 12, 13)]
    assert {IPv4Address(plan.host_uplink_address), IPv4Address(plan.head.uplink_address)} == set(up.hosts())
    macs = [n.mac for n in plan.nodes] + [plan.head.uplink_mac, plan.host_uplink_mac]
    assert len(set(macs)) == len(macs)
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01, f"{mac} must be locally administered unicast"
    # Linux interface names are at most 15 characters; every name in a namespace is prefixed.
    assert len(plan.host_uplink_link) <= 15 and plan.host_uplink_link.startswith("pl1234-")
    assert all(len(n.bridge_port) <= 15 for n in plan.nodes)
    assert all(n.netns.startswith("pl1234-") and n.machine.startswith("pl1234-") for n in plan.nodes)
    assert lab_plan.LabPlan.from_dict(plan.to_dict()) == plan


def test_plan_node_count_bounds_and_wide_hostlists(tmp_path):
    with pytest.raises(ValueError):
        lab_plan.plan_lab(tmp_path, 0)
    with pytest.raises(ValueError):
        lab_plan.plan_lab(tmp_path, lab_plan.MAX_NODES + 1)
    big = lab_plan.plan_lab(tmp_path, 120, slot=1)
    assert big.compute[-1].hostname == "node120" and big.compute[0].hostname == "node001"
    assert lab_plan.compute_hostlist(120) == "node[001-120]"
    assert lab_plan.compute_hostlist(1) == "node01"
    assert big.compute[-1].address == str(IPv4Network(big.provision_cidr).network_address + 130)


# --- derived files ----------------------------------------------------------------------------


def _write_lab_yaml(tmp_path, plan):
    (tmp_path / ".podsys/lab/ssh").mkdir(parents=True)
    for f in ("id_ed25519", "known_hosts"):
        (tmp_path / ".podsys/lab/ssh" / f).write_text("x\n")
    text = lab_plan.lab_manifest_text(plan, "http://deb.debian.org/debian",
                                      ".podsys/lab/ssh/id_ed25519", ".podsys/lab/ssh/known_hosts")
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return path, text


def test_lab_manifest_is_valid_and_matches_the_plan(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 3, slot=7)
    path, text = _write_lab_yaml(tmp_path, plan)
    assert text.startswith(lab_plan.MANIFEST_HEADER)
    manifest = Manifest.model_validate(yaml.safe_load(text))
    assert manifest.access.via_head and str(manifest.head.ssh_address) == plan.head.uplink_address
    assert manifest.packages.proxy == plan.proxy_url and manifest.packages.source == "proxy"
    assert manifest.slurm.proctrack == "linuxproc" and manifest.slurm.source == "distro"
    assert manifest.os.key == "debian-12" and manifest.users[0].uid >= 1000

    cluster = load_cluster(path)  # the lead's loader: semantics (addresses in subnet, MACs) too
    assert [(n.name, n.provision_ip, n.mac) for n in cluster.nodes] == [
        (n.hostname, n.address, n.mac) for n in plan.compute
    ]
    assert {n.hardware for n in cluster.nodes} == {"cpu-only"}


def test_known_hosts_names_every_address_and_drops_comments(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 2, slot=3)
    keys = {n.hostname: f"ssh-ed25519 AAAAkey{n.hostname} root@{n.hostname}" for n in plan.nodes}
    lines = lab_plan.known_hosts(plan, keys).splitlines()
    assert lines[0] == f"head,{plan.head.address},{plan.head.uplink_address} ssh-ed25519 AAAAkeyhead"
    assert lines[1] == f"node01,{plan.compute[0].address} ssh-ed25519 AAAAkeynode01"


def test_ssh_config_jumps_through_head_with_pinned_keys(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 2, slot=3)
    text = lab_plan.ssh_config(plan, Path("/k/id"), Path("/k/known"), Path("/k/config"))
    head_block, node_block = text.split("\n\n")[:2]
    assert f"HostName {plan.head.uplink_address}" in head_block and "ProxyCommand" not in head_block
    assert "ProxyCommand ssh -F /k/config -W %h:%p head" in node_block
    assert "StrictHostKeyChecking yes" in text and 'UserKnownHostsFile "/k/known"' in text
    assert 'IdentityFile "/k/id"' in text
    spaced = lab_plan.ssh_config(plan, Path("/a b/id"), Path("/a b/kh"), Path("/a b/config"))
    assert "ProxyCommand ssh -F '/a b/config' -W %h:%p head" in spaced


def test_networkd_units_have_no_gateway_and_head_gets_uplink(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=9)
    compute = lab_plan.networkd_units(plan, plan.compute[0])
    assert list(compute) == ["10-provision.network"]
    assert f"MACAddress={plan.compute[0].mac}" in compute["10-provision.network"]
    assert f"Address={plan.compute[0].address}/24" in compute["10-provision.network"]
    head = lab_plan.networkd_units(plan, plan.head)
    assert f"Address={plan.head.uplink_address}/30" in head["20-uplink.network"]
    assert not any("Gateway" in t for t in [*compute.values(), *head.values()])


def test_proxy_binds_only_the_uplink_and_uses_the_host_mirror(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=9)
    conf = lab_proxy.write_proxy_config(plan, tmp_path / "proxy", "http://mirror.example/debian")
    text = (conf / "acng.conf").read_text()
    assert f"BindAddress: {plan.host_uplink_address}\n" in text
    assert "Remap-debrep:" in text and "file:backends_debian" in text
    assert f"CacheDir: {tmp_path / 'proxy' / 'cache'}" in text
    assert (conf / "backends_debian").read_text() == "http://mirror.example/debian/\n"
    assert len(str(lab_proxy.socket_path(plan))) < 108  # AF_UNIX limit, whatever the lab dir


def test_nspawn_runs_without_host_systemd(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=9)
    argv = lab_proc.nspawn_command(plan.head, tmp_path / "root")
    assert {"--boot", "--keep-unit", "--register=no"} <= set(argv)
    assert f"--network-namespace-path=/run/netns/{plan.head.netns}" in argv
    assert argv[argv.index("-M") + 1] == plan.head.machine


def test_zombies_count_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(100):
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    assert state == "Z"
    assert not lab_proc.proc_alive(proc.pid)
    proc.wait()
    assert not lab_proc.proc_alive(proc.pid) and lab_proc.proc_alive(os.getpid())


# --- the CLI without root ---------------------------------------------------------------------


def test_cli_bad_node_count_is_input_error(tmp_path):
    res = _podsys("lab", "up", "--nodes", "0", "--dir", tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "error: command line: --nodes: must be between 1 and 200 (got 0)"


def test_cli_status_and_ssh_without_a_lab(tmp_path):
    res = _podsys("lab", "status", "--json", "--dir", tmp_path)
    assert res.returncode == 0 and '"state": "down"' in res.stdout
    res = _podsys("lab", "ssh", "head", "--dir", tmp_path)
    assert res.returncode == 1 and "no lab in" in res.stderr and "Traceback" not in res.stderr


def test_cli_refuses_to_overwrite_a_foreign_lab_yaml(tmp_path, monkeypatch):
    (tmp_path / "lab.yaml").write_text("apiVersion: podsys/v1\n")
    monkeypatch.setattr(lab, "_require", lambda: None)
    with pytest.raises(lab.InputError) as exc:
        lab.up(tmp_path, nodes=1)
    assert "not written by `podsys lab up`" in str(exc.value)


def test_proxy_port_moves_off_3142_when_the_host_holds_it(tmp_path):
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            holder.bind(("127.0.0.1", lab_plan.PROXY_PORT))
            holder.listen()
        except OSError:
            pass  # something on this machine holds it already: the same situation
        port = lab_proxy.free_port("127.0.0.1")
        assert port in lab_plan.PROXY_PORT_ALTERNATIVES
    finally:
        holder.close()
    plan = lab_plan.plan_lab(tmp_path, 1, slot=9)
    moved = lab_plan.LabPlan.from_dict({**plan.to_dict(), "proxy_port": port})
    assert moved.proxy_url == f"http://{plan.host_uplink_address}:{port}"
    assert f"Port: {port}\n" in lab_proxy.proxy_config(moved, tmp_path)
    old_state_plan = {k: v for k, v in plan.to_dict().items() if k != "proxy_port"}
    assert lab_plan.LabPlan.from_dict(old_state_plan).proxy_port == 3142


def test_uplink_conflict_with_host_networks(tmp_path, monkeypatch):
    from podsys.lab import net as lab_net

    plan = lab_plan.plan_lab(tmp_path, 1, slot=9)
    monkeypatch.setattr(lab_net, "host_networks", lambda: [("eth0", IPv4Network("192.0.2.0/24"))])
    assert lab_net.uplink_conflict(plan) is None
    monkeypatch.setattr(lab_net, "host_networks", lambda: [("eth0", IPv4Network("192.0.2.0/24")),
                                                           ("vpn0", IPv4Network("10.254.0.0/16"))])
    assert "overlaps 10.254.0.0/16 on host interface vpn0" in lab_net.uplink_conflict(plan)
    # Its own uplink (a lab being re-created) is not a conflict.
    monkeypatch.setattr(lab_net, "host_networks", lambda: [(plan.host_uplink_link, IPv4Network(plan.uplink_cidr))])
    assert lab_net.uplink_conflict(plan) is None


def test_boot_failure_names_the_reason(tmp_path):
    log = tmp_path / "node01.log"
    log.write_text(
        "Spawning container pl2b7d-node01 on /x.\n"
        "\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/cpu: File exists\x1b[0m\n"
        "\x1b[0;1;31mFailed to create control group inotify object: Too many open files\x1b[0m\n"
        "\x1b[0;1;31mFailed to allocate manager object: Too many open files\x1b[0m\n"
        "Container pl2b7d-node01 failed with error code 255.\n"
    )
    assert lab_proc.boot_failure(log) == "Failed to allocate manager object: Too many open files"
    assert lab_proc.boot_failure(tmp_path / "missing.log") == "no console log"


def test_ssh_config_reaches_the_vms_through_head_too(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1, slot=3, vms=2)
    text = lab_plan.ssh_config(plan, Path("/k/id"), Path("/k/known"), Path("/k/config"))
    for vm in plan.vms:
        block = next(b for b in text.split("\n\n") if b.startswith(f"Host {vm.hostname} "))
        assert f"Host {vm.hostname} {vm.address}\n  HostName {vm.address}\n" in block
        assert "ProxyCommand ssh -F /k/config -W %h:%p head" in block


def test_labs_choosing_one_slot_at_the_same_moment_get_different_ones(tmp_path, monkeypatch):
    # Seen in CI: two workers' lab directories hashed to one slot, both chose it before either
    # registered it, and the second lab's namespaces collided with the first's.
    import threading

    from podsys.lab import net as lab_net

    monkeypatch.setattr(lab, "REGISTRY", tmp_path / "registry")
    monkeypatch.setattr(lab_plan, "lab_slot", lambda directory: 7)
    monkeypatch.setattr(lab_net, "list_netns", lambda: [])
    monkeypatch.setattr(lab_net, "uplink_conflict", lambda plan: None)
    directories = [tmp_path / f"lab{i}" for i in range(8)]
    start = threading.Barrier(len(directories))
    chosen: dict[Path, str] = {}

    def choose(directory: Path) -> None:
        start.wait()
        chosen[directory] = lab._choose_plan(directory, 1).prefix

    threads = [threading.Thread(target=choose, args=(d,)) for d in directories]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(chosen.values())) == len(directories)
    assert sorted(chosen.values()) == [lab_plan.lab_prefix(7 + i) for i in range(8)]
    for directory, prefix in chosen.items():
        assert (tmp_path / "registry" / prefix).read_text() == f"{directory}\n"
    # A lab coming up again in its own directory keeps its slot.
    assert lab._choose_plan(directories[3], 1).prefix == chosen[directories[3]]
