"""Rendering: resolved Cluster -> build directory. Pure and deterministic (same input, same
bytes); writing is a separate edge step that only touches files whose content changed.

Each area contributes a renderer `render_files(cluster) -> {relative path: content}`; this
module owns the core set: the Ansible inventory and its variables. Python decides every
per-cluster fact (addresses, Slurm gres strings and partitions, Prometheus targets) and hands it
to the roles as `podsys_*` variables; the roles only lay those facts out in their templates
(slurm.conf also needs each node's CPUs and memory, which only Ansible's facts know)."""

from __future__ import annotations

import difflib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from podsys.cluster.address_file import allocation_path, render_allocation, stage_allocation
from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.hostlists import collapse_hosts
from podsys.checks import health_files
from podsys.errors import InputError, PodsysError, Problem
from podsys.provision import render as provision_render
from podsys.layout import DCGM_EXPORTER_PORT, HEALTH_PROLOG_PROGRAM, HEALTH_SLURM_PROGRAM, NODE_EXPORTER_PORT
from podsys.render.addons import addon_slurm_config, addon_vars

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


def _access_args(cluster: Cluster) -> tuple[dict, dict]:
    """SSH settings for every host, and the extra ones for nodes reached through the head."""
    access = cluster.access
    common: dict = {"ansible_user": access.user, "ansible_port": access.port}
    if access.private_key_file is not None:
        common["ansible_ssh_private_key_file"] = str(access.private_key_file)
    ssh_opts = access.ssh_options()
    if ssh_opts:
        common["ansible_ssh_common_args"] = " ".join(ssh_opts)
    node_extra: dict = {}
    if access.via_head:
        node_extra["ansible_ssh_common_args"] = " ".join(ssh_opts + [f'-o ProxyCommand="{access.proxy_command()}"'])
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
        **slurm_gres(cluster, node),
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


# Slurm's partition when the manifest names none: every compute node, the default partition.
DEFAULT_PARTITION = "batch"


def slurm_gres(cluster: Cluster, node: NodeSpec) -> dict:
    """The node's GPUs as Slurm names them: `Gres=gpu:<type>:<count>` in slurm.conf and the
    matching `/dev/nvidia*` File pattern in gres.conf (empty for a node without GPUs)."""
    gpu = cluster.profile_of(node).gpu
    if not gpu or not gpu.count:
        return {"slurm_gres": None, "slurm_gres_type": None, "slurm_gres_file": None}
    gres_type = gpu.model.lower()
    files = f"/dev/nvidia[0-{gpu.count - 1}]" if gpu.count > 1 else "/dev/nvidia0"
    return {"slurm_gres": f"gpu:{gres_type}:{gpu.count}", "slurm_gres_type": gres_type, "slurm_gres_file": files}


def slurm_extra_config(cluster: Cluster) -> dict[str, str]:
    """slurm.conf lines beyond the role's own: podsys health as HealthCheckProgram (and the
    optional prolog gate; roles/health installs both), then what the add-on layers need."""
    health = cluster.manifest.health
    config: dict[str, str] = {}
    if health.enabled:
        config.update({"HealthCheckProgram": HEALTH_SLURM_PROGRAM, "HealthCheckInterval": str(health.interval),
                       "HealthCheckNodeState": "ANY"})
        if health.prolog_gate:
            config["Prolog"] = HEALTH_PROLOG_PROGRAM
    config.update(addon_slurm_config(cluster))
    return config


def slurm_partitions(cluster: Cluster) -> list[dict]:
    """Every partition slurm.conf gets, with its nodes as a hostlist: the manifest's (those
    that hold at least one node with the slurm layer), or one default partition of every
    compute node when the manifest names none."""
    compute = cluster.nodes_with_layer("slurm")
    if not cluster.manifest.slurm.partitions:
        if not compute:
            return []
        return [{"name": DEFAULT_PARTITION, "nodes": collapse_hosts([n.name for n in compute]),
                 "default": True, "max_time": "INFINITE"}]
    parts = []
    for part in cluster.manifest.slurm.partitions:
        groups = set(part.node_groups)
        members = [n.name for n in compute if n.group in groups]
        if members:
            parts.append({"name": part.name, "nodes": collapse_hosts(members), "default": part.default,
                          "max_time": part.max_time})
    return parts


