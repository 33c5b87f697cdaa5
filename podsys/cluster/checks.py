"""Manifest validation as one table of small named checks.

`CHECKS` lists every check `podsys validate` (and every command that loads a manifest) runs:
the schema first, then names, networks, addresses, MACs, hardware, users and keys, Slurm,
provisioning, head ports and the stack. Each check is a function of the `Context` that
yields Problems (file, line, field, message); `run_checks` runs them all and returns every
problem from every check in one pass. A check names the top-level manifest sections it
reads: when one of those failed the schema it is skipped, so a typo in `users` still lets
the address checks run.

What several checks share (expanded hostlists, MAC assignment, address allocation, the
stack) is derived once by the Context (podsys/cluster/context.py)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterable, Iterator

from podsys.cluster.addons import ADDON_CHECKS
from podsys.cluster.web_checks import WEB_CHECKS
from podsys.cluster.context import Context, suggest
from podsys.cluster.address_allocation import address_problem
from podsys.errors import Problem
from podsys.layout import FIXED_HEAD_PORTS, PACKAGE_CACHE_PORT

# OpenSSH public key types. Source: sshd(8), AUTHORIZED_KEYS FILE FORMAT
# (https://man.openbsd.org/sshd.8#AUTHORIZED_KEYS_FILE_FORMAT).
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
# A comment may not carry quotes or backslashes: the key is quoted in kickstart's sshkey line.
SSH_COMMENT_RE = re.compile(r"^[^\"'\\\x00-\x1f\x7f]*$")

def ssh_key_problem(key: str) -> str | None:
    """Why `key` is not one OpenSSH public key line (type, base64 blob naming that type,
    optional comment), or None. Never a second key smuggled in on a newline."""
    if "\n" in key or "\r" in key:
        return "holds more than one line (one key per list item)"
    parts = key.strip().split(" ", 2)
    if len(parts) < 2:
        return "is not an OpenSSH public key ('TYPE BASE64 [comment]')"
    kind, blob = parts[0], parts[1]
    if kind not in SSH_KEY_TYPES:
        return f"key type '{kind[:40]}' is not one of {', '.join(SSH_KEY_TYPES)}"
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "the key's base64 part is not valid base64"
    length = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4 : 4 + length] != kind.encode():
        return f"the key's data does not start with its type '{kind}' (a truncated or pasted-wrong key?)"
    if len(parts) == 3 and not SSH_COMMENT_RE.match(parts[2]):
        return "the key's comment holds quotes, backslashes or control characters"
    return None


# --- the checks ------------------------------------------------------------------------


def check_schema(ctx: Context) -> Iterator[Problem]:
    """Unknown keys, types, patterns, enums: pydantic's verdict on the document."""
    yield from ctx.schema_problems


def check_hostlists(ctx: Context) -> Iterator[Problem]:
    """Malformed hostlists, the cluster-wide node bound, a hostname in two groups."""
    yield from ctx.hosts.problems


def check_names(ctx: Context) -> Iterator[Problem]:
    """Group names unique; node entries name hosts of their group; no node is the head."""
    m = ctx.manifest
    seen: dict[str, int] = {}
    for gi, group in enumerate(m.node_groups):
        if group.name in seen:
            yield ctx.at(("node_groups", gi, "name"), f"duplicate node group name '{group.name}'")
        seen.setdefault(group.name, gi)
        hostset = set(ctx.hosts.by_group[gi])
        for name in group.nodes:
            if hostset and name not in hostset:
                yield ctx.at(("node_groups", gi, "nodes", name), f"{name} is not in hosts {group.hosts}")
        if m.head.hostname in hostset:
            yield ctx.at(("node_groups", gi, "hosts"), f"{m.head.hostname} is the head's hostname")


def check_networks(ctx: Context) -> Iterator[Problem]:
    """The head, gateway and DNS servers are host addresses of the provision network; the
    gateway is not the head; the provision, BMC and IPoIB networks do not overlap."""
    m = ctx.manifest
    nets = m.networks
    prov = nets.provision.cidr
    bad = address_problem(m.head.address, prov)
    if bad:
        where = " (outside the provision network)" if m.head.address not in prov else ""
        yield ctx.at(("head", "address"), f"head address {bad}{where}")
    gateway = nets.provision.gateway
    if gateway is not None:
        bad = address_problem(gateway, prov)
        if bad:
            yield ctx.at(("networks", "provision", "gateway"), f"gateway {bad}")
        elif gateway == m.head.address:
            yield ctx.at(("networks", "provision", "gateway"), f"gateway {gateway} collides with the head ({m.head.hostname})")
    for i, dns in enumerate(nets.provision.dns):
        if dns in prov and address_problem(dns, prov):
            yield ctx.at(("networks", "provision", "dns", i), f"DNS server {address_problem(dns, prov)}")
    named: dict[str, IPv4Network] = {"provision": prov}
    for name in ("bmc", "ipoib"):
        net = getattr(nets, name)
        if net is not None:
            named[name] = net.cidr
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if named[a].overlaps(named[b]):
                yield ctx.at(("networks", b, "cidr"), f"network {named[b]} overlaps the {a} network {named[a]}")


