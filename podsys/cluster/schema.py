"""The cluster manifest (schema podsys/v1): the typed model users write by hand.

Field names here are the user contract (issue: "Cluster manifest, compatibility matrix and
rendering"). Every model forbids unknown keys so a misspelt key is an error, not a silent no-op.
Semantic checks that span fields (duplicates, address collisions, the matrix) live in
podsys/cluster/parse.py; this module only knows the shape."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from podsys.cluster.hardware import HardwareProfile

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DNS_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LAYERS = ("base", "gpu", "infiniband", "slurm", "monitoring", "container")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def normalise_mac(value: str) -> str:
    """aa-bb-cc-dd-ee-ff / AABB.CCDD.EEFF / aa:bb:.. -> aa:bb:cc:dd:ee:ff; ValueError otherwise."""
    raw = re.sub(r"[^0-9a-fA-F]", "", str(value))
    if len(raw) != 12 or not re.fullmatch(r"[0-9a-fA-F:\-.]+", str(value)):
        raise ValueError(f"malformed MAC address {value!r} (expected six hex pairs, e.g. 52:54:00:12:34:56)")
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2)).lower()


class Metadata(Strict):
    name: str = Field(pattern=DNS_LABEL, description="cluster name (Slurm ClusterName, DNS label)")
    # It lands on kernel command lines, preseed lines and /etc/hosts: a plain DNS name only.
    domain: str = Field(default="cluster.local", pattern=DNS_NAME, max_length=253)


class Head(Strict):
    hostname: str = Field(pattern=DNS_LABEL)
    interface: str = Field(description="head NIC on the provision network")
    address: IPv4Address
    ssh_address: IPv4Address | None = Field(
        default=None, description="address podsys uses to reach the head over SSH (default: address)"
    )


class Network(Strict):
    cidr: IPv4Network
    gateway: IPv4Address | None = None
    dns: list[IPv4Address] = Field(default_factory=list)
    mtu: int | None = Field(default=None, ge=576, le=65520)

    @field_validator("cidr", mode="before")
    @classmethod
    def _strict_cidr(cls, v):
        # A host address with a prefix (10.0.0.5/16) is almost always a typo for the network.
        try:
            return IPv4Network(str(v), strict=True)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a network address with prefix ({exc})") from None


class Networks(Strict):
    provision: Network
    bmc: Network | None = None
    ipoib: Network | None = None


SUPPORTED_OS = {"ubuntu": ("22.04", "24.04"), "rocky": ("9",), "debian": ("12",)}


class OSSpec(Strict):
    distro: Literal["ubuntu", "rocky", "debian"]
    version: str

    @property
    def key(self) -> str:
        return f"{self.distro}-{self.version}"

    @field_validator("version", mode="before")
    @classmethod
    def _as_str(cls, v):
        return str(v)

    @model_validator(mode="after")
    def _supported(self):
        versions = SUPPORTED_OS[self.distro]
        if self.version not in versions:
            raise ValueError(f"{self.distro} {self.version} is not supported (supported: {', '.join(versions)}; quote versions like \"22.04\")")
        return self


class NodeEntry(Strict):
    mac: str | None = None
    address: IPv4Address | None = Field(default=None, description="pin this node's provision IP")
    bmc_address: IPv4Address | None = None
    disk: str | None = None

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, v):
        return None if v is None else normalise_mac(v)


class NodeGroup(Strict):
    name: str = Field(pattern=DNS_LABEL)
    hosts: str = Field(description="Slurm-style hostlist, e.g. gpu[001-032]")
    hardware: str = Field(description="hardware profile id")
    start_address: IPv4Address | None = None
    disk: str = "/dev/sda"
    macs_file: str | None = None
    nodes: dict[str, NodeEntry] = Field(default_factory=dict)
    pxe: bool = Field(default=True, description="nodes PXE-install (and so need a MAC)")
    layers: list[str] | None = Field(default=None, description="override the cluster's layers for this group")


class Partition(Strict):
    name: str
    node_groups: list[str]
    default: bool = False
    max_time: str = "INFINITE"


class SlurmSpec(Strict):
    partitions: list[Partition] = Field(default_factory=list)
    # Production defaults are cgroup-based; containers without cgroup delegation (the lab)
    # use proctrack/linuxproc + task/none.
    proctrack: Literal["cgroup", "linuxproc", "pgid"] = "cgroup"
    task_plugin: Literal["task/cgroup,task/affinity", "task/affinity", "task/none"] = "task/cgroup,task/affinity"
    select_type_parameters: str = "CR_Core_Memory"
    source: Literal["stack", "distro"] = Field(
        default="stack", description="stack: the matrix's pinned Slurm; distro: the OS's packages"
    )


class User(Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    uid: int = Field(ge=1000, le=60000)
    gid: int | None = None
    groups: list[str] = Field(default_factory=list)
    shell: str = "/bin/bash"
    ssh_authorized_keys: list[str] = Field(default_factory=list)


class Packages(Strict):
    source: Literal["proxy", "bundle", "online"] = "proxy"
    upstream: str | None = Field(default=None, description="distribution mirror URL the head's proxy uses")
    proxy: str | None = Field(default=None, description="site proxy the head goes through")
    bundle_path: str = Field(
        default="/srv/podsys/bundle",
        description="source: bundle: where the bundle directory is on the head (copied there, or the ISO mounted there)",
    )
    bundle_port: int = Field(default=8080, ge=1, le=65535, description="source: bundle: head port serving the bundle")
    bundle_fingerprint: str | None = Field(
        default=None, pattern=r"^[0-9A-Fa-f]{40}$",
        description="source: bundle: the site key's fingerprint (podsys bundle build prints it); the deploy "
                    "refuses a bundle signed by any other key",
    )

    @field_validator("bundle_path")
    @classmethod
    def _absolute_bundle_path(cls, value: str) -> str:
        if not value.startswith("/") or "\n" in value:
            raise ValueError(f"bundle_path must be an absolute path on the head, not {value!r}")
        return value.rstrip("/") or "/"


class Monitoring(Strict):
    grafana: bool = False
    retention: str = "15d"
    scrape_interval: str = "15s"


class GPUOptions(Strict):
    replace_driver: bool = False
    flavour: Literal["auto", "open", "proprietary"] = "auto"


class InfiniBandOptions(Strict):
    stack: Literal["matrix", "inbox"] = "matrix"
    opensm: bool = False


class Discovery(Strict):
    enabled: bool = False
    range_start: IPv4Address | None = None
    range_end: IPv4Address | None = None


class Provisioning(Strict):
    dns: bool = False
    discovery: Discovery = Field(default_factory=Discovery)
    root_password_hash: str | None = Field(default=None, description="crypt(3) hash, never plain text")
    http_port: int = 80
    default_boot_state: Literal["install", "local"] = "install"
    status_port: int = Field(default=8081, ge=1, le=65535, description="head port receiving installer callbacks")
    root_authorized_keys: list[str] = Field(
        default_factory=list,
        description="public keys for root on installed nodes (the access key's .pub is added when present)",
    )


class BMCCredentials(Strict):
    protocol: Literal["ipmi", "redfish"] = "ipmi"
    username: str
    password_file: str = Field(description="file holding the BMC password (0600); never inline")


class Access(Strict):
    """How podsys reaches nodes over SSH. Run from the head itself, the defaults fit; run from a
    workstation (or the lab's host), `via_head: true` jumps through the head like a bastion."""

    user: str = "root"
    port: int = 22
    private_key_file: str | None = Field(default=None, description="relative to the manifest")
    known_hosts_file: str | None = Field(default=None, description="relative to the manifest")
    via_head: bool = False


# --- Add-on layers (issue 15): optional layers above the core ones, each with its own section.
# Their semantic checks (references to users, QOS, node groups, paths) live in
# podsys/cluster/addons.py; what each layer installs is listed in podsys/cluster/layer_catalogue.py.
ADDON_LAYERS = ("accounting", "storage", "training")
LayerName = Literal["base", "gpu", "infiniband", "slurm", "monitoring", "container",
                    "accounting", "storage", "training"]
# sacctmgr lower-cases account and QOS names; keep them lowercase so the manifest matches the database.
SLURM_ENTITY_RE = r"^[a-z0-9_][a-z0-9_.-]{0,63}$"
SLURM_DURATION_RE = r"^(UNLIMITED|\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$"
ABSOLUTE_PATH_RE = r"^/[A-Za-z0-9_.+/-]*$"


class SlurmLimits(Strict):
    """Group limits as sacctmgr sets them (GrpTRES cpu/mem/node/gres/gpu, GrpJobs, GrpSubmitJobs,
    MaxWall). Source: sacctmgr(1), "GENERAL SPECIFICATIONS FOR ASSOCIATION BASED ENTITIES"."""

    cpus: int | None = Field(default=None, ge=1, description="GrpTRES=cpu=N")
    gpus: int | None = Field(default=None, ge=0, description="GrpTRES=gres/gpu=N")
    memory_mb: int | None = Field(default=None, ge=1, description="GrpTRES=mem=N (MiB)")
    nodes: int | None = Field(default=None, ge=1, description="GrpTRES=node=N")
    running_jobs: int | None = Field(default=None, ge=1, description="GrpJobs")
    submitted_jobs: int | None = Field(default=None, ge=1, description="GrpSubmitJobs")
    max_wall: str | None = Field(default=None, pattern=SLURM_DURATION_RE, description="MaxWall per job")


class QOS(Strict):
    name: str = Field(pattern=SLURM_ENTITY_RE)
    priority: int = Field(default=0, ge=0)
    preempt: list[str] = Field(default_factory=list, description="QOS names jobs of this QOS may preempt")
    preempt_mode: Literal["cluster", "cancel", "requeue"] = "cluster"
    limits: SlurmLimits = Field(default_factory=SlurmLimits)


class Team(Strict):
    """One Slurm account: a team, its members and its share of the cluster."""

    name: str = Field(pattern=SLURM_ENTITY_RE)
    description: str = Field(default="", max_length=200, pattern=r"^[^'\"\\\n]*$")
    fairshare: int = Field(default=1, ge=1)
    users: list[str] = Field(default_factory=list, description="manifest user names")
    limits: SlurmLimits = Field(default_factory=SlurmLimits)
    qos: list[str] = Field(default_factory=list, description="QOS the team may use (default: normal)")
    default_qos: str | None = None


class Accounts(Strict):
    teams: list[Team] = Field(default_factory=list)
    qos: list[QOS] = Field(default_factory=list)


class StorageExport(Strict):
    """A directory the head exports over NFS (nfs-ganesha, in user space)."""

    path: str = Field(pattern=ABSOLUTE_PATH_RE)
    clients: IPv4Network | None = Field(default=None, description="default: the provision network")
    access: Literal["rw", "ro"] = "rw"
    squash: Literal["root_squash", "no_root_squash", "all_squash"] = "root_squash"


class StorageMount(Strict):
    """A shared file system every node (or the named groups) mounts. `lab-bind` is the lab's own
    kind: the lab binds a host directory into every container; podsys mounts nothing."""

    kind: Literal["nfs", "lustre", "beegfs", "gpfs", "lab-bind"]
    source: str | None = Field(default=None, description="nfs: server:/export; lustre: mgsnid:/fsname; "
                                                          "beegfs: management host; gpfs: device")
    path: str = Field(pattern=ABSOLUTE_PATH_RE)
    options: list[str] = Field(default_factory=list)
    node_groups: list[str] | None = Field(default=None, description="default: every node and the head")


class Storage(Strict):
    exports: list[StorageExport] = Field(default_factory=list)
    mounts: list[StorageMount] = Field(default_factory=list)
    home: str | None = Field(default=None, pattern=ABSOLUTE_PATH_RE, description="parent of per-user homes")
    scratch: str | None = Field(default=None, pattern=ABSOLUTE_PATH_RE, description="parent of per-user scratch")


class Training(Strict):
    image_dir: str = Field(default="/shared/images", pattern=ABSOLUTE_PATH_RE)
    checkpoint_dir: str = Field(default="/shared/checkpoints", pattern=ABSOLUTE_PATH_RE)
    socket_interface: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@+-]{1,15}$",
                                         description="NCCL/Gloo socket interface (default: the provision NIC)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for every job")
    pytorch: Literal["container", "distro"] = Field(
        default="container", description="container: PyTorch comes in the job's image (GPU nodes, NCCL); "
                                         "distro: the OS's python3-torch on every node (CPU, gloo; the lab)")
    node_timeout: int = Field(default=300, ge=10, le=3600,
                              description="seconds before a silent node is declared DOWN and its jobs requeued "
                                          "(slurm.conf SlurmdTimeout)")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                raise ValueError(f"environment variable name {name!r} must be upper case letters, digits and '_'")
            if "\n" in item:
                raise ValueError(f"environment variable {name} holds a newline")
        return value


class Manifest(Strict):
    apiVersion: Literal["podsys/v1"]
    kind: Literal["Cluster"]
    metadata: Metadata
    head: Head
    networks: Networks
    os: OSSpec
    stack: str = "auto"
    layers: list[LayerName] = Field(
        default_factory=lambda: ["base", "slurm", "monitoring"]
    )
    node_groups: list[NodeGroup] = Field(min_length=1)
    hardware_profiles: dict[str, HardwareProfile] = Field(default_factory=dict)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    users: list[User] = Field(default_factory=list)
    packages: Packages = Field(default_factory=Packages)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    gpu: GPUOptions = Field(default_factory=GPUOptions)
    infiniband: InfiniBandOptions = Field(default_factory=InfiniBandOptions)
    provisioning: Provisioning = Field(default_factory=Provisioning)
    bmc: BMCCredentials | None = None
    access: Access = Field(default_factory=Access)
    accounts: Accounts = Field(default_factory=Accounts)
    storage: Storage = Field(default_factory=Storage)
    training: Training = Field(default_factory=Training)
