"""podsys.provision.power against real IPMI-over-LAN BMCs: OpenIPMI's ipmi_sim (Debian package
`openipmi`) serving two BMCs on loopback addresses, driven by the real ipmitool. One BMC has a
chassis_control program (it records power and boot device in files, as a lab VM's would start
and stop QEMU), the other has none, so its BMC refuses `chassis bootdev` while ipmitool exits 0."""

from __future__ import annotations

import time

import pytest

from podsys.provision.power import IPMI, BMCTarget, run_power
from tests.integration.ipmi_sim import ipmi_sim, require_tools

pytestmark = pytest.mark.integration

PASSWORD = "lab-bmc-pw"
# Addresses in 127.0.0.0/8 nobody else here uses; port 623 is IPMI's (ipmitool's default).
WITH_CONTROL, WITHOUT_CONTROL = "127.0.86.1", "127.0.86.2"

CHASSIS_CONTROL = """#!/bin/sh
# ipmi_sim's chassis_control protocol: "<name> get power boot" / "<name> set power 1 boot pxe".
dir="{dir}"
name=$1; shift
case "$1" in
  get) shift; for p in "$@"; do case $p in
         power) echo "power:$(cat "$dir/$name.power" 2>/dev/null || echo 0)";;
         boot) echo "boot:$(cat "$dir/$name.boot" 2>/dev/null || echo default)";; esac; done;;
  set) shift; while [ $# -ge 2 ]; do echo "$2" > "$dir/$name.$1"; shift 2; done;;
esac
"""

@pytest.fixture
def bmcs(tmp_path):
    require_tools()
    control = tmp_path / "chassis-control"
    control.write_text(CHASSIS_CONTROL.format(dir=tmp_path))
    control.chmod(0o755)
    with ipmi_sim(tmp_path, PASSWORD, [("vm1", WITH_CONTROL, control), ("vm2", WITHOUT_CONTROL, None)]) as password_file:
        yield tmp_path, password_file


def test_pxe_sets_boot_device_and_powers_on_and_a_refused_bootdev_fails_without_a_power_cycle(bmcs):
    work, password_file = bmcs
    ipmi = IPMI("admin", password_file, cipher_suite=3)
    started = time.monotonic()
    results = run_power([BMCTarget("vm1", WITH_CONTROL), BMCTarget("vm2", WITHOUT_CONTROL)], "pxe", ipmi,
                        secret=PASSWORD)
    took = time.monotonic() - started
    assert [(r.node, r.ok) for r in results] == [("vm1", True), ("vm2", False)], results
    assert results[0].message == "Chassis Power Control: Up/On"
    assert (work / "vm1.boot").read_text().strip() == "pxe"
    assert (work / "vm1.power").read_text().strip() == "1"
    assert results[1].message == ("ipmitool chassis bootdev pxe: the BMC refused the boot device: "
                                  "Invalid data field in request")
    assert took < 8, f"{took:.1f} s: cipher suite 3 should answer at once"
    assert run_power([BMCTarget("vm1", WITH_CONTROL)], "status", ipmi)[0].message == "on"
    # Powered on, a second pxe is a real cycle.
    again = run_power([BMCTarget("vm1", WITH_CONTROL)], "pxe", ipmi)
    assert again[0].message == "Chassis Power Control: Cycle"


def test_wrong_password_is_a_one_line_error_without_the_password(bmcs):
    work, _ = bmcs
    wrong = work / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    [result] = run_power([BMCTarget("vm1", WITH_CONTROL)], "status", IPMI("admin", wrong, cipher_suite=3),
                         secret="not-the-password")
    assert not result.ok and "not-the-password" not in result.message
    assert result.message.startswith("ipmitool chassis power status: ")
