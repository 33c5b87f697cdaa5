import pytest

from podsys.checks.findings import Verdict
from dataclasses import replace

from podsys.checks.catalog import spec_for
from podsys.checks.versions import SECTIONS, Expected, judge_consistency, judge_versions, parse_cuda_version, parse_driver_version, parse_modules
from podsys.cluster.matrix import load_matrix
from tests.unit.checks.helpers import fixture, one, profile

UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n'
EXPECTED = Expected(os_distro="ubuntu", os_version="22.04", slurm="24.11.5", driver="570.172.08", cuda="12.8",
                    nccl="2.26.2-1+cuda12.8", ofed_version="3.0.0", ofed_release="25.04", fabric_manager="570.172.08", dcgm="4.2.3",
                    stack=load_matrix().stack("r570-cuda12.8"))
# The same node on the inbox rdma stack with the open kernel modules: GPUDirect through DMA-BUF.
EXPECTED_INBOX_OPEN = replace(EXPECTED, ofed_inbox=True, gpu_flavour="open")
LAYERS = ("base", "gpu", "infiniband", "slurm", "monitoring")
MODULES_OK = fixture("proc_modules_no_peermem.txt") + "nvidia_peermem 16384 0 - Live 0x0000000000000000 (OE)\n"


def healthy_sections(**override):
    sections = {
        "os-release": UBUNTU,
        "kernel": "5.15.0-119-generic",
        "slurm": "slurm 24.11.5",
        "modules": MODULES_OK,
        "nvidia-license": "NVIDIA",
        "driver": "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.172.08  Release Build  (dvs-builder@U16-I3-B03-4-3)  Tue Jun 24 00:00:00 UTC 2025\nGCC version:  gcc version 11.4.0",
        "cuda": '{\n   "cuda" : {\n      "name" : "CUDA SDK",\n      "version" : "12.8.1"\n   }\n}',
        "nccl": "2.26.2-1+cuda12.8",
        "ofed": "OFED-internal-25.04-0.6.1:",
        "fabric-manager": "Fabric Manager version is : 570.172.08",
        "fabric-manager-active": "active",
        "dcgm": "dcgmi  version: 4.2.3",
    }
    sections.update(override)
    return sections


