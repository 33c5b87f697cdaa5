"""Node images: one root filesystem per distinct (OS, stack, hardware profile, layers), built
once on the head and written byte for byte onto every node that shares it.

The image key is a hash of everything that decides the image's content (OS, suite, the package
list with its pinned versions, the build recipe's version) and nothing else: adding a node, or
renaming one, does not rebuild anything; changing any pinned version does.

Per-node and per-cluster secrets are never in an image (SECRET_PATHS): the deploy ramdisk
writes fresh SSH host keys and a machine-id onto each node, and the slurm role hands the
cluster's munge key to nodes after they boot.

Pure here: the spec, the key, which nodes share which image, the build commands. Running them
is podsys/provision/image_build.py."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property

from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.stack_packages import PlanOptions, os_family, package_plan

# Bump when the build steps change (hooks, packing), so images built the old way are rebuilt.
RECIPE_VERSION = 3

# Releases mmdebstrap builds from a Debian/Ubuntu archive (suite names: debian.org/releases,
# wiki.ubuntu.com/Releases).
SUITES = {"debian-12": "bookworm", "ubuntu-22.04": "jammy", "ubuntu-24.04": "noble"}

# Everything an image needs to boot from its own disk and be reached by podsys, whatever its
# layers: the distribution kernel, an init, SSH, networkd (the ramdisk writes its unit), both
# GRUB platforms (the ramdisk installs the one the node's firmware needs from inside the image),
# and python3 for Ansible. Debian 12 package names (packages.debian.org/bookworm); Ubuntu uses
# the same names except the kernel's meta package.
APT_BASE = (
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "openssh-server", "python3", "iproute2",
    "iputils-ping", "ca-certificates", "sudo", "gnupg", "procps", "less", "e2fsprogs",
    "dosfstools", "initramfs-tools", "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common",
    "chrony",  # the base role's base_packages
    # Ansible's apt module needs it on the node (docs.ansible.com, ansible.builtin.apt:
    # Requirements); without it the first apt task installs it itself, an apt-get update and
    # an install per node, minutes on a slow node.
    "python3-apt",
)
KERNEL = {"debian": "linux-image-amd64", "ubuntu": "linux-image-generic", "rocky": "kernel"}
# Rocky 9 (dnf --installroot): BaseOS/AppStream names, slurm and node_exporter from EPEL 9
# (packages.fedoraproject.org: slurm-slurmd, golang-github-prometheus-node-exporter).
DNF_BASE = (
    "systemd", "openssh-server", "python3", "iproute", "iputils", "ca-certificates", "sudo",
    "procps-ng", "less", "e2fsprogs", "dosfstools", "dracut", "grub2-pc", "grub2-efi-x64",
    "shim-x64", "chrony", "systemd-networkd",
)
# What the slurm and monitoring layers install on a compute node (the roles' defaults:
# slurm_node_packages + slurm_munge_packages, monitoring's node exporter).
LAYER_PACKAGES = {
    # slurm-client: the health role's scontrol on Slurm nodes (health_slurm_client_packages;
    # packages.debian.org/bookworm/slurm-client).
    "apt": {"slurm": ("slurmd", "munge", "slurm-client"), "monitoring": ("prometheus-node-exporter",)},
    "dnf": {"slurm": ("slurm-slurmd", "munge"), "monitoring": ("golang-github-prometheus-node-exporter",)},
}
# Relative to the image root: removed (or emptied) after the build, written per node at install.
SECRET_PATHS = (
    "etc/ssh/ssh_host_*",
    "etc/munge/munge.key",
    "etc/machine-id",  # emptied, not removed: systemd then generates one at first boot
    "var/lib/dbus/machine-id",
)


@dataclass(frozen=True)
class ImageSpec:
    """Everything that decides an image's bytes. Two node groups with equal specs share one."""

    distro: str
    version: str
    suite: str | None  # apt family only
    stack: str
    hardware: str
    layers: tuple[str, ...]
    packages: tuple[str, ...]  # apt/dnf specs, pinned ones with their version, sorted
    vendor_packages: tuple[str, ...] = ()  # the subset that comes from vendor repositories
    # name=version of every matrix-pinned package, also those whose version is not in the spec
    # (the OFED meta package: its repository URL carries the version).
    pins: tuple[str, ...] = ()
    recipe: int = RECIPE_VERSION

    @property
    def os_key(self) -> str:
        return f"{self.distro}-{self.version}"

    @property
    def family(self) -> str:
        return os_family(self.os_key)

    @cached_property
    def key(self) -> str:
        # Cached: a render asks once per node (thousands), and the spec never changes.
        return image_key(self)

    @cached_property
    def name(self) -> str:
        """Readable and unique: what `podsys image list` shows and the store's folder name."""
        return f"{self.os_key}-{self.hardware}-{self.key[:12]}"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        data["packages"] = list(self.packages)
        data["vendor_packages"] = list(self.vendor_packages)
        data["pins"] = list(self.pins)
        return data


