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
    out = [("kernel-devel-$(uname -r)", None), ("dkms", None)] if rocky else [("linux-headers-$(uname -r)", None)]
    if not rocky and int(branch) >= 580:
        out.append((f"nvidia-driver-pinning-{stack.driver}", None))
    if rocky:
        kmod = "kmod-nvidia-open-dkms" if open_modules else "kmod-nvidia-latest-dkms"
        out += [(n, stack.driver) for n in ("nvidia-driver", kmod, "nvidia-persistenced")]
    elif os_key.startswith("debian"):
        kmod = "nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms"
        out += [(n, stack.driver) for n in ("nvidia-driver", kmod, "nvidia-persistenced")]
    else:
        out.append((f"nvidia-driver-{branch}-open" if open_modules else f"nvidia-driver-{branch}", stack.driver))
    if profile.gpu.nvswitch:
        # gpu-driver-container install.sh: R580+ unbranched on apt and dnf; before, apt
        # nvidia-fabricmanager-<branch>, dnf nvidia-fabric-manager; NSCQ per branch.
        if int(branch) >= 580:
            fm, nscq = "nvidia-fabricmanager", "libnvidia-nscq"
        else:
            fm, nscq = ("nvidia-fabric-manager" if rocky else f"nvidia-fabricmanager-{branch}"), f"libnvidia-nscq-{branch}"
        out += [(fm, stack.fabric_manager), (nscq, stack.fabric_manager)]
        if profile.gpu.architecture == "blackwell":
            out.append(("nvlsm", stack.nvlsm))
    out.append((f"cuda-toolkit-{stack.cuda.replace('.', '-')}", stack.cuda_full))
    if stack.cudnn.startswith("9."):
        major = stack.cuda.split(".")[0]
        dev = "devel" if rocky else "dev"
        out += [(f"libcudnn9-cuda-{major}", stack.cudnn), (f"libcudnn9-{dev}-cuda-{major}", stack.cudnn)]
    else:
        out += [("libcudnn8", stack.cudnn), ("libcudnn8-devel" if rocky else "libcudnn8-dev", stack.cudnn)]
    out += [("libnccl", stack.nccl), ("libnccl-devel", stack.nccl)] if rocky else [("libnccl2", stack.nccl), ("libnccl-dev", stack.nccl)]
    if stack.dcgm.startswith("3."):
        out.append(("datacenter-gpu-manager", stack.dcgm))
    else:
        major = stack.cuda.split(".")[0]
        out += [(n, stack.dcgm) for n in ("datacenter-gpu-manager-4-core", f"datacenter-gpu-manager-4-cuda{major}",
                                           "datacenter-gpu-manager-4-proprietary", f"datacenter-gpu-manager-4-proprietary-cuda{major}")]
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
    fm = "nvidia-fabricmanager" if int(branch) >= 580 else f"nvidia-fabricmanager-{branch}"
    assert plan[fm] == f"{fm}={stack.driver}-*"
    assert plan["libnccl2"] == f"libnccl2={stack.nccl}"
    assert plan["libnccl-dev"] == f"libnccl-dev={stack.nccl}"
    cuda = f"cuda-toolkit-{stack.cuda.replace('.', '-')}"
    assert plan[cuda] == f"{cuda}={stack.cuda_full}-*"
    if stack.dcgm.startswith("3."):
        assert plan["datacenter-gpu-manager"] == f"datacenter-gpu-manager=1:{stack.dcgm}"
    else:
        for name in ("datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-proprietary"):
            assert plan[name] == f"{name}=1:{stack.dcgm}-*"


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
    # OFED builds its kernel modules with DKMS: the running kernel's headers come first.
    assert [tuple(p) for p in plan] == [("linux-headers-$(uname -r)", None), (meta, stack.ofed.version), ("perftest", None)]


def test_infiniband_inbox_uses_distribution_packages_and_opensm_only_on_head():
    stack = MATRIX.stack("r535-cuda12.2")
    opts = {"layers": ["infiniband"], "infiniband": {"stack": "inbox", "opensm": True}}
    node = package_plan(stack, "debian-12", PROFILES["cpu-only"], opts)
    assert [p.name for p in node] == ["rdma-core", "infiniband-diags", "ibverbs-providers", "ibverbs-utils", "perftest"]
    assert all(p.version is None and p.origin == "distribution" for p in node)
    head = package_plan(stack, "debian-12", None, {**opts, "is_head": True})
    assert head[-1].name == "opensm"


