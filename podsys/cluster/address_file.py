"""The address allocation file kept next to the manifest (`<manifest>.addresses.yaml`).

Users commit it with the manifest: it is what keeps a node's address stable when groups grow
or nodes are removed. Deleting it re-numbers from the manifest's start addresses."""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

import yaml

from podsys.errors import InputError, Problem

HEADER = (
    "# Provision addresses podsys assigned to nodes. Commit this file with the manifest: it keeps\n"
    "# addresses stable when node groups grow. Written by `podsys render`; delete to renumber.\n"
)


def allocation_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.stem + ".addresses.yaml")


def read_allocation(manifest_path: Path) -> dict[str, int]:
    path = allocation_path(manifest_path)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return {str(k): int(IPv4Address(str(v))) for k, v in (data.get("provision") or {}).items()}
    except (yaml.YAMLError, ValueError, AttributeError) as exc:
        raise InputError(Problem(str(path), None, "provision", f"unreadable allocation file ({exc}); fix or delete it")) from None


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
