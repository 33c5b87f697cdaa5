"""The lab VMs' chassis_control program (podsys/data/lab_chassis_control.py), run as ipmi_sim
runs it: `PROGRAM VM_JSON get|set ...`, its answer on stdout. QEMU is stood in for by a
process that writes its pid like QEMU's -pidfile and carries QEMU's -name argument."""

import json
import subprocess
import sys
import time

import pytest

from podsys.lab import bmc as lab_bmc

PROGRAM = str(lab_bmc.CHASSIS_CONTROL)
STAND_IN = (
    "import os,signal,sys,time\n"
    "pid=os.fork()\n"
    "if pid: open(sys.argv[1],'w').write(str(pid)); sys.exit(0)\n"
    "os.setsid()\n"
    "if sys.argv[2]=='stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(120)\n"
)


def _spec(tmp_path, behaviour="polite"):
    spec = {
        "name": "vm01", "machine": "pltest-vm01",
        "pidfile": str(tmp_path / "qemu.pid"), "qmp": str(tmp_path / "none.qmp"),
        "bootdev_file": str(tmp_path / "bootdev"), "log": str(tmp_path / "chassis.log"),
        "nic_id": "nic0", "disk_id": "disk0", "stop_timeout_s": 1,
    }
    stand_in = [sys.executable, "-c", STAND_IN, spec["pidfile"], behaviour, "guest=pltest-vm01,process=pltest-vm01"]
    spec["argv"] = {"pxe": stand_in, "default": stand_in}
    (tmp_path / "vm.json").write_text(json.dumps(spec))
    return tmp_path / "vm.json"


def chassis(vm_json, *args):
    return subprocess.run([sys.executable, PROGRAM, str(vm_json), *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def cleanup(tmp_path):
    yield
    pid_file = tmp_path / "qemu.pid"
    if pid_file.exists():
        subprocess.run(["kill", "-9", pid_file.read_text().strip()], capture_output=True)


def test_power_follows_the_process_and_sigkill_ends_a_stubborn_one(tmp_path, cleanup):
    vm_json = _spec(tmp_path, "stubborn")
    assert chassis(vm_json, "get", "power").stdout == "power:0\n"
    assert chassis(vm_json, "set", "power", "1").returncode == 0
    assert chassis(vm_json, "get", "power").stdout == "power:1\n"
    started = time.monotonic()
    assert chassis(vm_json, "set", "power", "0").returncode == 0
    assert time.monotonic() - started < 5
    assert chassis(vm_json, "get", "power").stdout == "power:0\n"
    assert "ignored SIGTERM, killed" in (tmp_path / "chassis.log").read_text()


def test_a_pid_file_naming_another_process_is_off(tmp_path):
    vm_json = _spec(tmp_path)
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "qemu.pid").write_text(f"{other.pid}\n")
        assert chassis(vm_json, "get", "power").stdout == "power:0\n"
        assert chassis(vm_json, "set", "power", "0").returncode == 0
        assert other.poll() is None, "power off must not kill a process that is not this VM's QEMU"
    finally:
        other.kill()


def test_boot_device_is_one_shot(tmp_path, cleanup):
    vm_json = _spec(tmp_path)
    assert chassis(vm_json, "get", "boot").stdout == "boot:default\n"
    assert chassis(vm_json, "set", "boot", "cdrom").returncode == 0
    assert chassis(vm_json, "get", "boot").stdout == "boot:cdrom\n"
    assert chassis(vm_json, "set", "power", "1").returncode == 0  # cdrom: not pxe, no QMP needed
    assert chassis(vm_json, "get", "boot", "power").stdout == "boot:default\npower:1\n"
    assert "boot cdrom" in (tmp_path / "chassis.log").read_text()


def test_bad_requests_fail_with_the_reason_on_stdout(tmp_path):
    vm_json = _spec(tmp_path)
    for args, reason in ((("get", "voltage"), "Invalid parameter: voltage"),
                         (("set", "boot", "floppy"), "Invalid boot value: floppy"),
                         (("set", "power"), "No value present for parameter power"),
                         (("toggle",), "Unknown operation: toggle"),
                         (("set", "reset", "1"), "the VM is off; nothing to reset")):
        proc = chassis(vm_json, *args)
        assert proc.returncode == 1 and proc.stdout.strip() == reason, (args, proc.stdout)


def test_reset_of_a_running_vm_without_qmp_fails_loudly(tmp_path, cleanup):
    vm_json = _spec(tmp_path)
    chassis(vm_json, "set", "power", "1")
    proc = chassis(vm_json, "set", "reset", "1")
    assert proc.returncode == 1 and proc.stdout.startswith("QMP system_reset:")
