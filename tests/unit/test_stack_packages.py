"""The package plan for every stack in the matrix: exact names and versions, derived here from
the matrix values independently of podsys/cluster/stack_packages.py's helpers."""

from __future__ import annotations

import pytest

from podsys.cluster.matrix import load_matrix
from podsys.cluster.hardware import HardwareProfile, builtin_profiles
from podsys.cluster.stack_packages import PlanError, PlanOptions, driver_flavour, package_plan

MATRIX = load_matrix()
PROFILES = builtin_profiles()
STACK_OS = [(sid, os_key) for sid, s in MATRIX.stacks.items() for os_key in s.os]
GPU_LAYERS = {"layers": ["gpu"]}


def _branch(stack) -> str:
    return stack.driver.split(".")[0]


def expected_gpu_plan(stack, os_key: str, profile_id: str) -> list[tuple[str, str | None]]:
    """The plan an admin would write by hand from the matrix row, for the gpu layer."""
    profile = PROFILES[profile_id]
    branch = _branch(stack)
    rocky = os_key.startswith("rocky")
    open_modules = profile.gpu.architecture == "blackwell" or int(branch) >= 560
    if rocky:
        kmod = "kmod-nvidia-open-dkms" if open_modules else "kmod-nvidia-latest-dkms"
        out = [(n, stack.driver) for n in ("nvidia-driver", kmod, "nvidia-persistenced")]
    elif os_key.startswith("debian"):
        kmod = "nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms"
        out = [(n, stack.driver) for n in ("nvidia-driver", kmod, "nvidia-persistenced")]
    else:
        out = [(f"nvidia-driver-{branch}-open" if open_modules else f"nvidia-driver-{branch}", stack.driver)]
    if profile.gpu.nvswitch:
        fm = "nvidia-fabric-manager" if rocky else f"nvidia-fabricmanager-{branch}"
        out += [(fm, stack.fabric_manager), (f"libnvidia-nscq-{branch}", stack.fabric_manager)]
        if profile.gpu.architecture == "blackwell":
            out.append(("nvlsm", stack.nvlsm))
    out.append((f"cuda-toolkit-{stack.cuda.replace('.', '-')}", stack.cuda_full))
    out += [("libnccl", stack.nccl), ("libnccl-devel", stack.nccl)] if rocky else [("libnccl2", stack.nccl), ("libnccl-dev", stack.nccl)]
    if stack.dcgm.startswith("3."):
        out.append(("datacenter-gpu-manager", stack.dcgm))
    else:
        major = stack.cuda.split(".")[0]
        out += [("datacenter-gpu-manager-4-core", stack.dcgm), (f"datacenter-gpu-manager-4-cuda{major}", stack.dcgm)]
    mpi = ("openmpi", "openmpi-devel", "make", "gcc-c++") if rocky else ("openmpi-bin", "libopenmpi-dev", "make", "g++")
    out += [(n, None) for n in mpi]
    return out


def _valid_profiles(stack) -> list[str]:
    """GPU profiles the matrix accepts for this stack (B200 needs R570+)."""
    from podsys.cluster.matrix import check_combination

    ok = []
    for pid, profile in PROFILES.items():
        if profile.gpu is None:
            continue
        violations = check_combination(MATRIX, stack, stack.os[0], [profile], ["gpu"])
        if not [v for v in violations if v.rule != "stack_supports_os"]:
            ok.append(pid)
    return ok


@pytest.mark.parametrize("stack_id,os_key", STACK_OS)
def test_gpu_plan_matches_matrix_for_every_stack_os_and_profile(stack_id, os_key):
    stack = MATRIX.stack(stack_id)
    profiles = _valid_profiles(stack)
    assert "hgx-h100-8gpu" in profiles
    for pid in profiles:
        plan = package_plan(stack, os_key, PROFILES[pid], GPU_LAYERS)
        assert [tuple(p) for p in plan] == expected_gpu_plan(stack, os_key, pid), (stack_id, os_key, pid)


