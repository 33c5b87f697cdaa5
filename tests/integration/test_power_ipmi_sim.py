"""podsys.provision.power against real IPMI-over-LAN BMCs: OpenIPMI's ipmi_sim (Debian package
`openipmi`) serving two BMCs on loopback addresses, driven by the real ipmitool. One BMC has a
chassis_control program (it records power and boot device in files, as a lab VM's would start
and stop QEMU), the other has none, so its BMC refuses `chassis bootdev` while ipmitool exits 0."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from podsys.provision.power import IPMI, BMCTarget, run_power

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

LAN = """name "podsys-power-test"
set_working_mc {mc}
  startlan 1
    addr {address} 623
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcd{guid}
  endlan
{control}  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
"""


@pytest.fixture
def bmcs(tmp_path):
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt install openipmi ipmitool)")
    control = tmp_path / "chassis-control"
    control.write_text(CHASSIS_CONTROL.format(dir=tmp_path))
    control.chmod(0o755)
    conf = LAN.format(mc="0x20", address=WITH_CONTROL, guid="01", password=PASSWORD,
                      control=f'  chassis_control "{control} vm1"\n')
    conf += LAN.format(mc="0x30", address=WITHOUT_CONTROL, guid="02", password=PASSWORD, control="").split("\n", 1)[1]
    (tmp_path / "lan.conf").write_text(conf)
    (tmp_path / "cmds.emu").write_text("mc_setbmc 0x20\n"
                                       "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"
                                       "mc_add 0x30 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x30\n")
    (tmp_path / "state").mkdir()
    password_file = tmp_path / "bmc-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    sim = subprocess.Popen(["ipmi_sim", "-c", "lan.conf", "-f", "cmds.emu", "-s", "state", "-n"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _listening(WITHOUT_CONTROL) and time.monotonic() < deadline:
            assert sim.poll() is None, sim.stdout.read().decode(errors="replace")
            time.sleep(0.2)
        yield tmp_path, password_file
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def _listening(address: str) -> bool:
    out = subprocess.run(["ss", "-Hulnp", f"src {address}:623"], capture_output=True, text=True).stdout
    return "ipmi_sim" in out


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
