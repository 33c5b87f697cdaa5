"""playbooks/gpu.yml and the GPU/IB roles: the play and role order issue 13 requires (OFED ->
driver -> reboot -> GPUDirect -> fabric manager -> the rest), and the role-level fixes that are
not in the package plan (peermem after the driver, proxy mode over CONNECT, ib_umad, the
nccl-tests MPI headers on EL)."""

from __future__ import annotations

from pathlib import Path

import yaml
from jinja2 import Environment

from podsys.cluster.stack_packages import vendor_proxy_options
from tests.conftest import REPO_ROOT

PLAYBOOKS = REPO_ROOT / "podsys" / "playbooks"
ROLES = PLAYBOOKS / "roles"


def _plays():
    return yaml.safe_load((PLAYBOOKS / "gpu.yml").read_text())


def _role_names(play) -> list[str]:
    return [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]


def test_gpu_playbook_pins_the_play_and_role_order():
    got = [(play["name"], play["hosts"], _role_names(play)) for play in _plays()]
    assert got == [
        ("InfiniBand stack (OFED or inbox)", "layer_infiniband", ["infiniband", "perftest"]),
        ("The subnet manager (opensm) on the head", "head", ["infiniband"]),
        ("NVIDIA driver", "layer_gpu", ["nvidia_driver"]),
        ("Reboot where OFED or the driver changed kernel modules", "layer_infiniband:layer_gpu", ["node_reboot"]),
        ("GPUDirect RDMA, fabric manager and the GPU stack", "layer_gpu",
         ["gpudirect", "fabric_manager", "cuda", "nccl", "dcgm", "nccl_tests"]),
        ("Containers for Slurm jobs", "layer_container", ["nvidia_container_toolkit"]),
    ]


def _flat_order() -> list[str]:
    return [role for play in _plays() for role in _role_names(play)]


def test_peermem_is_loaded_only_after_the_driver_and_the_reboot():
    # Finding 1: the InfiniBand play ran `modprobe nvidia_peermem` before the driver existed.
    for task in (ROLES / "infiniband" / "tasks").glob("*.yml"):
        steps = yaml.safe_load(task.read_text())
        assert "modprobe nvidia_peermem" not in yaml.safe_dump(steps), task
    order = _flat_order()
    assert order.index("infiniband") < order.index("nvidia_driver") < order.index("node_reboot") < order.index("gpudirect")
    assert order.index("gpudirect") < order.index("fabric_manager")
    peermem = yaml.safe_load((ROLES / "gpudirect" / "tasks" / "peermem.yml").read_text())
    names = [t["name"] for t in peermem]
    assert names.index("Look for the nvidia_peermem module the driver built") < names.index("Load nvidia_peermem")
    assert peermem[0]["ansible.builtin.command"] == "modinfo -F version nvidia_peermem"
    assert "gpudirect_peermem_info.rc == 0" in peermem[names.index("Load nvidia_peermem")]["when"]


def test_fabric_manager_loads_ib_umad_and_starts_no_nvlsm_unit():
    # Finding 11: NVLink5's fabric manager starts NVLSM itself and needs ib_umad.
    text = (ROLES / "fabric_manager" / "tasks" / "fabric_manager.yml").read_text()
    tasks = yaml.safe_load(text)
    started = [t["ansible.builtin.systemd_service"]["name"] for t in tasks if "ansible.builtin.systemd_service" in t]
    assert started == ["nvidia-fabricmanager"]
    names = [t["name"] for t in tasks]
    assert names.index("Load ib_umad now (NVLink5)") < names.index("Run Fabric Manager")


def test_nccl_tests_finds_the_el_openmpi_headers():
    # Finding 12: EL's openmpi-devel puts mpi.h in /usr/include/openmpi-x86_64.
    defaults = yaml.safe_load((ROLES / "nccl_tests" / "defaults" / "main.yml").read_text())
    assert "/usr/include/openmpi-x86_64" in defaults["nccl_tests_mpi_include"]
    assert defaults["nccl_tests_version"].startswith("{{ podsys_stack.nccl_tests")
    build = yaml.safe_load((ROLES / "nccl_tests" / "tasks" / "build.yml").read_text())
    (compile_task,) = [t for t in build if t["name"].startswith("Compile nccl-tests")]
    assert compile_task["environment"] == {"CPATH": "{{ nccl_tests_mpi_include }}"}


