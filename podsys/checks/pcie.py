"""`lspci -vvv`: PCIe bridges with Access Control Services redirecting peer-to-peer traffic.

On bare metal, `ACSCtl: SrcValid+` on the switches between GPUs forces P2P through the root
complex (P2P bandwidth ~10x too low, NCCL hangs). Inside a VM, ACS is needed for passthrough,
so this check only applies to bare-metal nodes."""

from __future__ import annotations

import re

from podsys.checks.findings import Finding, failed, passed

_DEVICE = re.compile(r"^([0-9a-fA-F]{4}:)?([0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+(.*)$")


def parse_lspci_acs(text: str) -> list[tuple[str, str]]:
    """[(bus address, description)] of every device whose ACSCtl has SrcValid+."""
    out: list[tuple[str, str]] = []
    device: tuple[str, str] | None = None
    devices = 0
    for line in text.splitlines():
        m = _DEVICE.match(line)
        if m:
            device = (m.group(2), m.group(3).strip())
            devices += 1
            continue
        if device and "ACSCtl:" in line and "SrcValid+" in line:
            out.append(device)
    if devices == 0:
        raise ValueError("no PCI device blocks found: not `lspci -vvv` output")
    return out


def judge_acs(bridges: list[tuple[str, str]], node: str) -> Finding:
    if bridges:
        return failed(
            node, "gpu.pcie_acs", value=len(bridges),
            detail="ACS SrcValid+ on " + ", ".join(addr for addr, _ in bridges[:8]),
            diagnosis="PCIe ACS redirects GPU peer-to-peer traffic through the CPU: disable ACS in the BIOS (or setpci -s <bridge> "
            "ECAP_ACS+6.w=0000 at boot) on bare metal",
        )
    return passed(node, "gpu.pcie_acs", detail="no PCIe bridge with ACS source validation")
