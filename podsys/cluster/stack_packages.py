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

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from podsys.cluster.matrix import Matrix, Stack, load_matrix, version_key
from podsys.errors import PodsysError
from podsys.cluster.hardware import HardwareProfile

# Every component a plan can hold, in install order; each maps to the role that installs it.
COMPONENTS = (
    "driver",
    "fabric_manager",
    "nvlsm",
    "cuda",
    "nccl",
    "dcgm",
    "nccl_tests",
    "container_toolkit",
    "enroot",
    "pyxis",
    "infiniband",
    "perftest",
    "opensm",
)

# Open kernel modules need Turing or newer; Blackwell ships only with open modules.
PRE_TURING = frozenset({"kepler", "maxwell", "pascal", "volta"})
OPEN_ONLY = frozenset({"blackwell"})
OPEN_DEFAULT_FROM_BRANCH = 560  # open modules are NVIDIA's default flavour from R560 on

APT_FAMILY = ("debian", "ubuntu")
DNF_FAMILY = ("rocky",)


class PlanError(PodsysError):
    """The stack cannot be installed as asked on this host (one line, says what to change)."""


@dataclass(frozen=True)
class PlannedPackage:
    name: str
    version: str | None  # the matrix's version; None = whatever the distribution ships
    component: str
    spec: str  # handed to apt / dnf as is
    origin: str = "vendor"  # vendor (NVIDIA/Mellanox repository), distribution, or source (built here)

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
        return cls(
            flavour=str(gpu.get("flavour", data.pop("flavour", "auto"))),
            infiniband_stack=str(ib.get("stack", data.pop("infiniband_stack", "matrix"))),
            opensm=bool(ib.get("opensm", data.pop("opensm", False))),
            is_head=bool(data.pop("is_head", False)),
            layers=tuple(layers) if layers is not None else cls.layers,
            components=tuple(components) if components is not None else None,
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


def _driver(stack: Stack, os_key: str, family: str, flavour: str) -> list[PlannedPackage]:
    branch, ver = branch_number(stack), stack.driver
    if family == "dnf":
        kmod = "kmod-nvidia-open-dkms" if flavour == "open" else "kmod-nvidia-latest-dkms"
        names = ["nvidia-driver", kmod, "nvidia-persistenced"]
    elif os_key.startswith("debian-"):
        kmod = "nvidia-kernel-open-dkms" if flavour == "open" else "nvidia-kernel-dkms"
        names = ["nvidia-driver", kmod, "nvidia-persistenced"]
    else:  # ubuntu: branch-named packages; nvidia-compute-utils carries nvidia-persistenced
        names = [f"nvidia-driver-{branch}-open" if flavour == "open" else f"nvidia-driver-{branch}"]
    return [PlannedPackage(n, ver, "driver", _spec(family, n, ver)) for n in names]


def _fabric_manager(stack: Stack, family: str) -> list[PlannedPackage]:
    branch, ver = branch_number(stack), stack.fabric_manager or stack.driver
    fm = "nvidia-fabric-manager" if family == "dnf" else f"nvidia-fabricmanager-{branch}"
    names = [fm, f"libnvidia-nscq-{branch}"]
    return [PlannedPackage(n, ver, "fabric_manager", _spec(family, n, ver)) for n in names]


def _dcgm(stack: Stack, family: str) -> list[PlannedPackage]:
    ver = stack.dcgm
    if ver is None:
        return []
    if version_key(ver)[0] >= 4:
        cuda_major = stack.cuda.split(".")[0]
        names = ["datacenter-gpu-manager-4-core", f"datacenter-gpu-manager-4-cuda{cuda_major}"]
        if family == "apt":  # DCGM 4 debs carry epoch 1 and revision 1
            return [PlannedPackage(n, ver, "dcgm", f"{n}=1:{ver}-*") for n in names]
        return [PlannedPackage(n, ver, "dcgm", f"{n}-{ver}") for n in names]
    name = "datacenter-gpu-manager"
    spec = f"{name}=1:{ver}" if family == "apt" else f"{name}-{ver}"  # 3.x debs: epoch 1, no revision
    return [PlannedPackage(name, ver, "dcgm", spec)]


def _infiniband(stack: Stack, os_key: str, family: str, options: PlanOptions, matrix: Matrix) -> list[PlannedPackage]:
    if options.infiniband_stack == "inbox":
        names = ["rdma-core", "infiniband-diags", "ibverbs-providers", "ibverbs-utils"]
        if family == "dnf":
            names = ["rdma-core", "infiniband-diags", "libibverbs-utils"]
        return [PlannedPackage(n, None, "infiniband", n, "distribution") for n in names]
    if stack.ofed is None:
        raise PlanError(f"stack {stack.id} pins no OFED/DOCA; set infiniband.stack: inbox")
    supported = matrix.rules["ofed_supports_os"]["releases"].get(stack.ofed.key, [])
    if os_key not in supported:
        raise PlanError(
            f"{stack.ofed.flavour} {stack.ofed.version} does not support {os_key}"
            f" (supports {', '.join(supported) or 'nothing listed'}); set infiniband.stack: inbox"
        )
    # The OFED repositories are per release (the version is in the repository URL, see the
    # package_source role), so the meta package is named bare and that repository pins it.
    name = "doca-ofed" if stack.ofed.flavour == "doca" else "mlnx-ofed-basic"
    return [PlannedPackage(name, stack.ofed.version, "infiniband", name)]


def package_plan(
    stack: Stack | Mapping,
    os_key: str,
    profile: HardwareProfile | Mapping | None,
    options: PlanOptions | Mapping | None = None,
    matrix: Matrix | None = None,
) -> list[PlannedPackage]:
    """Every package the GPU/IB/container roles install on one host, in install order."""
    stack = stack if isinstance(stack, Stack) else Stack.model_validate(dict(stack))
    if profile is not None and not isinstance(profile, HardwareProfile):
        profile = HardwareProfile.model_validate(dict(profile))
    options = options if isinstance(options, PlanOptions) else PlanOptions.from_mapping(options)
    matrix = matrix or load_matrix()
    family = os_family(os_key)
    wanted = set(options.components) if options.components is not None else set(COMPONENTS)
    unknown = wanted - set(COMPONENTS)
    if unknown:
        raise PlanError(f"unknown plan component(s): {', '.join(sorted(unknown))}")
    gpu = profile.gpu if profile is not None else None
    layers = set(options.layers)
    plan: list[PlannedPackage] = []

    def want(component: str) -> bool:
        return component in wanted

    if "gpu" in layers and gpu is not None:
        if want("driver"):
            flavour, _ = driver_flavour(stack, profile, options.flavour)
            plan += _driver(stack, os_key, family, flavour)
        if want("fabric_manager") and gpu.nvswitch:
            plan += _fabric_manager(stack, family)
        if want("nvlsm") and gpu.nvswitch and gpu.architecture.lower() in OPEN_ONLY:
            if not stack.nvlsm:
                raise PlanError(f"{gpu.model} HGX needs nvlsm; stack {stack.id} pins none")
            plan.append(PlannedPackage("nvlsm", stack.nvlsm, "nvlsm", _spec(family, "nvlsm", stack.nvlsm)))
        if want("cuda"):
            name = f"cuda-toolkit-{_cuda_dash(stack.cuda)}"
            ver = stack.cuda_full or stack.cuda
            plan.append(PlannedPackage(name, ver, "cuda", _spec(family, name, ver)))
        if want("nccl"):
            names = ("libnccl2", "libnccl-dev") if family == "apt" else ("libnccl", "libnccl-devel")
            plan += [PlannedPackage(n, stack.nccl, "nccl", _spec(family, n, stack.nccl, exact=True)) for n in names]
        if want("dcgm"):
            plan += _dcgm(stack, family)
        if want("nccl_tests"):
            names = ("openmpi-bin", "libopenmpi-dev", "make", "g++") if family == "apt" else ("openmpi", "openmpi-devel", "make", "gcc-c++")
            plan += [PlannedPackage(n, None, "nccl_tests", n, "distribution") for n in names]

    if "container" in layers:
        if want("container_toolkit") and gpu is not None and stack.container_toolkit:
            ver = stack.container_toolkit
            names = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1")
            plan += [PlannedPackage(n, ver, "container_toolkit", _spec(family, n, ver)) for n in names]
        if want("enroot") and stack.enroot:
            plan += [PlannedPackage(n, stack.enroot, "enroot", _spec(family, n, stack.enroot)) for n in ("enroot", "enroot+caps")]
        if want("pyxis") and stack.pyxis:
            plan.append(PlannedPackage("pyxis", stack.pyxis, "pyxis", f"pyxis-{stack.pyxis}.tar.gz", "source"))

    if "infiniband" in layers:
        if want("infiniband"):
            plan += _infiniband(stack, os_key, family, options, matrix)
        if want("perftest"):
            plan.append(PlannedPackage("perftest", None, "perftest", "perftest", "distribution" if options.infiniband_stack == "inbox" else "vendor"))
        if want("opensm") and options.is_head and options.opensm:
            plan.append(PlannedPackage("opensm", None, "opensm", "opensm", "distribution" if options.infiniband_stack == "inbox" else "vendor"))
    return plan


def plan_names(plan: Iterable[PlannedPackage]) -> list[str]:
    return [p.name for p in plan if p.origin != "source"]
