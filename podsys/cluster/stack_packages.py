"""The package plan: which packages, at which exact versions, the GPU and InfiniBand roles install.

Pure. The roles call this through the `podsys_package_plan` Ansible filter
(playbooks/roles/package_source/filter_plugins), and the offline bundle reads it to know which
vendor packages a site must supply, so both always agree with the matrix.

Names follow NVIDIA's CUDA repositories (ubuntu2204/ubuntu2404/debian12/rhel9), the NVIDIA
container toolkit repository, enroot's release packages and the MLNX_OFED / DOCA-Host
repositories. Versions are the matrix's; `spec` is what the package manager is given:
apt `name=<version>-*` (the Debian revision differs between NVIDIA's per-distribution
repositories, the upstream version never does) and dnf `name-<version>`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from podsys.cluster.matrix import Matrix, Stack, load_matrix, version_key
from podsys.errors import PodsysError
from podsys.cluster.hardware import HardwareProfile

# Every component a plan can hold, in install order; each maps to the role that installs it.
# DKMS builds need the running kernel's headers first; the driver's nvidia_peermem is built
# against OFED's ofa_kernel, so OFED comes before the driver; fabric manager needs the driver.
COMPONENTS = (
    "kernel_headers",
    "infiniband",
    "driver",
    "fabric_manager",
    "nvlsm",
    "cuda",
    "cudnn",
    "nccl",
    "dcgm",
    "nccl_tests",
    "perftest",
    "opensm",
    "container_toolkit",
    "enroot",
    "pyxis",
)

# Open kernel modules need Turing or newer; Blackwell ships only with open modules.
PRE_TURING = frozenset({"kepler", "maxwell", "pascal", "volta"})
OPEN_ONLY = frozenset({"blackwell"})
OPEN_DEFAULT_FROM_BRANCH = 560  # open modules are NVIDIA's default flavour from R560 on
# From R580 on fabric manager and NSCQ drop the branch from their package names, on apt and dnf
# alike (NVIDIA/gpu-driver-container ubuntu22.04/install.sh and rhel9/install.sh,
# fabricmanager_install / nscq_install: `if [ "$DRIVER_BRANCH" -ge "580" ]`).
UNBRANCHED_FM_FROM_BRANCH = 580
# NVIDIA's apt driver pinning packages (nvidia-driver-pinning-<version>) exist from R580 on
# (NVIDIA driver installation guide, "Version locking" and "Recent updates": "Driver pinning
# packages have been introduced for Debian and Ubuntu"); older branches get complete pins.
PINNING_PACKAGE_FROM_BRANCH = 580

APT_FAMILY = ("debian", "ubuntu")
DNF_FAMILY = ("rocky",)
KERNEL_PLACEHOLDER = "$(uname -r)"  # shown by `podsys compat packages`; the roles pass the real one

class PlanError(PodsysError):
    """The stack cannot be installed as asked on this host (one line, says what to change)."""


@dataclass(frozen=True)
class PlannedPackage:
    name: str
    version: str | None  # the matrix's version; None = whatever the distribution ships
    component: str
    spec: str  # handed to apt / dnf as is
    origin: str = "vendor"  # vendor (NVIDIA/Mellanox repository), distribution, epel, or source (built here)

    def __iter__(self):  # unpacks as (name, version)
        return iter((self.name, self.version))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PlanOptions:
    flavour: str = "auto"  # podsys_gpu.flavour
    infiniband_stack: str = "matrix"  # podsys_infiniband.stack
    opensm: bool = False  # podsys_infiniband.opensm (head only)
    is_head: bool = False
    layers: tuple[str, ...] = ("gpu", "infiniband", "container")
    components: tuple[str, ...] | None = None  # restrict to these components (a role's own)
    kernel: str | None = None  # the running kernel (uname -r); None shows a placeholder
    # A node image's kernel meta package (linux-image-amd64, linux-image-generic, kernel): the
    # headers then follow the kernel the image installs, not the kernel podsys runs on.
    kernel_package: str | None = None
    os_release: str | None = None  # the full OS release (9.6, 12.5); picks the OFED directory
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "PlanOptions":
        data = dict(data or {})
        gpu = data.pop("gpu", None) or {}
        ib = data.pop("infiniband", None) or {}
        layers = data.pop("layers", None)
        components = data.pop("components", None)
        if isinstance(components, str):
            components = [components]
        kernel = data.pop("kernel", None)
        kernel_package = data.pop("kernel_package", None)
        os_release = data.pop("os_release", None)
        return cls(
            flavour=str(gpu.get("flavour", data.pop("flavour", "auto"))),
            infiniband_stack=str(ib.get("stack", data.pop("infiniband_stack", "matrix"))),
            opensm=bool(ib.get("opensm", data.pop("opensm", False))),
            is_head=bool(data.pop("is_head", False)),
            layers=tuple(layers) if layers is not None else cls.layers,
            components=tuple(components) if components is not None else None,
            kernel=str(kernel) if kernel else None,
            kernel_package=str(kernel_package) if kernel_package else None,
            os_release=str(os_release) if os_release else None,
            extra=data,
        )


def os_family(os_key: str) -> str:
    distro = os_key.split("-", 1)[0]
    if distro in APT_FAMILY:
        return "apt"
    if distro in DNF_FAMILY:
        return "dnf"
    raise PlanError(f"no package plan for {os_key}: podsys knows debian, ubuntu and rocky")


def branch_number(stack: Stack) -> int:
    return version_key(stack.driver)[0]


def driver_flavour(stack: Stack, profile: HardwareProfile | None, requested: str = "auto") -> tuple[str, str]:
    """(open|proprietary, why). Refuses flavours the GPU cannot run."""
    arch = (profile.gpu.architecture.lower() if profile and profile.gpu else "")
    model = profile.gpu.model if profile and profile.gpu else "this GPU"
    if requested not in ("auto", "open", "proprietary"):
        raise PlanError(f"gpu.flavour {requested!r} is not one of auto, open, proprietary")
    if arch in OPEN_ONLY:
        if requested == "proprietary":
            raise PlanError(f"{model} ({arch}) runs only the open kernel modules; set gpu.flavour: open or auto")
        return "open", f"{arch} GPUs require the open kernel modules"
    if arch in PRE_TURING:
        if requested == "open":
            raise PlanError(f"{model} ({arch}) predates Turing and needs the proprietary modules; set gpu.flavour: proprietary or auto")
        return "proprietary", f"{arch} predates Turing: open modules do not support it"
    if requested != "auto":
        return requested, f"gpu.flavour: {requested} in the manifest"
    if branch_number(stack) >= OPEN_DEFAULT_FROM_BRANCH:
        return "open", f"open modules are the default from R{OPEN_DEFAULT_FROM_BRANCH} on (stack {stack.branch})"
    return "proprietary", f"proprietary modules are the default before R{OPEN_DEFAULT_FROM_BRANCH} (stack {stack.branch})"


def _spec(family: str, name: str, version: str | None, exact: bool = False) -> str:
    """apt: name=version-* (any Debian revision of that upstream version) unless `exact`;
    dnf: name-version. No version: the bare name (repository or distribution decides)."""
    if version is None:
        return name
    if family == "apt":
        return f"{name}={version}" if exact else f"{name}={version}-*"
    return f"{name}-{version}"


def _cuda_dash(cuda: str) -> str:
    return cuda.replace(".", "-")


def _kernel_headers(family: str, kernel: str | None, kernel_package: str | None = None) -> list[PlannedPackage]:
    """The running kernel's headers, before any DKMS build (DOCA/MLNX_OFED, the NVIDIA driver).
    dnf: kernel-devel plus dkms, which EPEL carries (NVIDIA driver installation guide, RHEL:
    "enable EPEL and CRB", `dnf install kernel-devel-$(uname -r)`).

    kernel_package (a node image): the headers of that kernel meta package instead, which move
    with it: linux-image-amd64 -> linux-headers-amd64 (Debian), linux-image-generic ->
    linux-headers-generic (Ubuntu), kernel -> kernel-devel (Rocky); the same names the offline
    bundle takes (podsys/data/bundle-packages.yaml, kernel_headers)."""
    if kernel_package is not None:
        if family == "apt":
            name = kernel_package.replace("linux-image-", "linux-headers-", 1)
        else:
            name = f"{kernel_package}-devel"
    elif family == "apt":
        name = f"linux-headers-{kernel or KERNEL_PLACEHOLDER}"
    else:
        name = f"kernel-devel-{kernel or KERNEL_PLACEHOLDER}"
    if family == "apt":
        return [PlannedPackage(name, None, "kernel_headers", name, "distribution")]
    return [
        PlannedPackage(name, None, "kernel_headers", name, "distribution"),
        PlannedPackage("dkms", None, "kernel_headers", "dkms", "epel"),
    ]


def driver_module_stream(stack: Stack, flavour: str) -> str:
    """Rocky/RHEL: the driver installs through the nvidia-driver module stream of its branch
    (NVIDIA driver installation guide, "Kernel Modules": `dnf module enable nvidia-driver:580-open`;
    `<branch>-dkms` for the proprietary modules)."""
    return f"nvidia-driver:{branch_number(stack)}-{'open' if flavour == 'open' else 'dkms'}"


def _driver(stack: Stack, os_key: str, family: str, flavour: str) -> list[PlannedPackage]:
    branch, ver = branch_number(stack), stack.driver
    out: list[PlannedPackage] = []
    if family == "apt" and branch >= PINNING_PACKAGE_FROM_BRANCH:
        # Installed before the driver so apt resolves every driver package to this version
        # (NVIDIA driver installation guide, "Version locking": "install the pinning package
        # prior to installing the driver").
        pin = f"nvidia-driver-pinning-{ver}"
        out.append(PlannedPackage(pin, None, "driver", pin))
    if family == "dnf":
        kmod = "kmod-nvidia-open-dkms" if flavour == "open" else "kmod-nvidia-latest-dkms"
        names = ["nvidia-driver", kmod, "nvidia-persistenced"]
    elif os_key.startswith("debian-"):
        kmod = "nvidia-kernel-open-dkms" if flavour == "open" else "nvidia-kernel-dkms"
        names = ["nvidia-driver", kmod, "nvidia-persistenced"]
    else:  # ubuntu: branch-named packages; nvidia-compute-utils carries nvidia-persistenced
        names = [f"nvidia-driver-{branch}-open" if flavour == "open" else f"nvidia-driver-{branch}"]
    return out + [PlannedPackage(n, ver, "driver", _spec(family, n, ver)) for n in names]


# Every Debian/Ubuntu package the driver pulls in carries the driver's version; a pin on the
# top-level names alone lets apt take a newer libcuda1 or libnvidia-* with them. Names from the
# packages of NVIDIA's debian12 / ubuntu2204 CUDA repositories (libcuda1, libglx-nvidia0, ...).
DRIVER_PIN_PATTERNS = (
    "nvidia-*", "libnvidia-*", "libcuda1", "libcudadebugger1", "libnvcuvid1", "libnvoptix1",
    "libglx-nvidia0", "libegl-nvidia0", "libgles-nvidia1", "libgles-nvidia2", "libgl1-nvidia-glvnd-glx",
    "libxnvctrl0", "xserver-xorg-video-nvidia*", "firmware-nvidia-*",
)
FABRIC_MANAGER_PIN_PATTERNS = ("nvidia-fabricmanager*", "nvidia-fabric-manager*", "libnvidia-nscq*", "libnvsdm*")


def _fabric_manager(stack: Stack, family: str) -> list[PlannedPackage]:
    branch, ver = branch_number(stack), stack.fabric_manager or stack.driver
    if branch >= UNBRANCHED_FM_FROM_BRANCH:
        names = ["nvidia-fabricmanager", "libnvidia-nscq"]
    elif family == "dnf":
        names = ["nvidia-fabric-manager", f"libnvidia-nscq-{branch}"]
    else:
        names = [f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"]
    return [PlannedPackage(n, ver, "fabric_manager", _spec(family, n, ver)) for n in names]


def _cudnn(stack: Stack, family: str) -> list[PlannedPackage]:
    """cuDNN 9 is packaged per CUDA major without a +cuda suffix (libcudnn9-cuda-12=9.8.0.87-1);
    cuDNN 8 per CUDA minor in its version (libcudnn8=8.9.7.29-1+cuda12.2). Sources: NVIDIA's
    cuda container images (NV_CUDNN_PACKAGE=libcudnn9-cuda-12=${NV_CUDNN_VERSION}) and the cuDNN
    installation guide."""
    ver = stack.cudnn
    if ver is None:
        return []
    major = version_key(ver)[0]
    if major >= 9:
        cuda_major = stack.cuda.split(".")[0]
        dev = "dev" if family == "apt" else "devel"
        names = [f"libcudnn{major}-cuda-{cuda_major}", f"libcudnn{major}-{dev}-cuda-{cuda_major}"]
        return [PlannedPackage(n, ver, "cudnn", _spec(family, n, ver, exact=True)) for n in names]
    names = ["libcudnn8", "libcudnn8-dev"] if family == "apt" else ["libcudnn8", "libcudnn8-devel"]
    rpm_ver = ver.replace("+", ".")  # rpm release: 8.9.7.29-1.cuda12.2
    return [PlannedPackage(n, ver, "cudnn", f"{n}={ver}" if family == "apt" else f"{n}-{rpm_ver}") for n in names]


def _dcgm(stack: Stack, family: str) -> list[PlannedPackage]:
    ver = stack.dcgm
    if ver is None:
        return []
    if version_key(ver)[0] >= 4:
        # -core, the CUDA-major package and the proprietary profiling modules, all at one
        # version: a bare datacenter-gpu-manager-4-proprietary would pull the newest -core.
        # (Azure/azhpc-images install_dcgm.sh installs the four at ${DCGM_VERSION}.)
        cuda_major = stack.cuda.split(".")[0]
        names = [
            "datacenter-gpu-manager-4-core",
            f"datacenter-gpu-manager-4-cuda{cuda_major}",
            "datacenter-gpu-manager-4-proprietary",
            f"datacenter-gpu-manager-4-proprietary-cuda{cuda_major}",
        ]
        if family == "apt":  # DCGM 4 debs carry epoch 1 and revision 1
            return [PlannedPackage(n, ver, "dcgm", f"{n}=1:{ver}-*") for n in names]
        return [PlannedPackage(n, ver, "dcgm", f"{n}-{ver}") for n in names]
    name = "datacenter-gpu-manager"
    spec = f"{name}=1:{ver}" if family == "apt" else f"{name}-{ver}"  # 3.x debs: epoch 1, no revision
    return [PlannedPackage(name, ver, "dcgm", spec)]


def ofed_directory(stack: Stack, os_key: str, matrix: Matrix, os_release: str | None = None) -> str:
    """The OFED repository's per-OS directory (ubuntu22.04, rhel9.6, debian12.5). RHEL and Debian
    directories carry the minor release, and each OFED release publishes only the minors it
    supports (linux.mellanox.com/public/repo/doca/3.1.0/rhel9.6/x86_64/)."""
    if stack.ofed is None:
        raise PlanError(f"stack {stack.id} pins no OFED/DOCA; set infiniband.stack: inbox")
    supported = matrix.rules["ofed_supports_os"]["releases"].get(stack.ofed.key, {})
    dirs = supported.get(os_key) if isinstance(supported, Mapping) else None
    if not dirs:
        raise PlanError(
            f"{stack.ofed.flavour} {stack.ofed.version} does not support {os_key}"
            f" (supports {', '.join(supported) or 'nothing listed'}); set infiniband.stack: inbox"
        )
    # Only RHEL minors change the kernel ABI; Debian point releases (12.5 -> 12.12) keep it, so a
    # Debian 12 node uses the release's debian12.x directory whatever its point release.
    if os_release is None or os_family(os_key) == "apt":
        return dirs[0]
    prefix = "rhel" if os_family(os_key) == "dnf" else os_key.split("-", 1)[0]
    wanted = f"{prefix}{os_release}"
    if wanted not in dirs:
        raise PlanError(
            f"{stack.ofed.flavour} {stack.ofed.version} has no repository for {os_key.split('-')[0]} {os_release}"
            f" (it publishes {', '.join(dirs)}); update the OS or set infiniband.stack: inbox"
        )
    return wanted


def _infiniband(stack: Stack, os_key: str, family: str, options: PlanOptions, matrix: Matrix) -> list[PlannedPackage]:
    if options.infiniband_stack == "inbox":
        names = ["rdma-core", "infiniband-diags", "ibverbs-providers", "ibverbs-utils"]
        if family == "dnf":
            names = ["rdma-core", "infiniband-diags", "libibverbs-utils"]
        return [PlannedPackage(n, None, "infiniband", n, "distribution") for n in names]
    ofed_directory(stack, os_key, matrix, options.os_release)  # refuses an OS the release lacks
    # The OFED repositories are per release (the version is in the repository URL, see
    # repositories()), so the meta package is named bare and that repository pins it.
    name = "doca-ofed" if stack.ofed.flavour == "doca" else "mlnx-ofed-basic"
    return [PlannedPackage(name, stack.ofed.version, "infiniband", name)]


def _builds_dkms(stack: Stack, options: PlanOptions, has_gpu: bool) -> bool:
    layers = set(options.layers)
    return ("gpu" in layers and has_gpu) or ("infiniband" in layers and options.infiniband_stack == "matrix" and stack.ofed is not None)


def _plan_inputs(stack: Stack | Mapping, profile: HardwareProfile | Mapping | None,
                 options: PlanOptions | Mapping | None, matrix: Matrix | None,
                 ) -> tuple[Stack, HardwareProfile | None, PlanOptions, Matrix]:
    """The plan functions' arguments as models: the Ansible filter hands them plain mappings
    (the rendered variables), Python callers hand them models."""
    stack = stack if isinstance(stack, Stack) else Stack.model_validate(dict(stack))
    if profile is not None and not isinstance(profile, HardwareProfile):
        profile = HardwareProfile.model_validate(dict(profile))
    options = options if isinstance(options, PlanOptions) else PlanOptions.from_mapping(options)
    return stack, profile, options, matrix or load_matrix()


def package_plan(
    stack: Stack | Mapping,
    os_key: str,
    profile: HardwareProfile | Mapping | None,
    options: PlanOptions | Mapping | None = None,
    matrix: Matrix | None = None,
) -> list[PlannedPackage]:
    """Every package the GPU/IB/container roles install on one host, in install order."""
    stack, profile, options, matrix = _plan_inputs(stack, profile, options, matrix)
    family = os_family(os_key)
    wanted = set(options.components) if options.components is not None else set(COMPONENTS)
    unknown = wanted - set(COMPONENTS)
    if unknown:
        raise PlanError(f"unknown plan component(s): {', '.join(sorted(unknown))}")
    gpu = profile.gpu if profile is not None else None
    layers = set(options.layers)
    parts: dict[str, list[PlannedPackage]] = {}

    if _builds_dkms(stack, options, gpu is not None):
        parts["kernel_headers"] = _kernel_headers(family, options.kernel, options.kernel_package)

    if "gpu" in layers and gpu is not None:
        flavour, _ = driver_flavour(stack, profile, options.flavour)
        parts["driver"] = _driver(stack, os_key, family, flavour)
        if gpu.nvswitch:
            parts["fabric_manager"] = _fabric_manager(stack, family)
        if "nvlsm" in wanted and gpu.nvswitch and gpu.architecture.lower() in OPEN_ONLY:
            if not stack.nvlsm:
                raise PlanError(f"{gpu.model} HGX needs nvlsm; stack {stack.id} pins none")
            parts["nvlsm"] = [PlannedPackage("nvlsm", stack.nvlsm, "nvlsm", _spec(family, "nvlsm", stack.nvlsm))]
        name = f"cuda-toolkit-{_cuda_dash(stack.cuda)}"
        ver = stack.cuda_full or stack.cuda
        parts["cuda"] = [PlannedPackage(name, ver, "cuda", _spec(family, name, ver))]
        parts["cudnn"] = _cudnn(stack, family)
        names = ("libnccl2", "libnccl-dev") if family == "apt" else ("libnccl", "libnccl-devel")
        parts["nccl"] = [PlannedPackage(n, stack.nccl, "nccl", _spec(family, n, stack.nccl, exact=True)) for n in names]
        parts["dcgm"] = _dcgm(stack, family)
        names = ("openmpi-bin", "libopenmpi-dev", "make", "g++") if family == "apt" else ("openmpi", "openmpi-devel", "make", "gcc-c++")
        parts["nccl_tests"] = [PlannedPackage(n, None, "nccl_tests", n, "distribution") for n in names]

    if "container" in layers:
        if gpu is not None and stack.container_toolkit:
            ver = stack.container_toolkit
            names = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1")
            parts["container_toolkit"] = [PlannedPackage(n, ver, "container_toolkit", _spec(family, n, ver)) for n in names]
        if stack.enroot:
            parts["enroot"] = [PlannedPackage(n, stack.enroot, "enroot", _spec(family, n, stack.enroot)) for n in ("enroot", "enroot+caps")]
        if stack.pyxis:
            parts["pyxis"] = [PlannedPackage("pyxis", stack.pyxis, "pyxis", f"pyxis-{stack.pyxis}.tar.gz", "source")]

    if "infiniband" in layers:
        if "infiniband" in wanted:
            parts["infiniband"] = _infiniband(stack, os_key, family, options, matrix)
        origin = "distribution" if options.infiniband_stack == "inbox" else "vendor"
        parts["perftest"] = [PlannedPackage("perftest", None, "perftest", "perftest", origin)]
        if options.is_head and options.opensm:
            parts["opensm"] = [PlannedPackage("opensm", None, "opensm", "opensm", origin)]

    return [pkg for component in COMPONENTS if component in wanted for pkg in parts.get(component, [])]


def plan_names(plan: Iterable[PlannedPackage]) -> list[str]:
    return [p.name for p in plan if p.origin != "source"]


# --- repositories, kernel modules and services: the rest of a node's plan --------------------

CUDA_REPO_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"
# apt: the CUDA repositories' 2022 key; its fingerprint is what apt reports as NO_PUBKEY
# A4B469963BF863CC. rhel9: the repository's own key file is D42D0685.pub (no 3bf863cc.pub
# there; NVIDIA driver installation guide, RHEL 9 network repository).
CUDA_APT_KEY = ("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC")
CUDA_RPM_KEY = ("D42D0685.pub", None)  # fingerprint not recorded; key id D42D0685
# NVIDIA's published list file (stable/deb/nvidia-container-toolkit.list) reads
# `deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /`; $(ARCH) is the dpkg
# architecture (amd64). The .repo file (stable/rpm/nvidia-container-toolkit.repo) sets
# repo_gpgcheck=1, gpgcheck=0: the metadata is signed, the rpms are not.
CONTAINER_TOOLKIT_BASE = "https://nvidia.github.io/libnvidia-container/stable"
CONTAINER_TOOLKIT_KEY = ("https://nvidia.github.io/libnvidia-container/gpgkey", "C95B321B61E88C1809C4F759DDCAE044F796ECB0")
MELLANOX_REPO_BASE = "https://linux.mellanox.com/public/repo"
MELLANOX_KEY_URL = "https://linux.mellanox.com/public/repo/doca/GPG-KEY-Mellanox.pub"
APT_ARCH = "amd64"  # podsys installs x86_64 nodes only (the CUDA URLs say x86_64 too)


@dataclass(frozen=True)
class Repository:
    name: str
    url: str
    suite: str  # apt suite ("/" or "./" for flat repositories); "" for dnf
    key_url: str
    fingerprint: str | None
    gpgcheck: bool = True  # dnf: packages signed
    repo_gpgcheck: bool = False  # dnf: metadata signed
    for_components: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        data = asdict(self)
        data["for_components"] = list(self.for_components)
        return data


def nvidia_distro(os_key: str) -> str:
    """NVIDIA's per-distribution directory: ubuntu2204, ubuntu2404, debian12, rhel9."""
    distro, version = os_key.split("-", 1)
    if distro == "rocky":
        return "rhel" + version.split(".")[0]
    return distro + version.replace(".", "")


