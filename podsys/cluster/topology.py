"""Hostlists and address allocation: who the nodes are and which addresses they get.

Pure functions over integers (IPv4 as int) so 4,096 nodes allocate in milliseconds. The
allocation is recorded next to the manifest (see podsys/cluster/address_file.py) and fed back in as
`previous`, which is what keeps addresses stable when groups grow."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import hostlist

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class HostlistError(ValueError):
    pass


def expand_hosts(expression: str) -> list[str]:
    """Slurm-style hostlist -> names, in order. Raises HostlistError with the reason."""
    if not expression or not expression.strip():
        raise HostlistError("empty hostlist")
    if ",," in expression or expression.strip().endswith(",") or expression.strip().startswith(","):
        raise HostlistError(f"malformed hostlist {expression!r}: empty element")
    try:
        names = hostlist.expand_hostlist(expression)
    except hostlist.BadHostlist as exc:
        raise HostlistError(f"malformed hostlist {expression!r}: {exc}") from None
    for name in names:
        if not HOSTNAME_RE.match(name):
            raise HostlistError(f"hostlist {expression!r} yields {name!r}, which is not a valid hostname")
    return names


def collapse_hosts(names: list[str]) -> str:
    return hostlist.collect_hostlist(names)


@dataclass
class GroupRequest:
    """One node group's address needs: hosts in order, where to start, and pinned addresses."""

    key: object  # opaque locator handed back with problems (e.g. the YAML path)
    hosts: list[str]
    start: int | None = None
    pinned: dict[str, int] = field(default_factory=dict)


@dataclass
class Allocation:
    addresses: dict[str, int]
    problems: list[tuple[object, str]]  # (locator, message)


def usable_range(network: IPv4Network) -> tuple[int, int]:
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.prefixlen >= 31:
        return first, last
    return first + 1, last - 1


def allocate_addresses(
    network: IPv4Network,
    groups: list[GroupRequest],
    reserved: dict[int, str],
    previous: dict[str, int] | None = None,
) -> Allocation:
    """Give every host a unique address in `network`.

    Order of precedence: an address pinned in the manifest, then the address recorded by an
    earlier allocation (stability), then the next free address from the group's start.
    `reserved` maps addresses that are taken already (head, gateway, DNS) to their owner."""
    lo, hi = usable_range(network)
    used: dict[int, str] = dict(reserved)
    out: dict[str, int] = {}
    problems: list[tuple[object, str]] = []

    def fmt(addr: int) -> str:
        return str(IPv4Address(addr))

    for group in groups:
        for name, addr in group.pinned.items():
            if not lo <= addr <= hi:
                problems.append((("pin", group.key, name), f"{name}: address {fmt(addr)} is outside {network}"))
            elif addr in used:
                problems.append((("pin", group.key, name), f"{name}: address {fmt(addr)} collides with {used[addr]}"))
            else:
                used[addr] = name
                out[name] = addr

    if previous:
        wanted = {h for g in groups for h in g.hosts}
        for name, addr in sorted(previous.items(), key=lambda item: item[1]):
            if name in wanted and name not in out and lo <= addr <= hi and addr not in used:
                used[addr] = name
                out[name] = addr

    for group in groups:
        if group.start is not None and not lo <= group.start <= hi:
            problems.append((("start", group.key), f"start_address {fmt(group.start)} is outside {network}"))
            continue
        cursor = group.start if group.start is not None else lo
        pending = [h for h in group.hosts if h not in out]
        for i, name in enumerate(pending):
            while cursor <= hi and cursor in used:
                cursor += 1
            if cursor > hi:
                left = len(pending) - i
                problems.append(
                    (
                        ("fit", group.key),
                        f"{len(group.hosts)} hosts from {fmt(group.start or lo)} do not fit in {network}"
                        f" ({left} left without an address)",
                    )
                )
                break
            used[cursor] = name
            out[name] = cursor
            cursor += 1
    return Allocation(out, problems)


def same_offset(address: int, source: IPv4Network, target: IPv4Network) -> int | None:
    """The address at the same host offset in `target` (BMC/IPoIB follow provision); None if it
    does not fit."""
    offset = address - int(source.network_address)
    lo, hi = usable_range(target)
    candidate = int(target.network_address) + offset
    return candidate if lo <= candidate <= hi else None
