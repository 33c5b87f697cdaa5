"""The address allocation file kept next to the manifest (`<manifest>.addresses.yaml`).

Users commit it with the manifest: it is what keeps a node's address stable when groups grow
or nodes are removed. Deleting it re-numbers from the manifest's start addresses."""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

import yaml

from podsys.cluster.yaml_source import load_yaml_file
from podsys.errors import InputError

HEADER = (
    "# Provision addresses podsys assigned to nodes. Commit this file with the manifest: it keeps\n"
    "# addresses stable when node groups grow. Written by `podsys render`; delete to renumber.\n"
)


def allocation_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".addresses.yaml")


def read_allocation(manifest_path: Path) -> dict[str, int]:
    """hostname -> address (as int) from the addresses file; {} when there is none. Read with
    the manifest's bounded loader: the file is committed and edited by hand too."""
    path = allocation_path(manifest_path)
    if not path.exists():
        return {}
    data, smap = load_yaml_file(path)
    entries = data.get("provision") if isinstance(data, dict) else None
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        raise InputError(smap.problem(("provision",), "expected `provision:` mapping hostname: address; fix or delete the file"))
    out: dict[str, int] = {}
    problems = []
    for name, value in entries.items():
        try:
            out[str(name)] = int(IPv4Address(value if isinstance(value, str) else ""))
        except ValueError:
            shown = value if isinstance(value, (str, int, float)) else type(value).__name__
            problems.append(smap.problem(("provision", name), f"{shown!r} is not an IPv4 address; fix or delete the file"))
    if problems:
        raise InputError(problems)
    return out


def render_allocation(addresses: dict[str, str]) -> str:
    body = yaml.safe_dump({"provision": dict(sorted(addresses.items()))}, default_flow_style=False, sort_keys=False)
    return HEADER + body


def stage_allocation(manifest_path: Path, text: str) -> str | None:
    """Write `text` to a temporary file beside the allocation file, mode 0644 (it is meant to
    be committed and holds no secret), and return its path for the caller to rename into
    place; None when the file already holds exactly this."""
    path = allocation_path(manifest_path)
    try:
        if path.read_text() == text:
            return None
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".addresses.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_allocation(manifest_path: Path, addresses: dict[str, str]) -> bool:
    """Write atomically; return True if the content changed."""
    staged = stage_allocation(manifest_path, render_allocation(addresses))
    if staged is None:
        return False
    os.replace(staged, allocation_path(manifest_path))
    return True
