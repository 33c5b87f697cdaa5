"""What the validation checks read: the (possibly partial) manifest, where it came from,
and what several checks share, derived once (expanded hostlists, MAC assignment, address
allocation, BMC/IPoIB addresses, the stack). Each derivation keeps the problems it found;
the check that owns it (podsys/cluster/checks.py) reports them, and resolution
(podsys/cluster/resolve.py) assembles the Cluster from a clean context."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address
from pathlib import Path

from podsys.cluster.address_allocation import Allocation, GroupRequest, address_problem, allocate_addresses, same_offset
from podsys.cluster.hardware import HardwareProfile, builtin_profiles
from podsys.cluster.hostlists import MAX_NODES, HostlistError, collapse_hosts, count_hosts, expand_hosts
from podsys.cluster.macs import read_mac_csv
from podsys.cluster.matrix import Matrix, Stack, check_combination, pick_stack
from podsys.cluster.schema import Manifest
from podsys.cluster.yaml_source import SourceMap
from podsys.errors import Problem


def suggest(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"


@dataclass
class Hosts:
    """Each group's expanded hosts (in manifest order) and the problems expanding them."""

    by_group: list[list[str]]
    owner: dict[str, int]  # hostname -> group index (the first group that lists it)
    problems: list[Problem]


@dataclass
class MacAssignment:
    macs: dict[str, str]  # hostname -> MAC
    problems: list[Problem]


@dataclass
class StackChoice:
    stack: Stack | None
    reason: str
    problems: list[Problem]


@dataclass
class SecondaryAddresses:
    """BMC and IPoIB addresses per node (they follow the provision host offset unless pinned)."""

    bmc: dict[str, str]
    ipoib: dict[str, str]
    problems: list[Problem]