def test_ofed_refused_on_an_os_it_does_not_support():
    stack = MATRIX.stack("r570-cuda12.8").model_copy(update={"os": ("ubuntu-20.04",)})
    with pytest.raises(PlanError, match="does not support ubuntu-20.04.*infiniband.stack: inbox"):
        package_plan(stack, "ubuntu-20.04", PROFILES["hgx-h100-8gpu"], {"layers": ["infiniband"]})


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


# --- issue 13: each finding against NVIDIA's published names and paths ------------------------

from podsys.cluster.stack_packages import COMPONENTS, node_plan, repositories  # noqa: E402


def _names(plan, component):
    return [p.name for p in plan if p.component == component]


@pytest.mark.parametrize("os_key,expected", [
    ("ubuntu-22.04", ["nvidia-fabricmanager", "libnvidia-nscq"]),
    ("debian-12", ["nvidia-fabricmanager", "libnvidia-nscq"]),
    ("rocky-9", ["nvidia-fabricmanager", "libnvidia-nscq"]),
])
def test_r580_fabric_manager_and_nscq_drop_the_branch(os_key, expected):
    # Finding 3: NVIDIA/gpu-driver-container install.sh, `if [ "$DRIVER_BRANCH" -ge "580" ]`:
    # apt nvidia-fabricmanager=${DRIVER_VERSION}-1, libnvidia-nscq=...; dnf nvidia-fabricmanager-${DRIVER_VERSION}-1.
    plan = package_plan(MATRIX.stack("r580-cuda13.0"), os_key, PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    assert _names(plan, "fabric_manager") == expected
    specs = [p.spec for p in plan if p.component == "fabric_manager"]
    assert specs == ([f"{n}=580.95.05-*" for n in expected] if os_key != "rocky-9" else [f"{n}-580.95.05" for n in expected])


def test_r570_fabric_manager_keeps_the_branch_names():
    plan = package_plan(MATRIX.stack("r570-cuda12.8"), "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    assert _names(plan, "fabric_manager") == ["nvidia-fabricmanager-570", "libnvidia-nscq-570"]
    rocky = package_plan(MATRIX.stack("r570-cuda12.8"), "rocky-9", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    assert _names(rocky, "fabric_manager") == ["nvidia-fabric-manager", "libnvidia-nscq-570"]


def test_container_toolkit_repository_is_nvidias_published_list():
    # Finding 2: stable/deb/nvidia-container-toolkit.list reads `.../stable/deb/$(ARCH) /`
    # ($(ARCH) = amd64); the .repo sets repo_gpgcheck=1, gpgcheck=0.
    stack = MATRIX.stack("r580-cuda13.0")
    (apt,) = repositories(stack, "ubuntu-22.04", ["container_toolkit"])
    assert (apt.url, apt.suite) == ("https://nvidia.github.io/libnvidia-container/stable/deb/amd64", "/")
    assert apt.fingerprint == "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
    (dnf,) = repositories(stack, "rocky-9", ["container_toolkit"])
    assert dnf.url == "https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch"
    assert (dnf.repo_gpgcheck, dnf.gpgcheck) == (True, False)


def test_cuda_repository_keys_per_distribution():
    # Finding 4: rhel9 publishes D42D0685.pub (no 3bf863cc.pub there).
    stack = MATRIX.stack("r580-cuda13.0")
    (rocky,) = repositories(stack, "rocky-9", ["cuda"])
    assert rocky.key_url == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/D42D0685.pub"
    (ubuntu,) = repositories(stack, "ubuntu-24.04", ["cuda"])
    assert ubuntu.key_url == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/3bf863cc.pub"
    assert ubuntu.fingerprint == "EB693B3035CD5710E231E123A4B469963BF863CC"
    (debian,) = repositories(stack, "debian-12", ["driver"])
    assert debian.url == "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"


@pytest.mark.parametrize("stack_id,profile,stream", [
    ("r580-cuda13.0", "hgx-h100-8gpu", "nvidia-driver:580-open"),
    ("r535-cuda12.2", "hgx-h100-8gpu", "nvidia-driver:535-dkms"),
])
def test_rocky_driver_installs_through_the_branch_module_stream(stack_id, profile, stream):
    # Finding 4: `dnf module enable nvidia-driver:<branch>-open` (or -dkms), dkms from EPEL.
    plan = node_plan(MATRIX.stack(stack_id), "rocky-9", PROFILES[profile], GPU_LAYERS)
    assert plan.module_streams == [stream]
    assert [(p.name, p.origin) for p in plan.packages if p.component == "kernel_headers"] == [
        ("kernel-devel-$(uname -r)", "distribution"), ("dkms", "epel")]


@pytest.mark.parametrize("os_key,release,directory", [
    ("rocky-9", "9.6", "rhel9.6"),
    ("rocky-9", None, "rhel9.6"),
    ("debian-12", "12.5", "debian12.5"),
    ("debian-12", "12.12", "debian12.5"),  # point releases keep the kernel ABI; RHEL minors do not
    ("ubuntu-22.04", "22.04", "ubuntu22.04"),
])
def test_ofed_directories_carry_the_minor_release(os_key, release, directory):
    # Finding 5: linux.mellanox.com/public/repo/doca/3.1.0/rhel9.6/x86_64/, doca/2.9.0/debian12.5/x86_64/.
    (repo,) = repositories(MATRIX.stack("r580-cuda13.0"), os_key, ["infiniband"], PlanOptions(os_release=release))
    assert repo.url == f"https://linux.mellanox.com/public/repo/doca/3.1.0/{directory}/x86_64/"


def test_ofed_refuses_a_minor_release_it_does_not_publish():
    with pytest.raises(PlanError, match="no repository for rocky 9.2 .*rhel9.6, rhel9.5"):
        repositories(MATRIX.stack("r580-cuda13.0"), "rocky-9", ["infiniband"], PlanOptions(os_release="9.2"))


@pytest.mark.parametrize("stack_id,os_key,expected", [
    ("r570-cuda12.8", "ubuntu-22.04", ["libcudnn9-cuda-12=9.8.0.87-1", "libcudnn9-dev-cuda-12=9.8.0.87-1"]),
    ("r580-cuda13.0", "ubuntu-24.04", ["libcudnn9-cuda-13=9.13.0.50-1", "libcudnn9-dev-cuda-13=9.13.0.50-1"]),
    ("r570-cuda12.8", "rocky-9", ["libcudnn9-cuda-12-9.8.0.87-1", "libcudnn9-devel-cuda-12-9.8.0.87-1"]),
    ("r535-cuda12.2", "ubuntu-22.04", ["libcudnn8=8.9.7.29-1+cuda12.2", "libcudnn8-dev=8.9.7.29-1+cuda12.2"]),
])
def test_cudnn_is_planned_with_nvidias_names(stack_id, os_key, expected):
    # Finding 7: cuDNN 9 is per CUDA major without +cudaX.Y (libcudnn9-cuda-12=9.8.0.87-1).
    plan = package_plan(MATRIX.stack(stack_id), os_key, PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    assert [p.spec for p in plan if p.component == "cudnn"] == expected


def test_debian_driver_pins_cover_every_library_the_driver_pulls_in():
    # Finding 8: libcuda1, libglx-nvidia0 and friends pinned too; R580 adds NVIDIA's pinning package first.
    plan = node_plan(MATRIX.stack("r580-cuda13.0"), "debian-12", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    driver = [p.name for p in plan.packages if p.component == "driver"]
    assert driver[0] == "nvidia-driver-pinning-580.95.05"
    (pins, _fm) = plan.pins
    assert pins["version"] == "580.95.05-*"
    for name in ("libcuda1", "libglx-nvidia0", "libegl-nvidia0", "libnvidia-*", "nvidia-*", "firmware-nvidia-*"):
        assert name in pins["packages"].split()
    older = node_plan(MATRIX.stack("r570-cuda12.8"), "debian-12", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    assert not [p for p in older.packages if p.name.startswith("nvidia-driver-pinning")]
    assert "libcuda1" in older.pins[0]["packages"].split()


def test_kernel_headers_come_before_every_dkms_build():
    # Finding 10: linux-headers-$(uname -r) first, OFED before the driver.
    plan = package_plan(MATRIX.stack("r580-cuda13.0"), "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], {"kernel": "6.8.0-45-generic"})
    components = [p.component for p in plan]
    assert plan[0].name == "linux-headers-6.8.0-45-generic"
    assert components.index("infiniband") < components.index("driver") < components.index("fabric_manager")
    assert list(COMPONENTS[:4]) == ["kernel_headers", "infiniband", "driver", "fabric_manager"]


def test_blackwell_loads_ib_umad_and_runs_no_separate_nvlsm_unit():
    # Finding 11: FM >= 570 on NVLink5 starts NVLSM from its own start script and needs ib_umad.
    plan = node_plan(MATRIX.stack("r580-cuda13.0"), "ubuntu-24.04", PROFILES["hgx-b200-8gpu"], GPU_LAYERS)
    assert "nvlsm" in [p.name for p in plan.packages]
    assert "ib_umad" in [m["name"] for m in plan.kernel_modules]
    assert "nvlsm" not in [s["name"] for s in plan.services]
    hopper = node_plan(MATRIX.stack("r580-cuda13.0"), "ubuntu-24.04", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    assert "ib_umad" not in [m["name"] for m in hopper.kernel_modules]


def test_nccl_tests_release_builds_for_the_stacks_cuda():
    # Finding 12: v2.14.1 predates CUDA 13 (its common.mk has no CUDA_MAJOR >= 13 branch and asks
    # nvcc for compute_60/70); v2.15.1+ drops them for CUDA 13. The R580 stack pins 2.16.9.
    assert MATRIX.stack("r580-cuda13.0").nccl_tests == "2.16.9"
    assert all(s.nccl_tests for s in MATRIX.stacks.values())


def test_dcgm4_proprietary_is_pinned_with_core():
    # Finding 13: datacenter-gpu-manager-4-proprietary at the same version as -core.
    plan = package_plan(MATRIX.stack("r580-cuda13.0"), "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], GPU_LAYERS)
    dcgm = {p.name: p.spec for p in plan if p.component == "dcgm"}
    assert dcgm["datacenter-gpu-manager-4-proprietary"] == "datacenter-gpu-manager-4-proprietary=1:4.4.1-*"
    assert dcgm["datacenter-gpu-manager-4-proprietary-cuda13"] == "datacenter-gpu-manager-4-proprietary-cuda13=1:4.4.1-*"
    assert dcgm["datacenter-gpu-manager-4-core"] == "datacenter-gpu-manager-4-core=1:4.4.1-*"


def test_gpudirect_path_follows_the_rdma_stack():
    stack = MATRIX.stack("r580-cuda13.0")
    ofed = node_plan(stack, "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], {"layers": ["gpu", "infiniband"]})
    names = [m["name"] for m in ofed.kernel_modules]
    assert names.index("mlx5_ib") < names.index("nvidia") < names.index("nvidia_peermem")
    inbox = node_plan(stack, "ubuntu-22.04", PROFILES["hgx-h100-8gpu"], {"layers": ["gpu", "infiniband"], "infiniband": {"stack": "inbox"}})
    assert "nvidia_peermem" not in [m["name"] for m in inbox.kernel_modules]
    assert any("DMA-BUF" in n for n in inbox.notes)


# --- reboots as part of deploy (node_reboot role) ---------------------------------------------

from podsys.cluster.stack_packages import reboot_reasons  # noqa: E402


@pytest.mark.parametrize("installed", [["580.95.05-1"], ["1:580.95.05-0ubuntu1"], ["580.95.05-1.el9"]])
def test_a_node_running_the_pinned_driver_is_not_rebooted(installed):
    assert reboot_reasons(True, "580.95.05", installed, "580.95.05\n", False) == []


def test_a_new_driver_not_yet_loaded_needs_a_reboot():
    assert reboot_reasons(True, "580.95.05", ["580.95.05-1"], "", False) == ["nvidia module not loaded, driver 580.95.05 installed"]
    assert reboot_reasons(True, "580.95.05", ["580.95.05-1"], "570.172.08", False) == [
        "nvidia module 570.172.08, driver 580.95.05 installed"]


def test_nouveau_and_ofed_changes_need_a_reboot_and_cpu_nodes_only_for_ofed():
    assert reboot_reasons(True, "580.95.05", [], "", True) == ["nouveau is loaded"]
    assert reboot_reasons(False, "580.95.05", [], "", True, ["OFED 3.1.0 installed"]) == ["OFED 3.1.0 installed"]
    # The driver is not installed (yet): nothing to load, nothing to reboot for.
    assert reboot_reasons(True, "580.95.05", ["570.172.08-1"], "570.172.08", False) == []
