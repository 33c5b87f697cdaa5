"""`nvidia-smi -q` text: one indented block per GPU ("GPU 00000000:18:00.0").

Read into the same per-GPU fields as `--query-gpu` (so the ECC / row remap / clocks judges are
the ones `podsys check` uses), plus what only -q shows: the PCIe link width and the GPU's NVLink
fabric registration (`Fabric` State/Status, NVSwitch boards with driver 535+). Both layouts in
the wild are read: "Clocks Event Reasons" (driver 535+) and "Clocks Throttle Reasons" (older);
"SRAM/DRAM Uncorrectable" (A100+) and "Double Bit ... Total" (V100); "Remapped Rows" (A100+) and
"Retired Pages" (V100)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import re

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip
from podsys.checks.nvsmi import judge_query_gpu

if TYPE_CHECKING:  # annotations only: the node-side health runner has no pydantic
    from podsys.cluster.hardware import HardwareProfile

_GPU = re.compile(r"^GPU ([0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s*$")
_ENTRY = re.compile(r"^(\s+)(\S.*?)\s*(?::\s*(.*?))?\s*$")

# NVML clocks event reason bits (nvmlClocksEventReasons): the -q names mapped back to the mask
# `--query-gpu=clocks_throttle_reasons.active` reports, so one judge reads both
_REASON_BITS = {
    "Idle": 0x1, "Applications Clocks Setting": 0x2, "SW Power Cap": 0x4, "HW Slowdown": 0x8, "Sync Boost": 0x10,
    "SW Thermal Slowdown": 0x20, "HW Thermal Slowdown": 0x40, "HW Power Brake Slowdown": 0x80, "Display Clock Setting": 0x100,
}


def parse_nvsmi_q(text: str) -> list[dict[str, str]]:
    """One dict per GPU: '/'-joined section paths ("ECC Mode/Current") -> value, plus the
    --query-gpu field names the judges read."""
    gpus: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    stack: list[tuple[int, str]] = []  # (indent, section name)
    for raw in text.splitlines():
        line = raw.rstrip()
        gpu = _GPU.match(line)
        if gpu:
            current = {"pci.bus_id": gpu.group(1), "index": str(len(gpus))}
            gpus.append(current)
            stack = []
            continue
        if current is None or not line.strip():
            continue
        m = _ENTRY.match(line.expandtabs(4))
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([name for _, name in stack] + [key])
        if value is None:
            stack.append((indent, key))
        else:
            current[path] = value
    if not gpus:
        raise ValueError("no 'GPU 00000000:xx:xx.x' block found: not `nvidia-smi -q` output")
    return [_query_fields(g) for g in gpus]


def _number(value: str | None) -> int | None:
    m = re.match(r"^\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


def _query_fields(gpu: dict[str, str]) -> dict[str, str]:
    out = dict(gpu)

    def put(field: str, *paths: str) -> None:
        for path in paths:
            if path in gpu:
                out[field] = gpu[path]
                return

    put("name", "Product Name")
    put("persistence_mode", "Persistence Mode")
    put("ecc.mode.current", "ECC Mode/Current")
    put("clocks.current.sm", "Clocks/SM")
    put("clocks.max.sm", "Max Clocks/SM")
    put("temperature.gpu", "Temperature/GPU Current Temp")
    put("remapped_rows.pending", "Remapped Rows/Pending", "Retired Pages/Pending Page Blacklist", "Retired Pages/Pending Page Retirement")
    put("remapped_rows.failure", "Remapped Rows/Remapping Failure Occurred")
    volatile = {path: value for path, value in gpu.items() if path.startswith("ECC Errors/Volatile/")}
    if volatile:
        sram = [_number(v) for p, v in volatile.items() if "SRAM Uncorrectable" in p]
        dram = [_number(v) for p, v in volatile.items() if "DRAM Uncorrectable" in p or p == "ECC Errors/Volatile/Double Bit/Total"]
        if any(n is not None for n in sram):
            out["ecc.errors.uncorrected.volatile.sram"] = str(sum(n or 0 for n in sram))
        if any(n is not None for n in sram + dram):
            out["ecc.errors.uncorrected.volatile.total"] = str(sum(n or 0 for n in sram + dram))
    for section in ("Clocks Event Reasons", "Clocks Throttle Reasons"):
        reasons = {path.rsplit("/", 1)[-1]: value for path, value in gpu.items() if path.startswith(section + "/")}
        if reasons:
            mask = sum(bit for name, bit in _REASON_BITS.items() if reasons.get(name) == "Active")
            out["clocks_throttle_reasons.active"] = f"0x{mask:016X}"
            break
    return out


def judge_nvsmi_q(gpus: list[dict[str, str]], node: str, profile: HardwareProfile | None) -> list[Finding]:
    if profile is not None and profile.gpu is None:
        return [skip(node, "gpu.count", CPU_ONLY_REASON)]
    return judge_query_gpu(gpus, node, profile) + [judge_pcie_width(gpus, node), judge_fabric(gpus, node, profile)]


def judge_pcie_width(gpus: list[dict[str, str]], node: str) -> Finding:
    """Link width below the GPU's maximum: a reseat/riser fault. The generation is not judged:
    an idle GPU drops its link to Gen1 to save power and that is normal."""
    check = "gpu.pcie_link"
    known = [g for g in gpus if "PCI/GPU Link Info/Link Width/Current" in g]
    if not known:
        return skip(node, check, "nvidia-smi -q shows no PCIe link width")
    narrow = []
    for g in known:
        current = _number(g["PCI/GPU Link Info/Link Width/Current"])
        widest = _number(g.get("PCI/GPU Link Info/Link Width/Max"))
        if current is not None and widest is not None and current < widest:
            narrow.append(f"GPU {g['index']} {g['pci.bus_id']} x{current} of x{widest}")
    if narrow:
        return failed(node, check, value=len(narrow), detail="; ".join(narrow[:8]),
                      diagnosis="the GPU's PCIe link trained narrower than the card: reseat the GPU or riser, check the slot and its BIOS bifurcation setting")
    return passed(node, check, detail=f"{len(known)} GPUs at full PCIe link width")


def judge_fabric(gpus: list[dict[str, str]], node: str, profile: HardwareProfile | None) -> Finding:
    """NVLink fabric registration (NVSwitch boards): State Completed / Status Success once fabric
    manager has programmed the switches; 'In Progress' means it is not running."""
    check = "gpu.nvlink"
    registered = [g for g in gpus if g.get("Fabric/State") not in (None, "N/A", "[N/A]")]
    if not registered:
        reason = "no NVLink fabric state in nvidia-smi -q (no NVSwitch, or driver before 535)"
        return skip(node, check, reason)
    bad = [f"GPU {g['index']} {g['pci.bus_id']} fabric {g['Fabric/State']}/{g.get('Fabric/Status', '?')}"
           + (f", bandwidth {g['Fabric/Health/Bandwidth']}" if g.get("Fabric/Health/Bandwidth", "Full") not in ("Full", "N/A") else "")
           for g in registered
           if g["Fabric/State"] != "Completed" or g.get("Fabric/Status", "Success") != "Success"
           or g.get("Fabric/Health/Bandwidth", "Full") not in ("Full", "N/A")]
    if bad:
        in_progress = any(g.get("Fabric/State") == "In Progress" for g in registered)
        return failed(node, check, value=len(bad), detail="; ".join(bad[:8]),
                      diagnosis="GPUs have not registered with the NVLink fabric: fabric manager is not running or failed "
                      "(systemctl status nvidia-fabricmanager; its version must equal the driver's)" if in_progress
                      else "NVLink fabric degraded: check nvidia-smi nvlink -s for inactive links, then reset the GPUs or reseat/RMA the NVSwitch tray")
    return passed(node, check, detail=f"{len(registered)} GPUs registered with the NVLink fabric (Completed/Success)")
