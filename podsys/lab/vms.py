"""The lab's virtual bare metal: QEMU machines (software emulation, TCG) with an empty disk and a
NIC on the provision bridge, powered only through their BMC (podsys/lab/bmc.py).

`lab up` prepares each VM (disk, firmware variables, tap device, vm.json) but starts none:
the BMC's chassis_control program (podsys/data/lab_chassis_control.py) starts QEMU with the
command lines written here. Everything but the few functions that run commands is pure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from podsys.errors import PodsysError
from podsys.lab.plan import LabPlan, LabVM

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
# Debian's ovmf package (bookworm): the 4 MiB firmware split into read-only code and a
# variable store template that each UEFI VM gets a writable copy of, so boot entries written
# by an installed system survive power cycles like a real board's NVRAM.
# Source: https://packages.debian.org/bookworm/all/ovmf/filelist
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
VM_MEMORY_MIB = 1024
DEFAULT_DISK_SIZE = "8G"
# ipmi_sim waits for its chassis_control program before it answers, and ipmitool gives up on
# an answer after a few seconds: QEMU ends on SIGTERM at once, so 3 s is plenty before SIGKILL.
STOP_TIMEOUT_S = 3
SOCKET_DIR = Path("/run/podsys/lab-sockets")  # a Unix socket path must fit in 108 bytes
# QEMU device ids; the chassis_control program rewrites their bootindex over QMP.
NIC_ID, DISK_ID = "nic0", "disk0"
BOOT_DEVICES = ("pxe", "default")  # what the chassis_control program can start QEMU with


_SIZE_UNITS = {"M": 1, "G": 1024, "T": 1024 * 1024}
NICE_RANGE = range(-20, 20)


@dataclass(frozen=True)
class VMSettings:
    """What `lab up --vm-*` chooses for every VM of the lab.

    nice: the scheduling priority of each VM's emulator, applied at every power-on to QEMU's
    scheduler autogroup (QEMU's -daemonize makes it a session of its own, and with autogroups
    a process's own nice only counts inside its session). An emulated instruction costs the
    host many, so on a busy host a VM at nice 0 gets a small share of the CPU and everything
    that runs on it (each Ansible task) crawls; a negative value lets it go first."""
    disk_size: str = DEFAULT_DISK_SIZE
    nice: int = 0


def valid_disk_size(size: str) -> bool:
    """qemu-img's size, restricted to what a lab needs: a whole number of M, G or T, 1M..2T."""
    if len(size) < 2 or size[-1] not in _SIZE_UNITS or not size[:-1].isdigit():
        return False
    mib = int(size[:-1]) * _SIZE_UNITS[size[-1]]
    return 1 <= mib <= 2 * 1024 * 1024


def qmp_socket(plan: LabPlan, vm: LabVM) -> Path:
    return SOCKET_DIR / f"{vm.machine}.qmp"


def vm_dir(lab_dir: Path, vm: LabVM) -> Path:
    return lab_dir / "vms" / vm.hostname


def qemu_argv(plan: LabPlan, vm: LabVM, directory: Path, boot: str) -> list[str]:
    """QEMU's command line for one power-on. `boot` is the BMC's one-shot boot device: `pxe`
    puts the NIC first; `default` puts the disk first, and a blank disk falls through to the
    NIC, as a new server does. The firmware reads this order at every reset, so the
    chassis_control program switches it back to `default` once this boot has started."""
    if boot not in BOOT_DEVICES:
        raise ValueError(f"boot device {boot!r} is not one of {', '.join(BOOT_DEVICES)}")
    nic_index, disk_index = (1, 2) if boot == "pxe" else (2, 1)
    firmware = (
        ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
         "-drive", f"if=pflash,format=raw,unit=1,file={directory / 'OVMF_VARS.fd'}"]
        if vm.firmware == "uefi" else []  # SeaBIOS, QEMU's built-in default
    )
    return [
        # The tap lives in the lab's bridge namespace; QEMU opens it by name there.
        "nsenter", f"--net=/run/netns/{plan.bridge_netns}", "--",
        QEMU, "-name", f"guest={vm.machine},process={vm.machine}",
        # qemu64, not max: with max the guest's libc picks AVX2 code paths, which TCG emulates
        # slowly; the same node image booted about 18 % faster through a fork/exec, Python and
        # file-reading workload as qemu64 (both models measured on the 2-core machine, 2026-11-29).
        "-accel", "tcg", "-machine", "q35,graphics=off", "-cpu", "qemu64", "-smp", "1", "-m", str(VM_MEMORY_MIB),
        "-nodefaults", "-display", "none", "-no-user-config",
        *firmware,
        "-device", "virtio-scsi-pci,id=scsi0",
        # cache=unsafe: the guest's flushes (dpkg, the ramdisk's sync) do not reach the host's
        # disk; a lab disk is thrown away with the lab, so a host crash costs nothing.
        "-drive", f"if=none,id=hd0,format=qcow2,cache=unsafe,file={directory / 'disk.qcow2'}",
        "-device", f"scsi-hd,drive=hd0,id={DISK_ID},bootindex={disk_index}",
        "-netdev", f"tap,id=net0,ifname={vm.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,id={NIC_ID},mac={vm.mac},bootindex={nic_index}",
        "-chardev", f"file,id=console0,path={directory / 'console.log'},append=on",
        "-serial", "chardev:console0",
        "-qmp", f"unix:{qmp_socket(plan, vm)},server=on,wait=off",
        "-pidfile", str(directory / "qemu.pid"),
        "-daemonize",
    ]