@pytest.mark.parametrize("stack_id", list(MATRIX.stacks))
def test_apt_specs_pin_the_matrix_versions(stack_id):
    stack = MATRIX.stack(stack_id)
    plan = {p.name: p.spec for p in package_plan(stack, "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)}
    branch = _branch(stack)
    driver_pkg = f"nvidia-driver-{branch}-open" if int(branch) >= 560 else f"nvidia-driver-{branch}"
    assert plan[driver_pkg] == f"{driver_pkg}={stack.driver}-*"
    assert plan[f"nvidia-fabricmanager-{branch}"] == f"nvidia-fabricmanager-{branch}={stack.driver}-*"
    assert plan["libnccl2"] == f"libnccl2={stack.nccl}"
    assert plan["libnccl-dev"] == f"libnccl-dev={stack.nccl}"
    cuda = f"cuda-toolkit-{stack.cuda.replace('.', '-')}"
    assert plan[cuda] == f"{cuda}={stack.cuda_full}-*"
    if stack.dcgm.startswith("3."):
        assert plan["datacenter-gpu-manager"] == f"datacenter-gpu-manager=1:{stack.dcgm}"
    else:
        assert plan["datacenter-gpu-manager-4-core"] == f"datacenter-gpu-manager-4-core=1:{stack.dcgm}-*"


@pytest.mark.parametrize("stack_id", list(MATRIX.stacks))
def test_rocky_specs_are_name_dash_version(stack_id):
    stack = MATRIX.stack(stack_id)
    plan = {p.name: p.spec for p in package_plan(stack, "rocky-9", PROFILES["hgx-a100-8gpu"], GPU_LAYERS)}
    assert plan["nvidia-driver"] == f"nvidia-driver-{stack.driver}"
    assert plan["libnccl"] == f"libnccl-{stack.nccl}"


@pytest.mark.parametrize("stack_id", list(MATRIX.stacks))
def test_container_layer_plan(stack_id):
    stack = MATRIX.stack(stack_id)
    plan = package_plan(stack, "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], {"layers": ["container"]})
    ctk = stack.container_toolkit
    assert [tuple(p) for p in plan] == [
        ("nvidia-container-toolkit", ctk),
        ("nvidia-container-toolkit-base", ctk),
        ("libnvidia-container-tools", ctk),
        ("libnvidia-container1", ctk),
        ("enroot", stack.enroot),
        ("enroot+caps", stack.enroot),
        ("pyxis", stack.pyxis),
    ]
    assert plan[-1].origin == "source"
    # A CPU-only node gets enroot and pyxis but no NVIDIA container toolkit.
    cpu = package_plan(stack, "debian-12", PROFILES["cpu-only"], {"layers": ["container", "gpu"]})
    assert [p.name for p in cpu] == ["enroot", "enroot+caps", "pyxis"]


@pytest.mark.parametrize("stack_id", list(MATRIX.stacks))
def test_infiniband_matrix_stack_names_the_ofed_of_the_stack(stack_id):
    stack = MATRIX.stack(stack_id)
    plan = package_plan(stack, "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], {"layers": ["infiniband"]})
    meta = "doca-ofed" if stack.ofed.flavour == "doca" else "mlnx-ofed-basic"
    assert [tuple(p) for p in plan] == [(meta, stack.ofed.version), ("perftest", None)]


def test_infiniband_inbox_uses_distribution_packages_and_opensm_only_on_head():
    stack = MATRIX.stack("r535-cuda12.2")
    opts = {"layers": ["infiniband"], "infiniband": {"stack": "inbox", "opensm": True}}
    node = package_plan(stack, "debian-12", PROFILES["cpu-only"], opts)
    assert [p.name for p in node] == ["rdma-core", "infiniband-diags", "ibverbs-providers", "ibverbs-utils", "perftest"]
    assert all(p.version is None and p.origin == "distribution" for p in node)
    head = package_plan(stack, "debian-12", None, {**opts, "is_head": True})
    assert head[-1].name == "opensm"


def test_ofed_refused_on_an_os_it_does_not_support():
    with pytest.raises(PlanError, match="does not support debian-12.*infiniband.stack: inbox"):
        package_plan(MATRIX.stack("r570-cuda12.8"), "debian-12", PROFILES["hgx-h100-8gpu"], {"layers": ["infiniband"]})


def test_cpu_only_profile_gets_no_gpu_packages():
    assert package_plan(MATRIX.stack("r580-cuda13.0"), "debian-12", PROFILES["cpu-only"], GPU_LAYERS) == []


def test_components_restrict_the_plan_to_one_role():
    plan = package_plan(
        MATRIX.stack("r550-cuda12.4"), "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], {"layers": ["gpu"], "components": "nccl"}
    )
    assert [p.name for p in plan] == ["libnccl2", "libnccl-dev"]


def test_plan_accepts_ansible_dicts():
    stack = MATRIX.stack("r570-cuda12.8")
    as_vars = package_plan(stack.as_vars(), "ubuntu-24.04", PROFILES["hgx-b200-8gpu"].model_dump(), GPU_LAYERS)
    assert as_vars == package_plan(stack, "ubuntu-24.04", PROFILES["hgx-b200-8gpu"], PlanOptions(layers=("gpu",)))


def _profile_with_arch(arch: str) -> HardwareProfile:
    data = PROFILES["hgx-a100-8gpu"].model_dump()
    data["gpu"]["architecture"] = arch
    return HardwareProfile.model_validate(data)


@pytest.mark.parametrize(
    "arch,branch_stack,requested,expected",
    [
        ("blackwell", "r570-cuda12.8", "auto", "open"),
        ("hopper", "r535-cuda12.2", "auto", "proprietary"),
        ("hopper", "r570-cuda12.8", "auto", "open"),
        ("hopper", "r535-cuda12.2", "open", "open"),
        ("ampere", "r580-cuda13.0", "proprietary", "proprietary"),
        ("volta", "r580-cuda13.0", "auto", "proprietary"),
    ],
)
def test_driver_flavour(arch, branch_stack, requested, expected):
    flavour, why = driver_flavour(MATRIX.stack(branch_stack), _profile_with_arch(arch), requested)
    assert flavour == expected and why


@pytest.mark.parametrize("arch,requested,message", [("blackwell", "proprietary", "only the open"), ("volta", "open", "predates Turing")])
def test_driver_flavour_refuses_what_the_gpu_cannot_run(arch, requested, message):
    with pytest.raises(PlanError, match=message):
        driver_flavour(MATRIX.stack("r580-cuda13.0"), _profile_with_arch(arch), requested)


def test_unknown_os_is_a_plan_error():
    with pytest.raises(PlanError, match="no package plan for sles-15"):
        package_plan(MATRIX.stack("r580-cuda13.0"), "sles-15", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