def test_proxy_mode_tunnels_https_vendor_repositories_through_the_head():
    # Finding 9: apt-cacher-ng caches plain HTTP only; nodes use it as a CONNECT proxy for the
    # https vendor repositories, and it lets exactly those hosts through (PassThroughPattern).
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["urlsplit"] = lambda url, part: __import__("urllib.parse").parse.urlsplit(url).hostname
    env.filters["regex_escape"] = __import__("re").escape
    env.filters["podsys_vendor_proxy_options"] = vendor_proxy_options  # what the role's filter wraps
    node = env.from_string((ROLES / "package_source" / "templates" / "vendor-proxy.conf.j2").read_text()).render(
        ansible_managed="test", package_source_https_proxy="http://10.0.0.1:3142",
        package_source_repos=[{"url": "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/"},
                              {"url": "https://nvidia.github.io/libnvidia-container/stable/deb/amd64"}])
    assert 'Acquire::https::Proxy::developer.download.nvidia.com "http://10.0.0.1:3142";' in node
    assert 'Acquire::https::Proxy::nvidia.github.io "http://10.0.0.1:3142";' in node
    defaults = yaml.safe_load((ROLES / "package_proxy" / "defaults" / "main.yml").read_text())
    head = env.from_string((ROLES / "package_proxy" / "templates" / "zz-podsys.conf.j2").read_text()).render(
        ansible_managed="test", package_proxy_address="10.0.0.1", package_proxy_port=3142, package_proxy_via="",
        package_proxy_passthrough_hosts=defaults["package_proxy_passthrough_hosts"])
    (line,) = [l for l in head.splitlines() if l.startswith("PassThroughPattern:")]
    import re
    pattern = re.compile(line.split(": ", 1)[1])
    for host in ("developer.download.nvidia.com", "nvidia.github.io", "linux.mellanox.com", "github.com"):
        assert pattern.match(f"{host}:443"), host
    assert not pattern.match("evil.example.com:443") and not pattern.match("developer.download.nvidia.com.evil.com:443")
    src = yaml.safe_load((ROLES / "package_source" / "defaults" / "main.yml").read_text())
    assert "3142" in src["package_source_https_proxy"] and "proxy" in src["package_source_https_proxy"]
    apt = yaml.safe_load((ROLES / "package_source" / "tasks" / "apt.yml").read_text())
    (keys,) = [t for t in apt if t["name"] == "Fetch the signing keys of the repositories"]
    assert keys["environment"] == {"https_proxy": "{{ package_source_https_proxy }}"}


def test_dnf_repositories_take_gpgcheck_from_the_plan():
    # Finding 2: the container toolkit's .repo is repo_gpgcheck=1, gpgcheck=0; podsys had the reverse.
    dnf = yaml.safe_load((ROLES / "package_source" / "tasks" / "dnf.yml").read_text())
    (repo,) = [t for t in dnf if "ansible.builtin.yum_repository" in t]
    args = repo["ansible.builtin.yum_repository"]
    assert args["gpgcheck"] == "{{ item.gpgcheck }}" and args["repo_gpgcheck"] == "{{ item.repo_gpgcheck }}"