def vm_spec(plan: LabPlan, vm: LabVM, directory: Path, nice: int = 0) -> dict:
    """vm.json: everything the chassis_control program needs to run this VM, no lab code."""
    return {
        "name": vm.hostname,
        "machine": vm.machine,
        "pidfile": str(directory / "qemu.pid"),
        "qmp": str(qmp_socket(plan, vm)),
        "bootdev_file": str(directory / "bootdev"),
        "log": str(directory / "chassis.log"),
        "nic_id": NIC_ID,
        "disk_id": DISK_ID,
        "stop_timeout_s": STOP_TIMEOUT_S,
        "nice": nice,
        "argv": {boot: qemu_argv(plan, vm, directory, boot) for boot in BOOT_DEVICES},
    }


# --- what runs commands -----------------------------------------------------------------------


def missing_tools() -> dict[str, str]:
    """{tool or file: Debian package} for what `lab up --vms` needs and this host lacks."""
    needed = {QEMU: "qemu-system-x86", QEMU_IMG: "qemu-utils", "ipmi_sim": "openipmi",
              "ipmitool": "ipmitool", "nsenter": "util-linux"}
    missing = {tool: pkg for tool, pkg in needed.items() if shutil.which(tool) is None}
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.is_file():
            missing[str(path)] = "ovmf"
    return missing


def prepare_vm(plan: LabPlan, vm: LabVM, lab_dir: Path, settings: VMSettings) -> Path:
    """The VM's directory: an empty qcow2 disk, (UEFI) its own variable store, vm.json."""
    directory = vm_dir(lab_dir, vm)
    directory.mkdir(parents=True, exist_ok=True)
    disk = directory / "disk.qcow2"
    if not disk.exists():
        proc = subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(disk), settings.disk_size],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise PodsysError(f"{QEMU_IMG} create {disk}: {proc.stderr.strip() or 'failed'}")
    if vm.firmware == "uefi" and not (directory / "OVMF_VARS.fd").exists():
        shutil.copyfile(OVMF_VARS, directory / "OVMF_VARS.fd")
    (directory / "vm.json").write_text(json.dumps(vm_spec(plan, vm, directory, settings.nice), indent=2) + "\n")
    SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    return directory


def add_tap(plan: LabPlan, vm: LabVM) -> None:
    """A persistent tap on the lab bridge; QEMU attaches to it at power-on, and it goes away
    with the bridge namespace at `lab down`."""
    from podsys.lab.net import ip, link_exists

    ns = plan.bridge_netns
    if not link_exists(vm.tap, ns):
        ip("-n", ns, "tuntap", "add", "dev", vm.tap, "mode", "tap")
    ip("-n", ns, "link", "set", vm.tap, "master", plan.bridge, "up")


def qemu_pids_with_prefix(prefix: str) -> list[int]:
    """QEMU processes of a lab (by their -name), whoever started them."""
    from podsys.lab.proc import proc_cmdline

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = proc_cmdline(int(entry.name))
            if args and os.path.basename(args[0]) == QEMU and any(
                    a.startswith(f"guest={prefix}-") for a in args):
                found.append(int(entry.name))
    return found


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_running(plan: LabPlan, vm: LabVM, lab_dir: Path) -> bool:
    """On: the pid QEMU wrote is alive, not a zombie, and is this VM's QEMU."""
    from podsys.lab.proc import proc_alive, proc_cmdline

    pid = read_pid(vm_dir(lab_dir, vm) / "qemu.pid")
    return bool(pid and proc_alive(pid) and f"guest={vm.machine},process={vm.machine}" in proc_cmdline(pid))
