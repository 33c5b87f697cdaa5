"""Manifest file -> resolved Cluster: the one entry point every command uses.

Loading runs the whole validation table (podsys/cluster/checks.py) and writes nothing."""

from __future__ import annotations

from pathlib import Path

from podsys.cluster.address_file import read_allocation
from podsys.cluster.model import Cluster
from podsys.cluster.resolve import validate_and_resolve
from podsys.cluster.yaml_source import load_yaml_file


def load_cluster(path: Path | str, skip: frozenset[str] = frozenset()) -> Cluster:
    """Load, validate and resolve a manifest. Raises InputError listing every problem. `skip`
    names checks a command makes true itself (`podsys bundle build` fetches the wheels that
    the `addon_wheels` check asks for)."""
    path = Path(path).absolute()
    data, smap = load_yaml_file(path)
    return validate_and_resolve(data, smap, path, previous=read_allocation(path), skip=skip)
