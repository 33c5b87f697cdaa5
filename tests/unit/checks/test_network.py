from ipaddress import IPv4Network

from podsys.checks.findings import Verdict
from podsys.checks.network import judge_network, parse_reach, provision_mtu

CIDR = IPv4Network("10.77.0.0/24")
ADDR = {"head": "10.77.0.1", "node1": "10.77.0.11", "node2": "10.77.0.12"}


def host(ip, mtu=1500, unreachable=()):
    return {
        "addr": f"1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
                f"2: eth0    inet {ip}/24 brd 10.77.0.255 scope global eth0\\       valid_lft forever preferred_lft forever",
        "link": "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
                f"2: eth0@if12: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {mtu} qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 02:70:d5:00:00:11 brd ff:ff:ff:ff:ff:ff link-netnsid 0",
        "reach": "\n".join(f"{other} {'fail' if other in unreachable else 'ok'} ping" for other in ADDR.values() if other != ip),
    }


def test_parsers():
    sections = host("10.77.0.11")
    assert provision_mtu(sections["addr"], sections["link"], CIDR) == ("eth0", 1500)
    assert parse_reach("10.77.0.1 ok ping\n10.77.0.12 fail tcp/22") == {"10.77.0.1": (True, "ping"), "10.77.0.12": (False, "tcp/22")}


def test_full_mesh_passes():
    findings = judge_network({h: host(ip) for h, ip in ADDR.items()}, ADDR, CIDR, None)
    assert {f.verdict for f in findings} == {Verdict.PASS} and len(findings) == 6


def test_unreachable_pair_and_mtu_mismatch_fail():
    per_host = {h: host(ip) for h, ip in ADDR.items()}
    per_host["node1"] = host("10.77.0.11", unreachable=("10.77.0.12",))
    per_host["node2"] = host("10.77.0.12", mtu=9000)
    findings = judge_network(per_host, ADDR, CIDR, None)
    failed = {(f.node, f.check) for f in findings if f.verdict is Verdict.FAIL}
    assert failed == {("node1", "network.reach"), ("node2", "network.mtu")}
    assert "node2" in next(f.detail for f in findings if f.node == "node1" and f.check == "network.reach")


def test_manifest_mtu_wins_over_majority():
    findings = judge_network({h: host(ip, mtu=1500) for h, ip in ADDR.items()}, ADDR, CIDR, 9000)
    assert {f.verdict for f in findings if f.check == "network.mtu"} == {Verdict.FAIL}
