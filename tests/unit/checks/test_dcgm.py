import pytest

from podsys.checks.dcgm import judge_dcgmi_diag, parse_dcgmi_diag
from podsys.checks.findings import Verdict
from tests.unit.checks.helpers import fixture, profile

H100 = profile("hgx-h100-8gpu")


def test_dcgm3_level2_pass():
    run = parse_dcgmi_diag(fixture("dcgmi_diag_r2_pass_dcgm3.txt"))
    assert run.metadata["DCGM Version"] == "3.3.9"
    assert {t.name for t in run.tests} >= {"Denylist", "PCIe", "GPU Memory"}
    (finding,) = judge_dcgmi_diag(run, "gpu001", H100)
    assert finding.verdict is Verdict.PASS and finding.value == 11


def test_dcgm4_per_gpu_failure():
    run = parse_dcgmi_diag(fixture("dcgmi_diag_r3_fail_dcgm4.txt"))
    memory = next(t for t in run.tests if t.name == "memory")
    assert memory.result == "Fail" and memory.section == "Hardware"
    (finding,) = judge_dcgmi_diag(run, "gpu001", H100)
    assert finding.verdict is Verdict.FAIL and "memory" in finding.detail and "DBE" in finding.detail


def test_dcgm3_fail_row_with_warning_row():
    text = fixture("dcgmi_diag_r2_pass_dcgm3.txt").replace(
        "| GPU Memory                | Pass - All                                     |",
        "| GPU Memory                | Fail - GPU: 3                                  |\n"
        "| Warning                   | GPU 3 Error using CUDA API cudaMalloc          |",
    )
    (finding,) = judge_dcgmi_diag(parse_dcgmi_diag(text), "gpu001", H100)
    assert finding.verdict is Verdict.FAIL and "cudaMalloc" in finding.detail


def test_not_dcgm_output_rejected():
    with pytest.raises(ValueError):
        parse_dcgmi_diag("nothing here\n")


def test_system_not_yet_initialized_means_fabric_manager_not_running():
    run = parse_dcgmi_diag(fixture("dcgmi_diag_r2_fm_stopped_dcgm3.txt"))
    pcie = next(t for t in run.tests if t.name == "PCIe")
    assert pcie.result == "Fail"  # "Pass - GPU: 1" then "Fail - GPU: 0"
    (finding,) = judge_dcgmi_diag(run, "gpu001", H100)
    assert finding.verdict is Verdict.FAIL and "system not yet initialized" in finding.detail
    assert "fabric manager is not running" in finding.diagnosis and "nvidia-fabricmanager" in finding.diagnosis


def test_other_cuda_failures_are_not_blamed_on_fabric_manager():
    text = fixture("dcgmi_diag_r2_fm_stopped_dcgm3.txt").replace("'system not yet i", "'CUDA-capable devic").replace("nitialized'", "e is busy'   ")
    (finding,) = judge_dcgmi_diag(parse_dcgmi_diag(text), "gpu001", H100)
    assert finding.verdict is Verdict.FAIL and "fabric manager" not in finding.diagnosis
