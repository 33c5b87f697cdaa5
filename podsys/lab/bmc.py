"""The lab VMs' BMCs: one OpenIPMI `ipmi_sim` (Debian package openipmi) serving one
IPMI-over-LAN (IPMI 2.0 lanplus) management controller per VM, each on its own address.

Each controller's `chassis_control` program is podsys/data/lab_chassis_control.py with the
VM's vm.json: it is the power button, the reset line and the boot device selector. The
configuration follows ipmi_lan(5) and ipmi_sim_cmd(5) of openipmi 2.0.33; the password is in
lan.conf (0600) and in the password file podsys reads (0600), never on a command line."""

from __future__ import annotations

import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

from podsys.errors import PodsysError
from podsys.lab.plan import BMC_USER, LabPlan, LabVM

CHASSIS_CONTROL = Path(__file__).resolve().parent.parent / "data" / "lab_chassis_control.py"
# ipmi_sim answers only the IPMI 2.0 cipher suites up to 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96,
# AES-CBC-128); ipmitool's default suite 17 (SHA-256) is refused, so clients pass `-C 3`.
CIPHER_SUITE = 3
# Get Device ID's answer for every controller (ipmi_sim_cmd(5) mc_add: device id, SDRs, revision,
# firmware major/minor, device support, manufacturer, product): the values of OpenIPMI's own
# sample BMC, lanserv/ipmisim1.emu (https://github.com/cminyard/openipmi).
MC_DEVICE = "0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02"


def new_password() -> str:
    # IPMI 2.0 passwords are at most 20 bytes; 16 URL-safe characters.
    return secrets.token_urlsafe(12)


def lan_conf(plan: LabPlan, vm_dirs: dict[str, Path], password: str, python: str = sys.executable) -> str:
    """ipmi_sim's lan.conf: per VM, a controller with one LAN channel on the VM's BMC address,
    the admin user and the chassis_control program. Only RMCP+ and MD5 are allowed."""
    lines = [f'name "{plan.prefix}-bmc"', ""]
    for vm in plan.vms:
        control = " ".join(shlex.quote(a) for a in (python, str(CHASSIS_CONTROL), str(vm_dirs[vm.hostname] / "vm.json")))
        if '"' in control:
            raise PodsysError(f"{control}: a path with a double quote cannot be written to lan.conf")
        lines += [
            f"# {vm.hostname} ({vm.mac})",
            f"set_working_mc 0x{vm.bmc_mc:02x}",
            "  startlan 1",
            f"    addr {vm.bmc_address} {vm.bmc_port}",
            "    priv_limit admin",
            "    allowed_auths_callback md5",
            "    allowed_auths_user md5",
            "    allowed_auths_operator md5",
            "    allowed_auths_admin md5",
            f"    guid {_guid(plan, vm)}",
            "  endlan",
            f'  chassis_control "{control}"',
            f'  user 2 true "{BMC_USER}" "{password}" admin 10 md5',
            "",
        ]
    return "\n".join(lines)


def _guid(plan: LabPlan, vm: LabVM) -> str:
    """A stable 16-byte GUID per BMC (RMCP+ session setup sends it), from the VM's MAC."""
    return (f"{plan.slot:08x}" + vm.mac.replace(":", "")).ljust(32, "0")[:32]


def emu_commands(plan: LabPlan) -> str:
    """ipmi_sim's startup commands: the first VM's controller is the BMC, every controller is
    added and enabled."""
    lines = [f"mc_setbmc 0x{plan.vms[0].bmc_mc:02x}"]
    for vm in plan.vms:
        lines += [f"mc_add 0x{vm.bmc_mc:02x} {MC_DEVICE}", f"mc_enable 0x{vm.bmc_mc:02x}"]
    return "\n".join(lines) + "\n"


# --- what runs commands -----------------------------------------------------------------------


def write_config(plan: LabPlan, bmc_dir: Path, vm_dirs: dict[str, Path], password_file: Path) -> Path:
    """lan.conf, the command file and the password file (made once, kept across `up`s)."""
    bmc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    bmc_dir.chmod(0o700)
    if not password_file.exists():
        password_file.touch(mode=0o600)
        password_file.write_text(new_password() + "\n")
    password_file.chmod(0o600)
    password = password_file.read_text().splitlines()[0]
    conf = bmc_dir / "lan.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(lan_conf(plan, vm_dirs, password))
    (bmc_dir / "bmc.emu").write_text(emu_commands(plan))
    (bmc_dir / "state").mkdir(exist_ok=True)
    return conf


def add_addresses(plan: LabPlan) -> None:
    """The BMC addresses, on the host's end of the head's uplink: local to the host, on-link for
    the head (its uplink unit routes the BMC network there). They vanish with the link."""
    from podsys.lab.net import ip

    for vm in plan.vms:
        ip("addr", "replace", f"{vm.bmc_address}/32", "dev", plan.host_uplink_link)


def start(plan: LabPlan, bmc_dir: Path, password_file: Path) -> int:
    """Start ipmi_sim in the background and wait until every BMC answers."""
    log = open(bmc_dir / "ipmi_sim.out", "ab")
    proc = subprocess.Popen(
        ["ipmi_sim", "-n", "-c", str(bmc_dir / "lan.conf"), "-f", str(bmc_dir / "bmc.emu"),
         "-s", str(bmc_dir / "state")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 20
    pending = list(plan.vms)
    while pending:
        if proc.poll() is not None:
            out = (bmc_dir / "ipmi_sim.out").read_text(errors="replace").strip().splitlines()
            raise PodsysError(f"ipmi_sim exited at start: {out[-1] if out else 'no output'}")
        if time.monotonic() > deadline:
            raise PodsysError(f"BMC of {pending[0].hostname} did not answer on {pending[0].bmc_address} within 20 s")
        if ipmitool(pending[0], password_file, "chassis", "power", "status", timeout=5).returncode == 0:
            pending.pop(0)
        else:
            time.sleep(0.3)
    return proc.pid


def ipmitool_argv(vm: LabVM, password_file: Path, *args: str) -> list[str]:
    return ["ipmitool", "-I", "lanplus", "-C", str(CIPHER_SUITE), "-H", vm.bmc_address,
            "-p", str(vm.bmc_port), "-U", BMC_USER, "-f", str(password_file), *args]


def ipmitool(vm: LabVM, password_file: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    argv = ipmitool_argv(vm, password_file, *args)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout} s")


def power_state(vm: LabVM, password_file: Path) -> str:
    """`on`, `off`, or `unknown` as the BMC reports it."""
    out = ipmitool(vm, password_file, "chassis", "power", "status", timeout=10).stdout.strip()
    return out.rsplit(" ", 1)[-1] if out.startswith("Chassis Power is ") else "unknown"


def ipmi_sim_pids_for(bmc_dir: Path) -> list[int]:
    from podsys.lab.proc import proc_cmdline

    conf = str(bmc_dir / "lan.conf")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = proc_cmdline(int(entry.name))
            if args and Path(args[0]).name == "ipmi_sim" and conf in args:
                found.append(int(entry.name))
    return found
