"""`podsys init`: the commented starter manifest, filled with what the head node can tell us."""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

from podsys.errors import InputError, Problem


@dataclass(frozen=True)
class HeadNIC:
    name: str
    interface: IPv4Interface | None


def detect_nics() -> list[HeadNIC]:
    """Non-loopback NICs with their first IPv4 address (from `ip -j addr`); [] if unknown."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, timeout=5, check=True).stdout
        entries = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    nics = []
    for entry in entries:
        if entry.get("ifname") in (None, "lo") or "LOOPBACK" in entry.get("flags", []):
            continue
        addrs = [a for a in entry.get("addr_info", []) if a.get("family") == "inet"]
        iface = IPv4Interface(f"{addrs[0]['local']}/{addrs[0]['prefixlen']}") if addrs else None
        nics.append(HeadNIC(entry["ifname"], iface))
    return nics


def starter_values(name: str, head_interface: str | None, nics: list[HeadNIC]) -> dict:
    chosen = None
    if head_interface:
        chosen = next((n for n in nics if n.name == head_interface), HeadNIC(head_interface, None))
    elif nics:
        chosen = next((n for n in nics if n.interface is not None), nics[0])
    iface = chosen.interface if chosen else None
    if iface is None or iface.network.prefixlen > 24:
        iface = IPv4Interface("10.10.0.1/16")
    network = iface.network
    start = network.network_address + (256 if network.num_addresses > 512 else 10)
    return {
        "name": name,
        "head_hostname": socket.gethostname().split(".")[0].lower() or "head",
        "head_interface": chosen.name if chosen else "eno1",
        "detected": chosen is not None and not head_interface,
        "head_address": str(iface.ip),
        "provision_cidr": str(network),
        "start_address": str(start + 1 if start == iface.ip else start),
    }


def write_starter(path: Path, values: dict, force: bool) -> list[Path]:
    from podsys.cluster.schema import LAYERS, SUPPORTED_OS
    from podsys.render.build import template  # jinja environment lives with the renderer

    macs = path.with_name(path.stem + "-macs.csv")
    for target in (path, macs):
        if target.exists() and not force:
            raise InputError(Problem(str(target), None, "", "already exists; use --force to overwrite"))
    path.parent.mkdir(parents=True, exist_ok=True)
    supported_os = ", ".join(f"{distro} {'/'.join(versions)}" for distro, versions in SUPPORTED_OS.items())
    path.write_text(template("core/cluster.yaml.j2", manifest_name=path.name, macs_name=macs.name,
                             supported_os=supported_os, all_layers=" ".join(LAYERS), **values))
    macs.write_text(template("core/macs.csv.j2"))
    return [path, macs]