def repositories(stack: Stack, os_key: str, components: Iterable[str], options: PlanOptions | None = None,
                 matrix: Matrix | None = None) -> list[Repository]:
    """The vendor repositories the given plan components install from, in install order."""
    options = options or PlanOptions()
    matrix = matrix or load_matrix()
    family = os_family(os_key)
    components = set(components)
    out: list[Repository] = []
    ofed_parts = components & {"infiniband", "perftest", "opensm"}
    if ofed_parts and options.infiniband_stack == "matrix" and stack.ofed is not None:
        directory = ofed_directory(stack, os_key, matrix, options.os_release)
        kind = "doca" if stack.ofed.flavour == "doca" else "mlnx_ofed"
        out.append(Repository("ofed", f"{MELLANOX_REPO_BASE}/{kind}/{stack.ofed.version}/{directory}/x86_64/",
                              "./" if family == "apt" else "", MELLANOX_KEY_URL, None, True, False,
                              tuple(c for c in COMPONENTS if c in ofed_parts)))
    cuda_parts = components & {"driver", "fabric_manager", "nvlsm", "cuda", "cudnn", "nccl", "dcgm"}
    if cuda_parts:
        key_file, fingerprint = CUDA_APT_KEY if family == "apt" else CUDA_RPM_KEY
        url = f"{CUDA_REPO_BASE}/{nvidia_distro(os_key)}/x86_64/"
        out.append(Repository("cuda", url, "/" if family == "apt" else "", url + key_file, fingerprint, True, False,
                              tuple(c for c in COMPONENTS if c in cuda_parts)))
    if "container_toolkit" in components:
        url = f"{CONTAINER_TOOLKIT_BASE}/deb/{APT_ARCH}" if family == "apt" else f"{CONTAINER_TOOLKIT_BASE}/rpm/$basearch"
        out.append(Repository("container_toolkit", url, "/" if family == "apt" else "", *CONTAINER_TOOLKIT_KEY,
                              gpgcheck=False, repo_gpgcheck=True, for_components=("container_toolkit",)))
    return out


