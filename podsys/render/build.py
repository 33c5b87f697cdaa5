"""Rendering: resolved Cluster -> build directory. Pure and deterministic (same input, same
bytes); writing is a separate edge step that only touches files whose content changed.

Each area contributes a renderer `render_files(cluster) -> {relative path: content}`; this
module owns the core set (inventory, vars, hosts, dnsmasq reservations, Slurm, Prometheus)."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from podsys.cluster.address_file import write_allocation
from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.topology import collapse_hosts
from podsys.provision import render as provision_render
from podsys.render.addons import addon_vars

try:
    _Dumper = yaml.CSafeDumper
except AttributeError:  # libyaml missing: same output, slower
    _Dumper = yaml.SafeDumper


INDEX_FILE = ".rendered.json"

_env = Environment(
    loader=PackageLoader("podsys", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def template(template_name: str, **context) -> str:
    return _env.get_template(template_name).render(**context)


def to_yaml(data) -> str:
    return "---\n" + yaml.dump(data, Dumper=_Dumper, default_flow_style=False, sort_keys=True, width=120)


def json_line(data) -> str:
    """One mapping as a YAML flow mapping (JSON is valid YAML): fast for thousands of nodes and
    still one readable line per node."""
    return json.dumps(data, sort_keys=True, separators=(", ", ": "))


def _gpu_count(cluster: Cluster, node: NodeSpec) -> int:
    gpu = cluster.profile_of(node).gpu
    return gpu.count if gpu else 0


def _access_args(cluster: Cluster) -> tuple[dict, dict]:
    """SSH settings for every host, and the extra ones for nodes reached through the head."""
    m = cluster.manifest
    base = cluster.base_dir
    common: dict = {"ansible_user": m.access.user, "ansible_port": m.access.port}
    ssh_opts: list[str] = []
    key = str((base / m.access.private_key_file).resolve()) if m.access.private_key_file else None
    known = str((base / m.access.known_hosts_file).resolve()) if m.access.known_hosts_file else None
    if key:
        common["ansible_ssh_private_key_file"] = key
    if known:
        ssh_opts += [f"-o UserKnownHostsFile={known}", "-o StrictHostKeyChecking=yes"]
    if ssh_opts:
        common["ansible_ssh_common_args"] = " ".join(ssh_opts)
    node_extra: dict = {}
    if m.access.via_head:
        head_ssh = str(m.head.ssh_address or m.head.address)
        jump = ["ssh", "-W", "%h:%p", "-p", str(m.access.port)]
        if key:
            jump += ["-i", key]
        if known:
            jump += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
        jump.append(f"{m.access.user}@{head_ssh}")
        node_extra["ansible_ssh_common_args"] = " ".join(ssh_opts + [f"-o ProxyCommand=\"{' '.join(jump)}\""])
    return common, node_extra


def _group_var_name(prefix: str, name: str) -> str:
    return f"{prefix}_{name.replace('-', '_')}"


def node_vars(cluster: Cluster, node: NodeSpec) -> dict:
    profile = cluster.profile_of(node)
    return {
        "name": node.name,
        "group": node.group,
        "hardware": node.hardware,
        "ip": node.provision_ip,
        "mac": node.mac,
        "bmc_ip": node.bmc_ip,
        "ipoib_ip": node.ipoib_ip,
        "disk": node.disk,
        "pxe": node.pxe,
        "fqdn": node.fqdn,
        "layers": list(node.layers),
        "gpu_count": profile.gpu.count if profile.gpu else 0,
        "gpu_model": profile.gpu.model if profile.gpu else None,
    }


def _network_vars(net) -> dict | None:
    if net is None:
        return None
    return {
        "cidr": str(net.cidr),
        "network": str(net.cidr.network_address),
        "netmask": str(net.cidr.netmask),
        "prefix": net.cidr.prefixlen,
        "gateway": str(net.gateway) if net.gateway else None,
        "dns": [str(d) for d in net.dns],
        "mtu": net.mtu,
    }


def slurm_lines(cluster: Cluster) -> tuple[list[str], list[str], list[str]]:
    """NodeName, PartitionName and gres.conf lines; nodes with the same group share a line."""
    node_lines, gres_lines, part_lines = [], [], []
    for group in cluster.manifest.node_groups:
        members = [n for n in cluster.group_nodes(group.name) if "slurm" in n.layers]
        if not members:
            continue
        names = collapse_hosts([n.name for n in members])
        gpus = _gpu_count(cluster, members[0])
        gres = f" Gres=gpu:{gpus}" if gpus else ""
        node_lines.append(f"NodeName={names}{gres} State=UNKNOWN")
        if gpus:
            files = f"/dev/nvidia[0-{gpus - 1}]" if gpus > 1 else "/dev/nvidia0"
            gres_lines.append(f"NodeName={names} Name=gpu File={files}")
    for part in cluster.manifest.slurm.partitions:
        members = [n.name for g in part.node_groups for n in cluster.group_nodes(g) if "slurm" in n.layers]
        if not members:
            continue
        default = "YES" if part.default else "NO"
        part_lines.append(
            f"PartitionName={part.name} Nodes={collapse_hosts(members)} Default={default} MaxTime={part.max_time} State=UP"
        )
    return node_lines, part_lines, gres_lines


def prometheus_targets(cluster: Cluster, port: int, nodes: list[NodeSpec]) -> str:
    entries = [
        {"targets": [f"{n.provision_ip}:{port}"], "labels": {"node": n.name, "group": n.group, "hardware": n.hardware}}
        for n in nodes
    ]
    return json.dumps(entries, indent=2, sort_keys=True) + "\n"


def inventory_text(cluster: Cluster, common: dict, head_host: dict, node_extra: dict) -> str:
    """The YAML inventory, written line by line: one flow mapping of host vars per node (with
    `podsys_node`) keeps 4,096 nodes fast to render and easy to grep. Names are JSON-quoted so
    a host called `yes` or `1234` stays a string."""
    q = json.dumps
    out = ["---", "all:", f"  vars: {json_line(common)}", "  children:", "    head:", "      hosts:"]
    out.append(f"        {q(cluster.manifest.head.hostname)}: {json_line(head_host)}")
    out += ["    nodes:"]
    if node_extra:
        out.append(f"      vars: {json_line(node_extra)}")
    out.append("      hosts:" if cluster.nodes else "      hosts: {}")
    for n in cluster.nodes:
        out.append(f"        {q(n.name)}: {json_line({'ansible_host': n.provision_ip, 'podsys_node': node_vars(cluster, n)})}")
    groups: list[tuple[str, list[NodeSpec]]] = []
    for gname, members in groupby(sorted(cluster.nodes, key=lambda n: n.group), key=lambda n: n.group):
        groups.append((_group_var_name("group", gname), list(members)))
    for layer in cluster.manifest.layers:
        members = cluster.nodes_with_layer(layer)
        if members:
            groups.append((_group_var_name("layer", layer), members))
    for gname, members in groups:
        out += [f"    {gname}:", "      hosts:"]
        out += [f"        {q(n.name)}:" for n in members]
    return "\n".join(out) + "\n"


def render_core_files(cluster: Cluster) -> dict[str, str]:
    m = cluster.manifest
    files: dict[str, str] = {}
    common, node_extra = _access_args(cluster)
    head_name = m.head.hostname

    head_host = {"ansible_host": str(m.head.ssh_address or m.head.address)}
    files["inventory/hosts.yml"] = inventory_text(cluster, common, head_host, node_extra)

    node_lines, part_lines, gres_lines = slurm_lines(cluster)
    context = {"cluster": {"name": cluster.name}, "head": m.head, "domain": m.metadata.domain, "nodes": cluster.nodes}
    files["files/hosts"] = template("core/hosts.j2", **context)
    files["files/dnsmasq-hosts.conf"] = template("core/dnsmasq-hosts.conf.j2", **context)
    files["files/slurm-nodes.conf"] = template(
        "core/slurm-nodes.conf.j2", node_lines=node_lines, partition_lines=part_lines, **context
    )
    files["files/gres.conf"] = template("core/gres.conf.j2", gres_lines=gres_lines, **context)
    monitored = cluster.nodes_with_layer("monitoring")
    files["files/prometheus-targets.json"] = prometheus_targets(cluster, 9100, monitored)
    gpu_monitored = [n for n in monitored if cluster.profile_of(n).has_gpu]
    files["files/prometheus-dcgm-targets.json"] = prometheus_targets(cluster, 9400, gpu_monitored)

    all_vars = {
        "podsys_cluster": {"name": cluster.name, "domain": m.metadata.domain},
        "podsys_head": {"hostname": head_name, "address": str(m.head.address), "interface": m.head.interface},
        "podsys_networks": {
            "provision": _network_vars(m.networks.provision),
            "bmc": _network_vars(m.networks.bmc),
            "ipoib": _network_vars(m.networks.ipoib),
        },
        "podsys_os": {"distro": m.os.distro, "version": m.os.version},
        "podsys_layers": list(m.layers),
        "podsys_stack": cluster.stack.as_vars(),
        "podsys_users": [u.model_dump(mode="json") for u in m.users],
        "podsys_slurm": {
            **m.slurm.model_dump(mode="json"),
            "nodes_conf": files["files/slurm-nodes.conf"],
            "gres_conf": files["files/gres.conf"],
        },
        "podsys_packages": m.packages.model_dump(mode="json"),
        "podsys_monitoring": m.monitoring.model_dump(mode="json"),
        "podsys_gpu": m.gpu.model_dump(mode="json"),
        "podsys_infiniband": m.infiniband.model_dump(mode="json"),
        "podsys_provisioning": m.provisioning.model_dump(mode="json"),
        "podsys_access": m.access.model_dump(mode="json"),
        **addon_vars(cluster),  # accounts, storage, training (podsys/render/addons.py)
    }
    node_list = "".join(f"- {json_line(node_vars(cluster, n))}\n" for n in cluster.nodes)
    files["inventory/group_vars/all.yml"] = to_yaml(all_vars) + "podsys_nodes:\n" + node_list
    # The hardware profile is the same for a whole node group: one file per group, not per host.
    for group in m.node_groups:
        profile = cluster.profiles[group.hardware]
        files[f"inventory/group_vars/{_group_var_name('group', group.name)}.yml"] = to_yaml(
            {"podsys_hardware": profile.model_dump(mode="json", exclude_none=True)}
        )
    return files


# Every area's renderer: the core set here, the head's boot services and installer configs.
RENDERERS: list[Callable[[Cluster], dict[str, str]]] = [render_core_files, provision_render.render_files]


def render_files(cluster: Cluster) -> dict[str, str]:
    """Every file of the build directory, from every area's renderer. Pure."""
    out: dict[str, str] = {}
    for renderer in RENDERERS:
        for path, content in renderer(cluster).items():
            if path in out:
                raise ValueError(f"two renderers produce {path}")
            out[path] = content
    return dict(sorted(out.items()))


