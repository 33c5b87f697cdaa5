"""The VMs' BMCs (podsys/lab/bmc.py): ipmi_sim's lan.conf and command file, and the real
ipmi_sim answering the real ipmitool with that configuration and the real chassis_control
program, on loopback ports. QEMU is stood in for by a process that writes its pid like QEMU's
-pidfile and carries QEMU's -name argument (the real QEMU runs in
tests/integration/test_lab_vms.py)."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podsys.lab import bmc as lab_bmc, plan as lab_plan, vms as lab_vms


def _plan(tmp_path, vms=2):
    return lab_plan.plan_lab(tmp_path, 1, slot=0x0abc, vms=vms)


def test_lan_conf_one_controller_per_vm_on_its_own_address(tmp_path):
    plan = _plan(tmp_path)
    dirs = {vm.hostname: tmp_path / "vms" / vm.hostname for vm in plan.vms}
    text = lab_bmc.lan_conf(plan, dirs, "s3cret-pw", python="/usr/bin/python3")
    blocks = text.split("set_working_mc ")[1:]
    assert len(blocks) == 2
    for vm, block in zip(plan.vms, blocks):
        assert block.startswith(f"0x{vm.bmc_mc:02x}\n")
        assert f"    addr {vm.bmc_address} 623\n" in block
        assert f'  chassis_control "/usr/bin/python3 {lab_bmc.CHASSIS_CONTROL} {dirs[vm.hostname]}/vm.json"' in block
        assert '  user 2 true "podsys" "s3cret-pw" admin 10 md5\n' in block
        # No anonymous user (1), no straight/none authentication on the IPMI 1.5 side.
        assert "user 1" not in block and "straight" not in block and " none" not in block
    guids = [line.split()[1] for line in text.splitlines() if line.strip().startswith("guid")]
    assert len(set(guids)) == 2 and all(len(g) == 32 for g in guids)


def test_lan_conf_quotes_paths_and_refuses_a_double_quote(tmp_path):
    plan = _plan(tmp_path, vms=1)
    text = lab_bmc.lan_conf(plan, {"vm01": tmp_path / "a b"}, "pw", python="/usr/bin/python3")
    assert f"'{tmp_path / 'a b'}/vm.json'" in text
    with pytest.raises(Exception, match="double quote"):
        lab_bmc.lan_conf(plan, {"vm01": tmp_path / 'a"b'}, "pw")


def test_emu_commands_make_the_first_controller_the_bmc():
    plan = lab_plan.plan_lab("/tmp/x", 1, slot=1, vms=3)
    assert lab_bmc.emu_commands(plan).splitlines() == [
        "mc_setbmc 0x20",
        f"mc_add 0x20 {lab_bmc.MC_DEVICE}", "mc_enable 0x20",
        f"mc_add 0x22 {lab_bmc.MC_DEVICE}", "mc_enable 0x22",
        f"mc_add 0x24 {lab_bmc.MC_DEVICE}", "mc_enable 0x24",
    ]


def test_password_files_are_private_and_the_password_fits_ipmi(tmp_path):
    plan = _plan(tmp_path)
    password = tmp_path / "bmc" / "password"
    dirs = {vm.hostname: tmp_path / vm.hostname for vm in plan.vms}
    lab_bmc.write_config(plan, tmp_path / "bmc", dirs, password)
    secret = password.read_text().strip()
    assert 12 <= len(secret) <= 20
    assert password.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "bmc" / "lan.conf").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "bmc").stat().st_mode & 0o777 == 0o700
    lab_bmc.write_config(plan, tmp_path / "bmc", dirs, password)  # kept across `up`s
    assert password.read_text().strip() == secret


def test_ipmitool_argv_uses_cipher_suite_3_and_the_password_file(tmp_path):
    vm = _plan(tmp_path).vms[0]
    argv = lab_bmc.ipmitool_argv(vm, tmp_path / "pw", "chassis", "power", "status")
    assert argv[:5] == ["ipmitool", "-I", "lanplus", "-C", "3"]
    assert ["-H", vm.bmc_address, "-p", "623", "-U", "podsys", "-f", str(tmp_path / "pw")] == argv[5:13]


# --- the real ipmi_sim ------------------------------------------------------------------------

STAND_IN = (
    # Like QEMU with -daemonize -pidfile: the parent returns once the child is a session of its
    # own and its pid is written.
    "import os,sys,time\n"
    "r,w=os.pipe()\n"
    "pid=os.fork()\n"
    "if pid: os.read(r,1); open(sys.argv[1],'w').write(str(pid)); sys.exit(0)\n"
    "os.setsid(); os.write(w,b'x'); time.sleep(120)\n"
)
VM01_NICE = 7  # vm01's emulator runs niced (lab up --vm-nice), vm02's at the default


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim(tmp_path):
    missing = [t for t in ("ipmi_sim", "ipmitool") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install openipmi ipmitool)")
    plan = _plan(tmp_path)
    plan = dataclasses.replace(plan, vms=tuple(
        dataclasses.replace(vm, bmc_address="127.0.0.1", bmc_port=_free_udp_port()) for vm in plan.vms))
    dirs = {}
    for vm in plan.vms:
        d = tmp_path / "vms" / vm.hostname
        d.mkdir(parents=True)
        spec = lab_vms.vm_spec(plan, vm, d, nice=VM01_NICE if vm.hostname == "vm01" else 0)
        stand_in = [sys.executable, "-c", STAND_IN, spec["pidfile"], f"guest={vm.machine},process={vm.machine}"]
        spec["argv"] = {"pxe": stand_in, "default": stand_in}
        (d / "vm.json").write_text(json.dumps(spec))
        dirs[vm.hostname] = d
    password = tmp_path / "bmc" / "password"
    lab_bmc.write_config(plan, tmp_path / "bmc", dirs, password)
    pid = lab_bmc.start(plan, tmp_path / "bmc", password)
    yield plan, password, dirs
    for d in dirs.values():
        pid_file = d / "qemu.pid"
        if pid_file.exists():
            subprocess.run(["kill", "-9", pid_file.read_text().strip()], capture_output=True)
    subprocess.run(["kill", str(pid)], capture_output=True)
    time.sleep(0.2)
    assert lab_bmc.ipmi_sim_pids_for(tmp_path / "bmc") == []


def test_real_ipmi_sim_drives_each_vm_through_its_own_bmc(sim):
    plan, password, dirs = sim
    vm1, vm2 = plan.vms
    assert lab_bmc.power_state(vm1, password) == "off" and lab_bmc.power_state(vm2, password) == "off"

    # ipmitool exits 0 even when bootdev fails: its output is what says it worked.
    out = lab_bmc.ipmitool(vm2, password, "chassis", "bootdev", "pxe")
    assert out.returncode == 0 and out.stdout.strip() == "Set Boot Device to pxe"
    assert (dirs["vm02"] / "bootdev").read_text().strip() == "pxe"
    assert "Force PXE" in lab_bmc.ipmitool(vm2, password, "chassis", "bootparam", "get", "5").stdout
    assert not (dirs["vm01"] / "bootdev").exists()  # the other BMC's VM is untouched
    lab_bmc.ipmitool(vm2, password, "chassis", "bootdev", "disk")
    assert not (dirs["vm02"] / "bootdev").exists()

    out = lab_bmc.ipmitool(vm1, password, "chassis", "power", "on")
    assert out.stdout.strip() == "Chassis Power Control: Up/On", out.stdout + out.stderr
    assert lab_bmc.power_state(vm1, password) == "on" and lab_bmc.power_state(vm2, password) == "off"
    pid = int((dirs["vm01"] / "qemu.pid").read_text())
    # The emulator's session (its scheduler autogroup) and its threads got vm01's nice value.
    autogroup = Path(f"/proc/{pid}/autogroup")
    if autogroup.exists():
        assert autogroup.read_text().split()[-2:] == ["nice", str(VM01_NICE)], autogroup.read_text()
    assert os.getpriority(os.PRIO_PROCESS, pid) == VM01_NICE
    assert f"priority: nice {VM01_NICE} for pid {pid}" in (dirs["vm01"] / "chassis.log").read_text()
    lab_bmc.ipmitool(vm1, password, "chassis", "power", "off")
    assert lab_bmc.power_state(vm1, password) == "off"
    assert "ended on SIGTERM" in (dirs["vm01"] / "chassis.log").read_text()
    stat = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    assert stat == "" or stat.startswith("Z"), f"stand-in pid {pid} still runs ({stat})"


def test_real_ipmi_sim_refuses_a_wrong_password_and_the_default_cipher_suite(sim, tmp_path):
    plan, password, _ = sim
    vm = plan.vms[0]
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    assert lab_bmc.power_state(vm, wrong) == "unknown"
    argv = [a for a in lab_bmc.ipmitool_argv(vm, password, "chassis", "power", "status")]
    argv[argv.index("-C") + 1] = "17"  # ipmitool's default suite, refused at once by ipmi_sim
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "invalid authentication algorithm" in proc.stderr
