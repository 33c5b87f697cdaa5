"""Semantic validation + resolution: a typed Manifest -> the resolved Cluster.

Collects every problem (duplicate names/MACs/IPs, addresses outside networks, groups that do
not fit, missing MACs, unknown profiles, stacks the matrix refuses) before failing, so one run
of `podsys validate` shows them all."""

from __future__ import annotations

import csv
import difflib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from podsys.cluster.addons import addon_problems
from podsys.cluster.matrix import Matrix, Stack, check_combination, load_matrix, pick_stack
from podsys.errors import InputError, Problem
from podsys.cluster.hardware import HardwareProfile, builtin_profiles
from podsys.cluster.schema import Manifest, normalise_mac
from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.topology import GroupRequest, HostlistError, allocate_addresses, collapse_hosts, expand_hosts, same_offset
from podsys.cluster.yaml_source import SourceMap


class _Problems:
    def __init__(self, smap: SourceMap):
        self.smap = smap
        self.items: list[Problem] = []

    def at(self, path: tuple, message: str) -> None:
        self.items.append(self.smap.problem(path, message))

    def raw(self, problem: Problem) -> None:
        self.items.append(problem)


def _suggest(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"


def read_macs_file(path: Path, known_hosts: set[str], problems: _Problems) -> dict[str, str]:
    """hostname,mac per line ('#' comments and a 'hostname,mac' header allowed). One file may
    serve several groups; rows for hosts the manifest no longer lists are ignored (a misspelt
    name still surfaces as that node's missing MAC)."""
    macs: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        problems.raw(Problem(str(path), None, "", f"cannot read MAC file: {exc.strerror}"))
        return macs
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in ("hostname", "host", "name"):
            continue
        if len(row) < 2:
            problems.raw(Problem(str(path), lineno, "mac", "expected 'hostname,mac'"))
            continue
        name, raw_mac = row[0].strip(), row[1].strip()
        try:
            mac = normalise_mac(raw_mac)
        except ValueError as exc:
            problems.raw(Problem(str(path), lineno, "mac", str(exc)))
            continue
        if name not in known_hosts:
            continue
        if name in macs:
            problems.raw(Problem(str(path), lineno, "hostname", f"{name} is listed twice"))
        else:
            macs[name] = mac
    return macs


def _resolve_stack(manifest: Manifest, matrix: Matrix, profiles_used: list[HardwareProfile], problems: _Problems) -> tuple[Stack | None, str]:
    os_key = manifest.os.key
    layers = manifest.layers
    ib_stack = manifest.infiniband.stack
    if manifest.stack == "auto":
        stack, refused = pick_stack(matrix, os_key, profiles_used, layers, ib_stack)
        if stack is None:
            reasons = "; ".join(f"{sid}: {v[0]}" for sid, v in refused.items())
            problems.at(("stack",), f"no stack in the matrix is valid for {os_key} and these nodes: {reasons}")
            return None, ""
        gpus = sorted({p.gpu.model for p in profiles_used if p.gpu}) or ["no GPUs"]
        return stack, f"auto: newest stack valid for {', '.join(gpus)} on {os_key}"
    if manifest.stack not in matrix.stacks:
        problems.at(("stack",), f"unknown stack '{manifest.stack}'{_suggest(manifest.stack, matrix.stacks)}")
        return None, ""
    stack = matrix.stack(manifest.stack)
    for violation in check_combination(matrix, stack, os_key, profiles_used, layers, ib_stack):
        problems.at(("stack",), f"the matrix refuses stack {stack.id}: {violation}")
    return stack, "pinned in the manifest"


# Ports podsys's services take on the head's provision address whatever the manifest says.
FIXED_HEAD_PORTS = {22: "sshd", 3142: "the package cache (packages.source: proxy)", 6817: "slurmctld",
                    6818: "slurmd", 9090: "Prometheus", 9100: "node_exporter"}


def check_head_ports(manifest: Manifest, problems: _Problems) -> None:
    """The head's configurable service ports must not collide with each other or with a fixed one."""
    taken = {port: name for port, name in FIXED_HEAD_PORTS.items()
             if not (port == 3142 and manifest.packages.source != "proxy")}
    configurable = [(("provisioning", "http_port"), manifest.provisioning.http_port, "the boot web server"),
                    (("provisioning", "status_port"), manifest.provisioning.status_port, "the install status service")]
    if manifest.packages.source == "bundle":
        configurable.append((("packages", "bundle_port"), manifest.packages.bundle_port, "the bundle's web server"))
    for path, port, name in configurable:
        if port in taken:
            problems.at(path, f"port {port} for {name} is already used on the head by {taken[port]}")
        else:
            taken[port] = name


def resolve_cluster(
    manifest: Manifest,
    smap: SourceMap,
    manifest_path: Path,
    previous: dict[str, int] | None = None,
    matrix: Matrix | None = None,
) -> Cluster:
    matrix = matrix or load_matrix()
    problems = _Problems(smap)
    base = manifest_path.parent
    nets = manifest.networks
    prov: IPv4Network = nets.provision.cidr

    profiles: dict[str, HardwareProfile] = dict(builtin_profiles())
    for pid, profile in manifest.hardware_profiles.items():
        profiles[pid] = profile.model_copy(update={"id": pid})

    # Addresses the head network already uses.
    reserved: dict[int, str] = {}
    head_ip = manifest.head.address
    if head_ip not in prov:
        problems.at(("head", "address"), f"head address {head_ip} is outside the provision network {prov}")
    reserved[int(head_ip)] = f"the head ({manifest.head.hostname})"
    gateway = nets.provision.gateway
    if gateway is not None:
        if gateway not in prov:
            problems.at(("networks", "provision", "gateway"), f"gateway {gateway} is outside {prov}")
        elif int(gateway) in reserved:
            problems.at(("networks", "provision", "gateway"), f"gateway {gateway} collides with {reserved[int(gateway)]}")
        else:
            reserved[int(gateway)] = "the provision gateway"
    for i, dns in enumerate(nets.provision.dns):
        if dns in prov and int(dns) not in reserved:
            reserved[int(dns)] = f"DNS server {dns}"
    named_nets = {"provision": prov, "bmc": nets.bmc.cidr if nets.bmc else None, "ipoib": nets.ipoib.cidr if nets.ipoib else None}
    names = [k for k, v in named_nets.items() if v is not None]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if named_nets[a].overlaps(named_nets[b]):
                problems.at(("networks", b, "cidr"), f"network {named_nets[b]} overlaps the {a} network {named_nets[a]}")

    # Hosts per group, duplicates across groups.
    group_hosts: list[list[str]] = []
    owner: dict[str, int] = {}
    for gi, group in enumerate(manifest.node_groups):
        path = ("node_groups", gi)
        try:
            hosts = expand_hosts(group.hosts)
        except HostlistError as exc:
            problems.at(path + ("hosts",), str(exc))
            hosts = []
        group_hosts.append(hosts)
        for name in hosts:
            if name in owner:
                other = manifest.node_groups[owner[name]].name
                problems.at(path + ("hosts",), f"duplicate hostname {name} (also in group '{other}')")
            else:
                owner[name] = gi
        if manifest.head.hostname in hosts:
            problems.at(path + ("hosts",), f"{manifest.head.hostname} is the head's hostname")
        if group.hardware not in profiles:
            problems.at(path + ("hardware",), f"unknown hardware profile '{group.hardware}'{_suggest(group.hardware, profiles)}")
        for layer in group.layers or []:
            if layer not in manifest.layers:
                problems.at(path + ("layers",), f"layer '{layer}' is not in the cluster's layers {manifest.layers}")
    group_names = [g.name for g in manifest.node_groups]
    for gi, name in enumerate(group_names):
        if group_names.index(name) != gi:
            problems.at(("node_groups", gi, "name"), f"duplicate node group name '{name}'")

    # MACs: inline entries and the csv file; every PXE node needs one; no MAC twice.
    macs: dict[str, str] = {}
    mac_owner: dict[str, str] = {}
    mac_files: dict[Path, dict[str, str]] = {}
    for gi, group in enumerate(manifest.node_groups):
        path = ("node_groups", gi)
        hostset = set(group_hosts[gi])
        group_macs: dict[str, str] = {}
        if group.macs_file:
            mac_path = base / group.macs_file
            if mac_path not in mac_files:
                mac_files[mac_path] = read_macs_file(mac_path, set(owner), problems)
            group_macs.update({h: m for h, m in mac_files[mac_path].items() if h in hostset})
        for name, entry in group.nodes.items():
            if name not in hostset:
                problems.at(path + ("nodes", name), f"{name} is not in hosts {group.hosts}")
            elif entry.mac:
                group_macs[name] = entry.mac
        for name in group_hosts[gi]:
            mac = group_macs.get(name)
            if mac is None:
                continue
            if mac in mac_owner:
                problems.at(path + ("nodes", name) if name in group.nodes else path, f"duplicate MAC {mac}: {name} and {mac_owner[mac]}")
            else:
                mac_owner[mac] = name
                macs[name] = mac
        if group.pxe:
            missing = [h for h in group_hosts[gi] if h not in group_macs]
            if missing:
                problems.at(
                    path + (("macs_file",) if group.macs_file else ("nodes",)),
                    f"{len(missing)} node(s) must PXE-boot but have no MAC: {collapse_hosts(missing)}"
                    " (add them to macs_file or nodes:, or set pxe: false)",
                )

    # Provision addresses.
    requests = []
    for gi, group in enumerate(manifest.node_groups):
        pinned = {name: int(e.address) for name, e in group.nodes.items() if e.address is not None and name in set(group_hosts[gi])}
        requests.append(GroupRequest(gi, group_hosts[gi], int(group.start_address) if group.start_address else None, pinned))
    allocation = allocate_addresses(prov, requests, reserved, previous)
    for locator, message in allocation.problems:
        kind, gi = locator[0], locator[1]
        if kind == "pin":
            problems.at(("node_groups", gi, "nodes", locator[2], "address"), message)
        elif kind == "start":
            problems.at(("node_groups", gi, "start_address"), message)
        else:
            problems.at(("node_groups", gi, "hosts"), message)

    # BMC / IPoIB follow the provision host offset.
    profiles_used: list[HardwareProfile] = []
    seen_profiles: set[str] = set()
    for group in manifest.node_groups:
        if group.hardware in profiles and group.hardware not in seen_profiles:
            seen_profiles.add(group.hardware)
            profiles_used.append(profiles[group.hardware])

    stack, stack_reason = _resolve_stack(manifest, matrix, profiles_used, problems)

    # Slurm partitions and users.
    default_count = 0
    part_names: set[str] = set()
    for pi, part in enumerate(manifest.slurm.partitions):
        if part.name in part_names:
            problems.at(("slurm", "partitions", pi, "name"), f"duplicate partition '{part.name}'")
        part_names.add(part.name)
        default_count += part.default
        for ni, gname in enumerate(part.node_groups):
            if gname not in group_names:
                problems.at(("slurm", "partitions", pi, "node_groups", ni), f"unknown node group '{gname}'{_suggest(gname, group_names)}")
    if default_count > 1:
        problems.at(("slurm", "partitions"), "more than one partition is marked default")
    seen_users: dict[str, int] = {}
    seen_uids: dict[int, str] = {}
    for ui, user in enumerate(manifest.users):
        if user.name in seen_users:
            problems.at(("users", ui, "name"), f"duplicate user '{user.name}'")
        if user.uid in seen_uids:
            problems.at(("users", ui, "uid"), f"uid {user.uid} is already used by '{seen_uids[user.uid]}'")
        seen_users[user.name] = ui
        seen_uids.setdefault(user.uid, user.name)

    check_head_ports(manifest, problems)

    nodes: list[NodeSpec] = []
    bmc_net = nets.bmc.cidr if nets.bmc else None
    ib_net = nets.ipoib.cidr if nets.ipoib else None
    domain = manifest.metadata.domain
    for gi, group in enumerate(manifest.node_groups):
        layers = tuple(group.layers if group.layers is not None else manifest.layers)
        for name in group_hosts[gi]:
            addr = allocation.addresses.get(name)
            if addr is None:
                continue
            entry = group.nodes.get(name)
            bmc_ip = ib_ip = None
            if bmc_net is not None:
                if entry is not None and entry.bmc_address is not None:
                    if entry.bmc_address not in bmc_net:
                        problems.at(("node_groups", gi, "nodes", name, "bmc_address"), f"{entry.bmc_address} is outside {bmc_net}")
                    bmc_ip = str(entry.bmc_address)
                else:
                    value = same_offset(addr, prov, bmc_net)
                    if value is None:
                        problems.at(("networks", "bmc", "cidr"), f"{name}: host offset of {IPv4Address(addr)} does not fit in {bmc_net}")
                    else:
                        bmc_ip = str(IPv4Address(value))
            if ib_net is not None and "infiniband" in layers and profiles.get(group.hardware, HardwareProfile()).has_ib:
                value = same_offset(addr, prov, ib_net)
                if value is None:
                    problems.at(("networks", "ipoib", "cidr"), f"{name}: host offset of {IPv4Address(addr)} does not fit in {ib_net}")
                else:
                    ib_ip = str(IPv4Address(value))
            disk = entry.disk if entry is not None and entry.disk else group.disk
            nodes.append(
                NodeSpec(
                    name=name,
                    group=group.name,
                    hardware=group.hardware,
                    provision_ip=str(IPv4Address(addr)),
                    mac=macs.get(name),
                    bmc_ip=bmc_ip,
                    ipoib_ip=ib_ip,
                    disk=disk,
                    pxe=group.pxe,
                    layers=layers,
                    fqdn=f"{name}.{domain}" if domain else name,
                )
            )
    # Duplicate BMC addresses (pins can collide with derived ones).
    seen_bmc: dict[str, str] = {}
    for node in nodes:
        if node.bmc_ip:
            if node.bmc_ip in seen_bmc:
                problems.at(("networks", "bmc"), f"duplicate BMC address {node.bmc_ip}: {node.name} and {seen_bmc[node.bmc_ip]}")
            seen_bmc.setdefault(node.bmc_ip, node.name)

    problems.items.extend(addon_problems(manifest, smap.problem))  # the add-on layers' sections
    if problems.items:
        unique = sorted(set(problems.items), key=lambda p: (p.file != smap.file, p.file, p.line or 0, p.field, p.message))
        raise InputError(unique)
    assert stack is not None
    return Cluster(
        manifest=manifest,
        manifest_path=manifest_path,
        nodes=tuple(nodes),
        profiles=profiles,
        stack=stack,
        stack_reason=stack_reason,
    )
