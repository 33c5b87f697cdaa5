"""Discovery: MACs of new nodes that asked for an address in the discovery pool.

With `provisioning.discovery.enabled`, dnsmasq gives unknown MACs a short lease from the pool
(and never a boot file). `podsys discover` lists them from dnsmasq's lease file and, with
`--assign GROUP`, writes them to that group's MAC csv (hostname,mac), giving them to the
group's nodes that have no MAC yet, in hostlist order and in the order the MACs first asked.
Works on the typed manifest, not the resolved cluster: a group waiting for MACs does not
resolve yet, and that is exactly when discovery is needed."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from podsys.cluster.macs import normalise_mac, read_mac_csv
from podsys.cluster.schema import Manifest
from podsys.cluster.hostlists import expand_hosts


@dataclass(frozen=True)
class Lease:
    expiry: int
    mac: str
    ip: str
    hostname: str


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq lease file lines: `<expiry epoch> <mac> <ip> <hostname|*> <client-id|*>`.
    Lines that are not IPv4 Ethernet leases (DHCPv6 'duid' lines, other hardware types) are skipped."""
    leases = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        try:
            expiry = int(parts[0])
            mac = normalise_mac(parts[1])
            IPv4Address(parts[2])
        except ValueError:
            continue
        leases.append(Lease(expiry, mac, parts[2], "" if parts[3] == "*" else parts[3]))
    return leases


def known_macs(manifest: Manifest, base_dir: Path) -> dict[str, str]:
    """MAC -> hostname for every MAC the manifest already has (inline and csv files)."""
    macs: dict[str, str] = {}
    for group in manifest.node_groups:
        if group.macs_file:
            for host, mac in read_mac_csv(base_dir / group.macs_file, missing_ok=True).pairs():
                macs[mac] = host
        for host, entry in group.nodes.items():
            if entry.mac:
                macs[entry.mac] = host
    return macs


def discovered(manifest: Manifest, base_dir: Path, leases: list[Lease]) -> list[Lease]:
    """Leases inside the discovery pool whose MAC the manifest does not know, oldest first."""
    d = manifest.provisioning.discovery
    if d.range_start is None or d.range_end is None:
        return []
    low, high = int(d.range_start), int(d.range_end)
    known = known_macs(manifest, base_dir)
    seen: dict[str, Lease] = {}
    for lease in leases:
        if low <= int(IPv4Address(lease.ip)) <= high and lease.mac not in known:
            # dnsmasq renews a lease in place; the latest line for a MAC is its current one.
            seen[lease.mac] = lease
    # Earliest expiry ~ earliest first request (every pool lease has the same length).
    return sorted(seen.values(), key=lambda lease: (lease.expiry, lease.mac))


def hosts_without_mac(manifest: Manifest, base_dir: Path, group_name: str) -> list[str]:
    group = next((g for g in manifest.node_groups if g.name == group_name), None)
    if group is None:
        raise KeyError(group_name)
    have = {h for h, _ in read_mac_csv(base_dir / group.macs_file, missing_ok=True).pairs()} if group.macs_file else set()
    have |= {h for h, e in group.nodes.items() if e.mac}
    return [h for h in expand_hosts(group.hosts) if h not in have]


def assign(hosts: list[str], leases: list[Lease]) -> list[tuple[str, str]]:
    return [(host, lease.mac) for host, lease in zip(hosts, leases)]


def append_macs(path: Path, pairs: list[tuple[str, str]]) -> None:
    """Append hostname,mac lines, writing the header when the file is new."""
    new = not path.exists() or path.stat().st_size == 0
    lines = ["hostname,mac"] if new else []
    if not new and not path.read_text().endswith("\n"):
        lines.append("")
    lines += [f"{host},{mac}" for host, mac in pairs]
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