# The repositories the roles name (package_source_vendor_repos) and the plan components they serve.
REPOSITORY_COMPONENTS = {"cuda": ("cuda",), "container_toolkit": ("container_toolkit",), "ofed": ("infiniband",)}


def repositories_named(stack: Stack | Mapping, os_key: str, names: Iterable[str], options: PlanOptions | Mapping | None = None,
                       matrix: Matrix | None = None) -> list[Repository]:
    """The named repositories (cuda, container_toolkit, ofed) for one host, as repositories() defines them."""
    stack = stack if isinstance(stack, Stack) else Stack.model_validate(dict(stack))
    options = options if isinstance(options, PlanOptions) else PlanOptions.from_mapping(options)
    names = list(names)
    unknown = [n for n in names if n not in REPOSITORY_COMPONENTS]
    if unknown:
        raise PlanError(f"unknown repository name(s): {', '.join(unknown)} (known: {', '.join(REPOSITORY_COMPONENTS)})")
    components = [c for n in names for c in REPOSITORY_COMPONENTS[n]]
    return [r for r in repositories(stack, os_key, components, options, matrix) if r.name in names]


def vendor_proxy_options(repos: Iterable[Repository | Mapping], proxy: str) -> list[str]:
    """apt options that send the vendor repositories' downloads through `proxy` as an HTTP
    CONNECT proxy, one per host, in repository order: `Acquire::https::Proxy::<host> "<proxy>"`
    (apt's per-host proxy form, apt.conf(5); `acquire::https::proxy::*` in apt 2.6's
    /usr/share/doc/apt/examples/configure-index). The vendor
    repositories are https and apt-cacher-ng caches plain HTTP only, so they are tunnelled, not
    rewritten. The package_source role writes these for nodes in proxy mode (the head's cache,
    whose PassThroughPattern lets these hosts through); a node image build writes them for the
    site's packages.proxy, the way it reaches the distribution mirror. [] without a proxy."""
    if not proxy:
        return []
    hosts: list[str] = []
    for repo in repos:
        url = repo["url"] if isinstance(repo, Mapping) else repo.url
        host = urlsplit(str(url)).hostname
        if host and host not in hosts:
            hosts.append(host)
    return [f'Acquire::https::Proxy::{host} "{proxy}"' for host in hosts]


