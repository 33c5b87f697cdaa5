#!/usr/bin/env python3
"""A lab VM's chassis: the `chassis_control` program of its BMC in ipmi_sim (openipmi).

ipmi_sim runs `lab_chassis_control.py VM_JSON get PARM...` and `... set PARM VALUE...` (the
protocol of openipmi's lanserv/ipmi_sim_chassiscontrol example): `get` prints `parm:value`
lines, `set` prints nothing on success; on failure it prints the reason and exits 1, which
the BMC answers with an error completion code.

  power    1 starts QEMU (VM_JSON's command line for the one-shot boot device), 0 stops it
           (SIGTERM, then SIGKILL); its value is the process state of the pid QEMU wrote.
  reset    1 resets the running VM over QMP (system_reset).
  boot     pxe | default | none | cdrom | bios: the device of the next boot only.
  shutdown 1 asks the guest to shut down (ACPI power button, QMP system_powerdown).
  identify accepted and ignored (no LED here).

Standard library only: ipmi_sim runs it with nothing of podsys on the path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class ChassisError(Exception):
    pass


def log(spec: dict, message: str) -> None:
    with open(spec["log"], "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")


# --- the QEMU process -------------------------------------------------------------------------


def qemu_pid(spec: dict) -> int | None:
    """The pid QEMU wrote, if that process is alive (not a zombie) and is this VM's QEMU."""
    try:
        pid = int(Path(spec["pidfile"]).read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    name = f"guest={spec['machine']},process={spec['machine']}".encode()
    return pid if state != "Z" and name in cmdline else None


def power_on(spec: dict) -> None:
    if qemu_pid(spec):
        return
    boot = take_boot_device(spec)
    argv = spec["argv"]["pxe" if boot == "pxe" else "default"]
    with open(spec["log"], "a") as out:
        # -daemonize: QEMU returns once the machine exists and its QMP socket listens.
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=120)
    pid = qemu_pid(spec)
    if proc.returncode != 0 or not pid:
        raise ChassisError(f"QEMU did not start (exit {proc.returncode}); see {spec['log']}")
    log(spec, f"power on, boot {boot}, pid {pid}")
    if spec.get("nice"):
        log(spec, set_priority(pid, int(spec["nice"])))
    if boot == "pxe":
        # One-shot: the firmware reads the boot order again at every reset, so the next boot
        # (the installed system's reboot) must find the disk first again.
        set_boot_order(spec, "default")


def set_priority(pid: int, nice: int) -> str:
    """Give the QEMU process the nice value `nice`: its scheduler autogroup's (QEMU's
    -daemonize makes it a session, hence an autogroup, of its own: with autogroups a thread's
    own nice only weighs inside its group) and every thread's, for kernels without autogroups.
    Returns what was done, for the chassis log; a refusal is logged, not fatal."""
    done = []
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
        done.append("autogroup")
    except OSError as exc:
        done.append(f"autogroup not set ({exc.strerror})")
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(thread), nice)
        done.append("threads")
    except OSError as exc:
        done.append(f"threads not set ({exc.strerror})")
    return f"priority: nice {nice} for pid {pid}: " + ", ".join(done)


def power_off(spec: dict) -> None:
    pid = qemu_pid(spec)
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + float(spec.get("stop_timeout_s", 3))
    while time.monotonic() < deadline and qemu_pid(spec):
        time.sleep(0.1)
    if qemu_pid(spec):
        os.kill(pid, signal.SIGKILL)
        log(spec, f"power off: pid {pid} ignored SIGTERM, killed")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and qemu_pid(spec):
            time.sleep(0.1)
    else:
        log(spec, f"power off: pid {pid} ended on SIGTERM")


def reset(spec: dict) -> None:
    if not qemu_pid(spec):
        raise ChassisError("the VM is off; nothing to reset")
    boot = take_boot_device(spec)
    if boot == "pxe":
        set_boot_order(spec, "pxe")
    qmp(spec, "system_reset")
    log(spec, f"reset, boot {boot}")
    if boot == "pxe":
        # Give the firmware the changed order before switching it back for later resets.
        time.sleep(1)
        set_boot_order(spec, "default")


