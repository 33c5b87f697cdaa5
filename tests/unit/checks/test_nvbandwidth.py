import pytest

from podsys.checks.findings import Verdict
from podsys.checks.nvbandwidth import judge_nvbandwidth, parse_nvbandwidth
from tests.unit.checks.helpers import fixture, one, profile

H100 = profile("hgx-h100-8gpu")


def test_healthy_matrices_parse_and_pass():
    run = parse_nvbandwidth(fixture("nvbandwidth_8xh100_healthy.txt"))
    assert [m.testcase for m in run.matrices] == ["host_to_device_memcpy_ce", "device_to_host_memcpy_ce", "device_to_device_memcpy_write_ce"]
    h2d = run.matrices[0]
    assert len(h2d.cells) == 8 and h2d.total == pytest.approx(441.9)
    assert len(run.matrices[2].cells) == 56  # diagonal N/A left out
    findings = judge_nvbandwidth(run, "gpu001", H100)
    assert [f.verdict for f in findings] == [Verdict.PASS] * 3


def test_p2p_off_and_slow_h2d_fail_naming_the_gpu():
    findings = judge_nvbandwidth(parse_nvbandwidth(fixture("nvbandwidth_8xh100_p2p_off_slow_h2d.txt")), "gpu001", H100)
    h2d = one(findings, "bandwidth.host_to_device_memcpy_ce")
    assert h2d.verdict is Verdict.FAIL and "GPU 5" in h2d.detail and h2d.value == pytest.approx(24.1)
    p2p = one(findings, "bandwidth.device_to_device_memcpy_write_ce")
    assert p2p.verdict is Verdict.FAIL and "GPU 2" in p2p.detail and p2p.value < 40 and "ACS" in p2p.diagnosis


def test_cuda_802_is_fabric_manager():
    (finding,) = judge_nvbandwidth(parse_nvbandwidth(fixture("nvbandwidth_cuda_802.txt")), "gpu001", H100)
    assert finding.verdict is Verdict.FAIL and "fabric" in finding.diagnosis


def test_aborted_testcase_fails_that_testcase():
    run = parse_nvbandwidth(fixture("nvbandwidth_aborted_read_ce.txt"))
    assert list(run.aborted) == ["device_to_device_memcpy_read_ce"] and len(run.matrices) == 1
    findings = judge_nvbandwidth(run, "gpu001", profile("hgx-h100-8gpu"))
    aborted = one(findings, "bandwidth.device_to_device_memcpy_read_ce")
    assert aborted.verdict is Verdict.FAIL and "Invalid value when checking the pattern" in aborted.detail
    assert one(findings, "bandwidth.device_to_device_memcpy_write_ce").verdict is Verdict.PASS


def test_cuda_error_after_running_fails_that_testcase():
    text = ("Running device_to_host_memcpy_ce.\n"
            "[CUDA_ERROR_INVALID_CONTEXT] invalid device context in expression cuMemHostAlloc(...) in NodeHelperSingle() : memcpy.cpp:312\n")
    aborted = one(judge_nvbandwidth(parse_nvbandwidth(text), "gpu001", profile("hgx-h100-8gpu")), "bandwidth.device_to_host_memcpy_ce")
    assert aborted.verdict is Verdict.FAIL and "CUDA_ERROR_INVALID_CONTEXT" in aborted.detail


def test_output_cut_off_after_running_fails_that_testcase():
    text = fixture("nvbandwidth_aborted_read_ce.txt").split("Running device_to_device_memcpy_read_ce.")[0] + "Running host_to_device_memcpy_ce.\n"
    aborted = one(judge_nvbandwidth(parse_nvbandwidth(text), "gpu001", None), "bandwidth.host_to_device_memcpy_ce")
    assert aborted.verdict is Verdict.FAIL and "output ends" in aborted.detail


def test_waived_testcase_skips_with_reason():
    text = "Device 0: NVIDIA GeForce RTX 2080 Ti\n\nWaiving device_to_device_memcpy_write_ce.\n"
    waived = one(judge_nvbandwidth(parse_nvbandwidth(text), "n", None), "bandwidth.device_to_device_memcpy_write_ce")
    assert waived.verdict is Verdict.SKIP and "peer-to-peer" in waived.detail