def apt_pins(packages: Iterable[PlannedPackage | Mapping], extra: Iterable[Mapping] = ()) -> list[tuple[str, str]]:
    """(package or pattern, version) apt preferences for a plan: every planned name with an
    apt version in its spec (name=version), then the extra patterns (NodePlan.pins)."""
    out: list[tuple[str, str]] = []
    for pkg in packages:
        name, version, spec = ((pkg["name"], pkg["version"], pkg["spec"]) if isinstance(pkg, Mapping)
                               else (pkg.name, pkg.version, pkg.spec))
        if version is not None and "=" in str(spec):
            out.append((str(name), str(spec).split("=", 1)[1]))
    out += [(str(e["packages"]), str(e["version"])) for e in extra]
    return out


def apt_preferences(pins: Iterable[tuple[str, str]]) -> str:
    """apt_preferences(5) stanzas at priority 1001: these versions even when a newer one appears
    (and a downgrade to them), so routine upgrades cannot move them."""
    return "".join(f"Package: {packages}\nPin: version {version}\nPin-Priority: 1001\n\n" for packages, version in pins)


@dataclass(frozen=True)
class NodePlan:
    """What one node gets, in install order: `podsys compat packages` prints it, the roles run it."""
    stack: str
    os: str
    family: str
    repositories: list[Repository]
    module_streams: list[str]  # dnf module streams enabled before the packages
    packages: list[PlannedPackage]
    pins: list[dict]  # apt preferences beyond the planned names: {packages, version}
    kernel_modules: list[dict]  # {name, when, why}, in load order
    services: list[dict]  # {name, why}
    notes: list[str]
    gpudirect: str | None = None  # nvidia_peermem | dmabuf | None (no GPU or no InfiniBand)

    def as_dict(self) -> dict:
        return {
            "stack": self.stack, "os": self.os, "family": self.family,
            "repositories": [r.as_dict() for r in self.repositories],
            "module_streams": list(self.module_streams),
            "packages": [p.as_dict() for p in self.packages],
            "pins": list(self.pins), "kernel_modules": list(self.kernel_modules),
            "services": list(self.services), "notes": list(self.notes), "gpudirect": self.gpudirect,
        }


