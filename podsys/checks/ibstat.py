"""`ibstat` (infiniband-diags) and the port error counters under /sys/class/infiniband.

Every InfiniBand port must be Active / LinkUp at the profile's rate; Ethernet (RoCE) ports on
the same node are reported but not held to the IB rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import re
from dataclasses import dataclass, field

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip, warned

if TYPE_CHECKING:  # annotations only: the node-side health runner has no pydantic
    from podsys.cluster.hardware import HardwareProfile


@dataclass(frozen=True)
class IBPort:
    ca: str
    port: int
    state: str
    physical_state: str
    rate: float | None
    link_layer: str

    @property
    def name(self) -> str:
        return f"{self.ca}/{self.port}"


@dataclass
class IBCa:
    name: str
    ca_type: str = ""
    firmware: str = ""
    ports: list[IBPort] = field(default_factory=list)


def parse_ibstat(text: str) -> list[IBCa]:
    cas: list[IBCa] = []
    current: IBCa | None = None
    port: dict | None = None

    def close_port() -> None:
        nonlocal port
        if current is not None and port is not None:
            current.ports.append(IBPort(
                ca=current.name, port=port["number"], state=port.get("State", "?"),
                physical_state=port.get("Physical state", "?"),
                rate=float(port["Rate"]) if re.fullmatch(r"[\d.]+", port.get("Rate", "")) else None,
                link_layer=port.get("Link layer", "InfiniBand"),
            ))
        port = None

    for line in text.splitlines():
        ca = re.match(r"^CA '([^']+)'", line.strip())
        if ca:
            close_port()
            current = IBCa(name=ca.group(1))
            cas.append(current)
            continue
        if current is None:
            continue
        m = re.match(r"^\s*Port (\d+):\s*$", line)
        if m:
            close_port()
            port = {"number": int(m.group(1))}
            continue
        kv = re.match(r"^\s*([A-Za-z][A-Za-z ]*?):\s*(.*?)\s*$", line)
        if not kv:
            continue
        key, value = kv.groups()
        if port is not None:
            port[key] = value
        elif key == "CA type":
            current.ca_type = value
        elif key == "Firmware version":
            current.firmware = value
    close_port()
    if not cas:
        raise ValueError("no `CA '...'` block found: not ibstat output")
    return cas


_DOWN_HINTS = {
    "Polling": "port is polling: no cable, a bad cable/transceiver, or the switch port is disabled",
    "Disabled": "port is administratively disabled (ibportstate ... enable) or the cable is absent",
    "Initializing": "link is up but no subnet manager has configured it: start opensm or check the fabric's SM",
    "Armed": "link is armed but not active: the subnet manager has not finished; check the SM logs",
}


def judge_ibstat(cas: list[IBCa], node: str, profile: HardwareProfile | None) -> list[Finding]:
    check = "infiniband.ports"
    if profile is not None and profile.hca is None:
        return [skip(node, check, CPU_ONLY_REASON if profile.gpu is None else "profile has no HCA")]
    expected_rate = profile.hca.rate_gbps if profile is not None and profile.hca else None
    expected_count = profile.hca.count if profile is not None and profile.hca else None
    ib_ports = [p for ca in cas for p in ca.ports if p.link_layer == "InfiniBand"]
    out: list[Finding] = []
    for p in ib_ports:
        if p.state != "Active" or p.physical_state != "LinkUp":
            hint = _DOWN_HINTS.get(p.physical_state) or _DOWN_HINTS.get(p.state) or "link down: check cable, transceiver and switch port"
            out.append(failed(
                node, check, value=p.state, detail=f"{p.name}: State {p.state}, Physical state {p.physical_state}",
                diagnosis=f"{p.name} {hint}",
            ))
        elif expected_rate is not None and p.rate is not None and p.rate < expected_rate:
            out.append(failed(
                node, check, value=p.rate, unit="Gb/s", threshold=float(expected_rate), limit=float(expected_rate),
                source=f"profile {profile.id} hca.rate_gbps",
                detail=f"{p.name}: Active but degraded, Rate {p.rate:g} < {expected_rate} Gb/s",
                diagnosis=f"{p.name} trained below its rated speed: reseat or replace the cable/transceiver, check the switch port speed and the HCA firmware",
            ))
    if expected_count is not None and len(ib_ports) < expected_count:
        out.append(failed(
            node, check, value=len(ib_ports), threshold=float(expected_count),
            detail=f"{len(ib_ports)} InfiniBand ports found, profile expects {expected_count}",
            diagnosis="an HCA is missing or in Ethernet mode: check lspci for the ConnectX cards, mlxconfig LINK_TYPE_P1, and the OFED driver",
        ))
    if not out:
        rates = sorted({p.rate for p in ib_ports if p.rate is not None})
        out.append(passed(
            node, check, value=len(ib_ports), unit="ports",
            detail=f"{len(ib_ports)} IB ports Active/LinkUp at {', '.join(f'{r:g}' for r in rates) or '?'} Gb/s",
        ))
    return out


# Counters that mean a physical problem when they move (IBTA PortCounters).
_BAD_COUNTERS = ("symbol_error", "link_downed", "link_error_recovery", "port_rcv_errors",
                 "local_link_integrity_errors", "excessive_buffer_overrun_errors")


def parse_ib_counters(text: str) -> dict[str, dict[str, int]]:
    """`grep -H . /sys/class/infiniband/*/ports/*/counters/<name>` -> {"mlx5_0/1": {name: value}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = re.match(r"^/sys/class/infiniband/([^/]+)/ports/(\d+)/counters/(\w+):(\d+)\s*$", line.strip())
        if m:
            out.setdefault(f"{m.group(1)}/{m.group(2)}", {})[m.group(3)] = int(m.group(4))
    return out


def parse_ib_counter_file(text: str) -> dict[str, dict[str, int]]:
    """A saved counter dump, strictly: every line a `grep -H` counter line (or grep's own
    complaint about one file), at least one counter."""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "grep: ")):
            continue
        if not re.match(r"^/sys/class/infiniband/[^/]+/ports/\d+/(?:hw_)?counters/\w+:\d+$", stripped):
            raise ValueError(f"line {number}: {stripped[:60]!r} is not a /sys/class/infiniband/<ca>/ports/<n>/counters/<name>:<value> line")
    counters = parse_ib_counters(text)
    if not counters:
        raise ValueError("no port counter lines: expected `grep -H . /sys/class/infiniband/*/ports/*/counters/*` output")
    return counters


def judge_ib_counters(counters: dict[str, dict[str, int]], node: str, profile: HardwareProfile | None) -> Finding:
    check = "infiniband.errors"
    if profile is not None and profile.hca is None:
        return skip(node, check, CPU_ONLY_REASON if profile.gpu is None else "profile has no HCA")
    if not counters:
        return skip(node, check, "no port counters found under /sys/class/infiniband")
    moving = [f"{port} {name}={value}" for port, values in sorted(counters.items())
              for name, value in sorted(values.items()) if name in _BAD_COUNTERS and value > 0]
    if moving:
        return warned(
            node, check, value=len(moving), detail="; ".join(moving[:6]),
            diagnosis="link error counters are non-zero: a marginal cable or transceiver; clear them (perfquery -x -R), rerun the load, and replace the link if they grow",
        )
    return passed(node, check, detail=f"{len(counters)} ports, no link error counters")
