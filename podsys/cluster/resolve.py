"""Resolution: a manifest that passed every check -> the resolved Cluster.

The checks (podsys/cluster/checks.py) decide whether the manifest is valid; this module only
assembles what they derived (hosts, MACs, addresses, the stack) into NodeSpecs. It is never
called with problems outstanding."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from podsys.cluster.checks import CHECKS, run_checks
from podsys.cluster.context import Context
from podsys.cluster.matrix import Matrix, load_matrix
from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.parse import parse_manifest_partial
from podsys.cluster.yaml_source import SourceMap
from podsys.errors import InputError, Problem


def validate(data, smap: SourceMap, manifest_path: Path, previous: dict[str, int] | None = None,
             matrix: Matrix | None = None, skip: frozenset[str] = frozenset()) -> tuple[Context | None, list[Problem]]:
    """Schema and every semantic check (but those named in `skip`) in one pass: (context, all problems)."""
    manifest, broken, schema_problems = parse_manifest_partial(data, smap)
    if manifest is None:
        return None, schema_problems
    ctx = Context(manifest=manifest, smap=smap, manifest_path=manifest_path, matrix=matrix or load_matrix(),
                  previous=previous or {}, broken=broken, schema_problems=schema_problems)
    return ctx, run_checks(ctx, tuple(check for check in CHECKS if check.name not in skip))


def resolve_cluster(ctx: Context) -> Cluster:
    """The resolved cluster from a context whose checks found nothing."""
    m = ctx.manifest
    domain = m.metadata.domain
    nodes: list[NodeSpec] = []
    for gi, group in enumerate(m.node_groups):
        layers = tuple(group.layers if group.layers is not None else m.layers)
        for name in ctx.hosts.by_group[gi]:
            entry = group.nodes.get(name)
            nodes.append(NodeSpec(
                name=name,
                group=group.name,
                hardware=group.hardware,
                provision_ip=str(IPv4Address(ctx.allocation.addresses[name])),
                mac=ctx.macs.macs.get(name),
                bmc_ip=ctx.secondary.bmc.get(name),
                ipoib_ip=ctx.secondary.ipoib.get(name),
                disk=entry.disk if entry is not None and entry.disk else group.disk,
                pxe=group.pxe,
                layers=layers,
                fqdn=f"{name}.{domain}" if domain else name,
            ))
    assert ctx.stack.stack is not None
    return Cluster(manifest=m, manifest_path=ctx.manifest_path, nodes=tuple(nodes), profiles=ctx.profiles,
                   stack=ctx.stack.stack, stack_reason=ctx.stack.reason)


def validate_and_resolve(data, smap: SourceMap, manifest_path: Path, previous: dict[str, int] | None = None,
                         matrix: Matrix | None = None, skip: frozenset[str] = frozenset()) -> Cluster:
    """The resolved cluster, or InputError listing every problem from every check."""
    ctx, problems = validate(data, smap, manifest_path, previous, matrix, skip)
    if problems or ctx is None:
        raise InputError(problems)
    return resolve_cluster(ctx)
