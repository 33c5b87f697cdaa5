"""`lspci -vvv`: PCIe switch ports whose Access Control Services redirect GPU peer-to-peer traffic.

On bare metal, `ACSCtl: SrcValid+` on a switch port between a GPU and another GPU or an HCA
forces their P2P/GPUDirect traffic up through the root complex (P2P bandwidth ~10x too low,
NCCL hangs). Only ports on such a path count: ACS on the port above an NVMe drive, or on a root
port above the whole switch (which switch-local traffic never crosses), changes nothing for the
GPUs. Inside a VM, ACS is needed for passthrough, so this check only applies to bare metal."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations

from podsys.checks.findings import Finding, failed, passed, skip

_DEVICE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2}\.[0-7])\s+(.*)$")
_BUS = re.compile(r"Bus: primary=([0-9a-fA-F]+), secondary=([0-9a-fA-F]+), subordinate=([0-9a-fA-F]+)")


@dataclass
class PciDevice:
    address: str  # "15:00.0"
    domain: str
    bus: int
    description: str
    bus_range: tuple[int, int] | None = None  # a bridge's secondary..subordinate buses
    acs_source_validation: bool = False

    @property
    def is_gpu(self) -> bool:
        return bool(re.match(r"(3D|VGA compatible) controller: NVIDIA", self.description))

    @property
    def is_hca(self) -> bool:
        return bool(re.match(r"(Infiniband|Ethernet) controller: Mellanox", self.description))

    def covers(self, other: "PciDevice") -> bool:
        return (self.bus_range is not None and self.domain == other.domain
                and self.bus_range[0] <= other.bus <= self.bus_range[1])


@dataclass
class AcsScan:
    bridges: list[tuple[str, str]]  # (address, description) of SrcValid+ ports on a GPU<->GPU/HCA path
    gpus: int = 0
    hcas: int = 0
    elsewhere: list[str] = field(default_factory=list)  # SrcValid+ ports on no such path


def parse_lspci(text: str) -> list[PciDevice]:
    devices: list[PciDevice] = []
    for line in text.splitlines():
        m = _DEVICE.match(line)
        if m:
            devices.append(PciDevice(address=f"{m.group(2)}:{m.group(3)}".lower(), domain=(m.group(1) or "0000").lower(),
                                     bus=int(m.group(2), 16), description=m.group(4).strip()))
            continue
        if not devices:
            continue
        if (bus := _BUS.search(line)) is not None:
            devices[-1].bus_range = (int(bus.group(2), 16), int(bus.group(3), 16))
        elif "ACSCtl:" in line and "SrcValid+" in line:
            devices[-1].acs_source_validation = True
    if not devices:
        raise ValueError("no PCI device blocks found: not `lspci -vvv` output")
    return devices


def acs_on_peer_paths(devices: list[PciDevice]) -> AcsScan:
    """The SrcValid+ bridges that some GPU<->GPU or GPU<->HCA pair's traffic crosses below the
    switch they share: each bridge covering exactly one of the pair, under a bridge covering both."""
    endpoints = [d for d in devices if d.is_gpu or d.is_hca]
    bridges = [d for d in devices if d.bus_range is not None]
    on_path: set[str] = set()
    for a, b in combinations(endpoints, 2):
        if not (a.is_gpu or b.is_gpu):
            continue  # HCA<->HCA traffic is not GPU peer-to-peer
        shared = [br for br in bridges if br.covers(a) and br.covers(b)]
        if not shared:
            continue  # under different root ports: the path crosses the root complex whatever ACS says
        for br in bridges:
            if br.acs_source_validation and br.covers(a) != br.covers(b) and any(s.covers(br) for s in shared):
                on_path.add(br.address)
    acs = [d for d in devices if d.acs_source_validation]
    return AcsScan(
        bridges=[(d.address, d.description) for d in acs if d.address in on_path],
        gpus=sum(d.is_gpu for d in devices), hcas=sum(d.is_hca for d in devices),
        elsewhere=[d.address for d in acs if d.address not in on_path],
    )


def parse_lspci_acs(text: str) -> AcsScan:
    return acs_on_peer_paths(parse_lspci(text))


def judge_acs(scan: AcsScan, node: str) -> Finding:
    if scan.bridges:
        return failed(
            node, "gpu.pcie_acs", value=len(scan.bridges),
            detail="ACS SrcValid+ on " + ", ".join(addr for addr, _ in scan.bridges[:8]) + " (between GPUs/HCAs)",
            diagnosis="PCIe ACS redirects GPU peer-to-peer traffic through the CPU: disable ACS in the BIOS (or setpci -s <bridge> "
            "ECAP_ACS+6.w=0000 at boot) on bare metal",
        )
    if scan.gpus == 0:
        return skip(node, "gpu.pcie_acs", "no NVIDIA GPU in the lspci output")
    elsewhere = f"; ACS on {', '.join(scan.elsewhere[:4])} is off the GPU paths" if scan.elsewhere else ""
    return passed(node, "gpu.pcie_acs", detail=f"no ACS source validation between {scan.gpus} GPUs and {scan.hcas} HCAs{elsewhere}")