# --- the one-shot boot device -----------------------------------------------------------------


def boot_device(spec: dict) -> str:
    try:
        value = Path(spec["bootdev_file"]).read_text().strip()
    except OSError:
        return "default"
    return value or "default"


def take_boot_device(spec: dict) -> str:
    value = boot_device(spec)
    Path(spec["bootdev_file"]).unlink(missing_ok=True)
    return value


def set_boot_device(spec: dict, value: str) -> None:
    if value not in ("none", "pxe", "default", "cdrom", "bios"):
        raise ChassisError(f"Invalid boot value: {value}")
    if value in ("none", "default"):
        Path(spec["bootdev_file"]).unlink(missing_ok=True)
    else:
        # cdrom and bios are accepted as a BMC does, and boot the default order here.
        Path(spec["bootdev_file"]).write_text(value + "\n")
    log(spec, f"boot device for the next boot: {value}")


def set_boot_order(spec: dict, boot: str) -> None:
    """Swap the NIC's and the disk's bootindex (QEMU refuses two devices with one index)."""
    nic, disk = (1, 2) if boot == "pxe" else (2, 1)
    first_id, first, second_id, second = ((spec["nic_id"], nic, spec["disk_id"], disk) if nic == 1
                                          else (spec["disk_id"], disk, spec["nic_id"], nic))
    qmp(spec, "qom-set", path=f"/machine/peripheral/{second_id}", property="bootindex", value=9)
    qmp(spec, "qom-set", path=f"/machine/peripheral/{first_id}", property="bootindex", value=first)
    qmp(spec, "qom-set", path=f"/machine/peripheral/{second_id}", property="bootindex", value=second)


def qmp(spec: dict, command: str, **arguments) -> dict:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(spec["qmp"])
            stream = sock.makefile("rw")
            stream.readline()  # greeting
            for execute, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": execute, **({"arguments": args} if args else {})}) + "\n")
                stream.flush()
                while True:
                    reply = json.loads(stream.readline() or "{}")
                    if "event" not in reply:
                        break
                if "error" in reply or "return" not in reply:
                    raise ChassisError(f"QMP {execute}: {reply.get('error', {}).get('desc', reply)}")
            return reply["return"]
    except (OSError, ValueError) as exc:
        raise ChassisError(f"QMP {command}: {exc}") from None


# --- ipmi_sim's protocol ----------------------------------------------------------------------


def do_get(spec: dict, parms: list[str]) -> list[str]:
    out = []
    for parm in parms:
        if parm == "power":
            out.append(f"power:{1 if qemu_pid(spec) else 0}")
        elif parm == "boot":
            out.append(f"boot:{boot_device(spec)}")
        else:
            raise ChassisError(f"Invalid parameter: {parm}")
    return out


def do_set(spec: dict, args: list[str]) -> None:
    while args:
        parm = args.pop(0)
        if not args:
            raise ChassisError(f"No value present for parameter {parm}")
        value = args.pop(0)
        if parm == "power":
            power_on(spec) if value == "1" else power_off(spec)
        elif parm == "reset":
            reset(spec)
        elif parm == "boot":
            set_boot_device(spec, value)
        elif parm == "shutdown":
            if qemu_pid(spec):
                qmp(spec, "system_powerdown")
        elif parm == "identify":
            if args:
                args.pop(0)  # the force flag
        else:
            raise ChassisError(f"Invalid parameter: {parm}")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: lab_chassis_control.py VM_JSON get|set PARM [VALUE]...")
        return 1
    try:
        spec = json.loads(Path(argv[1]).read_text())
        if argv[2] == "get":
            print("\n".join(do_get(spec, argv[3:])))
        elif argv[2] == "set":
            do_set(spec, argv[3:])
        else:
            raise ChassisError(f"Unknown operation: {argv[2]}")
    except (ChassisError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
