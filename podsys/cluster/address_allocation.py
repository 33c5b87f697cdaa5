"""Address allocation: which provision address each node gets.

Pure functions over integers (IPv4 as int) so 4,096 nodes allocate in milliseconds. The
allocation is recorded next to the manifest (see podsys/cluster/address_file.py) and fed back in as
`previous`, which is what keeps addresses stable when groups grow."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network


@dataclass
class GroupRequest:
    """One node group's address needs: hosts in order, where to start, and pinned addresses."""

    key: object  # opaque locator handed back with problems (e.g. the YAML path)
    hosts: list[str]
    start: int | None = None
    pinned: dict[str, int] = field(default_factory=dict)
    label: str = ""  # how errors name the group, e.g. "group 'gpu'"


@dataclass
class Allocation:
    addresses: dict[str, int]
    problems: list[tuple[object, str]]  # (locator, message)


def usable_range(network: IPv4Network) -> tuple[int, int]:
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.prefixlen >= 31:
        return first, last
    return first + 1, last - 1


def address_problem(address: IPv4Address | int, network: IPv4Network) -> str | None:
    """Why `address` cannot be a host's address in `network` (outside it, or its network or
    broadcast address), or None."""
    value = int(address)
    shown = IPv4Address(value)
    if not int(network.network_address) <= value <= int(network.broadcast_address):
        return f"{shown} is outside {network}"
    lo, hi = usable_range(network)
    if value < lo:
        return f"{shown} is the network address of {network}, not a host address"
    if value > hi:
        return f"{shown} is the broadcast address of {network}, not a host address"
    return None


def allocate_addresses(
    network: IPv4Network,
    groups: list[GroupRequest],
    reserved: dict[int, str],
    previous: dict[str, int] | None = None,
) -> Allocation:
    """Give every host a unique address in `network`.

    Order of precedence: an address pinned in the manifest, then the address recorded by an
    earlier allocation (stability), then the next address from the group's start. A group
    with an explicit start owns the addresses from there: running into the head, the gateway
    or another group's node is an error naming both, never a silent shift. A group without
    one takes the next free addresses from the start of the network.
    `reserved` maps addresses that are taken already (head, gateway, DNS) to their owner."""
    lo, hi = usable_range(network)
    used: dict[int, str] = dict(reserved)
    out: dict[str, int] = {}
    group_of: dict[str, int] = {}
    problems: list[tuple[object, str]] = []

    def fmt(addr: int) -> str:
        return str(IPv4Address(addr))

    def owner(name: str, index: int) -> str:
        label = groups[index].label
        return f"{name} ({label})" if label else name

    for gi, group in enumerate(groups):
        for name, addr in group.pinned.items():
            bad = address_problem(addr, network)
            if bad:
                problems.append((("pin", group.key, name), f"{name}: address {bad}"))
            elif addr in used:
                problems.append((("pin", group.key, name), f"{name}: address {fmt(addr)} collides with {used[addr]}"))
            else:
                used[addr] = owner(name, gi)
                out[name] = addr
                group_of[name] = gi

    if previous:
        wanted = {h: gi for gi, g in enumerate(groups) for h in g.hosts}
        for name, addr in sorted(previous.items(), key=lambda item: item[1]):
            if name in wanted and name not in out and lo <= addr <= hi and addr not in used:
                used[addr] = owner(name, wanted[name])
                out[name] = addr
                group_of[name] = wanted[name]

    for gi, group in enumerate(groups):
        pending = [h for h in group.hosts if h not in out]
        if group.start is not None:
            bad = address_problem(group.start, network)
            if bad:
                problems.append((("start", group.key), f"start_address {bad}"))
                continue
            if pending and group.start + len(pending) - 1 > hi:
                problems.append((("fit", group.key), f"{len(group.hosts)} hosts from {fmt(group.start)} do not fit in "
                                 f"{network} ({group.start + len(pending) - 1 - hi} left without an address)"))
                continue
        cursor = group.start if group.start is not None else lo
        own = {out[h] for h in group.hosts if h in out and group_of.get(h) == gi}
        for i, name in enumerate(pending):
            if group.start is not None:
                while cursor in own:
                    cursor += 1
                if cursor <= hi and cursor in used:
                    problems.append((("start", group.key),
                                     f"start_address {fmt(group.start)}" + (f" of {group.label}" if group.label else "")
                                     + f" ({len(group.hosts)} hosts) runs into {used[cursor]} at {fmt(cursor)}; "
                                       "move the start address or that address"))
                    break
            else:
                while cursor <= hi and cursor in used:
                    cursor += 1
            if cursor > hi:
                left = len(pending) - i
                problems.append((("fit", group.key), f"{len(group.hosts)} hosts from {fmt(group.start or lo)} do not fit "
                                 f"in {network} ({left} left without an address)"))
                break
            used[cursor] = owner(name, gi)
            out[name] = cursor
            group_of[name] = gi
            cursor += 1
    return Allocation(out, problems)


def same_offset(address: int, source: IPv4Network, target: IPv4Network) -> int | None:
    """The address at the same host offset in `target` (BMC/IPoIB follow provision); None if it
    does not fit."""
    offset = address - int(source.network_address)
    lo, hi = usable_range(target)
    candidate = int(target.network_address) + offset
    return candidate if lo <= candidate <= hi else None
