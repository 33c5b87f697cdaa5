"""OpenIPMI's ipmi_sim (Debian package `openipmi`) as real IPMI-over-LAN BMCs for tests: one
ipmi_sim process serving one BMC per loopback address on port 623, each with an optional
chassis_control program (what a BMC runs to switch the machine; without one, the BMC refuses
`chassis bootdev`)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

LAN = """set_working_mc {mc}
  startlan 1
    addr {address} 623
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcd{index:02x}
  endlan
{control}  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
"""

MC = "mc_add {mc} 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable {mc}\n"


def require_tools() -> None:
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt install openipmi ipmitool)")


def _listening(address: str) -> bool:
    out = subprocess.run(["ss", "-Hulnp", f"src {address}:623"], capture_output=True, text=True).stdout
    return "ipmi_sim" in out


@contextlib.contextmanager
def ipmi_sim(work: Path, password: str, bmcs: list[tuple[str, str, Path | None]]):
    """bmcs: (name, loopback address, chassis_control program or None). Yields the password file."""
    conf = 'name "podsys-test"\n'
    cmds = "mc_setbmc 0x20\n"
    for index, (name, address, control) in enumerate(bmcs):
        mc = f"0x{0x20 + 0x10 * index:02x}"
        line = f'  chassis_control "{control} {name}"\n' if control else ""
        conf += LAN.format(mc=mc, address=address, index=index, password=password, control=line)
        cmds += MC.format(mc=mc)
    (work / "lan.conf").write_text(conf)
    (work / "cmds.emu").write_text(cmds)
    (work / "state").mkdir(exist_ok=True)
    password_file = work / "bmc-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    sim = subprocess.Popen(["ipmi_sim", "-c", "lan.conf", "-f", "cmds.emu", "-s", "state", "-n"], cwd=work,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not all(_listening(address) for _, address, _ in bmcs):
            assert sim.poll() is None, sim.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "ipmi_sim did not listen within 10 s"
            time.sleep(0.2)
        yield password_file
    finally:
        sim.terminate()
        sim.wait(timeout=10)
