"""Semantic checks for the add-on layers' manifest sections (accounts, storage, training).

The schema (podsys/cluster/schema.py) knows their shape; these checks know what spans fields:
a team's users must be manifest users, a QOS a team names must exist, a mount's node groups
must exist, home/scratch must lie on shared storage. Each check is `check_x(manifest, at)`
yielding Problems, where `at(path, message)` makes a Problem pointing at the manifest line of
`path` (SourceMap.problem, or the validation table's Context.at), so the checks can sit in any
table of checks. `ADDON_CHECKS` lists them with the top-level sections each reads."""

from __future__ import annotations

import re
from typing import Callable, Iterator

from podsys.cluster.schema import Manifest
from podsys.errors import Problem

At = Callable[[tuple, str], Problem]

# Slurm's built-in QOS: every association may name it without the manifest declaring it.
BUILTIN_QOS = ("normal",)
NFS_SOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]+:/[A-Za-z0-9_.+/-]*$")
# Lustre: MGS NID(s), colon-separated for failover, then :/fsname. Source: mount.lustre(8).
LUSTRE_SOURCE_RE = re.compile(r"^[A-Za-z0-9_.@-]+(:[A-Za-z0-9_.@-]+)*:/[A-Za-z0-9_-]+$")
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
GPFS_DEVICE_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _enabled(manifest: Manifest, layer: str) -> bool:
    return layer in manifest.layers


def _under(path: str, parent: str) -> bool:
    parent = parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent + "/") or parent == "/"


def check_accounts(manifest: Manifest, at: At) -> Iterator[Problem]:
    """Teams name manifest users and declared QOS; names are unique; `accounting` needs `slurm`."""
    accounts = manifest.accounts
    if _enabled(manifest, "accounting") and "slurm" not in manifest.layers:
        yield at(("layers",), "layer 'accounting' needs layer 'slurm' (slurmdbd serves slurmctld)")
    if (accounts.teams or accounts.qos) and not _enabled(manifest, "accounting"):
        yield at(("accounts",), "an accounts section needs layer 'accounting' in layers")
    users = {u.name for u in manifest.users}
    qos_names = {q.name for q in accounts.qos} | set(BUILTIN_QOS)
    seen_qos: set[str] = set()
    for qi, qos in enumerate(accounts.qos):
        if qos.name in seen_qos:
            yield at(("accounts", "qos", qi, "name"), f"duplicate QOS '{qos.name}'")
        seen_qos.add(qos.name)
        for pi, target in enumerate(qos.preempt):
            if target not in qos_names:
                yield at(("accounts", "qos", qi, "preempt", pi), f"QOS '{target}' is not declared in accounts.qos")
            elif target == qos.name:
                yield at(("accounts", "qos", qi, "preempt", pi), f"QOS '{qos.name}' cannot preempt itself")
    seen_teams: set[str] = set()
    for ti, team in enumerate(accounts.teams):
        path = ("accounts", "teams", ti)
        if team.name == "root":
            yield at(path + ("name",), "'root' is Slurm's own top account; pick another name")
        if team.name in seen_teams:
            yield at(path + ("name",), f"duplicate team '{team.name}'")
        seen_teams.add(team.name)
        member: set[str] = set()
        for ui, user in enumerate(team.users):
            if user not in users:
                yield at(path + ("users", ui), f"'{user}' is not a manifest user (users: {', '.join(sorted(users)) or 'none'})")
            if user in member:
                yield at(path + ("users", ui), f"'{user}' is listed twice")
            member.add(user)
        for qi, name in enumerate(team.qos):
            if name not in qos_names:
                yield at(path + ("qos", qi), f"QOS '{name}' is not declared in accounts.qos")
        if team.default_qos is not None and team.default_qos not in (team.qos or list(BUILTIN_QOS)):
            yield at(path + ("default_qos",), f"default QOS '{team.default_qos}' is not one of the team's qos")


def _mount_source_problem(kind: str, source: str | None) -> str | None:
    if kind == "lab-bind":
        return None
    if not source:
        return f"a {kind} mount needs a source"
    if kind == "nfs" and not NFS_SOURCE_RE.match(source):
        return f"nfs source {source!r} must be SERVER:/EXPORT"
    if kind == "lustre" and not LUSTRE_SOURCE_RE.match(source):
        return f"lustre source {source!r} must be MGSNID[:MGSNID]:/FSNAME, e.g. 10.0.0.5@o2ib:/scratch"
    if kind == "beegfs" and not HOST_RE.match(source):
        return f"beegfs source {source!r} must be the management service's host name or address"
    if kind == "gpfs" and not GPFS_DEVICE_RE.match(source):
        return f"gpfs source {source!r} must be the file system's device name, e.g. gpfs01"
    return None