def prometheus_targets(cluster: Cluster) -> dict[str, list[dict]]:
    """Prometheus file_sd entries: node_exporter on the head and every monitored node,
    dcgm-exporter on the monitored nodes that have GPUs and the gpu layer (which installs DCGM)."""
    m = cluster.manifest

    def entry(address: str, port: int, name: str, group: str, hardware: str) -> dict:
        return {"targets": [f"{address}:{port}"], "labels": {"node": name, "group": group, "hardware": hardware}}

    monitored = cluster.nodes_with_layer("monitoring")
    head = m.head.hostname
    return {
        "node": [entry(str(m.head.address), NODE_EXPORTER_PORT, head, "head", "head")]
        + [entry(n.provision_ip, NODE_EXPORTER_PORT, n.name, n.group, n.hardware) for n in monitored],
        "dcgm": [entry(n.provision_ip, DCGM_EXPORTER_PORT, n.name, n.group, n.hardware)
                 for n in monitored if cluster.profile_of(n).has_gpu and "gpu" in n.layers],
    }


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


# Ansible reads every file of group_vars/all/ (a directory wins over an all.yml file): the
# variables in one world-readable file, the secrets they refer to in a 0600 one.
VARS_FILE = "inventory/group_vars/all/main.yml"
SECRETS_FILE = "inventory/group_vars/all/secrets.yml"


def _has_credentials(url: str | None) -> bool:
    return bool(url) and "@" in urlsplit(url).netloc


def move_secrets(all_vars: dict) -> dict:
    """Take every secret out of the variables: the value moves to the returned mapping (written
    to SECRETS_FILE, 0600) and the variable becomes a reference Ansible resolves at run time,
    so the readable vars file never holds one."""
    secrets: dict[str, str] = {}

    def move(section: str, key: str, name: str) -> None:
        secrets[name] = all_vars[section][key]
        all_vars[section][key] = "{{ podsys_secrets." + name + " }}"

    if all_vars["podsys_provisioning"].get("root_password_hash"):
        move("podsys_provisioning", "root_password_hash", "root_password_hash")
    for key in ("upstream", "proxy", "epel"):
        if _has_credentials(all_vars["podsys_packages"].get(key)):
            move("podsys_packages", key, f"packages_{key}")
    return secrets


def secret_values(cluster: Cluster) -> list[str]:
    """Every secret string the build can hold, to mask wherever rendering prints: the root
    password hash, credential-bearing package URLs and their user:password part."""
    m = cluster.manifest
    values = [m.provisioning.root_password_hash] if m.provisioning.root_password_hash else []
    values += [u.password_hash for u in m.users if u.password_hash]
    for url in (m.packages.upstream, m.packages.proxy, m.packages.epel):
        if _has_credentials(url):
            values += [url, urlsplit(url).netloc.rpartition("@")[0]]
    return sorted({v for v in values if v}, key=len, reverse=True)


def is_secret_file(rel: str) -> bool:
    """Files written 0600: the secrets file and the per-node installer configs, which carry the
    root password hash, root keys and the package source's credentials."""
    return rel == SECRETS_FILE or rel.startswith("provision/boot/nodes/")


def render_core_files(cluster: Cluster) -> dict[str, str]:
    m = cluster.manifest
    files: dict[str, str] = {}
    common, node_extra = _access_args(cluster)
    head_name = m.head.hostname

    head_host = {"ansible_host": str(m.head.ssh_address or m.head.address)}
    files["inventory/hosts.yml"] = inventory_text(cluster, common, head_host, node_extra)

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
        # Password hashes go to the secrets file (move_secrets), not with the rest of the user.
        "podsys_users": [u.model_dump(mode="json", exclude={"password_hash"}) for u in m.users],
        "podsys_slurm": {**m.slurm.model_dump(mode="json"), "partitions": slurm_partitions(cluster),
                         "extra_config": slurm_extra_config(cluster)},
        "podsys_packages": m.packages.model_dump(mode="json"),
        "podsys_monitoring": {
            **m.monitoring.model_dump(mode="json"),
            "node_exporter_port": NODE_EXPORTER_PORT,
            "dcgm_exporter_port": DCGM_EXPORTER_PORT,
            "targets": prometheus_targets(cluster),
        },
        "podsys_health": m.health.model_dump(mode="json"),
        "podsys_gpu": m.gpu.model_dump(mode="json"),
        "podsys_infiniband": m.infiniband.model_dump(mode="json"),
        "podsys_provisioning": m.provisioning.model_dump(mode="json"),
        "podsys_access": m.access.model_dump(mode="json"),
        **addon_vars(cluster),  # accounts, storage, training (podsys/render/addons.py)
    }
    secrets = move_secrets(all_vars)
    if hashes := {u.name: u.password_hash for u in m.users if u.password_hash}:
        secrets["user_password_hashes"] = hashes
    node_list = "".join(f"- {json_line(node_vars(cluster, n))}\n" for n in cluster.nodes)
    files[VARS_FILE] = to_yaml(all_vars) + "podsys_nodes:\n" + node_list
    files[SECRETS_FILE] = to_yaml({"podsys_secrets": secrets})
    # The hardware profile is the same for a whole node group: one file per group, not per host.
    for group in m.node_groups:
        profile = cluster.profiles[group.hardware]
        files[f"inventory/group_vars/{_group_var_name('group', group.name)}.yml"] = to_yaml(
            {"podsys_hardware": profile.model_dump(mode="json", exclude_none=True)}
        )
    return files


