"""Node images: one root filesystem per distinct (OS, stack, hardware profile, layers), built
once on the head and written byte for byte onto every node that shares it.

The image key is a hash of everything that decides the image's content (OS, suite, the package
list with its pinned versions, the build recipe's version) and nothing else: adding a node, or
renaming one, does not rebuild anything; changing any pinned version does.

Per-node and per-cluster secrets are never in an image (SECRET_PATHS): the deploy ramdisk
writes fresh SSH host keys and a machine-id onto each node, and the slurm role hands the
cluster's munge key to nodes after they boot.

GPU and InfiniBand images carry their vendor packages too (driver, fabric manager, CUDA, NCCL,
DCGM, OFED ...), at the matrix's versions, from the vendor repositories the package plan names
(stack_packages.repositories: the same URLs, suites and keys the GPU/IB roles use), with their
DKMS kernel modules built for the image's own kernel. The roles then find them installed.

Pure here: the spec, the key, which nodes share which image, the build commands. Running them
is podsys/provision/image_build.py."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field
from functools import cached_property

from podsys.cluster.model import Cluster, NodeSpec
from podsys.cluster.stack_packages import PlanOptions, Repository, apt_pins, apt_preferences, node_plan, os_family

# Bump when the build steps change (hooks, packing), so images built the old way are rebuilt.
# 4: vendor packages in the image (their repositories, keys, pins, DKMS for the image kernel).
RECIPE_VERSION = 4

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
# Rocky 9 (dnf --installroot): BaseOS/AppStream names, slurm, node_exporter and networkd from
# EPEL 9 (packages.fedoraproject.org: slurm-slurmd, golang-github-prometheus-node-exporter;
# systemd-networkd: EPEL 9 after CRB, as EL9 node set-up scripts install it).
# rocky-release: /etc/os-release and the node's own repository files and keys (rocky-repos,
# rocky-gpg-keys; rockylinux.org/keys: "The Project GPG keys are included in the ...-release
# package"; rpm inventories of Rocky 9 list rocky-release and rocky-gpg-keys). dnf and
# dnf-plugins-core: the roles' dnf tasks and `dnf config-manager` (package_source; EL9 set-up
# scripts: "dnf install -y dnf-plugins-core epel-release; dnf config-manager --set-enabled
# crb"). python3-libselinux: Ansible's file modules on an SELinux host (kubespray #5622:
# "libselinux-python has been named python3-libselinux since Fedora 31"). bash, util-linux:
# RHEL 9 BaseOS names, as Debian's.
DNF_BASE = (
    "rocky-release", "bash", "util-linux", "dnf", "dnf-plugins-core", "python3-libselinux",
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
    # The vendor repositories the vendor packages come from (stack_packages.repositories), the
    # apt preferences that hold their versions during the build ((package or pattern, version),
    # stack_packages.apt_pins) and, for dnf, the module streams enabled first.
    repositories: tuple[Repository, ...] = ()
    apt_pins: tuple[tuple[str, str], ...] = ()
    module_streams: tuple[str, ...] = ()
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
        data["repositories"] = [r.as_dict() for r in self.repositories]
        data["apt_pins"] = [list(p) for p in self.apt_pins]
        data["module_streams"] = list(self.module_streams)
        return data


def vendor_package_names(spec: ImageSpec) -> list[str]:
    """The vendor packages' names: apt specs are name=version, dnf specs name-version (dnf(8),
    "Specifying Packages"), whose name comes from the pins (name=version) they were made from."""
    if spec.family == "apt":
        return [p.split("=", 1)[0] for p in spec.vendor_packages]
    by_spec = {f"{name}-{version}": name for name, _, version in (pin.partition("=") for pin in spec.pins)}
    return [by_spec.get(p, p) for p in spec.vendor_packages]


def image_key(spec: ImageSpec) -> str:
    """sha256 over the spec's canonical JSON: equal inputs, equal key; any change, a new one."""
    canonical = json.dumps(asdict(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class NodeImage:
    spec: ImageSpec
    nodes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ImagePackages:
    packages: tuple[str, ...]  # every package spec, sorted
    vendor: tuple[str, ...]  # the vendor ones
    pins: tuple[str, ...]  # name=version of every matrix-pinned package
    repositories: tuple[Repository, ...] = ()
    apt_pins: tuple[tuple[str, str], ...] = ()
    module_streams: tuple[str, ...] = ()


def image_packages(cluster: Cluster, node: NodeSpec) -> ImagePackages:
    """What the node's image holds: the base system, its layers' packages and the GPU/IB/container
    plan (package_plan), vendor packages included, with the plan's repositories and pins."""
    m = cluster.manifest
    family = os_family(m.os.key)
    if family == "apt":
        specs = list(APT_BASE) + [KERNEL[m.os.distro]]
    else:
        specs = list(DNF_BASE) + [KERNEL[m.os.distro]]
    for layer in ("slurm", "monitoring"):
        if layer in node.layers:
            specs += LAYER_PACKAGES[family][layer]
    # kernel_package: DKMS builds need the headers of the kernel the image installs (its meta
    # package's headers), not of the kernel the build runs on.
    options = PlanOptions(flavour=m.gpu.flavour, infiniband_stack=m.infiniband.stack,
                          layers=tuple(layer for layer in node.layers if layer in ("gpu", "infiniband", "container")),
                          kernel_package=KERNEL[m.os.distro])
    plan = node_plan(cluster.stack, m.os.key, cluster.profile_of(node), options)
    installed = [p for p in plan.packages if p.origin != "source"]
    vendor = [p.spec for p in installed if p.origin == "vendor"]
    specs += [p.spec for p in installed]
    pins = {f"{p.name}={p.version}" for p in plan.packages if p.version is not None}
    repos = tuple(r for r in plan.repositories if any(c in r.for_components for c in {p.component for p in installed if p.origin == "vendor"}))
    return ImagePackages(
        tuple(sorted(set(specs))), tuple(sorted(set(vendor))), tuple(sorted(pins)), repos,
        tuple(apt_pins(installed, plan.pins)) if family == "apt" and vendor else (),
        tuple(plan.module_streams) if vendor else (),
    )


def image_method(cluster: Cluster, node: NodeSpec) -> str:
    """The node group's provisioning.method: image (default) or installer."""
    for group in cluster.manifest.node_groups:
        if group.name == node.group:
            return group.provisioning.method
    return "image"


def spec_for(cluster: Cluster, node: NodeSpec) -> ImageSpec:
    m = cluster.manifest
    got = image_packages(cluster, node)
    return ImageSpec(
        distro=m.os.distro, version=m.os.version, suite=SUITES.get(m.os.key),
        stack=cluster.stack.id, hardware=node.hardware, layers=tuple(sorted(node.layers)),
        packages=got.packages, vendor_packages=got.vendor, pins=got.pins,
        repositories=got.repositories, apt_pins=got.apt_pins, module_streams=got.module_streams,
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


# Where the image keeps the vendor keys: where the package_source role puts them on a node
# (package_source_keyring_dir, podsys-<name>.asc), so the node's apt trusts the same keys and
# the role finds them in place. The build's sources go in the same folder under the role's names.
KEYRING_DIR = "/usr/share/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"
# apt reads preferences from the image root during the build (apt_preferences(5)).
BUILD_PREFERENCES = "/etc/apt/preferences.d/podsys-image-build"
# packages.source: bundle: the bundle is the node's only repository (package_proxy's retire_sources).
RETIRED_SOURCES_LIST = "# Managed by podsys: the offline bundle is the only repository (sources.list.d/podsys-bundle*.sources)\n"


@dataclass(frozen=True)
class BuildRepo:
    """A repository the build installs vendor packages from, as the build reaches it (the
    vendor's URL, or the head's /repo/ for a bundle, which carries the vendor .debs), and the key
    the image keeps for it. Made from the plan's Repository by image_source.build_repositories."""

    name: str  # cuda, ofed, container_toolkit, bundle: the package_source role's names
    url: str
    suite: str  # "/" or "./" for NVIDIA's and Mellanox's flat repositories
    components: str = ""
    key_url: str = ""
    fingerprint: str | None = None  # checked when the key is fetched, where podsys knows it
    gpgcheck: bool = True  # dnf: packages signed
    repo_gpgcheck: bool = False  # dnf: metadata signed

    @property
    def key_file(self) -> str:
        return f"podsys-{self.name}.asc"

    @property
    def keyring(self) -> str:
        return f"{KEYRING_DIR}/{self.key_file}"

    @property
    def sources_file(self) -> str:
        return f"podsys-{self.name}.sources"


def sources_text(repo: BuildRepo, signed_by: str) -> str:
    """A deb822 source (sources.list(5)) trusting `signed_by` only, as the role's podsys.sources.j2."""
    lines = [f"# podsys {repo.name} repository (node image)", "Types: deb", f"URIs: {repo.url}", f"Suites: {repo.suite}"]
    if repo.components:
        lines.append(f"Components: {repo.components}")
    return "\n".join(lines + [f"Signed-By: {signed_by}"]) + "\n"


def _bundle_repo(vendor: tuple[BuildRepo, ...], mirror: str) -> BuildRepo | None:
    """The repository that is the mirror itself (the bundle: distribution and vendor .debs in one)."""
    return next((r for r in vendor if r.url.rstrip("/") == mirror.rstrip("/")), None)


def vendor_apt_files(spec: ImageSpec, vendor: tuple[BuildRepo, ...], mirror: str, apt_dir: str) -> dict[str, str]:
    """The files the build's hooks copy in, by name under apt_dir (the keys, podsys-<name>.asc,
    are fetched there by the build). build-*.sources: what apt reads during the build. apt
    resolves Signed-By on the machine it runs on, not under the image root (mmdebstrap(1),
    --keyring: "copy your keys into the chroot explicitly if the key you passed via signed-by
    points to a location that is not otherwise populated"; checked with apt 2.6: a key only
    under the root's /usr/share/keyrings gives NO_PUBKEY), so they name the key in apt_dir."""
    bundle = _bundle_repo(vendor, mirror)
    files: dict[str, str] = {}
    for repo in vendor:
        if repo is not bundle:  # the bundle is the mirror line itself (see mmdebstrap_command)
            files[f"build-{repo.sources_file}"] = sources_text(repo, f"{apt_dir}/{repo.key_file}")
    if spec.apt_pins:
        files["preferences"] = apt_preferences(spec.apt_pins)
    if bundle is not None:
        files["sources.list"] = RETIRED_SOURCES_LIST
    return files


def dkms_hook() -> str:
    """Shell for a customize hook ($1 = the image root): build every DKMS module (the NVIDIA
    driver's, OFED's) for every kernel the image has, and fail naming what is missing.

    Inside the build's chroot `uname -r` is the build host's kernel, and the packages' postinst
    scripts build DKMS modules for the running kernel; the image boots its own. dkms(8):
    "autoinstall: Attempt to install the latest revision of all modules that have been installed
    for other kernel revisions", and "-k <kernel-version>/<arch>: The kernel and arch to perform
    the action upon" (dkms 3.0.11 man page, Ubuntu noble); `dkms status -k` then lists each
    module's state for that kernel, and one that is not "installed" is missing. A kernel's headers come from the plan (the headers of
    the image's kernel meta package)."""
    return (
        'if chroot "$1" sh -c "command -v dkms" >/dev/null; then '
        'for k in $(ls "$1"/lib/modules); do '
        'chroot "$1" dkms autoinstall -k "$k" || { echo "podsys: dkms autoinstall failed for the image kernel $k" >&2; exit 1; }; '
        'missing=$(chroot "$1" dkms status -k "$k" | grep -v ": installed" || true); '
        'if [ -n "$missing" ]; then echo "podsys: DKMS modules not built for the image kernel $k: $missing" >&2; exit 1; fi; '
        'done; fi'
    )


def mmdebstrap_command(spec: ImageSpec, mirror: str, root_dir: str, packages_file: str,
                       apt_options: tuple[str, ...] = (), vendor: tuple[BuildRepo, ...] = (),
                       apt_dir: str = "APT") -> list[str]:
    """The mmdebstrap invocation that builds `spec` into the directory root_dir from `mirror`
    (the head's package proxy or bundle: never the internet directly) and writes the package
    versions to packages_file. Root mode: the head builds as root, hooks chroot into it.

    vendor: the repositories the spec's vendor packages come from (image_source); apt_dir holds
    their keys and the files of vendor_apt_files. A spec with vendor packages needs them."""
    if spec.family != "apt" or spec.suite is None:
        raise ValueError(f"{spec.os_key} is not built with mmdebstrap")
    if spec.vendor_packages and not vendor:
        raise ValueError(f"{spec.name}: its vendor packages ({', '.join(spec.vendor_packages[:3])} ...) need their repositories")
    components = "main" if spec.distro == "debian" else "main,universe"
    vendor = vendor if spec.vendor_packages else ()
    bundle = _bundle_repo(vendor, mirror)
    files = vendor_apt_files(spec, vendor, mirror, apt_dir) if vendor else {}
    q = shlex.quote
    cmd = [
        "mmdebstrap", "--mode=root", "--variant=minbase", f"--components={components}",
        f"--include={','.join(spec.packages)}",
        # No recommends: exactly the listed closure, the same on every build.
        "--aptopt=APT::Install-Recommends \"false\"",
        # dpkg's fsync per file is most of a build's time on a VM disk; a half-built root is
        # thrown away anyway (mmdebstrap's own hook, removed from the image at the end;
        # Debian package mmdebstrap 1.3.5: /usr/share/mmdebstrap/hooks/eatmydata/README.txt).
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
    ]
    cmd += [f"--aptopt={opt}" for opt in apt_options]
    if vendor:
        # Before apt's first update (mmdebstrap(1), OPERATION: setup-hook, then update): the keys
        # into the image (they stay: the node's apt trusts the same repositories), the build's
        # sources and the pins that hold the matrix's versions for the dependencies too.
        steps = [f'mkdir -p "$1"{KEYRING_DIR} "$1"/etc/apt/preferences.d']
        steps += [f'cp {q(apt_dir + "/" + r.key_file)} "$1"{r.keyring}' for r in vendor]
        steps += [f'cp {q(apt_dir + "/" + name)} "$1"{SOURCES_DIR}/{name[len("build-"):]}'
                  for name in files if name.startswith("build-")]
        if "preferences" in files:
            steps.append(f'cp {q(apt_dir + "/preferences")} "$1"{BUILD_PREFERENCES}')
        cmd.append("--setup-hook=" + " && ".join(steps))
        cmd.append(f"--customize-hook={dkms_hook()}")
    cmd += [
        # networkd brings the provision NIC up from the unit the ramdisk writes; ssh must answer.
        "--customize-hook=chroot \"$1\" systemctl enable systemd-networkd ssh",
        f"--customize-hook={secret_removal_script()}",
        f"--customize-hook=chroot \"$1\" dpkg-query -W -f='{PACKAGE_LIST_FORMAT}' > {packages_file}",
        "--customize-hook=chroot \"$1\" apt-get clean",
    ]
    if vendor:
        # The keys stay; the build's sources and pins go, and the node's are the roles', as for
        # the distribution mirror. The package_source role writes the vendor sources with the
        # node's way to them (proxy mode: the head's cache as CONNECT proxy,
        # 80podsys-vendor-proxy), which the image cannot know: a vendor source left here would
        # make the base role's first `apt update` fail on a node with no way out. Its install
        # tasks write the node's pins (one file per role); a build pin left here would hold the
        # old versions against `podsys upgrade`.
        steps = [f'rm -f "$1"{SOURCES_DIR}/{name[len("build-"):]}' for name in files if name.startswith("build-")]
        if "preferences" in files:
            steps.append(f'rm -f "$1"{BUILD_PREFERENCES}')
        if bundle is not None:
            steps.append(f'cp {q(apt_dir + "/sources.list")} "$1"/etc/apt/sources.list')
        cmd.append("--customize-hook=" + " && ".join(steps))
    cmd += [
        # mmdebstrap keeps the build's --aptopt lines (the build's proxy) in the image
        # (/etc/apt/apt.conf.d/99mmdebstrap: mmdebstrap(1), --aptopt; seen in the lab's image), where
        # they would override the node's own apt settings: the package_source role's are the
        # node's.
        "--customize-hook=rm -f \"$1\"/etc/apt/apt.conf.d/99mmdebstrap",
    ]
    # The bundle carries the vendor .debs in its own repository: it is the mirror, trusted with
    # its site key (its components: main only, podsys/bundle/repo.py).
    if bundle is not None:
        mirror = f"deb [signed-by={apt_dir}/{bundle.key_file}] {bundle.url} {bundle.suite} {bundle.components or 'main'}"
    cmd += [spec.suite, root_dir, mirror]
    return cmd


# Rocky (dnf --installroot). The distribution's repositories under the Rocky mirror's tree
# (<mirror>/<major>/<repo>/x86_64/os/, as the kickstart's); CRB because EPEL's packages build on
# it (EPEL getting started: "dnf config-manager --set-enabled crb"); EPEL for slurm,
# node_exporter and dkms. Keys and fingerprints: rockylinux.org/keys ("Rocky Linux 9",
# dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9) and Fedora's EPEL 9 key
# (dl.fedoraproject.org/pub/epel/RPM-GPG-KEY-EPEL-9), both as dnf prints them on import.
DNF_DISTRIBUTION_REPOS = (("baseos", "BaseOS"), ("appstream", "AppStream"), ("crb", "CRB"))
DNF_REPO_NAMES = frozenset(name for name, _ in DNF_DISTRIBUTION_REPOS) | {"epel"}
ROCKY_KEYS = {"9": ("RPM-GPG-KEY-Rocky-9", "21CB256AE16FC54C6E652949702D426D350D275D")}
EPEL_MIRROR = "http://dl.fedoraproject.org/pub/epel"
EPEL_KEYS = {"9": ("RPM-GPG-KEY-EPEL-9", "FF8AD1344597106ECE813B918A3872BF3228467C")}
# Rocky 9 keeps its rpm database in /var/lib/rpm (sqlite); Debian's rpm puts it under $HOME
# (/usr/lib/rpm/macros: %_dbpath ~/.rpmdb), so the build tells rpm where the image's is.
RPM_DBPATH = "/var/lib/rpm"
RPM_QUERY_FORMAT = "%{NAME}\\t%|EPOCH?{%{EPOCH}:}|%{VERSION}-%{RELEASE}\\n"
# dracut.conf(5): hostonly="no" builds a generic initramfs; RHEL's own default (01-dist.conf,
# hostonly="yes") would hold only the drivers of the machine the image is built on.
DRACUT_CONF = ("etc/dracut.conf.d/90-podsys.conf",
               '# podsys: one image for every node, so the initramfs carries every driver\nhostonly="no"\n')


def dnf_distribution_repos(spec: ImageSpec, mirror: str, epel: str = EPEL_MIRROR) -> tuple[BuildRepo, ...]:
    """The Rocky repositories an image is built from: BaseOS, AppStream, CRB from `mirror` (the
    Rocky tree, /pub/rocky upstream) and EPEL from `epel`, each with its key and fingerprint."""
    major = spec.version.split(".")[0]
    if major not in ROCKY_KEYS:
        raise ValueError(f"{spec.os_key}: podsys knows the release keys of Rocky {', '.join(ROCKY_KEYS)} only")
    mirror, epel = mirror.rstrip("/"), epel.rstrip("/")
    rocky_key, rocky_fpr = ROCKY_KEYS[major]
    repos = [BuildRepo(name, f"{mirror}/{major}/{folder}/x86_64/os/", "", "", f"{mirror}/{rocky_key}", rocky_fpr)
             for name, folder in DNF_DISTRIBUTION_REPOS]
    epel_key, epel_fpr = EPEL_KEYS[major]
    repos.append(BuildRepo("epel", f"{epel}/{major}/Everything/x86_64/", "", "", f"{epel}/{epel_key}", epel_fpr))
    return tuple(repos)


def dnf_commands(spec: ImageSpec, repos: tuple[BuildRepo, ...], root_dir: str, key_dir: str,
                 proxy: str = "") -> list[list[str]]:
    """The dnf --installroot commands that install `spec` into root_dir: the module streams
    first (the NVIDIA driver's), then every package, from `repos` only (the distribution's and,
    for vendor packages, the plan's), each checked against its key in key_dir (fetched and
    fingerprint-checked by the build; dnf reads a file:// gpgkey on the build host). Run with
    HOME holding an .rpmmacros that sets %_dbpath (rpm_macros)."""
    major = spec.version.split(".")[0]
    options: list[str] = []
    for repo in repos:
        options += [f"--repofrompath={repo.name},{repo.url}", f"--setopt={repo.name}.gpgcheck={int(repo.gpgcheck)}",
                    f"--setopt={repo.name}.repo_gpgcheck={int(repo.repo_gpgcheck)}",
                    f"--setopt={repo.name}.gpgkey=file://{key_dir}/{repo.key_file}"]
    base = ["dnf", "-y", f"--installroot={root_dir}", f"--releasever={major}", "--disablerepo=*", *options,
            f"--enablerepo={','.join(r.name for r in repos)}", "--setopt=install_weak_deps=False",
            # The image's platform, not the build host's os-release, decides which module streams
            # exist (dnf.conf(5), module_platform_id; Rocky 9's PLATFORM_ID).
            f"--setopt=module_platform_id=platform:el{major}"]
    if proxy:
        base.append(f"--setopt=proxy={proxy}")
    commands = [base + ["module", "enable", stream] for stream in spec.module_streams]
    commands.append(base + ["install", *spec.packages])
    return commands


# Run as `sh -c MOUNTS sh ROOT CMD...`: the image's rpm scriptlets and the chroot steps (dracut,
# dkms) see /proc, /sys and /dev, mounted in a mount namespace of their own (unshare(1)), so
# they vanish with the command and a failed build never leaves a host /dev bound inside a
# scratch folder that is then deleted.
API_MOUNTS = ('root=$1; shift; mkdir -p "$root/proc" "$root/sys" "$root/dev" && '
              'mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && '
              'mount --rbind /dev "$root/dev" && exec "$@"')


def in_build_namespace(root_dir: str, cmd: list[str]) -> list[str]:
    """`cmd` in a private mount namespace with the image root's API file systems mounted."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", API_MOUNTS, "sh", root_dir, *cmd]


def rpm_macros() -> str:
    return f"%_dbpath {RPM_DBPATH}\n"


def dnf_finish_script(with_dkms: bool) -> str:
    """Shell run after dnf ($1 = the image root): the boot files of every image kernel in /boot
    (kernel-core ships /lib/modules/<k>/vmlinuz and leaves the copy and the initramfs to
    kernel-install in its scriptlets; where those did not make them, they are made here), the
    DKMS modules for those kernels, networkd and sshd enabled, SELinux relabelled at first boot
    (the build host labels nothing), dnf's cache out and the secrets removed."""
    steps = [
        'for m in "$1"/lib/modules/*/vmlinuz; do [ -e "$m" ] || continue; k=$(basename "$(dirname "$m")"); '
        '[ -e "$1/boot/vmlinuz-$k" ] || install -m 0755 "$m" "$1/boot/vmlinuz-$k"; '
        'if [ ! -e "$1/boot/initramfs-$k.img" ]; then '
        '[ -x "$1/usr/bin/dracut" ] || { echo "podsys: no initramfs for the image kernel $k and no dracut to make one" >&2; exit 1; }; '
        'chroot "$1" dracut --no-hostonly --force --kver "$k" "/boot/initramfs-$k.img" || exit 1; fi; done',
    ]
    if with_dkms:
        steps.append(dkms_hook())
    steps += [
        # systemctl(1) --root: enables units in an image without running anything in it.
        'systemctl --root="$1" enable systemd-networkd.service sshd.service',
        # selinux(8) / RHEL: /.autorelabel relabels the whole file system at the next boot.
        'if [ -e "$1/etc/selinux/config" ]; then : > "$1/.autorelabel"; fi',
        'rm -rf "$1"/var/cache/dnf',
        secret_removal_script(),
    ]
    return "\n".join(steps) + "\n"


def pack_command(root_dir: str, archive: str) -> list[str]:
    """tar the root, keeping owners, modes, ACLs, xattrs (file capabilities), zstd-compressed."""
    return ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-C", root_dir,
            "-I", "zstd -T0 -10", "-cf", archive, "."]


def parse_package_list(text: str) -> dict[str, str]:
    """dpkg-query -W -f='${Package}\\t${Version}\\n' (or rpm -qa with RPM_QUERY_FORMAT) output
    -> {package: version}."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, version = line.partition("\t")
        versions[name] = version
    return versions
