import pytest

from podsys.checks.findings import Verdict
from podsys.checks.pcie import judge_acs, parse_lspci_acs
from tests.unit.checks.helpers import fixture


def test_acs_on_the_gpu_port_fails_but_not_on_the_nvme_or_root_port():
    scan = parse_lspci_acs(fixture("lspci_acs_enabled.txt"))
    assert [b for b, _ in scan.bridges] == ["15:00.0"]  # 15:01.0 has ACS but SrcValid-
    assert sorted(scan.elsewhere) == ["00:01.0", "15:02.0"] and (scan.gpus, scan.hcas) == (1, 1)
    finding = judge_acs(scan, "gpu001")
    assert finding.verdict is Verdict.FAIL and "BIOS" in finding.diagnosis and "15:02.0" not in finding.detail


def test_acs_only_off_the_gpu_paths_passes():
    text = fixture("lspci_acs_enabled.txt").replace(
        "Bus: primary=15, secondary=16, subordinate=16, sec-latency=0\n\tCapabilities: [40] Express (v2) Downstream Port (Slot+), MSI 00\n"
        "\tCapabilities: [f24 v1] Access Control Services\n\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl+ DirectTrans+\n"
        "\t\tACSCtl:\tSrcValid+",
        "Bus: primary=15, secondary=16, subordinate=16, sec-latency=0\n\tCapabilities: [40] Express (v2) Downstream Port (Slot+), MSI 00\n"
        "\tCapabilities: [f24 v1] Access Control Services\n\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl+ DirectTrans+\n"
        "\t\tACSCtl:\tSrcValid-")
    finding = judge_acs(parse_lspci_acs(text), "n")
    assert finding.verdict is Verdict.PASS and "15:02.0" in finding.detail


def test_gpus_under_different_root_ports_do_not_count_root_port_acs():
    text = ("00:01.0 PCI bridge: Intel Corporation Device 352a\n\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0\n"
            "\t\tACSCtl:\tSrcValid+ TransBlk-\n\n"
            "00:02.0 PCI bridge: Intel Corporation Device 352b\n\tBus: primary=00, secondary=02, subordinate=02, sec-latency=0\n"
            "\t\tACSCtl:\tSrcValid+ TransBlk-\n\n"
            "01:00.0 3D controller: NVIDIA Corporation GA100 [A100 SXM4 80GB] (rev a1)\n\n"
            "02:00.0 3D controller: NVIDIA Corporation GA100 [A100 SXM4 80GB] (rev a1)\n")
    assert judge_acs(parse_lspci_acs(text), "n").verdict is Verdict.PASS


def test_no_acs_passes():
    text = fixture("lspci_acs_enabled.txt").replace("ACSCtl:\tSrcValid+", "ACSCtl:\tSrcValid-")
    assert judge_acs(parse_lspci_acs(text), "n").verdict is Verdict.PASS


def test_without_gpus_skips():
    text = "18:00.0 Non-Volatile memory controller: Samsung Electronics Co Ltd NVMe SSD Controller\n"
    assert judge_acs(parse_lspci_acs(text), "n").verdict is Verdict.SKIP


def test_not_lspci_output_is_rejected():
    with pytest.raises(ValueError):
        parse_lspci_acs("bash: lspci: command not found\n")
