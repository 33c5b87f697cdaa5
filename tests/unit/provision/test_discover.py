"""podsys.provision.discover and `podsys discover`: MACs from dnsmasq's lease file."""

from __future__ import annotations

import json
from pathlib import Path


from podsys.cluster.load import load_cluster
from podsys.provision.discover import append_macs, discovered, parse_leases
from podsys.cluster.parse import parse_manifest
from podsys.cluster.yaml_source import load_yaml_file
from tests.conftest import invoke

# dnsmasq 2.90 lease file: expiry, MAC, IP, hostname or *, client-id or *; a DHCPv6 duid line.
LEASES = """\
1767261600 b8:3f:d2:00:00:01 10.50.1.1 gpu01 *
1767261000 a0:36:9f:00:00:0b 10.50.200.7 * 01:a0:36:9f:00:00:0b
1767260400 a0:36:9f:00:00:0a 10.50.200.3 localhost *
1767261900 a0:36:9f:00:00:0b 10.50.200.7 * 01:a0:36:9f:00:00:0b
1767262000 a0:36:9f:00:00:0c 10.50.99.9 * *
duid 00:01:00:01:2c:4d:5e:6f:52:54:00:12:34:56
"""


def write(tmp_path: Path, discovery: bool = True) -> Path:
    (tmp_path / "macs.csv").write_text("hostname,mac\ngpu01,b8:3f:d2:00:00:01\n")
    path = tmp_path / "cluster.yaml"
    path.write_text(f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: dc}}
head: {{hostname: head, interface: eno1, address: 10.50.0.1}}
networks:
  provision: {{cidr: 10.50.0.0/16}}
os: {{distro: debian, version: "12"}}
provisioning:
  discovery: {{enabled: {str(discovery).lower()}, range_start: 10.50.200.1, range_end: 10.50.200.50}}
node_groups:
  - name: gpu
    hosts: gpu[01-03]
    hardware: cpu-only
    start_address: 10.50.1.1
    macs_file: macs.csv
""")
    (tmp_path / "dnsmasq.leases").write_text(LEASES)
    return path


def test_parse_leases_skips_duid_lines():
    leases = parse_leases(LEASES)
    assert len(leases) == 5
    assert leases[2].hostname == "localhost" and leases[1].hostname == ""


def test_only_unknown_macs_inside_the_pool_oldest_first(tmp_path):
    path = write(tmp_path)
    data, smap = load_yaml_file(path)
    found = discovered(parse_manifest(data, smap), tmp_path, parse_leases(LEASES))
    assert [(lease.mac, lease.ip) for lease in found] == [("a0:36:9f:00:00:0a", "10.50.200.3"),
                                                          ("a0:36:9f:00:00:0b", "10.50.200.7")]


def test_append_macs_adds_header_once_and_fixes_a_missing_newline(tmp_path):
    csv = tmp_path / "new.csv"
    append_macs(csv, [("n1", "02:00:00:00:00:01")])
    append_macs(csv, [("n2", "02:00:00:00:00:02")])
    assert csv.read_text() == "hostname,mac\nn1,02:00:00:00:00:01\nn2,02:00:00:00:00:02\n"
    old = tmp_path / "old.csv"
    old.write_text("hostname,mac\nn1,02:00:00:00:00:01")
    append_macs(old, [("n2", "02:00:00:00:00:02")])
    assert old.read_text().splitlines() == ["hostname,mac", "n1,02:00:00:00:00:01", "n2,02:00:00:00:00:02"]


def test_discover_assign_completes_the_group(tmp_path):
    path = write(tmp_path)
    # Before: gpu02/gpu03 have no MAC, so the manifest does not resolve yet.
    result = invoke("discover", str(path), "--leases", str(tmp_path / "dnsmasq.leases"),
                    "--assign", "gpu", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["assigned"] == [{"node": "gpu02", "mac": "a0:36:9f:00:00:0a"},
                               {"node": "gpu03", "mac": "a0:36:9f:00:00:0b"}]
    cluster = load_cluster(path)
    assert [(n.name, n.mac) for n in cluster.nodes] == [
        ("gpu01", "b8:3f:d2:00:00:01"), ("gpu02", "a0:36:9f:00:00:0a"), ("gpu03", "a0:36:9f:00:00:0b")]
    # Run again: every MAC is known now, nothing new is listed or written.
    again = invoke("discover", str(path), "--leases", str(tmp_path / "dnsmasq.leases"),
                   "--assign", "gpu", "--json")
    assert json.loads(again.stdout) == {"discovered": [], "assigned": []}


def test_discover_errors_are_one_line_exit_2(tmp_path):
    path = write(tmp_path, discovery=False)
    result = invoke("discover", str(path), "--leases", str(tmp_path / "dnsmasq.leases"))
    assert result.exit_code == 2 and "provisioning.discovery.enabled" in result.output
    path = write(tmp_path)
    result = invoke("discover", str(path), "--leases", str(tmp_path / "dnsmasq.leases"),
                    "--assign", "cpu")
    assert result.exit_code == 2 and "no node group 'cpu'" in result.output
    missing = invoke("discover", str(path), "--leases", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "cannot read the dnsmasq lease file" in missing.output
