"""The cluster manifest (schema podsys/v1): the typed model users write by hand.

Field names here are the user contract (issue: "Cluster manifest, compatibility matrix and
rendering"). Every model forbids unknown keys so a misspelt key is an error, not a silent no-op.
Semantic checks that span fields (duplicates, address collisions, the matrix) live in
podsys/cluster/checks.py; this module only knows the shape, and the few facts every other
module takes from it: the supported OS releases and the layers."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from podsys.cluster.hardware import PCI_BUS_ID_RE, WORD_RE, HardwareProfile
from podsys.cluster.macs import node_mac

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DNS_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
# The one list of layers: the manifest's `layers`, the CLI and the matrix take it from here.
CORE_LAYERS = ("base", "gpu", "infiniband", "slurm", "monitoring", "container")
# Add-on layers (issue 15): optional layers above the core ones, each with its own manifest section.
ADDON_LAYERS = ("accounting", "storage", "training", "notebooks", "models")
LAYERS = CORE_LAYERS + ADDON_LAYERS
Layer = Literal[LAYERS]  # type: ignore[valid-type]
# The one list of supported OS releases (installers, matrix rows and the CLI all check
# against it): distro -> versions.
SUPPORTED_OS = {"ubuntu": ("22.04", "24.04"), "rocky": ("9",), "debian": ("12",)}
SUPPORTED_OS_KEYS = tuple(f"{distro}-{version}" for distro, versions in SUPPORTED_OS.items() for version in versions)
# Linux refuses interface names of 16+ bytes (IFNAMSIZ) and ones holding '/', ':' or
# whitespace; '.' and '..' are taken. Source: dev_valid_name() in the kernel's net/core/dev.c
# (https://elixir.bootlin.com/linux/v6.6/source/net/core/dev.c).
INTERFACE_RE = r"^[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]{0,14}$|^\.[A-Za-z0-9_.@+-]{2,14}$"
# An install target: a block device path, e.g. /dev/sda, /dev/nvme0n1, /dev/disk/by-id/...
DISK_RE = r"^/dev/([A-Za-z0-9_:+-]+\.?)+(/([A-Za-z0-9_:+-]+\.?)+)*$"
# Slurm's time limit formats: "minutes", "minutes:seconds", "hours:minutes:seconds",
# "days-hours", "days-hours:minutes", "days-hours:minutes:seconds", or INFINITE/UNLIMITED.
# Source: slurm.conf(5) MaxTime (https://slurm.schedmd.com/slurm.conf.html#OPT_MaxTime), which takes
# the time formats of sbatch --time (https://slurm.schedmd.com/sbatch.html#OPT_time).
SLURM_TIME_RE = r"^(INFINITE|UNLIMITED|\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$"
# A Slurm partition name lands in slurm.conf and on command lines: letters, digits, '_', '-', '.'.
SLURM_NAME_RE = r"^[A-Za-z0-9_.-]{1,64}$"
# Prometheus durations, e.g. 15s, 1h30m, 15d. Source: <duration> in
# https://prometheus.io/docs/prometheus/latest/configuration/configuration/
PROM_DURATION_RE = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
PORT = dict(ge=1, le=65535)
USER_NAME_RE = r"^[a-z_][a-z0-9_-]{0,31}$"
SHELL_RE = r"^/[A-Za-z0-9_./+-]+$"
SELECT_PARAMS_RE = r"^[A-Za-z_]+(,[A-Za-z_]+)*$"
# A file path or login name that lands on a command line or in a config file: no whitespace,
# quotes, backslashes or control characters.
PLAIN_RE = r"^[^\s\"'\\\x00-\x1f\x7f]{1,255}$"
# What a pattern means, for error messages (a regex is no help at 2 a.m.).
PATTERN_HELP = {
    DNS_LABEL: "a DNS label: lowercase letters, digits and '-', at most 63",
    DNS_NAME: "a DNS name: lowercase labels separated by dots",
    INTERFACE_RE: "a Linux interface name: 1-15 of letters, digits, '_', '.', '@', '+', '-', not '.' or '..'",
    DISK_RE: "an absolute block device path, e.g. /dev/nvme0n1 or /dev/disk/by-id/...",
    SLURM_TIME_RE: "a Slurm time limit: INFINITE, minutes, h:m:s or days-h[:m[:s]]",
    SLURM_NAME_RE: "a Slurm name: letters, digits, '_', '.', '-'",
    PROM_DURATION_RE: "a Prometheus duration, e.g. 15s, 1h30m, 15d",
    USER_NAME_RE: "a user name: lowercase letters, digits, '_', '-', starting with a letter or '_'",
    SHELL_RE: "an absolute path, e.g. /bin/bash",
    SELECT_PARAMS_RE: "comma-separated Slurm parameters, e.g. CR_Core_Memory",
    PLAIN_RE: "one word without spaces, quotes, backslashes or control characters",
    WORD_RE: "one word: letters, digits, '_', '.', '+', '-' (at most 32)",
    PCI_BUS_ID_RE: "a PCI bus id as nvidia-smi prints it, e.g. 00000000:07:00.0",
}
# crypt(3) hashes: yescrypt ($y$), SHA-512/256 ($6$/$5$), bcrypt ($2b$ ...). Plain text is refused.
CRYPT_HASH_RE = re.compile(r"^\$(y|gy|7|6|5|2[abxy])\$[./A-Za-z0-9$=,]{8,}$")
# Fields whose value is never shown in an error: it may be a password or hold credentials.
SECRET_FIELDS = frozenset({"root_password_hash", "password_hash", "proxy", "upstream"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _sexagesimal(number: int) -> str:
    """The text YAML 1.1 read as a base-60 integer (52:54:00:20:31:47 -> 683...): undone."""
    parts = []
    while number:
        number, digit = divmod(number, 60)
        parts.append(f"{digit:02d}")
    return ":".join(reversed(parts)) or "0"


def mac_field(value):
    """A manifest MAC: a string (YAML reads unquoted all-digit MACs as numbers: say so)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"a MAC address must be a quoted string, got {type(value).__name__}")
    if isinstance(value, int):
        written = _sexagesimal(value)
        raise ValueError(f"YAML read the unquoted MAC {written} as the number {value} (digits and colons are a "
                         f"base-60 number in YAML 1.1); quote it: \"{written}\"")
    return node_mac(value)