def check_addresses(ctx: Context) -> Iterator[Problem]:
    """Every node gets a unique provision address: pins and start addresses are host
    addresses inside the network, groups fit, ranges do not run into each other."""
    for locator, message in ctx.allocation.problems:
        kind, gi = locator[0], locator[1]
        if kind == "pin":
            yield ctx.at(("node_groups", gi, "nodes", locator[2], "address"), message)
        elif kind == "start":
            yield ctx.at(("node_groups", gi, "start_address"), message)
        else:
            yield ctx.at(("node_groups", gi, "hosts"), message)


def check_secondary_networks(ctx: Context) -> Iterator[Problem]:
    """BMC and IPoIB addresses fit their networks and are unique."""
    yield from ctx.secondary.problems


def check_macs(ctx: Context) -> Iterator[Problem]:
    """MAC CSV rows, unicast MACs, no MAC twice, every PXE node has one."""
    yield from ctx.macs.problems


def check_hardware(ctx: Context) -> Iterator[Problem]:
    """Every group names a known hardware profile and only layers the cluster enables."""
    m = ctx.manifest
    for gi, group in enumerate(m.node_groups):
        if group.hardware not in ctx.profiles:
            yield ctx.at(("node_groups", gi, "hardware"),
                         f"unknown hardware profile '{group.hardware}'{suggest(group.hardware, ctx.profiles)}")
        for li, layer in enumerate(group.layers or []):
            if layer not in m.layers:
                yield ctx.at(("node_groups", gi, "layers", li), f"layer '{layer}' is not in the cluster's layers {m.layers}")


def check_users_and_keys(ctx: Context) -> Iterator[Problem]:
    """User names and UIDs unique; every SSH key (users' and root's) is one valid key line."""
    m = ctx.manifest
    names: dict[str, int] = {}
    uids: dict[int, str] = {}
    for ui, user in enumerate(m.users):
        if user.name in names:
            yield ctx.at(("users", ui, "name"), f"duplicate user '{user.name}'")
        if user.uid in uids:
            yield ctx.at(("users", ui, "uid"), f"uid {user.uid} is already used by '{uids[user.uid]}'")
        names.setdefault(user.name, ui)
        uids.setdefault(user.uid, user.name)
        for ki, key in enumerate(user.ssh_authorized_keys):
            bad = ssh_key_problem(key)
            if bad:
                yield ctx.at(("users", ui, "ssh_authorized_keys", ki), f"SSH key {_key_start(key)} {bad}")


def check_provisioning(ctx: Context) -> Iterator[Problem]:
    """What the installers and the boot services need: root's keys (the manifest's and the
    access key's .pub), a discovery pool inside the network and outside every reserved
    address and node range. (The root password hash, the domain and the OS are schema
    rules: see podsys/cluster/schema.py.)"""
    m = ctx.manifest
    for ki, key in enumerate(m.provisioning.root_authorized_keys):
        bad = ssh_key_problem(key)
        if bad:
            yield ctx.at(("provisioning", "root_authorized_keys", ki), f"SSH key {_key_start(key)} {bad}")
    if m.access.private_key_file:
        pub = ctx.base_dir / (m.access.private_key_file + ".pub")
        if pub.is_file():
            try:
                text = pub.read_text().strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            bad = ssh_key_problem(text)
            if bad:
                yield Problem(str(pub), 1, "", f"the access key's public half {bad}")
    discovery = m.provisioning.discovery
    if not discovery.enabled:
        return
    path = ("provisioning", "discovery")
    if discovery.range_start is None or discovery.range_end is None:
        yield ctx.at(path, "enabled discovery needs range_start and range_end")
        return
    prov = m.networks.provision.cidr
    start, end = discovery.range_start, discovery.range_end
    for name, value in (("range_start", start), ("range_end", end)):
        bad = address_problem(value, prov)
        if bad:
            yield ctx.at(path + (name,), f"discovery pool {bad}")
            return
    if int(start) > int(end):
        yield ctx.at(path + ("range_end",), f"discovery pool ends at {end}, before its start {start}")
        return
    taken = dict(ctx.reserved)
    for gi, group in enumerate(m.node_groups):
        for name in ctx.hosts.by_group[gi]:
            addr = ctx.allocation.addresses.get(name)
            if addr is not None:
                taken.setdefault(addr, f"{name} (group '{group.name}')")
    inside = sorted(a for a in taken if int(start) <= a <= int(end))
    if inside:
        first = inside[0]
        more = f" and {len(inside) - 1} more" if len(inside) > 1 else ""
        yield ctx.at(path + ("range_start",), f"discovery pool {start}-{end} holds {IPv4Address(first)}, the address of "
                                              f"{taken[first]}{more}; an unknown MAC could be given it")


