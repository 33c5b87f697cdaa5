"""The resolved cluster: what validation + resolution hand to rendering, running and checks.

Everything here is derived and final: rendering, the runner and the checks read it and never
re-derive addresses, profiles or versions themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from podsys.cluster.access import SSHAccess
from podsys.cluster.hardware import HardwareProfile
from podsys.cluster.schema import Manifest
from podsys.layout import Workspace

if TYPE_CHECKING:
    from podsys.cluster.matrix import Stack


@dataclass(frozen=True)
class NodeSpec:
    name: str
    group: str
    hardware: str  # hardware profile id
    provision_ip: str
    mac: str | None
    bmc_ip: str | None
    ipoib_ip: str | None
    disk: str
    pxe: bool
    layers: tuple[str, ...]
    fqdn: str


@dataclass(frozen=True)
class Cluster:
    manifest: Manifest
    manifest_path: Path
    nodes: tuple[NodeSpec, ...]
    profiles: Mapping[str, HardwareProfile]  # every profile the manifest can name
    stack: "Stack"
    stack_reason: str = ""  # why this stack (e.g. "auto: newest stack valid for H100 on ubuntu-22.04")
    _by_name: dict[str, NodeSpec] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({n.name: n for n in self.nodes})

    @property
    def name(self) -> str:
        return self.manifest.metadata.name

    @property
    def base_dir(self) -> Path:
        return self.manifest_path.parent

    @property
    def access(self) -> SSHAccess:
        """How podsys reaches the head and nodes over SSH (key paths absolute, `~` expanded)."""
        return SSHAccess.from_manifest(self.manifest, self.base_dir)

    @property
    def workspace(self) -> Workspace:
        """The `.podsys/` folder beside the manifest: build, check runs, the deploy lock."""
        return Workspace(self.base_dir)

    @property
    def default_build_dir(self) -> Path:
        return self.workspace.build_dir

    def node(self, name: str) -> NodeSpec:
        return self._by_name[name]

    def profile_of(self, node: NodeSpec) -> HardwareProfile:
        return self.profiles[node.hardware]

    def group_nodes(self, group: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.group == group]

    def nodes_with_layer(self, layer: str) -> list[NodeSpec]:
        return [n for n in self.nodes if layer in n.layers]
