"""Kernel log (dmesg / journalctl -k): NVIDIA Xid events and downtrained Mellanox NICs.

The hardware Xid list is from ../shared/REFERENCE.md (NVIDIA Xid catalogue): these point at
the GPU, its memory, NVLink or the board, not at an application."""

from __future__ import annotations

import re
from dataclasses import dataclass

from podsys.checks.findings import Finding, failed, passed, skip, warned

HARDWARE_XIDS = {
    48: "double-bit ECC error",
    56: "display engine error",
    57: "error programming video memory interface",
    58: "unstable video memory interface",
    62: "internal micro-controller halt",
    63: "ECC page retirement / row remap recording event",
    64: "ECC page retirement / row remap recording failure",
    65: "video processor exception",
    68: "NVDEC0 exception",
    69: "graphics engine class error",
    73: "NVENC2 error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    80: "corrupted data sent to GPU",
    81: "VGA subsystem error",
    92: "high single-bit ECC error rate",
    119: "GSP RPC timeout",
    120: "GSP error",
}

_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+),\s*(.*)$")
_OFF_BUS = re.compile(r"NVRM: GPU at PCI:([0-9a-fA-F:.]+)[^\n]*fallen off the bus", re.I)
_OFF_BUS_PLAIN = re.compile(r"fallen off the bus", re.I)
# pcie_print_link_status(): "<dev>: 63.008 Gb/s available PCIe bandwidth, limited by 8.0 GT/s PCIe x8 link at ..."
_LIMITED = re.compile(
    r"mlx5_core (\S+?):? .*?([\d.]+ Gb/s) available PCIe bandwidth, limited by ([\d.]+ GT/s PCIe x(\d+)) link at (\S+)"
    r"(?: \(capable of ([\d.]+ Gb/s) with ([\d.]+ GT/s PCIe x\d+) link\))?"
)


@dataclass(frozen=True)
class XidEvent:
    pci: str
    xid: int
    message: str

    @property
    def hardware(self) -> bool:
        return self.xid in HARDWARE_XIDS


@dataclass(frozen=True)
class DowntrainedNIC:
    device: str
    available: str
    limited_by: str
    width: int
    capable: str | None


@dataclass
class KernelLog:
    xids: list[XidEvent]
    off_bus: list[str]  # PCI addresses (or "?" when the line names none)
    nics: list[DowntrainedNIC]
    lines: int = 0  # kernel log lines seen; 0 means the log was empty or unreadable

_LOG_LINE = re.compile(r"^\s*(\[\s*\d+\.\d+\]|\w{3} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT)")


def parse_dmesg(text: str) -> KernelLog:
    xids, off_bus, nics = [], [], []
    seen = 0
    for line in text.splitlines():
        if _LOG_LINE.match(line):
            seen += 1
        m = _XID.search(line)
        if m:
            xids.append(XidEvent(pci=m.group(1), xid=int(m.group(2)), message=m.group(3).strip()))
            continue
        m = _OFF_BUS.search(line)
        if m:
            off_bus.append(m.group(1))
        elif _OFF_BUS_PLAIN.search(line) and "NVRM" in line:
            off_bus.append("?")
        m = _LIMITED.search(line)
        if m:
            nics.append(DowntrainedNIC(device=m.group(1), available=m.group(2), limited_by=m.group(3),
                                       width=int(m.group(4)), capable=f"{m.group(6)} at {m.group(7)}" if m.group(6) else None))
    return KernelLog(xids=xids, off_bus=off_bus, nics=nics, lines=seen)


def judge_dmesg(log: KernelLog, node: str, has_gpu: bool = True, has_hca: bool = True) -> list[Finding]:
    if log.lines == 0:
        reason = "kernel log empty or not readable (dmesg needs root or kernel.dmesg_restrict=0)"
        return ([skip(node, "gpu.xid", reason)] if has_gpu else []) + ([skip(node, "infiniband.pcie_link", reason)] if has_hca else [])
    out: list[Finding] = []
    hardware = [x for x in log.xids if x.hardware]
    other = [x for x in log.xids if not x.hardware]
    fell_off = sorted(set(log.off_bus) | {x.pci for x in log.xids if x.xid == 79})
    if hardware or fell_off:
        parts = [f"Xid {x.xid} on {x.pci} ({HARDWARE_XIDS[x.xid]})" for x in _unique(hardware)]
        if fell_off and not any(x.xid == 79 for x in hardware):
            parts.append(f"GPU fallen off the bus at {', '.join(fell_off)}")
        diagnosis = (
            "GPU fell off the bus (Xid 79): power-cycle the node from the BMC; if it recurs, reseat/RMA the GPU and check PSU/riser"
            if fell_off
            else "hardware Xid: drain the node, reset the GPU or reboot, run dcgmi diag -r 3; recurring errors mean RMA"
        )
        out.append(failed(node, "gpu.xid", value=len(hardware) or len(fell_off), detail="; ".join(parts[:6]), diagnosis=diagnosis))
    elif other:
        out.append(warned(
            node, "gpu.xid", value=len(other),
            detail="; ".join(f"Xid {x.xid} on {x.pci}" for x in _unique(other)[:6]),
            diagnosis="non-hardware Xid events (usually an application fault, e.g. Xid 13/31/43): check the job that ran; no hardware action",
        ))
    elif has_gpu:
        out.append(passed(node, "gpu.xid", detail="no Xid events in the kernel log"))
    if log.nics:
        out.append(failed(
            node, "infiniband.pcie_link", value=len(log.nics),
            detail="; ".join(
                f"{n.device} limited by {n.limited_by}" + (f" (capable of {n.capable})" if n.capable else "") for n in log.nics
            ),
            diagnosis="the NIC's PCIe link trained narrower/slower than the card: reseat the NIC or riser, check the slot's BIOS bifurcation "
            "setting, and that the card sits in an x16 slot",
        ))
    elif has_hca:
        out.append(passed(node, "infiniband.pcie_link", detail="no downtrained mlx5 PCIe links in the kernel log"))
    return out


def _unique(events: list[XidEvent]) -> list[XidEvent]:
    seen, out = set(), []
    for x in events:
        if (x.xid, x.pci) not in seen:
            seen.add((x.xid, x.pci))
            out.append(x)
    return out
