"""The lab cluster's plan: names, addresses and MACs derived from the lab directory, and the
files that follow from them (lab.yaml, known_hosts, ssh_config, systemd-networkd units).

Everything here is pure: the same directory and node count always give the same plan, so
`podsys lab down` can find what `podsys lab up` created even without its state file, and two
labs in different directories get different kernel object names and subnets."""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import yaml

# Provision subnets live inside the lab's private namespaces; uplink /30s live in the host's
# root namespace, so only those could ever meet the host's own networks (checked at `up`).
PROVISION_POOL = IPv4Network("10.64.0.0/10")  # 2**14 /24s
UPLINK_POOL = IPv4Network("10.254.0.0/16")  # 2**14 /30s
# The VMs' BMCs: one /24 per lab, its addresses held by the host on the uplink link (so podsys
# on the host and the head through its uplink both reach them); checked against the host's
# networks at `up` like the uplink.
BMC_POOL = IPv4Network("10.128.0.0/10")  # 2**14 /24s
LAB_SLOTS = 2**14
MAX_NODES = 200  # provision addresses .11 .. .210 of the lab's /24
FIRST_NODE_HOST = 11
MAX_VMS = 16  # provision addresses .211 .. .226, after the container nodes' range
FIRST_VM_HOST = 211
VM_GROUP = "vms"
BMC_PORT = 623  # each BMC has its own address, so all keep IPMI's standard port
BMC_USER = "podsys"
PROXY_PORT = 3142  # apt-cacher-ng's usual port; alternatives when the host's own holds it
PROXY_PORT_ALTERNATIVES = range(13142, 13242)

NAME_PREFIX = "pl"  # every kernel object and machine name of every lab starts with this
HEAD_HOSTNAME = "head"
COMPUTE_GROUP = "compute"
PROVISION_IFACE = "eth0"
UPLINK_IFACE = "uplink0"
CLUSTER_NAME = "lab"
LAB_USER = {"name": "researcher", "uid": 2001, "gid": 2001}
MANIFEST_HEADER = "# Written by `podsys lab up`"
# A host directory bound into every node here: the lab's stand-in for a shared file system
# (this kernel may have no NFS client), declared in lab.yaml as a `lab-bind` storage mount.
LAB_SHARED_PATH = "/shared"

# Locally administered, unicast: first octet 0x02. Second octet marks "podsys lab".
MAC_OUI = (0x02, 0x70)
ROLE_PROVISION, ROLE_UPLINK_HEAD, ROLE_UPLINK_HOST, ROLE_VM = 0x01, 0x02, 0x03, 0x04


def lab_slot(directory: Path) -> int:
    """Which of the 2**14 lab slots this directory gets (its subnets and names follow from it)."""
    digest = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()
    return int(digest[:8], 16) % LAB_SLOTS


def lab_prefix(slot: int) -> str:
    return f"{NAME_PREFIX}{slot:04x}"


def lab_mac(slot: int, role: int, index: int) -> str:
    octets = (*MAC_OUI, slot >> 8, slot & 0xFF, role, index)
    return ":".join(f"{o:02x}" for o in octets)


def compute_hostname(index: int, count: int) -> str:
    return f"node{index:0{max(2, len(str(count)))}d}"


def compute_hostlist(count: int) -> str:
    width = max(2, len(str(count)))
    if count == 1:
        return compute_hostname(1, count)
    return f"node[{1:0{width}d}-{count:0{width}d}]"


@dataclass(frozen=True)
class LabNode:
    hostname: str
    role: str  # "head" or "compute"
    netns: str
    machine: str  # systemd-nspawn machine name (unique on the host)
    bridge_port: str  # the veth end on the lab bridge, inside the bridge namespace
    mac: str
    address: str  # provision address
    uplink_mac: str | None = None  # head only
    uplink_address: str | None = None  # head only


def vm_hostname(index: int, count: int) -> str:
    return f"vm{index:0{max(2, len(str(count)))}d}"


def vm_hostlist(count: int) -> str:
    width = max(2, len(str(count)))
    return vm_hostname(1, count) if count == 1 else f"vm[{1:0{width}d}-{count:0{width}d}]"


