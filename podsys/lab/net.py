"""The lab's network: one namespace per node plus one holding the provision bridge, veth pairs
joining them, and the head's point-to-point uplink veth into the host's root namespace.

Only `ip` (iproute2) is used; nothing here needs kernel modules beyond veth/bridge support
built into the kernel, or a host network manager."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Network

from podsys.errors import PodsysError
from podsys.lab.plan import PROVISION_IFACE, UPLINK_IFACE, LabPlan


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PodsysError(f"ip {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc


def list_netns() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_exists(name: str, netns: str | None = None) -> bool:
    args = (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return ip(*args, check=False).returncode == 0


def host_links_with_prefix(prefix: str) -> list[str]:
    out = ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(prefix + "-"):
                names.append(name)
    return names


def host_networks() -> list[tuple[str, IPv4Network]]:
    """(interface, network) for every IPv4 address in the root namespace."""
    out = ip("-o", "-4", "addr", "show", check=False).stdout
    nets = []
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            nets.append((words[1], IPv4Network(words[words.index("inet") + 1], strict=False)))
    return nets


def uplink_conflict(plan: LabPlan) -> str | None:
    """Why the plan's uplink subnet (or BMC network) cannot be used on this host, or None."""
    mine = [IPv4Network(plan.uplink_cidr)] + ([IPv4Network(plan.bmc_cidr)] if plan.bmc_cidr else [])
    for dev, net in host_networks():
        for own in mine:
            if dev != plan.host_uplink_link and net.overlaps(own):
                return f"{own} overlaps {net} on host interface {dev}"
    return None


def create_netns(name: str) -> None:
    if name not in list_netns():
        ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def build_network(plan: LabPlan, record) -> None:
    """Create namespaces, bridge and veths. `record(kind, name)` is called *before* each object
    is created so a crash half-way leaves a state file naming everything to remove."""
    record("netns", plan.bridge_netns)
    create_netns(plan.bridge_netns)
    ns = plan.bridge_netns
    if not link_exists(plan.bridge, ns):
        ip("-n", ns, "link", "add", plan.bridge, "type", "bridge")
    ip("-n", ns, "link", "set", plan.bridge, "up")
    for node in plan.nodes:
        record("netns", node.netns)
        create_netns(node.netns)
        if not link_exists(node.bridge_port, ns):
            ip("-n", ns, "link", "add", node.bridge_port, "type", "veth",
               "peer", "name", PROVISION_IFACE, "netns", node.netns)
        ip("-n", node.netns, "link", "set", PROVISION_IFACE, "address", node.mac)
        ip("-n", ns, "link", "set", node.bridge_port, "master", plan.bridge, "up")
        ip("-n", node.netns, "link", "set", PROVISION_IFACE, "up")
    head = plan.head
    record("host_link", plan.host_uplink_link)
    if not link_exists(plan.host_uplink_link):
        ip("link", "add", plan.host_uplink_link, "type", "veth",
           "peer", "name", UPLINK_IFACE, "netns", head.netns)
    ip("link", "set", plan.host_uplink_link, "address", plan.host_uplink_mac)
    ip("-n", head.netns, "link", "set", UPLINK_IFACE, "address", head.uplink_mac)
    prefix = IPv4Network(plan.uplink_cidr).prefixlen
    ip("addr", "replace", f"{plan.host_uplink_address}/{prefix}", "dev", plan.host_uplink_link)
    # No IPv6 on the host side: the proxy is reachable at one IPv4 address and nothing else.
    subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{plan.host_uplink_link}.disable_ipv6=1"],
                   capture_output=True)
    ip("link", "set", plan.host_uplink_link, "up")
    ip("-n", head.netns, "link", "set", UPLINK_IFACE, "up")


def netns_pids(name: str) -> list[int]:
    out = ip("netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def delete_netns(name: str) -> bool:
    if name not in list_netns():
        return False
    ip("netns", "delete", name, check=False)
    return True


def delete_host_link(name: str) -> bool:
    if not link_exists(name):
        return False
    ip("link", "delete", name, check=False)
    return True