class Metadata(Strict):
    name: str = Field(pattern=DNS_LABEL, description="cluster name (Slurm ClusterName, DNS label)")
    # It lands on kernel command lines, preseed lines and /etc/hosts: a plain DNS name only.
    domain: str = Field(default="cluster.local", pattern=DNS_NAME, max_length=253)


class Head(Strict):
    hostname: str = Field(pattern=DNS_LABEL)
    interface: str = Field(pattern=INTERFACE_RE, description="head NIC on the provision network")
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


class OSSpec(Strict):
    distro: Literal[tuple(SUPPORTED_OS)]  # type: ignore[valid-type]
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
    disk: str | None = Field(default=None, pattern=DISK_RE)

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, v):
        return mac_field(v)


class GroupProvisioning(Strict):
    # image: the deploy ramdisk writes the group's node image (podsys image build);
    # installer: the distribution's unattended installer (autoinstall, kickstart, preseed).
    method: Literal["image", "installer"] = "image"


class NodeGroup(Strict):
    name: str = Field(pattern=DNS_LABEL)
    hosts: str = Field(description="Slurm-style hostlist, e.g. gpu[001-032]")
    hardware: str = Field(description="hardware profile id")
    start_address: IPv4Address | None = None
    disk: str = Field(default="/dev/sda", pattern=DISK_RE)
    macs_file: str | None = None
    nodes: dict[str, NodeEntry] = Field(default_factory=dict)
    pxe: bool = Field(default=True, description="nodes PXE-install (and so need a MAC)")
    layers: list[Layer] | None = Field(default=None, description="override the cluster's layers for this group")
    provisioning: GroupProvisioning = Field(
        default_factory=GroupProvisioning, description="how the group's nodes are installed: method image | installer")


class Partition(Strict):
    name: str = Field(pattern=SLURM_NAME_RE)
    node_groups: list[str]
    default: bool = False
    max_time: str = Field(default="INFINITE", pattern=SLURM_TIME_RE)


class SlurmSpec(Strict):
    partitions: list[Partition] = Field(default_factory=list)
    # Production defaults are cgroup-based; containers without cgroup delegation (the lab)
    # use proctrack/linuxproc + task/none.
    proctrack: Literal["cgroup", "linuxproc", "pgid"] = "cgroup"
    task_plugin: Literal["task/cgroup,task/affinity", "task/affinity", "task/none"] = "task/cgroup,task/affinity"
    select_type_parameters: str = Field(default="CR_Core_Memory", pattern=SELECT_PARAMS_RE)
    source: Literal["stack", "distro"] = Field(
        default="stack", description="stack: the matrix's pinned Slurm; distro: the OS's packages"
    )


class User(Strict):
    name: str = Field(pattern=USER_NAME_RE)
    uid: int = Field(ge=1000, le=60000)
    gid: int | None = Field(default=None, ge=1000, le=60000)
    groups: list[Annotated[str, Field(pattern=USER_NAME_RE)]] = Field(default_factory=list)
    shell: str = Field(default="/bin/bash", pattern=SHELL_RE)
    ssh_authorized_keys: list[str] = Field(default_factory=list)
    password_hash: str | None = Field(
        default=None, description="crypt(3) hash for the user's web logins (notebooks, models), never plain text")

    @field_validator("password_hash", mode="before")
    @classmethod
    def _crypt_hash(cls, value):
        return crypt_hash_field(value)