@dataclass(frozen=True)
class LabVM:
    """A QEMU machine on the provision bridge that installs over PXE, with its own IPMI BMC."""

    hostname: str
    machine: str  # QEMU's -name, unique on the host (how `lab down` finds strays)
    tap: str  # tap device on the lab bridge, inside the bridge namespace
    mac: str
    address: str  # provision address (the DHCP reservation a deploy gives it)
    firmware: str  # "bios" (SeaBIOS) or "uefi" (OVMF): VMs alternate, the first is BIOS
    bmc_address: str
    bmc_port: int
    bmc_mc: int  # the IPMB address of its management controller inside the one ipmi_sim


@dataclass(frozen=True)
class LabPlan:
    directory: str
    slot: int
    prefix: str
    bridge_netns: str
    bridge: str
    provision_cidr: str
    uplink_cidr: str
    host_uplink_link: str  # host side of the head's uplink veth, in the root namespace
    host_uplink_mac: str
    host_uplink_address: str
    nodes: tuple[LabNode, ...] = field(default_factory=tuple)
    proxy_port: int = PROXY_PORT  # another port when something on the host holds *:3142
    vms: tuple[LabVM, ...] = field(default_factory=tuple)
    bmc_cidr: str = ""

    @property
    def head(self) -> LabNode:
        return next(n for n in self.nodes if n.role == "head")

    @property
    def compute(self) -> list[LabNode]:
        return [n for n in self.nodes if n.role == "compute"]

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host_uplink_address}:{self.proxy_port}"

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.hostname == name:
                return n
        raise KeyError(name)

    def vm(self, name: str) -> LabVM:
        for v in self.vms:
            if v.hostname == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LabPlan":
        nodes = tuple(LabNode(**n) for n in data["nodes"])
        vms = tuple(LabVM(**v) for v in data.get("vms", ()))
        return cls(**{**data, "nodes": nodes, "vms": vms})


def plan_lab(directory: Path, compute_nodes: int, slot: int | None = None, vms: int = 0) -> LabPlan:
    """The whole lab, derived from its directory (and optionally a slot chosen by the caller when
    the derived one is taken on this host)."""
    if not 1 <= compute_nodes <= MAX_NODES:
        raise ValueError(f"--nodes must be between 1 and {MAX_NODES} (got {compute_nodes})")
    if not 0 <= vms <= MAX_VMS:
        raise ValueError(f"--vms must be between 0 and {MAX_VMS} (got {vms})")
    slot = lab_slot(directory) if slot is None else slot
    prefix = lab_prefix(slot)
    provision = IPv4Network((int(PROVISION_POOL.network_address) + slot * 256, 24))
    uplink = IPv4Network((int(UPLINK_POOL.network_address) + slot * 4, 30))
    net = provision.network_address
    head = LabNode(
        hostname=HEAD_HOSTNAME,
        role="head",
        netns=f"{prefix}-{HEAD_HOSTNAME}",
        machine=f"{prefix}-{HEAD_HOSTNAME}",
        bridge_port="v-head",
        mac=lab_mac(slot, ROLE_PROVISION, 0),
        address=str(net + 1),
        uplink_mac=lab_mac(slot, ROLE_UPLINK_HEAD, 0),
        uplink_address=str(uplink.network_address + 2),
    )
    nodes = [head]
    for i in range(1, compute_nodes + 1):
        name = compute_hostname(i, compute_nodes)
        nodes.append(
            LabNode(
                hostname=name,
                role="compute",
                netns=f"{prefix}-{name}",
                machine=f"{prefix}-{name}",
                bridge_port=f"v-{name}"[:15],
                mac=lab_mac(slot, ROLE_PROVISION, i),
                address=str(net + FIRST_NODE_HOST + i - 1),
            )
        )
    bmc_net = IPv4Network((int(BMC_POOL.network_address) + slot * 256, 24))
    machines = []
    for i in range(1, vms + 1):
        name = vm_hostname(i, vms)
        host = FIRST_VM_HOST + i - 1
        machines.append(LabVM(
            hostname=name,
            machine=f"{prefix}-{name}",
            tap=f"t-{name}"[:15],
            mac=lab_mac(slot, ROLE_VM, i),
            address=str(net + host),
            firmware="bios" if i % 2 else "uefi",
            # Same host offset as its provision address: what networks.bmc derives anyway.
            bmc_address=str(bmc_net.network_address + host),
            bmc_port=BMC_PORT,
            bmc_mc=0x20 + 2 * (i - 1),
        ))
    return LabPlan(
        directory=str(Path(directory).resolve()),
        slot=slot,
        prefix=prefix,
        bridge_netns=f"{prefix}-net",
        bridge="br0",
        provision_cidr=str(provision),
        uplink_cidr=str(uplink),
        host_uplink_link=f"{prefix}-up",
        host_uplink_mac=lab_mac(slot, ROLE_UPLINK_HOST, 0),
        host_uplink_address=str(uplink.network_address + 1),
        nodes=tuple(nodes),
        vms=tuple(machines),
        bmc_cidr=str(bmc_net) if machines else "",
    )