# Every area's renderer: the core set here, the head's boot services and installer configs.
RENDERERS: list[Callable[[Cluster], dict[str, str]]] = [render_core_files, provision_render.render_files, health_files.render_files]


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


def file_mode(rel: str) -> int:
    return 0o600 if is_secret_file(rel) else 0o644


def _index_text(files: dict[str, str]) -> str:
    return json.dumps({"files": sorted(files)}, indent=1) + "\n"


def plan_render(cluster: Cluster, build_dir: Path) -> tuple[dict[str, str], RenderResult]:
    """Render every file (pure) and compare with the build directory: which files are new,
    which changed (content, or the mode a secret file must have), which are gone."""
    files = render_files(cluster)
    result = RenderResult(build_dir)
    for rel, content in files.items():
        target = build_dir / rel
        try:
            with open(target) as handle:
                same = handle.read() == content
            if same and is_secret_file(rel):
                same = (os.stat(target).st_mode & 0o777) == file_mode(rel)
        except FileNotFoundError:
            result.added.append(rel)
            continue
        except (OSError, UnicodeDecodeError):
            same = False  # unreadable or not a file: replaced below
        if same:
            result.unchanged += 1
        else:
            result.changed.append(rel)
    result.removed = sorted(set(_previous_index(build_dir)) - set(files))
    return files, result


def _write(path: Path, content: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(path, mode)  # os.open's mode is cut by the umask


def _link_tree(old: Path, new: Path, skip: set[str], prefix: str = "") -> None:
    """Recreate `old` under `new` with hard links (no copy, and unchanged files keep their
    inode and mtime): rendered files that did not change, and everything render does not own
    (deploy logs, the munge key, the fact cache). `skip` holds the relative paths rewritten
    or removed by this render."""
    for entry in os.scandir(old):
        rel = prefix + entry.name
        if rel in skip:
            continue
        target = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            os.mkdir(target)
            _link_tree(Path(entry.path), target, skip, rel + "/")
            if not any(os.scandir(target)) and any(os.scandir(entry.path)):
                os.rmdir(target)  # everything in it was removed by this render (a node's files)
            else:
                os.chmod(target, entry.stat().st_mode & 0o7777)
        elif entry.is_file():
            os.link(entry.path, target)
        # sockets and fifos (an SSH control socket) belong to a running process: not carried


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE): at every moment
    the build directory is the old tree or the new one. False where the call is missing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # old kernel or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(a))


