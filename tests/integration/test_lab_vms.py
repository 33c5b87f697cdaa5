"""Virtual bare metal in the lab, for real: `podsys lab up --nodes 1 --vms 2` makes two QEMU
machines (TCG; the first SeaBIOS, the second OVMF) on the provision bridge and one ipmi_sim
with a BMC per VM; ipmitool (lanplus, cipher suite 3) powers them on and off, sets the one-shot
boot device and resets them; their firmware's DHCP requests are heard on the lab bridge; and
`podsys lab down` leaves no QEMU, ipmi_sim, tap, BMC address or disk behind.

Each VM runs only for the seconds its check needs (the machine has two shared cores); nothing
is installed on them here (deploy and the image install drive them in the deploy tests)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podsys.lab import bmc as lab_bmc, cluster as lab, net as lab_net, vms as lab_vms
from tests.conftest import podsys
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

LISTENER = Path(__file__).with_name("dhcp_listen.py")


@pytest.fixture(scope="module")
def vm_lab(tmp_path_factory):
    problems = lab.missing_requirements(vms=2)
    if problems:
        pytest.skip("lab VMs cannot run here: " + "; ".join(problems))
    directory = tmp_path_factory.mktemp("vmlab")
    atexit.register(lab.down, directory)
    started = time.monotonic()
    up = podsys("lab", "up", "--nodes", "1", "--vms", "2", "--dir", directory, timeout=900)
    print(f"lab up --nodes 1 --vms 2 took {time.monotonic() - started:.0f} s")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = lab.load_state(lab.paths_for(directory))
        yield directory, lab.LabPlan.from_dict(state["plan"])
    finally:
        lab.down(directory)


def ipmi(plan, directory, vm, *args) -> str:
    proc = lab_bmc.ipmitool(vm, lab.paths_for(directory).bmc_password, *args)
    assert proc.returncode == 0, f"ipmitool {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def listen_for_dhcp(plan, mac: str, seconds: int) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", plan.bridge_netns, sys.executable, str(LISTENER),
                             plan.bridge, mac, str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr.readline().strip() == "listening"  # bound before the VM is powered on
    return proc


def dhcp_seen(proc: subprocess.Popen, timeout: float) -> dict | None:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out)["seen"]


def qmp(plan, vm, command: str, **arguments):
    """One QMP command on the VM's socket, with the chassis_control program's own client."""
    loader = importlib.util.spec_from_file_location("lab_chassis_control", lab_bmc.CHASSIS_CONTROL)
    program = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(program)
    return program.qmp({"qmp": str(lab_vms.qmp_socket(plan, vm))}, command, **arguments)


def qemu_pid(directory, vm) -> int | None:
    pid = lab_vms.read_pid(lab_vms.vm_dir(lab.paths_for(directory).lab_dir, vm) / "qemu.pid")
    return pid if pid in lab_vms.qemu_pids_with_prefix(vm.machine.rsplit("-", 1)[0]) else None


def _boots(directory, vm, offset: int) -> list[str]:
    """The devices SeaBIOS tried, in order, from `offset` of the console log on."""
    with open(lab_vms.vm_dir(lab.paths_for(directory).lab_dir, vm) / "console.log", "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return re.findall(r"Booting from (ROM|Hard Disk)", text)


def chassis_log(directory, vm) -> str:
    return (lab_vms.vm_dir(lab.paths_for(directory).lab_dir, vm) / "chassis.log").read_text()


def test_lab_yaml_and_status_list_the_vms_powered_off(vm_lab):
    directory, plan = vm_lab
    text = (directory / "lab.yaml").read_text()
    password = lab.paths_for(directory).bmc_password.read_text().strip()
    assert password not in text
    assert lab.paths_for(directory).bmc_password.stat().st_mode & 0o777 == 0o600
    out = podsys("lab", "status", "--dir", directory, "--json", check=True).stdout
    assert password not in out
    info = json.loads(out)
    assert info["state"] == "up" and info["bmc"]["running"]
    assert [(v["name"], v["firmware"], v["power"]) for v in info["vms"]] == [("vm01", "bios", "off"),
                                                                             ("vm02", "uefi", "off")]
    for vm in plan.vms:
        assert ipmi(plan, directory, vm, "chassis", "power", "status") == "Chassis Power is off"
        assert qemu_pid(directory, vm) is None


def test_the_head_reaches_the_bmcs_through_its_uplink(vm_lab):
    directory, plan = vm_lab
    argv = lab_bmc.ipmitool_argv(plan.vms[1], lab.paths_for(directory).bmc_password, "chassis", "power", "status")
    proc = subprocess.run(["ip", "netns", "exec", plan.head.netns, *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "Chassis Power is off", proc.stdout + proc.stderr


def test_bios_vm_pxe_boots_once_resets_over_qmp_and_powers_off(vm_lab):
    directory, plan = vm_lab
    vm = plan.vms[0]
    # ipmitool exits 0 even when bootdev fails: the output says whether it worked.
    assert ipmi(plan, directory, vm, "chassis", "bootdev", "pxe") == "Set Boot Device to pxe"
    listener = listen_for_dhcp(plan, vm.mac, 120)
    try:
        assert ipmi(plan, directory, vm, "chassis", "power", "on") == "Chassis Power Control: Up/On"
        pid = qemu_pid(directory, vm)
        assert pid, "power on did not start this VM's QEMU"
        assert ipmi(plan, directory, vm, "chassis", "power", "status") == "Chassis Power is on"
        assert qmp(plan, vm, "query-status")["status"] == "running"
        # One-shot: this boot went to the NIC first; the next one finds the disk first again.
        assert "power on, boot pxe" in chassis_log(directory, vm)
        assert qmp(plan, vm, "qom-get", path=f"/machine/peripheral/{lab_vms.NIC_ID}", property="bootindex") == 2
        assert qmp(plan, vm, "qom-get", path=f"/machine/peripheral/{lab_vms.DISK_ID}", property="bootindex") == 1
        seen = dhcp_seen(listener, 150)
        assert seen and seen["type"] == "DISCOVER", "no DHCP request from the BIOS VM on the lab bridge"
        assert seen["vendor_class"].startswith("PXEClient:Arch:00000"), seen  # BIOS PXE
    finally:
        listener.kill()

    # SeaBIOS names each device it tries on the serial console: the NIC's iPXE is "ROM".
    first_boot = wait_for("the PXE boot to try a device", lambda: _boots(directory, vm, 0), timeout=120)
    assert first_boot[0] == "ROM", f"bootdev pxe must try the NIC first: {first_boot}"

    before_reset = (lab_vms.vm_dir(lab.paths_for(directory).lab_dir, vm) / "console.log").stat().st_size
    assert ipmi(plan, directory, vm, "chassis", "power", "reset") == "Chassis Power Control: Reset"
    assert "reset, boot default" in chassis_log(directory, vm)
    assert qemu_pid(directory, vm) == pid, "reset must not restart the QEMU process"
    assert qmp(plan, vm, "query-status")["status"] == "running"
    after_reset = wait_for("the reset VM to try a device", lambda: _boots(directory, vm, before_reset), timeout=120)
    assert after_reset[0] == "Hard Disk", f"the one-shot PXE must not outlive its boot: {after_reset}"

    assert ipmi(plan, directory, vm, "chassis", "power", "off") == "Chassis Power Control: Down/Off"
    assert qemu_pid(directory, vm) is None
    assert ipmi(plan, directory, vm, "chassis", "power", "status") == "Chassis Power is off"
    assert f"power off: pid {pid} ended on SIGTERM" in chassis_log(directory, vm)


def test_uefi_vm_with_a_blank_disk_falls_through_to_pxe_and_a_hung_one_is_killed(vm_lab):
    directory, plan = vm_lab
    vm = plan.vms[1]
    listener = listen_for_dhcp(plan, vm.mac, 180)
    try:
        # No bootdev: disk first, and a blank disk falls through to the network.
        assert ipmi(plan, directory, vm, "chassis", "power", "on") == "Chassis Power Control: Up/On"
        assert "power on, boot default" in chassis_log(directory, vm)
        seen = dhcp_seen(listener, 210)
        assert seen and seen["type"] == "DISCOVER", "no DHCP request from the UEFI VM on the lab bridge"
        assert seen["vendor_class"].startswith("PXEClient:Arch:00007"), seen  # x64 UEFI PXE
    finally:
        listener.kill()
    pid = qemu_pid(directory, vm)
    os.kill(pid, signal.SIGSTOP)  # a hung QEMU: SIGTERM stays pending, only SIGKILL ends it
    assert ipmi(plan, directory, vm, "chassis", "power", "off") == "Chassis Power Control: Down/Off"
    assert qemu_pid(directory, vm) is None
    assert f"power off: pid {pid} ignored SIGTERM, killed" in chassis_log(directory, vm)


def test_lab_down_leaves_no_vm_bmc_tap_or_disk(vm_lab):
    directory, plan = vm_lab
    vm = plan.vms[0]
    ipmi(plan, directory, vm, "chassis", "power", "on")
    assert qemu_pid(directory, vm)
    paths = lab.paths_for(directory)
    assert (paths.vms_dir / vm.hostname / "disk.qcow2").is_file()
    assert lab_net.link_exists(vm.tap, plan.bridge_netns)
    assert lab_bmc.ipmi_sim_pids_for(paths.bmc_dir)

    started = time.monotonic()
    down = podsys("lab", "down", "--dir", directory, check=True)
    print(f"lab down took {time.monotonic() - started:.0f} s")
    assert "powering off 1 VM(s)" in down.stderr and "stopping the BMCs" in down.stderr
    assert lab_vms.qemu_pids_with_prefix(plan.prefix) == []
    assert lab_bmc.ipmi_sim_pids_for(paths.bmc_dir) == []
    assert plan.bridge_netns not in lab_net.list_netns()  # the taps lived there
    host_addrs = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    assert not any(v.bmc_address + "/" in host_addrs for v in plan.vms)
    assert not paths.vms_dir.exists()
    assert not list(lab_vms.SOCKET_DIR.glob(f"{plan.prefix}-*.qmp"))
    assert paths.bmc_password.exists()  # kept for the next `up`, like the lab key
    wait_for("lab status says down", lambda: lab.status(directory)["state"] == "down", timeout=10, every=1)