def gpudirect_path(stack: Stack, profile: HardwareProfile | None, options: PlanOptions) -> str | None:
    """peermem with MLNX/DOCA OFED (its peer-memory API); DMA-BUF with the open modules and the
    inbox rdma stack. None: no GPU, or no InfiniBand layer."""
    if profile is None or profile.gpu is None or "infiniband" not in options.layers:
        return None
    if options.infiniband_stack == "matrix" and stack.ofed is not None:
        return "nvidia_peermem"
    flavour, _ = driver_flavour(stack, profile, options.flavour)
    return "dmabuf" if flavour == "open" else None


def node_plan(
    stack: Stack | Mapping,
    os_key: str,
    profile: HardwareProfile | Mapping | None,
    options: PlanOptions | Mapping | None = None,
    matrix: Matrix | None = None,
) -> NodePlan:
    stack, profile, options, matrix = _plan_inputs(stack, profile, options, matrix)
    family = os_family(os_key)
    packages = package_plan(stack, os_key, profile, options, matrix)
    components = [c for c in COMPONENTS if any(p.component == c for p in packages)]
    repos = repositories(stack, os_key, components, options, matrix)
    gpu = profile.gpu if profile is not None else None
    streams: list[str] = []
    pins: list[dict] = []
    modules: list[dict] = []
    services: list[dict] = []
    notes: list[str] = []
    gpudirect = None
    if "infiniband" in components and options.infiniband_stack == "matrix":
        modules.append({"name": "mlx5_ib", "when": "after OFED (openibd restart or reboot)", "why": "OFED's InfiniBand driver"})
    if "driver" in components:
        flavour, why = driver_flavour(stack, profile, options.flavour)
        notes.append(f"driver {stack.driver}, {flavour} kernel modules: {why}")
        if family == "dnf":
            streams.append(driver_module_stream(stack, flavour))
        else:
            pins.append({"packages": " ".join(DRIVER_PIN_PATTERNS), "version": f"{stack.driver}-*"})
        modules.append({"name": "nvidia", "when": "after the driver (reboot)", "why": f"version {stack.driver}, checked after reboot"})
        path = gpudirect = gpudirect_path(stack, profile, options)
        if path == "nvidia_peermem":
            modules.append({"name": "nvidia_peermem", "when": "after the driver, once `modinfo nvidia_peermem` finds it",
                            "why": "GPUDirect RDMA through the OFED peer-memory API"})
        elif path == "dmabuf":
            notes.append("GPUDirect RDMA through DMA-BUF (open kernel modules, inbox rdma stack): no module to load")
        services.append({"name": "nvidia-persistenced", "why": "keeps the GPUs initialised"})
    if "fabric_manager" in components:
        if family == "apt":
            pins.append({"packages": " ".join(FABRIC_MANAGER_PIN_PATTERNS), "version": f"{stack.fabric_manager or stack.driver}-*"})
        if gpu is not None and gpu.architecture.lower() in OPEN_ONLY:
            # NVLink5: the fabric manager unit's start script launches NVLSM itself and needs
            # ib_umad for the NVSwitch management datagrams (FM >= 570; spectrocloud/CanvOS#700
            # quotes nvidia-fabricmanager-start.sh "Detected NVL5+ system").
            modules.append({"name": "ib_umad", "when": "before fabric manager", "why": "NVLSM talks to the NVSwitches through /dev/infiniband/umad*"})
            notes.append("nvlsm is started by nvidia-fabricmanager's start script, not as its own unit")
        services.append({"name": "nvidia-fabricmanager", "why": "NVSwitch boards: CUDA fails with error 802 without it"})
    if "dcgm" in components:
        services.append({"name": "nvidia-dcgm", "why": "DCGM host engine for health checks and the exporter"})
    if "opensm" in components:
        services.append({"name": "opensm", "why": "InfiniBand subnet manager on the head"})
    return NodePlan(stack.id, os_key, family, repos, streams, packages, pins, modules, services, notes, gpudirect)


def reboot_reasons(has_gpu: bool, driver: str, installed_driver_versions: Iterable[str], loaded_driver: str | None,
                   nouveau_loaded: bool, earlier: Iterable[str] = ()) -> list[str]:
    """Why a node must reboot before the GPU stack can use its new kernel modules; [] = it runs
    what is planned (a node already running the pinned driver is left alone).

    installed_driver_versions: versions of the installed driver packages as the package manager
    reports them (1:580.95.05-1, 580.95.05-0ubuntu1, 580.95.05-1.el9); earlier: reasons roles
    recorded this run (OFED installed)."""
    reasons = list(earlier)
    if not has_gpu:
        return reasons
    upstream = {re.sub(r"-[^-]*$", "", re.sub(r"^\d+:", "", v)) for v in installed_driver_versions}
    if driver in upstream and (loaded_driver or "").strip() != driver:
        reasons.append(f"nvidia module {(loaded_driver or '').strip() or 'not loaded'}, driver {driver} installed")
    if nouveau_loaded:
        reasons.append("nouveau is loaded")
    return reasons