def _swap_into_place(staging: Path, build_dir: Path) -> None:
    if not build_dir.exists():
        os.rename(staging, build_dir)
        return
    if _exchange(staging, build_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now the old tree
        return
    old = staging.with_name(staging.name + ".old")
    os.rename(build_dir, old)
    os.rename(staging, build_dir)
    shutil.rmtree(old, ignore_errors=True)


def _output_problem(build_dir: Path, exc: OSError) -> PodsysError:
    """An OSError while writing -> one line naming the build directory. Where the place given
    is the problem (not writable, read-only, not a real directory) it is bad input (exit 2);
    otherwise (disk full, I/O error) a failure (exit 1)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                     errno.EEXIST, errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.EBUSY):
        return InputError(Problem(str(build_dir), None, "", f"cannot write the build directory here: {reason}"))
    return PodsysError(f"writing the build directory {build_dir} failed: {reason}")


def _check_build_dir(build_dir: Path) -> None:
    """The build directory, or the first part of its path that exists, must be a directory."""
    for place in (build_dir, *build_dir.parents):
        if place.exists() or place.is_symlink():
            if not place.is_dir():
                what = "the build directory" if place == build_dir else f"a parent of the build directory {build_dir}"
                raise InputError(Problem(str(place), None, "", f"is not a directory ({what} must be one)"))
            return


def render_cluster(cluster: Cluster, build_dir: Path | None = None) -> RenderResult:
    """Write the build directory and the address allocation file, all or nothing.

    Everything is rendered before anything is written (an invalid manifest writes nothing).
    A render that changes nothing writes nothing. Otherwise the new tree is built in a
    temporary directory beside the build directory (hard links for what did not change) and
    swapped into place, so a failure at any point leaves the previous build whole."""
    build_dir = Path(build_dir or cluster.default_build_dir)
    if build_dir.is_symlink():
        build_dir = build_dir.resolve()  # swap the tree it points to, never the link itself
    _check_build_dir(build_dir)
    files, result = plan_render(cluster, build_dir)
    allocation = render_allocation({n.name: n.provision_ip for n in cluster.nodes})
    allocation_file = allocation_path(cluster.manifest_path)
    index = _index_text(files)
    try:
        current_index = (build_dir / INDEX_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        current_index = None
    try:
        # Staged first: a manifest directory that cannot be written fails before the build moves.
        staged_allocation = stage_allocation(cluster.manifest_path, allocation)
    except OSError as exc:
        raise InputError(Problem(str(allocation_file), None, "",
                                 f"cannot write the address file beside the manifest: {exc.strerror or exc}")) from None
    try:
        if result.touched or current_index != index:
            _write_tree(build_dir, files, result, index)
        if staged_allocation:
            os.replace(staged_allocation, allocation_file)
            staged_allocation = None
    except OSError as exc:
        raise _output_problem(build_dir, exc) from None
    finally:
        if staged_allocation:
            Path(staged_allocation).unlink(missing_ok=True)
    return result


def _write_tree(build_dir: Path, files: dict[str, str], result: RenderResult, index: str) -> None:
    if build_dir.is_dir() and os.path.ismount(build_dir):
        _write_into_mount(build_dir, files, result, index)
        return
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=build_dir.parent, prefix=f".{build_dir.name}.new-"))
    try:
        rewritten = set(result.added) | set(result.changed)
        if build_dir.is_dir():
            os.chmod(staging, build_dir.stat().st_mode & 0o7777)
            _link_tree(build_dir, staging, rewritten | set(result.removed) | {INDEX_FILE})
        else:
            os.chmod(staging, 0o755)
        _write_files(staging, files, sorted(rewritten))
        _write(staging / INDEX_FILE, index, 0o644)
        _swap_into_place(staging, build_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_files(root: Path, files: dict[str, str], rels: list[str]) -> None:
    made: set[Path] = set()
    for rel in rels:
        target = root / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        _write(target, files[rel], file_mode(rel))


def _write_into_mount(build_dir: Path, files: dict[str, str], result: RenderResult, index: str) -> None:
    """A build directory that is a mount point (a container volume) cannot be swapped: every
    new file is written in a staging directory inside it first (so a write error stops the
    render before anything moves), then each is renamed into place, the index last."""
    staging = Path(tempfile.mkdtemp(dir=build_dir, prefix=".render-new-"))
    try:
        rewritten = sorted(set(result.added) | set(result.changed))
        _write_files(staging, files, rewritten)
        for rel in rewritten:
            (build_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, build_dir / rel)
        for rel in result.removed:
            (build_dir / rel).unlink(missing_ok=True)
        _write(staging / INDEX_FILE, index, 0o644)
        os.replace(staging / INDEX_FILE, build_dir / INDEX_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


DIFF_HIDDEN = "contents not shown: the file holds secrets"
MASK = "********"


def mask_secrets(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def diff_render(cluster: Cluster, build_dir: Path | None = None) -> tuple[str, RenderResult]:
    """Unified diff of what `render_cluster` would change, without writing anything. A secret
    file shows only that it changed; any secret value elsewhere is masked."""
    build_dir = Path(build_dir or cluster.default_build_dir)
    _check_build_dir(build_dir)
    files, result = plan_render(cluster, build_dir)
    chunks: list[str] = []

    def old_lines(rel: str) -> list[str]:
        try:
            return (build_dir / rel).read_text().splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            return []

    for rel in sorted(result.added + result.changed + result.removed):
        new = files.get(rel)
        to_name = f"b/{rel}" if new is not None else "/dev/null"
        if is_secret_file(rel):
            chunks.append(f"--- a/{rel}\n+++ {to_name}\n@@ {DIFF_HIDDEN} @@\n")
            continue
        chunks.extend(difflib.unified_diff(old_lines(rel), (new or "").splitlines(keepends=True), f"a/{rel}", to_name))
    return mask_secrets("".join(chunks), secret_values(cluster)), result