# --- the host's Debian mirror ---------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    enabled: bool = True


def parse_one_line_sources(text: str) -> list[AptSource]:
    """sources.list format: `deb [options] URI suite [component...]`."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=.. signed-by=..]
        words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        out.append(AptSource((words[0],), (words[1],), (words[2],), tuple(words[3:])))
    return out


def parse_deb822_sources(text: str) -> list[AptSource]:
    """*.sources (deb822) format: stanzas of `Field: value` separated by blank lines."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:  # continuation line
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "uris" not in fields or "types" not in fields:
            continue
        out.append(
            AptSource(
                types=tuple(fields["types"].split()),
                uris=tuple(fields["uris"].split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
                enabled=fields.get("enabled", "yes").lower() not in ("no", "false", "0"),
            )
        )
    return out


def pick_debian_mirror(sources: list[AptSource]) -> str | None:
    """The first enabled binary Debian archive entry carrying `main` that is not the security
    archive: the mirror the lab builds from and its proxy fetches from."""
    for src in sources:
        if not src.enabled or "deb" not in src.types or "main" not in src.components:
            continue
        if any("security" in s for s in src.suites):
            continue
        for uri in src.uris:
            if "security" in uri or not uri.startswith(("http://", "https://")):
                continue
            return uri.rstrip("/")
    return None


def host_debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str | None:
    """Read the host's configured Debian mirror from sources.list and sources.list.d/."""
    sources: list[AptSource] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        sources += parse_one_line_sources(main_list.read_text(errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".list":
                sources += parse_one_line_sources(f.read_text(errors="replace"))
            elif f.suffix == ".sources":
                sources += parse_deb822_sources(f.read_text(errors="replace"))
    return pick_debian_mirror(sources)


# --- files derived from the plan --------------------------------------------------------------


def networkd_units(plan: LabPlan, node: LabNode) -> dict[str, str]:
    """systemd-networkd units for the node (relative path under /etc/systemd/network).
    No gateway anywhere: compute nodes reach only the provision subnet, the head also its
    point-to-point uplink."""
    prefix = IPv4Network(plan.provision_cidr).prefixlen
    units = {
        "10-provision.network": (
            f"[Match]\nMACAddress={node.mac}\n\n"
            f"[Network]\nAddress={node.address}/{prefix}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
    }
    if node.uplink_address:
        up_prefix = IPv4Network(plan.uplink_cidr).prefixlen
        units["20-uplink.network"] = (
            f"[Match]\nMACAddress={node.uplink_mac}\n\n"
            f"[Network]\nAddress={node.uplink_address}/{up_prefix}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        if plan.bmc_cidr:
            # The VMs' BMCs are addresses of the host's end of the uplink: on-link from here.
            units["20-uplink.network"] += f"\n[Route]\nDestination={plan.bmc_cidr}\nScope=link\n"
    return units


def known_hosts(plan: LabPlan, host_keys: dict[str, str]) -> str:
    """known_hosts lines naming each node by hostname, provision address and (head) uplink
    address; host_keys maps hostname -> `ssh-ed25519 AAAA...` public key."""
    lines = []
    for node in plan.nodes:
        names = [node.hostname, node.address] + ([node.uplink_address] if node.uplink_address else [])
        key = " ".join(host_keys[node.hostname].split()[:2])  # drop the comment
        lines.append(f"{','.join(names)} {key}")
    return "\n".join(lines) + "\n"


def ssh_config(plan: LabPlan, private_key: Path, known_hosts_file: Path, config_file: Path) -> str:
    """An ssh_config reaching every node by hostname: the head at its uplink address, compute
    nodes through the head. ProxyCommand (not ProxyJump) so the hop uses the same key and
    known_hosts as the final connection."""
    head = plan.head
    blocks = [f"Host {head.hostname} {head.uplink_address}\n  HostName {head.uplink_address}\n"]
    # VMs answer only once a deploy installed them; their host keys are the ones the deploy
    # ramdisk reported, which deploy writes into the same known_hosts.
    for name, address in [(n.hostname, n.address) for n in plan.compute] + [(v.hostname, v.address) for v in plan.vms]:
        blocks.append(
            f"Host {name} {address}\n  HostName {address}\n"
            f"  ProxyCommand ssh -F {shlex.quote(str(config_file))} -W %h:%p {head.hostname}\n"
        )
    blocks.append(
        "Host *\n"
        "  User root\n"
        f'  IdentityFile "{private_key}"\n'
        "  IdentitiesOnly yes\n"
        f'  UserKnownHostsFile "{known_hosts_file}"\n'
        "  StrictHostKeyChecking yes\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"
    )
    return "\n".join(blocks)


def lab_manifest(plan: LabPlan, mirror: str, private_key_rel: str, known_hosts_rel: str,
                 bmc_password_rel: str | None = None) -> dict:
    """lab.yaml as data: a podsys/v1 manifest describing exactly the lab that was built."""
    head = plan.head
    compute = plan.compute
    manifest = {
        "apiVersion": "podsys/v1",
        "kind": "Cluster",
        "metadata": {"name": CLUSTER_NAME, "domain": "lab.local"},
        "head": {
            "hostname": head.hostname,
            "interface": PROVISION_IFACE,
            "address": head.address,
            "ssh_address": head.uplink_address,
        },
        "networks": {"provision": {"cidr": plan.provision_cidr}},
        "os": {"distro": "debian", "version": "12"},
        "layers": ["base", "slurm", "monitoring"],
        "node_groups": [
            {
                "name": COMPUTE_GROUP,
                "hosts": compute_hostlist(len(compute)),
                "hardware": "cpu-only",
                "start_address": compute[0].address,
                # Container nodes boot from their cloned root, never over PXE.
                "pxe": False,
                "nodes": {n.hostname: {"mac": n.mac, "address": n.address} for n in compute},
            }
        ],
        # Containers get no cgroup delegation: track processes without cgroups.
        "slurm": {
            "proctrack": "linuxproc",
            "task_plugin": "task/none",
            "source": "distro",
            "partitions": [{"name": COMPUTE_GROUP, "node_groups": [COMPUTE_GROUP], "default": True}],
        },
        "users": [dict(LAB_USER)],
        "storage": {"mounts": [{"kind": "lab-bind", "path": LAB_SHARED_PATH}]},
        "packages": {"source": "proxy", "upstream": mirror, "proxy": plan.proxy_url},
        "access": {
            "user": "root",
            "via_head": True,
            "private_key_file": private_key_rel,
            "known_hosts_file": known_hosts_rel,
        },
    }
    if plan.vms:
        if bmc_password_rel is None:
            raise ValueError("a lab with VMs needs its BMC password file")
        _add_vms(manifest, plan, bmc_password_rel)
    return manifest


def _add_vms(manifest: dict, plan: LabPlan, bmc_password_rel: str) -> None:
    """The VMs' node group (PXE-installed from an image, like bare metal), their BMC network and
    the BMC credentials (a file; the password itself is never in lab.yaml)."""
    manifest["networks"]["bmc"] = {"cidr": plan.bmc_cidr}
    manifest["node_groups"].append({
        "name": VM_GROUP,
        "hosts": vm_hostlist(len(plan.vms)),
        "hardware": "cpu-only",
        "start_address": plan.vms[0].address,
        # QEMU's disk is a virtio-scsi disk: /dev/sda, the schema's default install disk.
        "disk": "/dev/sda",
        "provisioning": {"method": "image"},
        "nodes": {v.hostname: {"mac": v.mac, "address": v.address, "bmc_address": v.bmc_address}
                  for v in plan.vms},
    })
    manifest["slurm"]["partitions"][0]["node_groups"].append(VM_GROUP)
    # ipmi_sim 2.0.33 refuses cipher suite 17 (ipmitool's default) and makes every other
    # suite but 3 wait about 10 s per call (measured; tests/integration/test_lab_vms.py).
    manifest["bmc"] = {"protocol": "ipmi", "username": BMC_USER, "password_file": bmc_password_rel,
                       "cipher_suite": 3}


def lab_manifest_text(plan: LabPlan, mirror: str, private_key_rel: str, known_hosts_rel: str,
                      bmc_password_rel: str | None = None) -> str:
    data = lab_manifest(plan, mirror, private_key_rel, known_hosts_rel, bmc_password_rel)
    header = (
        f"{MANIFEST_HEADER} for the lab in {plan.directory}.\n"
        "# It describes the running lab (real MACs and addresses); `podsys lab up` rewrites it.\n"
        "# Next: podsys deploy lab.yaml\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
