import pytest

from podsys.checks.dmesg import HARDWARE_XIDS, judge_dmesg, parse_dmesg
from podsys.checks.findings import Verdict
from tests.unit.checks_helpers import fixture, one


def test_xid79_fallen_off_bus_and_downtrained_nic():
    log = parse_dmesg(fixture("dmesg_xid79_and_downtrained_nic.txt"))
    assert [x.xid for x in log.xids] == [79] and log.xids[0].pci == "0000:5d:00"
    assert log.nics[0].device == "0000:40:00.0" and log.nics[0].width == 8
    findings = judge_dmesg(log, "gpu001")
    xid = one(findings, "gpu.xid")
    assert xid.verdict is Verdict.FAIL and "fallen off the bus" in xid.detail and "power-cycle" in xid.diagnosis
    nic = one(findings, "infiniband.pcie_link")
    assert nic.verdict is Verdict.FAIL and "x8" in nic.detail and "x16" in nic.detail


def test_full_width_nic_line_is_not_downtrained():
    findings = judge_dmesg(parse_dmesg(fixture("dmesg_clean.txt")), "gpu001")
    assert all(f.verdict is Verdict.PASS for f in findings)


@pytest.mark.parametrize("xid", sorted(HARDWARE_XIDS))
def test_every_hardware_xid_fails(xid):
    line = f"[ 812.000001] NVRM: Xid (PCI:0000:18:00): {xid}, pid=4242, name=python3, Ch 00000008"
    finding = one(judge_dmesg(parse_dmesg(line), "gpu001"), "gpu.xid")
    assert finding.verdict is Verdict.FAIL and f"Xid {xid}" in finding.detail


def test_hardware_xid_list_matches_reference():
    assert sorted(HARDWARE_XIDS) == [48, 56, 57, 58, 62, 63, 64, 65, 68, 69, 73, 74, 79, 80, 81, 92, 119, 120]


def test_application_xid_only_warns():
    finding = one(judge_dmesg(parse_dmesg(fixture("dmesg_app_xid13.txt")), "gpu001"), "gpu.xid")
    assert finding.verdict is Verdict.WARN and "Xid 13" in finding.detail


def test_fallen_off_bus_without_xid_line_still_fails():
    text = "[1.0] NVRM: GPU at PCI:0000:ab:00: GPU has fallen off the bus.\n"
    assert one(judge_dmesg(parse_dmesg(text), "gpu001"), "gpu.xid").verdict is Verdict.FAIL


def test_unreadable_kernel_log_skips_instead_of_passing():
    log = parse_dmesg("dmesg: read kernel buffer failed: Operation not permitted\n")
    findings = judge_dmesg(log, "gpu001")
    assert [f.verdict for f in findings] == [Verdict.SKIP, Verdict.SKIP] and "not readable" in findings[0].detail


def test_journalctl_format_is_read():
    text = "Nov 22 16:01:02 gpu001 kernel: NVRM: Xid (PCI:0000:18:00): 74, pid=1, name=x, NVLink: fatal error detected on link 5\n"
    assert one(judge_dmesg(parse_dmesg(text), "gpu001"), "gpu.xid").verdict is Verdict.FAIL