def image_key(spec: ImageSpec) -> str:
    """sha256 over the spec's canonical JSON: equal inputs, equal key; any change, a new one."""
    canonical = json.dumps(asdict(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class NodeImage:
    spec: ImageSpec
    nodes: tuple[str, ...] = field(default_factory=tuple)


def image_packages(cluster: Cluster, node: NodeSpec) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(every package spec, the vendor ones, name=version pins) the node's image holds."""
    m = cluster.manifest
    family = os_family(m.os.key)
    if family == "apt":
        specs = list(APT_BASE) + [KERNEL[m.os.distro]]
    else:
        specs = list(DNF_BASE) + [KERNEL[m.os.distro]]
    for layer in ("slurm", "monitoring"):
        if layer in node.layers:
            specs += LAYER_PACKAGES[family][layer]
    options = PlanOptions(flavour=m.gpu.flavour, infiniband_stack=m.infiniband.stack,
                          layers=tuple(layer for layer in node.layers if layer in ("gpu", "infiniband", "container")))
    plan = package_plan(cluster.stack, m.os.key, cluster.profile_of(node), options)
    vendor = [p.spec for p in plan if p.origin == "vendor"]
    specs += [p.spec for p in plan if p.origin != "source"]
    pins = {f"{p.name}={p.version}" for p in plan if p.version is not None}
    return tuple(sorted(set(specs))), tuple(sorted(set(vendor))), tuple(sorted(pins))


def image_method(cluster: Cluster, node: NodeSpec) -> str:
    """The node group's provisioning.method: image (default) or installer."""
    for group in cluster.manifest.node_groups:
        if group.name == node.group:
            return group.provisioning.method
    return "image"


def spec_for(cluster: Cluster, node: NodeSpec) -> ImageSpec:
    m = cluster.manifest
    packages, vendor, pins = image_packages(cluster, node)
    return ImageSpec(
        distro=m.os.distro, version=m.os.version, suite=SUITES.get(m.os.key),
        stack=cluster.stack.id, hardware=node.hardware, layers=tuple(sorted(node.layers)),
        packages=packages, vendor_packages=vendor, pins=pins,
    )


def cluster_images(cluster: Cluster) -> list[NodeImage]:
    """The distinct images the cluster's PXE nodes with `method: image` need, each with the
    nodes it goes to, in manifest order."""
    by_key: dict[str, tuple[ImageSpec, list[str]]] = {}
    methods = {g.name: g.provisioning.method for g in cluster.manifest.node_groups}
    # A spec depends on the node only through its hardware profile and layers: one per pair,
    # not one package plan per node (thousands of nodes render in well under a second).
    specs: dict[tuple[str, tuple[str, ...]], ImageSpec] = {}
    for node in cluster.nodes:
        if not node.pxe or methods.get(node.group, "image") != "image":
            continue
        pair = (node.hardware, tuple(node.layers))
        if pair not in specs:
            specs[pair] = spec_for(cluster, node)
        spec = specs[pair]
        by_key.setdefault(spec.key, (spec, []))[1].append(node.name)
    return [NodeImage(spec, tuple(nodes)) for spec, nodes in by_key.values()]


def node_image_keys(cluster: Cluster) -> dict[str, str]:
    """node name -> its image key (image-installed nodes only)."""
    return {name: img.spec.key for img in cluster_images(cluster) for name in img.nodes}


# --- build commands (pure) --------------------------------------------------------------------

PACKAGE_LIST_FORMAT = "${Package}\\t${Version}\\n"


def secret_removal_script(root: str = '"$1"') -> str:
    """Shell run inside mmdebstrap's customize hook ($1 = the image root)."""
    return (f"rm -f {root}/etc/ssh/ssh_host_* {root}/etc/munge/munge.key {root}/var/lib/dbus/machine-id"
            f" && : > {root}/etc/machine-id")


def distribution_packages(spec: ImageSpec) -> tuple[str, ...]:
    """What the image build installs: everything but the vendor packages. Those (driver, CUDA,
    DCGM, OFED ...) need NVIDIA's and Mellanox's repositories, which the build does not have
    yet; the GPU/InfiniBand roles install them after the node's first boot, as before."""
    vendor = set(spec.vendor_packages)
    return tuple(p for p in spec.packages if p not in vendor)


def mmdebstrap_command(spec: ImageSpec, mirror: str, root_dir: str, packages_file: str,
                       apt_options: tuple[str, ...] = ()) -> list[str]:
    """The mmdebstrap invocation that builds `spec` into the directory root_dir from `mirror`
    (the head's package proxy or bundle: never the internet directly) and writes the package
    versions to packages_file. Root mode: the head builds as root, hooks chroot into it."""
    if spec.family != "apt" or spec.suite is None:
        raise ValueError(f"{spec.os_key} is not built with mmdebstrap")
    components = "main" if spec.distro == "debian" else "main,universe"
    cmd = [
        "mmdebstrap", "--mode=root", "--variant=minbase", f"--components={components}",
        f"--include={','.join(distribution_packages(spec))}",
        # No recommends: exactly the listed closure, the same on every build.
        "--aptopt=APT::Install-Recommends \"false\"",
        # dpkg's fsync per file is most of a build's time on a VM disk; a half-built root is
        # thrown away anyway (mmdebstrap's own hook, removed from the image at the end;
        # Debian package mmdebstrap 1.3.5: /usr/share/mmdebstrap/hooks/eatmydata/README.txt).
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
    ]
    cmd += [f"--aptopt={opt}" for opt in apt_options]
    cmd += [
        # networkd brings the provision NIC up from the unit the ramdisk writes; ssh must answer.
        "--customize-hook=chroot \"$1\" systemctl enable systemd-networkd ssh",
        f"--customize-hook={secret_removal_script()}",
        f"--customize-hook=chroot \"$1\" dpkg-query -W -f='{PACKAGE_LIST_FORMAT}' > {packages_file}",
        "--customize-hook=chroot \"$1\" apt-get clean",
        # mmdebstrap keeps the build's --aptopt lines (the build's proxy) in the image
        # (/etc/apt/apt.conf.d/99mmdebstrap: mmdebstrap(1), --aptopt; seen in the lab's image), where
        # they would override the node's own apt settings: the package_source role's are the
        # node's.
        "--customize-hook=rm -f \"$1\"/etc/apt/apt.conf.d/99mmdebstrap",
        spec.suite, root_dir, mirror,
    ]
    return cmd


def dnf_commands(spec: ImageSpec, repo_base: str, root_dir: str) -> list[list[str]]:
    """Rocky: the dnf --installroot plan (rendered, not run on a Debian head)."""
    major = spec.version.split(".")[0]
    repos = [f"--repofrompath=baseos,{repo_base}/{major}/BaseOS/x86_64/os/",
             f"--repofrompath=appstream,{repo_base}/{major}/AppStream/x86_64/os/",
             f"--repofrompath=epel,{repo_base}/epel/{major}/Everything/x86_64/"]
    base = ["dnf", "-y", f"--installroot={root_dir}", f"--releasever={major}", "--disablerepo=*",
            *repos, "--enablerepo=baseos,appstream,epel", "--setopt=install_weak_deps=False"]
    return [
        base + ["install", *spec.packages],
        ["sh", "-c", secret_removal_script(root_dir)],
    ]


def pack_command(root_dir: str, archive: str) -> list[str]:
    """tar the root, keeping owners, modes, ACLs, xattrs (file capabilities), zstd-compressed."""
    return ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-C", root_dir,
            "-I", "zstd -T0 -10", "-cf", archive, "."]


def parse_package_list(text: str) -> dict[str, str]:
    """dpkg-query -W -f='${Package}\\t${Version}\\n' output -> {package: version}."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, version = line.partition("\t")
        versions[name] = version
    return versions