def test_new_roles_have_the_required_parts():
    for role in ("gpudirect", "node_reboot"):
        base = ROLES / role
        for part in ("defaults/main.yml", "tasks/main.yml", "handlers/main.yml", "meta/main.yml",
                     "meta/argument_specs.yml", "README.md"):
            assert (base / part).is_file(), f"{role}: {part} missing"
        defaults = yaml.safe_load((base / "defaults/main.yml").read_text())
        specs = yaml.safe_load((base / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
        readme = (base / "README.md").read_text()
        for var in defaults:
            assert var in specs and f"`{var}`" in readme, (role, var)


def test_kernel_headers_are_their_own_transaction_before_each_dkms_build():
    # Finding 10: in one apt run dpkg may configure a DKMS package before the headers are unpacked.
    for role, dkms_task in (("infiniband", "Install, pin and hold the InfiniBand stack ({{ infiniband_stack }})"),
                            ("nvidia_driver", "Install, pin and hold the driver")):
        path = ROLES / role / "tasks" / ("main.yml" if role == "infiniband" else "driver.yml")
        tasks = yaml.safe_load(path.read_text())
        names = [t["name"] for t in tasks]
        headers = [n for n in names if n.startswith("Install the running kernel's headers")]
        assert len(headers) == 1 and names.index(headers[0]) < names.index(dkms_task), role
        (step,) = [t for t in tasks if t["name"] == headers[0]]
        assert "kernel_headers" in step["vars"]["package_source_install_plan"]


def test_nvidias_pinning_package_is_installed_before_the_driver():
    # Finding 8: NVIDIA asks for the pinning package before the driver; in one apt run dpkg may
    # unpack it after the driver (seen in the dummy-repository lab test).
    tasks = yaml.safe_load((ROLES / "nvidia_driver" / "tasks" / "driver.yml").read_text())
    names = [t["name"] for t in tasks]
    first, driver = names.index("Install NVIDIA's driver pinning package first (R580 on)"), names.index("Install, pin and hold the driver")
    assert first < driver
    assert "selectattr('name', 'match', '^nvidia-driver-pinning-')" in tasks[first]["vars"]["package_source_install_plan"]
    assert "rejectattr('name', 'match', '^nvidia-driver-pinning-')" in tasks[driver]["vars"]["package_source_install_plan"]


def _when(task: dict, **variables) -> bool:
    """A task's `when`, evaluated as Ansible would (the few filters it uses defined here)."""
    env = Environment()
    env.filters.update({"bool": lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes", "1"),
                        "int": int, "difference": lambda a, b: [x for x in a if x not in b]})
    conditions = task["when"] if isinstance(task["when"], list) else [task["when"]]
    return all(env.compile_expression(" ".join(str(c).split()))(**variables) for c in conditions)


def test_node_reboot_skips_the_loaded_driver_check_only_in_a_container_without_an_nvidia_device():
    tasks = {t["name"]: t for t in yaml.safe_load((ROLES / "node_reboot" / "tasks" / "reboot.yml").read_text())}
    say_skip = tasks["Say that the loaded driver cannot be checked (SKIP)"]
    check = tasks["The loaded driver must be the pinned one"]
    assert "SKIP" in say_skip["ansible.builtin.debug"]["msg"] and "no NVIDIA PCI device" in say_skip["ansible.builtin.debug"]["msg"]
    base = {"node_reboot_has_gpu": True, "ansible_check_mode": False}
    cases = {  # (container, NVIDIA PCI functions) -> the check runs
        ("none", 8): True,  # bare metal
        ("none", 0): True,  # bare metal whose GPUs vanished: still checked, and fails
        ("systemd-nspawn", 0): False,  # the lab's nodes: SKIP with the reason
        ("docker", 2): True,  # a container with GPUs passed through
    }
    for (container, pci), runs in cases.items():
        env = {**base, "node_reboot_container": container, "node_reboot_nvidia_pci": pci}
        assert _when(check, **env) is runs and _when(say_skip, **env) is not runs, (container, pci)
    assert not _when(check, **{**base, "node_reboot_has_gpu": False})
    probe = tasks["Look for an NVIDIA PCI function and a container"]
    assert "0x10de" in probe["ansible.builtin.shell"] and "systemd-detect-virt --container" in probe["ansible.builtin.shell"]


def test_nvidia_driver_replaces_the_old_stacks_driver_in_an_upgrade_and_refuses_any_other():
    tasks = {t["name"]: t for t in yaml.safe_load((ROLES / "nvidia_driver" / "tasks" / "driver.yml").read_text())}
    refuse = tasks["Refuse to replace a driver podsys did not ask for"]
    upgrade = {"nvidia_driver_replace": False, "nvidia_driver_replaceable": ["570.172.08"]}
    assert not _when(refuse, nvidia_driver_other=["570.172.08"], **upgrade)  # podsys upgrade from R570
    assert _when(refuse, nvidia_driver_other=["550.127.08"], **upgrade)  # a driver podsys did not install
    assert _when(refuse, nvidia_driver_other=["570.172.08"], nvidia_driver_replace=False, nvidia_driver_replaceable=[])
    assert not _when(refuse, nvidia_driver_other=["550.127.08"], nvidia_driver_replace=True, nvidia_driver_replaceable=[])


def test_nccl_tests_build_can_be_turned_off_with_a_message():
    tasks = {t["name"]: t for t in yaml.safe_load((ROLES / "nccl_tests" / "tasks" / "main.yml").read_text())}
    plan = [{"name": "openmpi"}]
    assert _when(tasks["Build nccl-tests"], nccl_tests_plan=plan, nccl_tests_build=True)
    assert not _when(tasks["Build nccl-tests"], nccl_tests_plan=plan, nccl_tests_build=False)
    assert _when(tasks["Say why nccl-tests is not built"], nccl_tests_plan=plan, nccl_tests_build=False)


def test_a_stack_change_may_move_the_packages_podsys_holds():
    # podsys upgrade R570 -> R580: libnccl2 and DCGM are held at the old versions, fabric manager
    # is renamed; without this apt refuses the new plan ("Held packages were changed").
    install = yaml.safe_load((ROLES / "package_source" / "tasks" / "install.yml").read_text())
    (apt_block,) = [t for t in install if t["name"] == "Pin and install with apt"]
    (step,) = [t for t in apt_block["block"] if t["name"].startswith("Install the planned versions")]
    assert step["ansible.builtin.apt"]["allow_change_held_packages"] is True


def test_fabric_manager_removes_the_other_naming_schemes_packages_before_installing():
    # R570 -> R580: nvidia-fabricmanager-570 (held by podsys) conflicts with nvidia-fabricmanager;
    # apt will not remove a held package itself ("you have held broken packages").
    tasks = yaml.safe_load((ROLES / "fabric_manager" / "tasks" / "fabric_manager.yml").read_text())
    names = [t["name"] for t in tasks]
    assert names.index("Remove the fabric manager packages being replaced") < names.index("Install, pin and hold Fabric Manager")
    (pick,) = [t for t in tasks if t["name"] == "Fabric manager packages of another naming scheme"]
    env = Environment()
    env.tests["match"] = lambda value, pattern: __import__("re").match(pattern, value) is not None
    env.tests["in"] = lambda value, seq: value in seq
    expr = pick["ansible.builtin.set_fact"]["fabric_manager_replaced"].strip()[2:-2]
    installed = {"nvidia-fabricmanager-570": [], "libnvidia-nscq-570": [], "nvidia-driver": [], "libnvidia-nscq": []}
    packages = {"packages": installed}
    plan = [{"name": "nvidia-fabricmanager"}, {"name": "libnvidia-nscq"}]
    env.filters["dict2items"] = lambda d: [{"key": k, "value": v} for k, v in d.items()]
    got = env.compile_expression(expr)(ansible_facts=packages, fabric_manager_plan=plan)
    assert got == ["nvidia-fabricmanager-570", "libnvidia-nscq-570"]


def test_dcgm_removes_the_old_cuda_majors_packages_before_installing():
    # R570 -> R580: datacenter-gpu-manager-4-cuda12 (held at 4.2.3) requires -core (= 4.2.3), so
    # the plan's -core 4.4.1 cannot install ("held broken packages", seen on the lab upgrade).
    tasks = yaml.safe_load((ROLES / "dcgm" / "tasks" / "main.yml").read_text())
    names = [t["name"] for t in tasks]
    assert names.index("Remove the DCGM packages being replaced") < names.index("Install, pin and hold DCGM {{ dcgm_version }}")
    (pick,) = [t for t in tasks if t["name"] == "DCGM packages the plan no longer names"]
    env = Environment()
    env.tests["match"] = lambda value, pattern: __import__("re").match(pattern, value) is not None
    env.filters["dict2items"] = lambda d: [{"key": k, "value": v} for k, v in d.items()]
    expr = pick["ansible.builtin.set_fact"]["dcgm_replaced"].strip()[2:-2]
    installed = {n: [] for n in ("datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-cuda12",
                                 "datacenter-gpu-manager-4-proprietary-cuda12", "libnccl2")}
    plan = [{"name": n} for n in ("datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-cuda13",
                                  "datacenter-gpu-manager-4-proprietary", "datacenter-gpu-manager-4-proprietary-cuda13")]
    got = env.compile_expression(expr)(ansible_facts={"packages": installed}, dcgm_plan=plan)
    assert got == ["datacenter-gpu-manager-4-cuda12", "datacenter-gpu-manager-4-proprietary-cuda12"]
