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

_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F:.]+)\): (\d+),\s*(.*)$")
_OFF_BUS = re.compile(r"fallen off the bus", re.I)
# a PCI address as NVRM prints it: "PCI:0000:91:00", "0000:b3:00.0", "GPU at 0000:01:00.0"
_PCI = re.compile(r"(?:PCI:)?\b((?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\b")
# pcie_print_link_status(): "<dev>: 63.008 Gb/s available PCIe bandwidth, limited by 8.0 GT/s PCIe x8 link at ..."
_LIMITED = re.compile(
    r"mlx5_core (\S+?):? .*?([\d.]+ Gb/s) available PCIe bandwidth, limited by ([\d.]+ GT/s PCIe x(\d+)) link at (\S+)"
    r"(?: \(capable of ([\d.]+ Gb/s) with ([\d.]+ GT/s PCIe x\d+) link\))?"
)

# The prefixes the kernel log carries, depending on who printed it (util-linux dmesg and
# systemd journalctl man pages):
#   dmesg -r               "<4>[ 12.345678] msg"
#   dmesg -x               "kern  :warn  : [ 12.345678] msg"
#   dmesg                  "[ 12.345678] msg"            (seconds since boot)
#   dmesg -T               "[Tue Mar  5 23:33:35 2024] msg"
#   dmesg --time-format iso, journalctl -k -o short-iso(-precise)
#                          "2024-03-05T23:33:35,123456+00:00 msg" / "2024-03-05T23:33:35+0000 host kernel: msg"
#   journalctl -k          "Mar 05 23:33:35 host kernel: msg" (-o short-precise: "23:33:35.123456")
#   journalctl -o short-full "Tue 2024-03-05 23:33:35 UTC host kernel: msg"
#   journalctl -o short-monotonic  "[ 1234.567890] host kernel: msg"
#   dmesg -t               "msg"                          (no timestamp at all)
_RAW_LEVEL = r"(?:<\d{1,3}>)?"
_FACILITY = r"(?:[a-z]+\s*:[a-z]+\s*: )?"
_SECONDS = r"\[\s*(?P<seconds>\d+\.\d+)\]"
_CTIME = r"\[(?P<ctime>\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})\]"
_ISO = r"(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d\d:?\d\d|Z)?)"
_SYSLOG = r"(?P<syslog>\w{3} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?)"
_FULL = r"(?P<full>\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \w+)"
_STAMPED = re.compile(
    rf"^{_RAW_LEVEL}{_FACILITY}(?:{_SECONDS}|{_CTIME}|{_ISO}|{_FULL}|{_SYSLOG})"
    r"(?:\s+\S+ kernel:)?(?:\s*\[\s*\d+\.\d+\])?\s?(?P<message>.*)$"
)
_UNSTAMPED = re.compile(rf"^{_RAW_LEVEL}{_FACILITY}(?P<message>.*)$")
# what a kernel message looks like without a timestamp: "subsystem: ...", "driver 0000:18:00.0: ..."
# or one of the boot banner lines
_KERNEL_MESSAGE = re.compile(
    r"^(?:[A-Za-z][\w.\-]*(?: [\w:.\-]+)?: |Linux version |Command line: |Kernel command line: |\s+NVRM: )"
)
# what the tools print instead of a log: their own errors, an empty journal
_NOT_A_LOG = re.compile(r"^(?:dmesg|journalctl|sudo|bash|sh|zsh|ssh): |^-- No entries --|^Hint: |: command not found$")
# a message continued on the next lines, as printk prints multi-line messages (indented)
_CONTINUATION = re.compile(r"^\s{4,}\S")


@dataclass(frozen=True)
class XidEvent:
    pci: str
    xid: int
    message: str
    timestamp: float | None = None  # seconds since boot ([s] format), or None when the line carries another clock
    stamp: str = ""  # the line's time as printed

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
    off_bus: list[str]  # PCI addresses (or "?" when no line near it names one)
    nics: list[DowntrainedNIC]
    lines: int = 0  # lines that read as kernel log lines; 0 means the log was empty or unreadable
    other: int = 0  # non-blank lines that do not

    @property
    def recognised(self) -> bool:
        """Whether this reads as a kernel log at all: most lines look like kernel messages."""
        return self.lines > 0 and self.lines >= self.other


