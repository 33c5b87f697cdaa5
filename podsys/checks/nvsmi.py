"""nvidia-smi outputs: `topo -m`, `--query-gpu=... --format=csv` and `nvlink -s`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import csv
import io
import re
from dataclasses import dataclass

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip, warned

if TYPE_CHECKING:  # annotations only: the node-side health runner has no pydantic
    from podsys.cluster.hardware import HardwareProfile

# The fields podsys asks for, in this order (nvidia-smi --help-query-gpu names).
QUERY_FIELDS = (
    "index", "pci.bus_id", "name", "persistence_mode", "ecc.mode.current",
    "ecc.errors.uncorrected.volatile.total", "ecc.errors.uncorrected.volatile.sram",
    "remapped_rows.pending", "remapped_rows.failure", "remapped_rows.uncorrectable",
    "clocks.current.sm", "clocks.max.sm", "clocks_throttle_reasons.active", "temperature.gpu",
)
# Fields every supported driver answers; asked for when an older/newer driver refuses one of
# the full list (nvidia-smi rejects the whole query for one unknown field).
BASIC_FIELDS = ("index", "pci.bus_id", "name", "persistence_mode", "ecc.mode.current", "clocks.current.sm", "clocks.max.sm")
QUERY_COMMAND = (
    "nvidia-smi --query-gpu=" + ",".join(QUERY_FIELDS) + " --format=csv 2>/dev/null || "
    "nvidia-smi --query-gpu=" + ",".join(BASIC_FIELDS) + " --format=csv"
)

# NVML clocks event (throttle) reason bits that mean a hardware or thermal problem.
# https://docs.nvidia.com/deploy/nvml-api/group__nvmlClocksEventReasons.html
_BAD_THROTTLE = {
    0x8: "HW slowdown",
    0x20: "SW thermal slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake slowdown",
}


# --- topo -m ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Topology:
    gpus: list[str]  # GPU0..GPUn
    links: dict[tuple[str, str], str]  # (GPUa, GPUb) -> "NV18" | "SYS" | "NODE" | ...


def parse_topo(text: str) -> Topology:
    header: list[str] | None = None
    links: dict[tuple[str, str], str] = {}
    gpus: list[str] = []
    for line in text.splitlines():
        # ANSI colour/escape codes appear when the output was captured from a terminal.
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line)
        tokens = clean.split()
        if not tokens:
            continue
        # The header row starts with GPU0 too; the GPU0 data row has "X" (self) next.
        if header is None and tokens[0] == "GPU0" and (len(tokens) == 1 or tokens[1] != "X"):
            header = []
            for t in tokens:  # device columns end where "CPU Affinity" begins
                if t in ("CPU", "NUMA"):
                    break
                header.append(t)
            continue
        if header is not None and re.fullmatch(r"GPU\d+", tokens[0]):
            row = tokens[0]
            gpus.append(row)
            for column, value in zip(header, tokens[1 : 1 + len(header)]):
                if column.startswith("GPU") and column != row:
                    links[(row, column)] = value
        if tokens[0] == "Legend:":
            break
    if header is None or not gpus:
        raise ValueError("no GPU matrix found: not `nvidia-smi topo -m` output")
    return Topology(gpus=gpus, links=links)


def judge_topo(topo: Topology, node: str, profile: HardwareProfile | None) -> list[Finding]:
    check = "gpu.topology"
    if profile is not None and profile.gpu is None:
        return [skip(node, check, CPU_ONLY_REASON)]
    nvlink = profile.gpu.nvlink if profile is not None and profile.gpu is not None else None
    if nvlink is None:
        kinds = sorted(set(topo.links.values()))
        return [passed(node, check, detail=f"{len(topo.gpus)} GPUs, PCIe paths {', '.join(kinds)} (profile has no NVLink)")]
    want = f"NV{nvlink.links_per_gpu}"
    bad: list[str] = []
    for a in topo.gpus:
        for b in topo.gpus:
            if a < b and (value := topo.links.get((a, b))) is not None and value != want:
                bad.append(f"{a}-{b} {value}")
    if bad:
        return [failed(
            node, check, value=len(bad), detail=f"pairs without {want}: {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else ""),
            diagnosis=f"NVLink missing between GPUs (expected {want} for every pair): check nvidia-smi nvlink -s for inactive links, "
            "fabric manager status, and reseat/RMA the GPU or NVSwitch tray",
        )]
    return [passed(node, check, detail=f"{len(topo.gpus)} GPUs, every pair {want}")]


# --- --query-gpu csv --------------------------------------------------------------------------

def parse_query_gpu(text: str) -> list[dict[str, str]]:
    """CSV with a header (`--format=csv`, with or without `nounits`) into one dict per GPU,
    keyed by field name without the unit suffix ("clocks.sm [MHz]" -> "clocks.sm")."""
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        raise ValueError("empty nvidia-smi --query-gpu output")
    reader = csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True)
    rows = list(reader)
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0]]
    if "pci.bus_id" not in header and "index" not in header:
        raise ValueError("nvidia-smi --query-gpu CSV needs a header row with at least index or pci.bus_id")
    out = []
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        out.append({h: v.strip() for h, v in zip(header, row)})
    return out


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    m = re.match(r"^\s*(0x[0-9a-fA-F]+|-?[\d.]+)", value)
    if not m:
        return None
    return float(int(m.group(1), 16)) if m.group(1).startswith("0x") else float(m.group(1))


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "1", "true")


def _bus(bus_id: str) -> str:
    """Normalise '00000000:18:00.0' / '0000:18:00.0' / '18:00.0' for comparison."""
    parts = bus_id.strip().upper().split(":")
    return ":".join(parts[-2:])


def judge_query_gpu(gpus: list[dict[str, str]], node: str, profile: HardwareProfile | None) -> list[Finding]:
    if profile is not None and profile.gpu is None:
        return [skip(node, "gpu.count", CPU_ONLY_REASON)]
    out: list[Finding] = []
    spec = profile.gpu if profile is not None else None
    # count and model
    if spec is not None:
        found_bus = {_bus(g.get("pci.bus_id", "")) for g in gpus}
        missing = [b for b in spec.pci_bus_ids if _bus(b) not in found_bus]
        if len(gpus) < spec.count:
            where = f"missing PCI {', '.join(missing)}" if missing else "expected PCI addresses not listed in the profile"
            out.append(failed(
                node, "gpu.count", value=len(gpus), threshold=float(spec.count), unit="GPUs",
                detail=f"{len(gpus)} of {spec.count} GPUs visible; {where}",
                diagnosis="a GPU fell off the bus or is not enumerated: check dmesg for Xid 79 / 'fallen off the bus', "
                "lspci for the device at that address, then power-cycle the node (not just reboot) or reseat/RMA the GPU",
            ))
        elif missing:
            out.append(warned(
                node, "gpu.count", value=len(gpus), detail=f"{len(gpus)} GPUs, but not at the profile's addresses: {', '.join(missing)}",
                diagnosis="this board's PCI layout differs from the profile: set gpu.pci_bus_ids in the manifest's hardware_profiles",
            ))
        else:
            out.append(passed(node, "gpu.count", value=len(gpus), unit="GPUs", detail=f"{len(gpus)} GPUs"))
        wrong_model = sorted({g.get("name", "?") for g in gpus if g.get("name") != spec.product_name})
        if wrong_model:
            out.append(failed(
                node, "gpu.model", value=", ".join(wrong_model), detail=f"found {', '.join(wrong_model)}, profile says {spec.product_name}",
                diagnosis="the node's GPUs differ from its hardware profile: fix the node group's `hardware` in the manifest",
            ))
        else:
            out.append(passed(node, "gpu.model", value=spec.product_name))
    else:
        out.append(passed(node, "gpu.count", value=len(gpus), unit="GPUs", detail=f"{len(gpus)} GPUs (no profile to compare)"))

    def per_gpu(check: str, bad: list[str], ok_detail: str, diagnosis: str, verdict=failed) -> None:
        if bad:
            out.append(verdict(node, check, value=len(bad), detail="; ".join(bad[:8]), diagnosis=diagnosis))
        else:
            out.append(passed(node, check, detail=ok_detail))

    label = lambda g: f"GPU {g.get('index', '?')} {g.get('pci.bus_id', '')}".strip()  # noqa: E731
    if any("persistence_mode" in g for g in gpus):
        per_gpu("gpu.persistence", [f"{label(g)} persistence {g['persistence_mode']}" for g in gpus if g.get("persistence_mode") != "Enabled"],
                "persistence mode on", "enable persistence (systemctl enable --now nvidia-persistenced) so the driver stays loaded between jobs",
                verdict=warned)
    if any("ecc.mode.current" in g for g in gpus):
        per_gpu("gpu.ecc_mode", [f"{label(g)} ECC {g['ecc.mode.current']}" for g in gpus if g.get("ecc.mode.current") not in ("Enabled", "[N/A]", "N/A")],
                "ECC enabled", "enable ECC (nvidia-smi -e 1) and reset the GPU/reboot; data-center GPUs must run with ECC")
    ecc_bad = []
    for g in gpus:
        problems = []
        if _yes(g.get("remapped_rows.pending")):
            problems.append("row remap pending")
        if _yes(g.get("remapped_rows.failure")):
            problems.append("row remap failure")
        sram = _number(g.get("ecc.errors.uncorrected.volatile.sram"))
        if sram:
            problems.append(f"{sram:g} uncorrectable SRAM errors")
        total = _number(g.get("ecc.errors.uncorrected.volatile.total"))
        if total and not sram:
            problems.append(f"{total:g} uncorrectable ECC errors")
        if problems:
            ecc_bad.append(f"{label(g)}: {', '.join(problems)}")
    ecc_fields = ("remapped_rows.pending", "remapped_rows.failure", "ecc.errors.uncorrected.volatile.sram", "ecc.errors.uncorrected.volatile.total")
    if not any(field in g for g in gpus for field in ecc_fields):
        out.append(skip(node, "gpu.ecc_errors", "the driver did not report row remap / ECC error counters"))
    else:
        per_gpu("gpu.ecc_errors", ecc_bad, "no pending/failed row remaps, no uncorrectable errors",
                "pending remap: reset the GPU (nvidia-smi -r) or reboot to apply it; remap failure or uncorrectable SRAM errors: RMA the GPU")
    throttle_bad = []
    for g in gpus:
        mask = _number(g.get("clocks_throttle_reasons.active") or g.get("clocks_event_reasons.active"))
        if mask is None:
            continue
        reasons = [name for bit, name in _BAD_THROTTLE.items() if int(mask) & bit]
        if reasons:
            throttle_bad.append(f"{label(g)}: {', '.join(reasons)} (clocks.sm {g.get('clocks.current.sm') or g.get('clocks.sm', '?')} of max {g.get('clocks.max.sm', '?')})")
    if not any("clocks_throttle_reasons.active" in g or "clocks_event_reasons.active" in g for g in gpus):
        out.append(skip(node, "gpu.clocks", "the driver did not report clock throttle reasons"))
        return out
    per_gpu("gpu.clocks", throttle_bad, "no hardware/thermal clock throttling",
            "the GPU is throttling for hardware or thermal reasons: check cooling/airflow, power supply and BMC power capping")
    return out


# --- nvlink -s --------------------------------------------------------------------------------

def parse_nvlink_status(text: str) -> dict[str, dict[int, str]]:
    """{"GPU 0": {0: "26.562 GB/s", 3: "<inactive>"}}"""
    out: dict[str, dict[int, str]] = {}
    current: str | None = None
    for line in text.splitlines():
        gpu = re.match(r"^GPU (\d{1,3}): ", line.strip())  # "GPU 0: NVIDIA H100 ... (UUID: ...)", not -q's "GPU 00000000:18:00.0"
        if gpu:
            current = f"GPU {gpu.group(1)}"
            out[current] = {}
            continue
        link = re.match(r"^\s*Link (\d+):\s*(.+?)\s*$", line)
        if link and current is not None:
            out[current][int(link.group(1))] = link.group(2)
    if not out:
        raise ValueError("no 'GPU n:' blocks found: not `nvidia-smi nvlink -s` output")
    return out


def judge_nvlink_status(status: dict[str, dict[int, str]], node: str, profile: HardwareProfile | None) -> list[Finding]:
    check = "gpu.nvlink"
    if profile is not None and profile.gpu is None:
        return [skip(node, check, CPU_ONLY_REASON)]
    expected = profile.gpu.nvlink.links_per_gpu if profile is not None and profile.gpu and profile.gpu.nvlink else None
    if profile is not None and expected is None:
        return [skip(node, check, f"profile {profile.id} has no NVLink")]
    bad = []
    for gpu, links in status.items():
        inactive = [n for n, v in links.items() if "inactive" in v.lower()]
        if inactive:
            bad.append(f"{gpu} links {','.join(map(str, inactive))} inactive")
        elif expected is not None and len(links) < expected:
            bad.append(f"{gpu} reports {len(links)} of {expected} links")
    if bad:
        return [failed(
            node, check, value=len(bad), detail="; ".join(bad[:8]),
            diagnosis="NVLink down (DCGM level-2 diag does not catch this): reset the GPUs or reboot; if it persists, reseat/RMA the GPU or NVSwitch baseboard",
        )]
    return [passed(node, check, detail=f"{len(status)} GPUs, all links active")]
