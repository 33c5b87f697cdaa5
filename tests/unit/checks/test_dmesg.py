import pytest

from podsys.checks.dmesg import HARDWARE_XIDS, judge_dmesg, parse_dmesg
from podsys.checks.findings import Verdict
from tests.unit.checks.helpers import fixture, one


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


# --- every format dmesg and journalctl -k print --------------------------------------------
# Prefixes as util-linux dmesg(1) and journalctl(1) document them; messages as NVRM prints them
# (Xid catalogue; NVIDIA/NVSentinel#155 for the multi-line "fallen off the bus" form).
XID_MESSAGE = "NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
KERNEL_LOG_FORMATS = {
    "no timestamp (dmesg -t)": "{m}",
    "seconds (dmesg)": "[ 8123.456789] {m}",
    "raw level (dmesg -r)": "<3>[ 8123.456789] {m}",
    "facility (dmesg -x)": "kern  :err   : [ 8123.456789] {m}",
    "ctime (dmesg -T)": "[Tue Mar  5 23:33:35 2024] {m}",
    "iso (dmesg --time-format iso)": "2024-03-05T23:33:35,123456+00:00 {m}",
    "journalctl -k": "Mar 05 23:33:35 gpu001 kernel: {m}",
    "journalctl -k -o short-precise": "Mar 05 23:33:35.123456 gpu001 kernel: {m}",
    "journalctl -k -o short-iso": "2024-03-05T23:33:35+0000 gpu001 kernel: {m}",
    "journalctl -k -o short-iso-precise": "2024-03-05T23:33:35.123456+00:00 gpu001 kernel: {m}",
    "journalctl -k -o short-full": "Tue 2024-03-05 23:33:35 UTC gpu001 kernel: {m}",
    "journalctl -k -o short-monotonic": "[ 8123.456789] gpu001 kernel: {m}",
}
BOOT_LINES = ("Linux version 6.8.0-45-generic (buildd@lcy02-amd64-075) #45-Ubuntu SMP PREEMPT_DYNAMIC",
              "pci 0000:18:00.0: [10de:2330] type 00 class 0x030200 PCIe Endpoint",
              "mlx5_core 0000:40:00.0: firmware version: 28.39.2048")


@pytest.mark.parametrize("form", sorted(KERNEL_LOG_FORMATS))
def test_xid_is_found_in_every_kernel_log_format(form):
    text = "\n".join(KERNEL_LOG_FORMATS[form].format(m=m) for m in (*BOOT_LINES, XID_MESSAGE)) + "\n"
    log = parse_dmesg(text)
    assert log.recognised and log.lines == 4
    assert [(x.xid, x.pci) for x in log.xids] == [(79, "0000:18:00")]
    finding = one(judge_dmesg(log, "gpu001"), "gpu.xid")
    assert finding.verdict is Verdict.FAIL and "0000:18:00" in finding.detail


def test_seconds_since_boot_are_kept_for_the_cursor():
    log = parse_dmesg("[ 8123.456789] " + XID_MESSAGE)
    assert log.xids[0].timestamp == pytest.approx(8123.456789)
    assert parse_dmesg("Mar 05 23:33:35 gpu001 kernel: " + XID_MESSAGE).xids[0].timestamp is None


@pytest.mark.parametrize("prefix", ["[ 1843.308145] ", "", "Mar 05 23:33:35 gpu001 kernel: "])
def test_fallen_off_bus_names_the_device_from_a_neighbouring_line(prefix):
    # driver 570 prints the message over three lines, the address on the first only
    text = (f"{prefix}NVRM: The NVIDIA GPU 0000:b3:00.0\n"
            f"{prefix or '               '}NVRM: (PCI ID: 10de:26b5) installed in this system has\n"
            f"{prefix or '               '}NVRM: fallen off the bus and is not responding to commands.\n"
            f"{prefix}NVRM: The NVIDIA probe routine failed for 1 device(s).\n")
    log = parse_dmesg(text)
    assert log.off_bus == ["0000:b3:00"]
    finding = one(judge_dmesg(log, "gpu001"), "gpu.xid")
    assert finding.verdict is Verdict.FAIL and "0000:b3:00" in finding.detail and "?" not in finding.detail


def test_fallen_off_bus_on_one_line_with_the_device():
    log = parse_dmesg("[   49.261458] NVRM: GPU at 0000:01:00.0 has fallen off the bus.\n")
    assert log.off_bus == ["0000:01:00"]


def test_fallen_off_bus_and_its_xid_79_are_one_gpu():
    text = ("[ 10.0] NVRM: GPU at PCI:0000:5d:00: GPU-4e3c1a5e-0000-0000-0000-000000000000\n"
            "[ 10.0] NVRM: GPU Board Serial Number: 1650123456789\n"
            "[ 10.0] NVRM: Xid (PCI:0000:5d:00): 79, pid=1234, name=python, GPU has fallen off the bus.\n"
            "[ 10.0] NVRM: GPU 0000:5d:00.0: GPU has fallen off the bus.\n")
    finding = one(judge_dmesg(parse_dmesg(text), "gpu001"), "gpu.xid")
    assert finding.detail.count("0000:5d:00") == 1


@pytest.mark.parametrize("text", [
    "hello world\nthis is a shopping list\n",
    "\x00\x01\x02binary\xff\n",
    "dmesg: read kernel buffer failed: Operation not permitted\n",
    "-- No entries --\n",
])
def test_text_that_is_not_a_kernel_log_is_not_recognised(text):
    assert not parse_dmesg(text).recognised