def check_head_ports(ctx: Context) -> Iterator[Problem]:
    """The head's configurable service ports do not collide with each other or a fixed one."""
    m = ctx.manifest
    taken = {port: name for port, name in FIXED_HEAD_PORTS.items() if not (port == PACKAGE_CACHE_PORT and m.packages.source != "proxy")}
    configurable = [(("provisioning", "http_port"), m.provisioning.http_port, "the boot web server"),
                    (("provisioning", "status_port"), m.provisioning.status_port, "the install status service")]
    if m.packages.source == "bundle":
        configurable.append((("packages", "bundle_port"), m.packages.bundle_port, "the bundle's web server"))
    for path, port, name in configurable:
        if port in taken:
            yield ctx.at(path, f"port {port} for {name} is already used on the head by {taken[port]}")
        else:
            taken[port] = name


def check_slurm(ctx: Context) -> Iterator[Problem]:
    """Partitions: unique names, known node groups, at most one default (the error points
    at the second one)."""
    m = ctx.manifest
    group_names = [g.name for g in m.node_groups]
    names: set[str] = set()
    first_default: int | None = None
    for pi, part in enumerate(m.slurm.partitions):
        if part.name in names:
            yield ctx.at(("slurm", "partitions", pi, "name"), f"duplicate partition '{part.name}'")
        names.add(part.name)
        if part.default:
            if first_default is None:
                first_default = pi
            else:
                first = m.slurm.partitions[first_default].name
                yield ctx.at(("slurm", "partitions", pi, "default"),
                             f"partition '{part.name}' is marked default, and so is '{first}': only one may be")
        for ni, gname in enumerate(part.node_groups):
            if gname not in group_names:
                yield ctx.at(("slurm", "partitions", pi, "node_groups", ni),
                             f"unknown node group '{gname}'{suggest(gname, group_names)}")


def check_stack(ctx: Context) -> Iterator[Problem]:
    """The pinned stack exists and the matrix accepts it for this OS, these GPUs and layers
    (or `auto` finds one)."""
    yield from ctx.stack.problems


def _key_start(key: str) -> str:
    # Enough to recognise which key, never the whole (a pasted private key must not be echoed).
    first = key.strip().split("\n", 1)[0]
    return repr(first[:20] + "...") if len(first) > 20 else repr(first)


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Iterable[Problem]]
    needs: tuple[str, ...]  # top-level manifest sections it reads


CHECKS: tuple[Check, ...] = (
    Check("schema", check_schema, ()),
    Check("hostlists", check_hostlists, ("node_groups",)),
    Check("names", check_names, ("node_groups", "head")),
    Check("networks", check_networks, ("networks", "head")),
    Check("addresses", check_addresses, ("networks", "head", "node_groups")),
    Check("bmc and ipoib addresses", check_secondary_networks,
          ("networks", "head", "node_groups", "layers", "hardware_profiles")),
    Check("macs", check_macs, ("node_groups",)),
    Check("hardware", check_hardware, ("node_groups", "hardware_profiles", "layers")),
    Check("users and keys", check_users_and_keys, ("users",)),
    Check("slurm", check_slurm, ("slurm", "node_groups")),
    Check("provisioning", check_provisioning, ("provisioning", "access", "networks", "head", "node_groups")),
    Check("head ports", check_head_ports, ("provisioning", "packages")),
    Check("stack", check_stack, ("os", "layers", "node_groups", "hardware_profiles", "stack", "infiniband")),
    *(Check(name, lambda ctx, check=check: check(ctx.manifest, ctx.at), needs) for name, check, needs in ADDON_CHECKS),
    *(Check(name, lambda ctx, check=check: check(ctx.manifest, ctx.base_dir, ctx.at), needs)
      for name, check, needs in WEB_CHECKS),
)


def run_checks(ctx: Context, checks: tuple[Check, ...] = CHECKS) -> list[Problem]:
    """Every problem of every check whose sections parsed, sorted: the manifest's by line,
    then other files' (MAC CSVs, key files)."""
    problems: set[Problem] = set()
    for check in checks:
        if set(check.needs) & ctx.broken:
            continue
        problems.update(check.run(ctx))
    main = ctx.smap.file
    return sorted(problems, key=lambda p: (p.file != main, p.file, p.line or 0, p.field, p.message))
