"""Manifest file -> resolved Cluster: the one entry point every command uses."""

from __future__ import annotations

from pathlib import Path

from podsys.allocation import read_allocation
from podsys.model import Cluster
from podsys.resolve import resolve_cluster
from podsys.validate import parse_manifest
from podsys.yamlsrc import load_yaml_file


def load_cluster(path: Path | str) -> Cluster:
    """Load, validate and resolve a manifest. Raises InputError listing every problem."""
    path = Path(path).absolute()
    data, smap = load_yaml_file(path)
    manifest = parse_manifest(data, smap)
    return resolve_cluster(manifest, smap, path, previous=read_allocation(path))