@dataclass
class RenderResult:
    build_dir: Path
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def _previous_index(build_dir: Path) -> list[str]:
    try:
        return json.loads((build_dir / INDEX_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return []


def _atomic_write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def plan_render(cluster: Cluster, build_dir: Path) -> tuple[dict[str, str], RenderResult]:
    files = render_files(cluster)
    result = RenderResult(build_dir)
    for rel, content in files.items():
        target = build_dir / rel
        if not target.exists():
            result.added.append(rel)
        elif target.read_text() != content:
            result.changed.append(rel)
        else:
            result.unchanged += 1
    result.removed = sorted(set(_previous_index(build_dir)) - set(files))
    return files, result


def _write_new(path: Path, content: str) -> None:
    """A file that did not exist: written under its own name (one create instead of a temp file
    plus a rename: thousands of per-node files make that count). A crash mid-write leaves a
    short file that the next render sees as changed and replaces atomically."""
    with open(path, "w") as handle:
        handle.write(content)


def render_cluster(cluster: Cluster, build_dir: Path | None = None) -> RenderResult:
    """Write the build directory (only what changed) and the address allocation file."""
    build_dir = Path(build_dir or cluster.default_build_dir)
    files, result = plan_render(cluster, build_dir)
    made: set[Path] = set()
    for rel in result.added:
        target = build_dir / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        _write_new(target, files[rel])
    for rel in result.changed:
        _atomic_write(build_dir / rel, files[rel])
    for rel in result.removed:
        (build_dir / rel).unlink(missing_ok=True)
    _atomic_write(build_dir / INDEX_FILE, json.dumps({"files": sorted(files)}, indent=1) + "\n")
    write_allocation(cluster.manifest_path, {n.name: n.provision_ip for n in cluster.nodes})
    return result


def diff_render(cluster: Cluster, build_dir: Path | None = None) -> tuple[str, RenderResult]:
    """Unified diff of what `render_cluster` would change, without writing anything."""
    build_dir = Path(build_dir or cluster.default_build_dir)
    files, result = plan_render(cluster, build_dir)
    chunks: list[str] = []
    for rel in sorted(result.added + result.changed):
        old_path = build_dir / rel
        old = old_path.read_text().splitlines(keepends=True) if old_path.exists() else []
        chunks.extend(difflib.unified_diff(old, files[rel].splitlines(keepends=True), f"a/{rel}", f"b/{rel}"))
    for rel in result.removed:
        old_path = build_dir / rel
        old = old_path.read_text().splitlines(keepends=True) if old_path.exists() else []
        chunks.extend(difflib.unified_diff(old, [], f"a/{rel}", "/dev/null"))
    return "".join(chunks), result