def check_storage(manifest: Manifest, at: At) -> Iterator[Problem]:
    """Mount sources fit their kind, mount points and exports are unique, node groups exist,
    home and scratch lie on a mount or an export."""
    storage = manifest.storage
    groups = {g.name for g in manifest.node_groups}
    if (storage.exports or storage.home or storage.scratch) and not _enabled(manifest, "storage"):
        yield at(("storage",), "exports, home and scratch need layer 'storage' in layers")
    seen_exports: set[str] = set()
    for ei, export in enumerate(storage.exports):
        if export.path in seen_exports:
            yield at(("storage", "exports", ei, "path"), f"{export.path} is exported twice")
        seen_exports.add(export.path)
    seen_mounts: set[str] = set()
    for mi, mount in enumerate(storage.mounts):
        path = ("storage", "mounts", mi)
        bad = _mount_source_problem(mount.kind, mount.source)
        if bad:
            yield at(path + ("source",), bad)
        if mount.path in seen_mounts:
            yield at(path + ("path",), f"{mount.path} is mounted twice")
        if mount.path == "/":
            yield at(path + ("path",), "a shared file system cannot be mounted on /")
        seen_mounts.add(mount.path)
        for oi, option in enumerate(mount.options):
            if not re.fullmatch(r"[A-Za-z0-9_.=:@/+-]+", option):
                yield at(path + ("options", oi), f"mount option {option!r} holds characters a mount unit cannot carry")
        for gi, group in enumerate(mount.node_groups or []):
            if group not in groups:
                yield at(path + ("node_groups", gi), f"node group '{group}' is not in node_groups")
    shared = [m.path for m in storage.mounts] + list(seen_exports)
    for key in ("home", "scratch"):
        value = getattr(storage, key)
        if value is not None and not any(_under(value, s) for s in shared):
            yield at(("storage", key), f"{value} is not on shared storage (mounts/exports: {', '.join(shared) or 'none'})")


def check_training(manifest: Manifest, at: At) -> Iterator[Problem]:
    """With shared storage declared, the image and checkpoint directories must be on it: a
    checkpoint on one node's local disk cannot resume a job on another."""
    if not _enabled(manifest, "training"):
        return
    if "slurm" not in manifest.layers:
        yield at(("layers",), "layer 'training' needs layer 'slurm' (jobs are submitted with sbatch)")
    storage = manifest.storage
    shared = [m.path for m in storage.mounts] + [e.path for e in storage.exports]
    if not shared:
        return
    for key in ("image_dir", "checkpoint_dir"):
        value = getattr(manifest.training, key)
        if not any(_under(value, s) for s in shared):
            yield at(("training", key), f"{value} is not on shared storage ({', '.join(shared)})")


def check_models(manifest: Manifest, at: At) -> Iterator[Problem]:
    """MLflow keeps its runs and registry in the accounting layer's MariaDB, and its artifacts
    on shared storage when the manifest declares some (a job on any node uploads them through
    the server, and the run page must find them whichever head process serves it)."""
    if not _enabled(manifest, "models"):
        return
    if not _enabled(manifest, "accounting"):
        yield at(("layers",), "layer 'models' needs layer 'accounting' (MLflow's backend store is its MariaDB)")
    storage = manifest.storage
    shared = [m.path for m in storage.mounts] + [e.path for e in storage.exports]
    if shared and not any(_under(manifest.models.artifact_dir, s) for s in shared):
        yield at(("models", "artifact_dir"), f"{manifest.models.artifact_dir} is not on shared storage ({', '.join(shared)})")


# (name, check, top-level sections it reads): the lead's validation table registers these.
ADDON_CHECKS: tuple[tuple[str, Callable[[Manifest, At], Iterator[Problem]], tuple[str, ...]], ...] = (
    ("accounts", check_accounts, ("accounts", "users", "layers")),
    ("storage", check_storage, ("storage", "node_groups", "layers")),
    ("training", check_training, ("training", "storage", "layers")),
    ("models", check_models, ("models", "storage", "layers")),
)