def test_healthy_gpu_node_matches_the_stack():
    findings = judge_versions(healthy_sections(), "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    bad = [f for f in findings if f.verdict is not Verdict.PASS]
    assert bad == []
    assert one(findings, "versions.driver").value == "570.172.08"


def test_peermem_missing_fails_with_gpudirect_diagnosis():
    findings = judge_versions(healthy_sections(modules=fixture("proc_modules_no_peermem.txt")), "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    modules = one(findings, "versions.modules")
    assert modules.verdict is Verdict.FAIL and modules.value == "nvidia_peermem" and "GPUDirect" in modules.diagnosis


def test_peermem_missing_with_proprietary_modules_fails_gpudirect_naming_neither_path():
    findings = judge_versions(healthy_sections(modules=fixture("proc_modules_no_peermem.txt")), "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    gpudirect = one(findings, "versions.gpudirect")
    assert gpudirect.verdict is Verdict.FAIL and gpudirect.value == "none" and "license NVIDIA" in gpudirect.detail


def test_active_gpudirect_path_is_reported():
    findings = judge_versions(healthy_sections(), "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    assert one(findings, "versions.gpudirect").value == "nvidia_peermem"
    assert "modinfo -F license nvidia" in SECTIONS["nvidia-license"]  # the live probe collects what DMA-BUF needs
    assert spec_for("versions.gpudirect").fault == "gpudirect-off"


def test_dmabuf_node_does_not_need_peermem():
    """Open kernel modules on the inbox rdma stack: the plan has no nvidia_peermem, so its
    absence is no failure, and the active path is named DMA-BUF."""
    sections = healthy_sections(modules=fixture("proc_modules_no_peermem.txt"), kernel="6.8.0-45-generic",
                                **{"nvidia-license": "Dual MIT/GPL", "ofed": ""})
    findings = judge_versions(sections, "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED_INBOX_OPEN)
    modules = one(findings, "versions.modules")
    assert modules.verdict is Verdict.PASS and "nvidia_peermem not needed" in modules.detail
    gpudirect = one(findings, "versions.gpudirect")
    assert gpudirect.verdict is Verdict.PASS and gpudirect.value == "dmabuf"


def test_dmabuf_node_still_needs_the_driver_and_a_path():
    # Proprietary modules on the inbox stack: no path at all, reported by the gpudirect check.
    sections = healthy_sections(modules=fixture("proc_modules_no_peermem.txt"), **{"ofed": ""})
    findings = judge_versions(sections, "gpu001", profile("hgx-h100-8gpu"), LAYERS, replace(EXPECTED_INBOX_OPEN, gpu_flavour="proprietary"))
    assert one(findings, "versions.modules").verdict is Verdict.PASS
    assert one(findings, "versions.gpudirect").verdict is Verdict.FAIL
    no_driver = healthy_sections(modules="mlx5_ib 491520 0 - Live 0x0000000000000000\n", **{"ofed": ""})
    findings = judge_versions(no_driver, "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED_INBOX_OPEN)
    assert one(findings, "versions.modules").value == "nvidia"


def test_no_infiniband_layer_skips_gpudirect():
    findings = judge_versions(healthy_sections(), "gpu001", profile("hgx-h100-8gpu"), ("base", "gpu", "slurm"), EXPECTED)
    assert one(findings, "versions.gpudirect").verdict is Verdict.SKIP
    assert one(findings, "versions.modules").detail == "loaded: nvidia"


def test_fabric_manager_inactive_fails_naming_error_802():
    findings = judge_versions(healthy_sections(**{"fabric-manager-active": "inactive"}), "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    fm = one(findings, "versions.fabric_manager_active")
    assert fm.verdict is Verdict.FAIL and "802" in fm.diagnosis


def test_version_drift_fails():
    findings = judge_versions(healthy_sections(driver="NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.127.08  Fri Oct 11 20:31:47 UTC 2024",
                                               nccl="2.21.5-1+cuda12.4"), "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    assert one(findings, "versions.driver").verdict is Verdict.FAIL
    assert one(findings, "versions.nccl").verdict is Verdict.FAIL
    assert one(findings, "versions.os").verdict is Verdict.PASS


def test_wrong_os_and_missing_slurm():
    findings = judge_versions(healthy_sections(**{"os-release": 'ID=debian\nVERSION_ID="12"\n', "slurm": "bash: slurmd: command not found"}),
                              "gpu001", profile("hgx-h100-8gpu"), LAYERS, EXPECTED)
    assert one(findings, "versions.os").verdict is Verdict.FAIL
    assert one(findings, "versions.slurm").verdict is Verdict.FAIL


def test_cpu_only_node_checks_os_and_slurm_and_skips_gpu():
    expected = Expected(os_distro="debian", os_version="12", slurm=None)
    sections = {"os-release": 'ID=debian\nVERSION_ID="12"\n', "kernel": "6.1.0-28-amd64", "slurm": "slurm-wlm 22.05.8"}
    findings = judge_versions(sections, "node1", profile("cpu-only"), ("base", "slurm"), expected)
    assert one(findings, "versions.os").verdict is Verdict.PASS
    assert one(findings, "versions.slurm").value == "22.05.8"
    assert one(findings, "versions.driver").detail == "cpu-only profile"


def test_rocky_minor_version_matches_major():
    findings = judge_versions({"os-release": 'ID="rocky"\nVERSION_ID="9.4"\n'}, "n", profile("cpu-only"), ("base",),
                              Expected(os_distro="rocky", os_version="9", slurm=None))
    assert one(findings, "versions.os").verdict is Verdict.PASS


def test_consistency_warns_the_odd_node():
    findings = []
    for node, kernel in (("n1", "6.1.0-28"), ("n2", "6.1.0-28"), ("n3", "6.1.0-25")):
        findings += judge_versions({"os-release": 'ID=debian\nVERSION_ID="12"\n', "kernel": kernel}, node, profile("cpu-only"), (),
                                   Expected(os_distro="debian", os_version="12", slurm=None))
    kernels = {f.node: f.verdict for f in judge_consistency(findings, "versions.kernel") if f.check == "versions.kernel"}
    assert kernels == {"n1": Verdict.PASS, "n2": Verdict.PASS, "n3": Verdict.WARN}


@pytest.mark.parametrize("text, version", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.230.02  Tue Dec 10 00:00:00 UTC 2024", "535.230.02"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build", "580.95.05"),
])
def test_driver_version_formats(text, version):
    assert parse_driver_version(text) == version


def test_cuda_and_modules_parsers():
    assert parse_cuda_version("nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.4, V12.4.131") == "12.4"
    assert {"nvidia", "mlx5_core"} <= parse_modules(fixture("proc_modules_no_peermem.txt"))
    assert "nvidia_peermem" not in parse_modules(fixture("proc_modules_no_peermem.txt"))