def crypt_hash_field(value):
    """A crypt(3) hash, or None; the value is never repeated (it may be a password typed by mistake)."""
    if value is None:
        return None
    if not isinstance(value, str) or not CRYPT_HASH_RE.match(value):
        raise ValueError("is not a crypt(3) hash (create one with `mkpasswd -m sha-512` or `openssl passwd -6`; "
                         "quote it in YAML)")
    return value


def _url_field(value, what: str):
    """An http(s) URL for a config file; it may carry credentials, so it is never echoed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a quoted http:// or https:// URL")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() or ord(c) < 32 for c in value) \
            or any(c in value for c in "\"'\\"):
        raise ValueError(f"{what} must be an http:// or https:// URL with a host, without spaces or quotes")
    return value


class Packages(Strict):
    source: Literal["proxy", "bundle", "online"] = "proxy"
    upstream: str | None = Field(default=None, description="distribution mirror URL the head's proxy uses")
    proxy: str | None = Field(default=None, description="site proxy the head goes through")
    epel: str | None = Field(
        default=None,
        description="Rocky: the EPEL mirror node images are built from (its tree: 9/Everything/x86_64/ and "
                    "RPM-GPG-KEY-EPEL-9), reached like upstream; default http://dl.fedoraproject.org/pub/epel",
    )
    bundle_path: str = Field(
        default="/srv/podsys/bundle",
        description="source: bundle: where the bundle directory is on the head (copied there, or the ISO mounted there)",
    )
    bundle_port: int = Field(default=8080, **PORT, description="source: bundle: head port serving the bundle")
    bundle_fingerprint: str | None = Field(
        default=None, pattern=r"^[0-9A-Fa-f]{40}$",
        description="source: bundle: the site key's fingerprint (podsys bundle build prints it); the deploy "
                    "refuses a bundle signed by any other key",
    )

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream_url(cls, value):
        return _url_field(value, "upstream")

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy_url(cls, value):
        return _url_field(value, "proxy")

    @field_validator("epel", mode="before")
    @classmethod
    def _epel_url(cls, value):
        return _url_field(value, "epel")

    @field_validator("bundle_path")
    @classmethod
    def _absolute_bundle_path(cls, value: str) -> str:
        if not value.startswith("/") or "\n" in value:
            raise ValueError(f"bundle_path must be an absolute path on the head, not {value!r}")
        return value.rstrip("/") or "/"


class Monitoring(Strict):
    grafana: bool = False
    retention: str = Field(default="15d", pattern=PROM_DURATION_RE)
    scrape_interval: str = Field(default="15s", pattern=PROM_DURATION_RE)


class AlertReceiver(Strict):
    """Where Alertmanager sends health alerts: a webhook URL, or an email address (with the
    smarthost that relays it)."""

    webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    smarthost: str | None = Field(default=None, pattern=r"^[\w.\-]+:\d{1,5}$", description="host:port for email")


class Health(Strict):
    """podsys health on every node: Slurm's HealthCheckProgram every `interval` seconds; a FAIL
    drains the node with reason podsys:<fault>, a podsys drain is resumed when healthy."""

    enabled: bool = True
    interval: int = Field(default=300, ge=30, le=86400, description="seconds between runs (HealthCheckInterval)")
    prolog_gate: bool = Field(default=False, description="also run the checks as the Slurm prolog; a FAIL keeps the job off the node")
    disk_min_free_percent: float = Field(default=5.0, ge=0, le=100)
    memory_min_available_percent: float = Field(default=5.0, ge=0, le=100)
    alert_receiver: AlertReceiver | None = None


class GPUOptions(Strict):
    replace_driver: bool = False
    flavour: Literal["auto", "open", "proprietary"] = "auto"
    reboot: Literal["auto", "never"] = Field(
        default="auto", description="auto: deploy reboots nodes whose kernel modules changed (OFED, driver, nouveau); never: it only says so"
    )


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
    http_port: int = Field(default=80, **PORT)
    default_boot_state: Literal["install", "local"] = "install"

    @field_validator("root_password_hash", mode="before")
    @classmethod
    def _crypt_hash(cls, value):
        return crypt_hash_field(value)
    status_port: int = Field(default=8081, **PORT, description="head port receiving installer callbacks")
    root_authorized_keys: list[str] = Field(
        default_factory=list,
        description="public keys for root on installed nodes (the access key's .pub is added when present)",
    )


class BMCCredentials(Strict):
    protocol: Literal["ipmi", "redfish"] = "ipmi"
    username: str = Field(pattern=PLAIN_RE)
    password_file: str = Field(pattern=PLAIN_RE, description="file holding the BMC password (0600); never inline")
    cipher_suite: int | None = Field(
        default=None, ge=0, le=17,
        description="IPMI: ipmitool -C (3 for BMCs that refuse suite 17); default: ipmitool's own choice")


class Access(Strict):
    """How podsys reaches nodes over SSH. Run from the head itself, the defaults fit; run from a
    workstation (or the lab's host), `via_head: true` jumps through the head like a bastion."""

    user: str = Field(default="root", pattern=USER_NAME_RE)
    port: int = Field(default=22, **PORT)
    private_key_file: str | None = Field(default=None, pattern=PLAIN_RE, description="relative to the manifest")
    known_hosts_file: str | None = Field(default=None, pattern=PLAIN_RE, description="relative to the manifest")
    via_head: bool = False


# --- Add-on layers' sections. Their semantic checks (references to users, QOS, node groups,
# paths) live in podsys/cluster/addons.py; what each layer installs is listed in
# podsys/cluster/layer_catalogue.py.
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


class Web(Strict):
    """The site certificate the web layers (notebooks, models) serve over nginx; without one the
    head makes a self-signed certificate once and deploy prints its fingerprint."""

    tls_certificate_file: str | None = Field(default=None, pattern=PLAIN_RE,
                                             description="PEM certificate (chain), relative to the manifest")
    tls_key_file: str | None = Field(default=None, pattern=PLAIN_RE,
                                     description="PEM private key, relative to the manifest")
    # Users' browsers reach the head by a site name or an outside address that the manifest
    # otherwise does not know; MLflow refuses any Host header it was not told about.
    names: list[Annotated[str, Field(pattern=DNS_NAME, max_length=253)]] = Field(
        default_factory=list, description="more DNS names or IPv4 addresses users reach the head by (the self-signed "
                                          "certificate's SANs, the Host headers MLflow accepts); the hostname, "
                                          "head.address and head.ssh_address are always in")


class Notebooks(Strict):
    """Layer notebooks: JupyterHub on the head, each user's server a Slurm job. These are the
    spawn form's defaults; the user may pick another partition, CPUs, GPUs and time there."""

    partition: str | None = Field(default=None, pattern=SLURM_NAME_RE,
                                  description="default: the Slurm default partition")
    cpus: int = Field(default=1, ge=1, le=1024)
    gpus: int = Field(default=0, ge=0, le=64)
    time: str = Field(default="8:00:00", pattern=SLURM_TIME_RE, description="the job's time limit")
    wheelhouse: str = Field(default="wheelhouse", pattern=PLAIN_RE,
                            description="directory holding the batchspawner wheel, relative to the manifest; "
                                        "when absent, the offline bundle's (packages.source: bundle)")


class Models(Strict):
    """Layer `models`: the MLflow tracking server and model registry on the head. PyPI is not
    reachable from a cluster, so the wheels come from directories next to the manifest
    (`pip download` on a machine that reaches PyPI: README of roles/models) or, when those are
    absent and packages.source is bundle, from the offline bundle's wheels/addons/."""

    wheelhouse: str = Field(default="wheels/mlflow", description="directory of wheels for the server (mlflow, "
                                                                  "PyMySQL and their dependencies), relative to the manifest")
    client_wheelhouse: str = Field(default="wheels/mlflow-client",
                                   description="directory of wheels for the nodes' client (mlflow-skinny and dependencies)")
    artifact_dir: str = Field(default="/shared/mlflow", pattern=ABSOLUTE_PATH_RE,
                              description="where the server keeps run artifacts and model files")


class Manifest(Strict):
    apiVersion: Literal["podsys/v1"]
    kind: Literal["Cluster"]
    metadata: Metadata
    head: Head
    networks: Networks
    os: OSSpec
    stack: str = "auto"
    layers: list[Layer] = Field(
        default_factory=lambda: ["base", "slurm", "monitoring"]
    )
    node_groups: list[NodeGroup] = Field(min_length=1)
    hardware_profiles: dict[Annotated[str, Field(pattern=DNS_LABEL)], HardwareProfile] = Field(default_factory=dict)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    users: list[User] = Field(default_factory=list)
    packages: Packages = Field(default_factory=Packages)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    health: Health = Field(default_factory=Health)
    gpu: GPUOptions = Field(default_factory=GPUOptions)
    infiniband: InfiniBandOptions = Field(default_factory=InfiniBandOptions)
    provisioning: Provisioning = Field(default_factory=Provisioning)
    bmc: BMCCredentials | None = None
    access: Access = Field(default_factory=Access)
    accounts: Accounts = Field(default_factory=Accounts)
    storage: Storage = Field(default_factory=Storage)
    training: Training = Field(default_factory=Training)
    web: Web = Field(default_factory=Web)
    notebooks: Notebooks = Field(default_factory=Notebooks)
    models: Models = Field(default_factory=Models)