@dataclass
class Context:
    """What the checks read: the (possibly partial) manifest and where it came from."""

    manifest: Manifest
    smap: SourceMap
    manifest_path: Path
    matrix: Matrix
    previous: dict[str, int] = field(default_factory=dict)
    broken: frozenset[str] = frozenset()  # top-level sections that failed the schema
    schema_problems: list[Problem] = field(default_factory=list)

    def at(self, path: tuple, message: str) -> Problem:
        return self.smap.problem(path, message)

    @property
    def base_dir(self) -> Path:
        return self.manifest_path.parent

    @cached_property
    def profiles(self) -> dict[str, HardwareProfile]:
        profiles: dict[str, HardwareProfile] = dict(builtin_profiles())
        for pid, profile in self.manifest.hardware_profiles.items():
            profiles[pid] = profile.model_copy(update={"id": pid})
        return profiles

    @cached_property
    def hosts(self) -> Hosts:
        """Expand every group's hostlist within one budget for the whole cluster."""
        by_group: list[list[str]] = []
        owner: dict[str, int] = {}
        problems: list[Problem] = []
        budget = MAX_NODES
        for gi, group in enumerate(self.manifest.node_groups):
            path = ("node_groups", gi, "hosts")
            hosts: list[str] = []
            try:
                count = count_hosts(group.hosts) if group.hosts.strip() else 0
                if count > budget:
                    problems.append(self.at(path, f"hostlist {group.hosts[:60]!r} adds {count} nodes; podsys handles at "
                                                  f"most {MAX_NODES} nodes in all node groups"))
                else:
                    hosts = expand_hosts(group.hosts, budget)
                    budget -= len(hosts)
            except HostlistError as exc:
                problems.append(self.at(path, str(exc)))
            by_group.append(hosts)
            for name in hosts:
                if name in owner:
                    other = self.manifest.node_groups[owner[name]].name
                    problems.append(self.at(path, f"duplicate hostname {name} (also in group '{other}')"))
                else:
                    owner[name] = gi
        return Hosts(by_group, owner, problems)

    @cached_property
    def reserved(self) -> dict[int, str]:
        """Provision addresses the head network already uses -> who uses them."""
        m = self.manifest
        net = m.networks.provision
        reserved = {int(m.head.address): f"the head ({m.head.hostname})"}
        if net.gateway is not None and net.gateway in net.cidr:
            reserved.setdefault(int(net.gateway), "the provision gateway")
        for dns in net.dns:
            if dns in net.cidr:
                reserved.setdefault(int(dns), f"DNS server {dns}")
        return reserved

    @cached_property
    def macs(self) -> MacAssignment:
        """MACs from each group's CSV file and inline entries; every PXE node needs one, and
        no MAC may belong to two nodes. Problems point at the CSV line or the node entry."""
        m = self.manifest
        hosts = self.hosts
        macs: dict[str, str] = {}
        mac_owner: dict[str, str] = {}
        problems: list[Problem] = []
        csv_files: dict[Path, dict[str, tuple[str, int]]] = {}
        for gi, group in enumerate(m.node_groups):
            path = ("node_groups", gi)
            hostset = set(hosts.by_group[gi])
            group_macs: dict[str, tuple[str, Problem]] = {}
            if group.macs_file:
                csv_path = self.base_dir / group.macs_file
                if csv_path not in csv_files:
                    table = read_mac_csv(csv_path)
                    for problem in table.problems:
                        # A file-level problem (missing, unreadable) points at the manifest's macs_file.
                        problems.append(problem if problem.line is not None else
                                        self.at(path + ("macs_file",), f"{group.macs_file}: {problem.message}"))
                    csv_files[csv_path] = {r.host: (r.mac, r.line) for r in table.rows}
                for host, (mac, line) in csv_files[csv_path].items():
                    if host in hostset:
                        group_macs[host] = (mac, Problem(str(csv_path), line, "mac", ""))
            for name, entry in group.nodes.items():
                if entry.mac and name in hostset:
                    group_macs[name] = (entry.mac, self.at(path + ("nodes", name, "mac"), ""))
            for name in hosts.by_group[gi]:
                if name not in group_macs:
                    continue
                mac, source = group_macs[name]
                if mac in mac_owner:
                    problems.append(Problem(source.file, source.line, source.field,
                                            f"duplicate MAC {mac}: {name} and {mac_owner[mac]}"))
                else:
                    mac_owner[mac] = name
                    macs[name] = mac
            if group.pxe:
                missing = [h for h in hosts.by_group[gi] if h not in group_macs]
                if missing:
                    problems.append(self.at(
                        path + (("macs_file",) if group.macs_file else ("nodes",)),
                        f"{len(missing)} node(s) must PXE-boot but have no MAC: {collapse_hosts(missing)}"
                        " (add them to macs_file or nodes:, or set pxe: false)"))
        return MacAssignment(macs, problems)

    @cached_property
    def allocation(self) -> Allocation:
        requests = []
        for gi, group in enumerate(self.manifest.node_groups):
            hostset = set(self.hosts.by_group[gi])
            pinned = {name: int(e.address) for name, e in group.nodes.items() if e.address is not None and name in hostset}
            start = int(group.start_address) if group.start_address else None
            requests.append(GroupRequest(gi, self.hosts.by_group[gi], start, pinned, label=f"group '{group.name}'"))
        return allocate_addresses(self.manifest.networks.provision.cidr, requests, self.reserved, self.previous)

    @cached_property
    def profiles_used(self) -> list[HardwareProfile]:
        used: dict[str, HardwareProfile] = {}
        for group in self.manifest.node_groups:
            if group.hardware in self.profiles:
                used.setdefault(group.hardware, self.profiles[group.hardware])
        return list(used.values())

    @cached_property
    def stack(self) -> StackChoice:
        m = self.manifest
        os_key, layers, ib_stack = m.os.key, m.layers, m.infiniband.stack
        if m.stack == "auto":
            stack, refused = pick_stack(self.matrix, os_key, self.profiles_used, layers, ib_stack)
            if stack is None:
                reasons = "; ".join(f"{sid}: {v[0]}" for sid, v in refused.items())
                return StackChoice(None, "", [self.at(("stack",), f"no stack in the matrix is valid for {os_key} and "
                                                                   f"these nodes: {reasons}")])
            gpus = sorted({p.gpu.model for p in self.profiles_used if p.gpu}) or ["no GPUs"]
            return StackChoice(stack, f"auto: newest stack valid for {', '.join(gpus)} on {os_key}", [])
        if m.stack not in self.matrix.stacks:
            return StackChoice(None, "", [self.at(("stack",), f"unknown stack '{m.stack}'{suggest(m.stack, self.matrix.stacks)}")])
        stack = self.matrix.stack(m.stack)
        problems = [self.at(("stack",), f"the matrix refuses stack {stack.id}: {v}")
                    for v in check_combination(self.matrix, stack, os_key, self.profiles_used, layers, ib_stack)]
        return StackChoice(stack, "pinned in the manifest", problems)

    @cached_property
    def secondary(self) -> SecondaryAddresses:
        m = self.manifest
        nets = m.networks
        prov = nets.provision.cidr
        bmc: dict[str, str] = {}
        ipoib: dict[str, str] = {}
        problems: list[Problem] = []
        owner: dict[str, str] = {}
        for gi, group in enumerate(m.node_groups):
            layers = group.layers if group.layers is not None else m.layers
            has_ib = self.profiles.get(group.hardware, HardwareProfile()).has_ib
            for name in self.hosts.by_group[gi]:
                addr = self.allocation.addresses.get(name)
                entry = group.nodes.get(name)
                if nets.bmc is None and entry is not None and entry.bmc_address is not None:
                    problems.append(self.at(("node_groups", gi, "nodes", name, "bmc_address"),
                                            f"{entry.bmc_address} is set but networks.bmc is not defined"))
                if nets.bmc is not None:
                    path = ("node_groups", gi, "nodes", name, "bmc_address")
                    if entry is not None and entry.bmc_address is not None:
                        bad = address_problem(entry.bmc_address, nets.bmc.cidr)
                        if bad:
                            problems.append(self.at(path, bad))
                            continue
                        value = str(entry.bmc_address)
                    elif addr is None:
                        continue
                    else:
                        derived = same_offset(addr, prov, nets.bmc.cidr)
                        if derived is None:
                            problems.append(self.at(("networks", "bmc", "cidr"), f"{name}: host offset of "
                                                    f"{IPv4Address(addr)} does not fit in {nets.bmc.cidr}"))
                            continue
                        value = str(IPv4Address(derived))
                        path = ("networks", "bmc", "cidr")
                    if value in owner:
                        problems.append(self.at(path, f"duplicate BMC address {value}: {name} and {owner[value]}"))
                    else:
                        owner[value] = name
                        bmc[name] = value
                if nets.ipoib is not None and "infiniband" in layers and has_ib and addr is not None:
                    derived = same_offset(addr, prov, nets.ipoib.cidr)
                    if derived is None:
                        problems.append(self.at(("networks", "ipoib", "cidr"), f"{name}: host offset of "
                                                f"{IPv4Address(addr)} does not fit in {nets.ipoib.cidr}"))
                    else:
                        ipoib[name] = str(IPv4Address(derived))
        return SecondaryAddresses(bmc, ipoib, problems)