@dataclass(frozen=True)
class _Line:
    message: str
    seconds: float | None
    stamp: str
    kernel: bool


def _split(line: str) -> _Line:
    m = _STAMPED.match(line)
    if m:
        seconds = float(m.group("seconds")) if m.group("seconds") else None
        stamp = next((m.group(k) for k in ("seconds", "ctime", "iso", "full", "syslog") if m.group(k)), "")
        return _Line(m.group("message"), seconds, stamp, True)
    message = _UNSTAMPED.match(line).group("message")
    return _Line(message, None, "", bool(_KERNEL_MESSAGE.match(message)) and not _NOT_A_LOG.search(message))


def pci_address(text: str) -> str | None:
    """'PCI:0000:91:00' / '0000:91:00.0' / '91:00.0' -> '0000:91:00' (the form Xid lines use)."""
    m = _PCI.search(text)
    if not m:
        return None
    address = m.group(1).lower()
    return address if address.count(":") == 2 else f"0000:{address}"


def parse_dmesg(text: str) -> KernelLog:
    xids, off_bus, nics = [], [], []
    lines = [_split(raw) for raw in text.splitlines() if raw.strip()]
    log = KernelLog(xids=xids, off_bus=off_bus, nics=nics)
    for i, line in enumerate(lines):
        if line.kernel:
            log.lines += 1
        else:
            log.other += 1
        message = line.message
        m = _XID.search(message)
        if m:
            xids.append(XidEvent(pci=pci_address(m.group(1)) or m.group(1), xid=int(m.group(2)), message=m.group(3).strip(),
                                 timestamp=line.seconds, stamp=line.stamp))
            continue
        if _OFF_BUS.search(message) and ("NVRM" in message or "GPU" in message):
            off_bus.append(_off_bus_device(lines, i))
        m = _LIMITED.search(message)
        if m:
            nics.append(DowntrainedNIC(device=m.group(1), available=m.group(2), limited_by=m.group(3),
                                       width=int(m.group(4)), capable=f"{m.group(6)} at {m.group(7)}" if m.group(6) else None))
    return log


def _off_bus_device(lines: list[_Line], i: int) -> str:
    """The GPU a 'fallen off the bus' message is about. NVRM splits the message over several
    lines ("NVRM: The NVIDIA GPU 0000:b3:00.0" / "NVRM: (PCI ID: 10de:26b5) installed ..." /
    "NVRM: fallen off the bus ..."), so look at the line itself, then the NVRM lines just before
    it and just after it."""
    own = pci_address(lines[i].message.split("(PCI ID")[0])
    if own:
        return own
    for j in list(range(i - 1, max(i - 4, -1), -1)) + list(range(i + 1, min(i + 3, len(lines)))):
        text = lines[j].message
        if "NVRM" not in text and not _CONTINUATION.match(text):
            continue
        address = pci_address(text.split("(PCI ID")[0])
        if address:
            return address
    return "?"


def judge_dmesg(log: KernelLog, node: str, has_gpu: bool = True, has_hca: bool = True) -> list[Finding]:
    if log.lines == 0:
        reason = "kernel log empty or not readable (dmesg needs root or kernel.dmesg_restrict=0)"
        return ([skip(node, "gpu.xid", reason)] if has_gpu else []) + ([skip(node, "infiniband.pcie_link", reason)] if has_hca else [])
    out: list[Finding] = []
    hardware = [x for x in log.xids if x.hardware]
    other = [x for x in log.xids if not x.hardware]
    fell_off = set(log.off_bus) | {x.pci for x in log.xids if x.xid == 79}
    if len(fell_off) > 1:
        fell_off.discard("?")  # the unnamed message is about a GPU another line names
    fell_off = sorted(fell_off)
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
