"""MAC addresses: the one normaliser, the one unicast rule and the one MAC CSV reader.

Validation (podsys/cluster/checks.py) and discovery (podsys/provision/discover.py) both read
a group's `macs_file` through `read_mac_csv`, so they agree on what a row, a comment and a
header are."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from podsys.cluster.hostlists import HOSTNAME_RE
from podsys.errors import Problem

MAC_SEPARATED = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
MAC_DOTTED = re.compile(r"^[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}$")
MAC_BARE = re.compile(r"^[0-9a-fA-F]{12}$")
HEADER_NAMES = ("hostname", "host", "name")
# A MAC CSV lists one row per node; a file this large is not one (and would cost memory).
MAX_CSV_BYTES = 16 * 1024 * 1024


def normalise_mac(value: str) -> str:
    """aa-bb-cc-dd-ee-ff / AABB.CCDD.EEFF / aa:bb:.. -> aa:bb:cc:dd:ee:ff; ValueError otherwise."""
    text = str(value).strip()
    if not (MAC_SEPARATED.match(text) or MAC_DOTTED.match(text) or MAC_BARE.match(text)):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"malformed MAC address {shown!r} (expected six hex pairs, e.g. 52:54:00:12:34:56)")
    raw = re.sub(r"[^0-9a-fA-F]", "", text).lower()
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def unicast_problem(mac: str) -> str | None:
    """Why a normalised MAC cannot be a node's NIC, or None. A DHCP reservation for the
    all-zero, broadcast or a multicast address would match no NIC, or every one."""
    if mac == "00:00:00:00:00:00":
        return f"MAC {mac} is all zeros, not a NIC's address"
    if mac == "ff:ff:ff:ff:ff:ff":
        return f"MAC {mac} is the broadcast address, not a NIC's address"
    if int(mac[:2], 16) & 1:
        return f"MAC {mac} is a multicast address (first octet odd), not a NIC's address"
    return None


def node_mac(value: str) -> str:
    """A node NIC's MAC: normalised and unicast; ValueError (with the reason) otherwise."""
    mac = normalise_mac(value)
    problem = unicast_problem(mac)
    if problem:
        raise ValueError(problem)
    return mac


@dataclass(frozen=True)
class MacRow:
    line: int
    host: str
    mac: str


@dataclass
class MacCsv:
    path: Path
    rows: list[MacRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def pairs(self) -> list[tuple[str, str]]:
        return [(r.host, r.mac) for r in self.rows]


def read_mac_csv(path: Path, missing_ok: bool = False) -> MacCsv:
    """`hostname,mac` per line. '#' comments and blank lines may appear anywhere; a
    `hostname,mac` header may follow them. Every bad row is a problem naming the file and
    its line; the good rows are still returned."""
    path = Path(path)
    out = MacCsv(path)
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            out.problems.append(Problem(str(path), None, "", f"MAC file is {size} bytes; a hostname,mac list is far smaller"))
            return out
        data = path.read_bytes()
    except FileNotFoundError:
        if not missing_ok:
            out.problems.append(Problem(str(path), None, "", "MAC file not found"))
        return out
    except OSError as exc:
        out.problems.append(Problem(str(path), None, "", f"cannot read MAC file: {exc.strerror}"))
        return out
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        out.problems.append(Problem(str(path), line, "", "binary data (a NUL byte) in a MAC CSV file"))
        return out
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        out.problems.append(Problem(str(path), line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x})"))
        return out
    seen: dict[str, int] = {}
    header_allowed = True
    for lineno, line_text in enumerate(text.splitlines(), start=1):
        stripped = line_text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            row = next(csv.reader([line_text]))
        except csv.Error as exc:
            out.problems.append(Problem(str(path), lineno, "", f"unreadable CSV row ({exc})"))
            continue
        if header_allowed and row and row[0].strip().lower() in HEADER_NAMES:
            header_allowed = False
            continue
        header_allowed = False
        if len(row) < 2 or not row[0].strip():
            # Echo the row only when it looks like a hostname: a macs_file pointed at the
            # wrong file (a shadow or credentials file) must not be printed.
            first = row[0].strip() if row else ""
            shown = f", got {first!r}" if HOSTNAME_RE.match(first) else ""
            out.problems.append(Problem(str(path), lineno, "", f"expected 'hostname,mac'{shown}"))
            continue
        host, raw_mac = row[0].strip(), row[1].strip()
        try:
            mac = node_mac(raw_mac)
        except ValueError as exc:
            out.problems.append(Problem(str(path), lineno, "mac", f"{host}: {exc}"))
            continue
        if host in seen:
            out.problems.append(Problem(str(path), lineno, "hostname", f"{host} is listed twice (first on line {seen[host]})"))
            continue
        seen[host] = lineno
        out.rows.append(MacRow(lineno, host, mac))
    return out
