"""BMC power control: on, off, cycle, pxe (boot from the network once, then power-cycle), status.

Through IPMI (ipmitool, `-f` reads the password file so it never appears in a process list)
or Redfish (urllib, basic auth). Nodes run in parallel; every node gets its own result line,
and one unreachable BMC does not stop the others. The BMC password is never printed: every
message that leaves this module has it masked."""

from __future__ import annotations

import base64
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ACTIONS = ("on", "off", "cycle", "pxe", "status")


@dataclass(frozen=True)
class BMCTarget:
    node: str
    address: str


@dataclass(frozen=True)
class PowerResult:
    node: str
    ok: bool
    message: str


class BMCError(Exception):
    pass


def read_password(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BMCError(f"{path}: cannot read the BMC password file ({exc.strerror})") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise BMCError(f"{path}: the BMC password file is empty")
    return password


def _mask(text: str, secret: str) -> str:
    return text.replace(secret, "********") if secret else text


# --- IPMI ---------------------------------------------------------------------------------

Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _default_runner(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


# ipmitool prints a refused "Set Chassis Boot Parameter" on stderr and still exits 0 (seen with
# ipmitool 1.8.19 against OpenIPMI's ipmi_sim 2.0.33 without a chassis_control program:
# "Set Chassis Boot Parameter 5 failed: Invalid data field in request"); only a boot device
# that was really set prints "Set Boot Device to pxe" on stdout.
BOOTDEV_FAILED = re.compile(r"^Set Chassis Boot Parameter \d+ failed: (?P<why>.*)$", re.MULTILINE)
BOOTDEV_SET = "Set Boot Device to "


def bootdev_failure(stdout: str, stderr: str) -> str | None:
    """Why `ipmitool chassis bootdev` did not set the boot device, or None when it did."""
    refused = BOOTDEV_FAILED.search(stderr) or BOOTDEV_FAILED.search(stdout)
    if refused:
        return f"the BMC refused the boot device: {refused.group('why').strip()}"
    if BOOTDEV_SET not in stdout:
        return f"ipmitool did not confirm the boot device ({(stdout or stderr).strip()[-200:] or 'no output'})"
    return None


class IPMI:
    """`cipher_suite` is passed as `ipmitool -C`. Without it ipmitool 1.8.19 first asks the BMC
    for its cipher suites to pick the best (ipmitool PR #32, "Auto selection of 'best' cipher
    suite"); a BMC that ignores that request (ipmi_sim 2.0.33 does) costs 10 s on every call
    before ipmitool falls back to suite 3 (ipmitool issue #199). Suite 3 (RAKP-HMAC-SHA1) is the
    one the IPMI 2.0 specification requires, so `bmc.cipher_suite: 3` is the safe pin."""

    def __init__(self, username: str, password_file: Path, ipmitool: str = "ipmitool", runner: Runner = _default_runner,
                 cipher_suite: int | None = None):
        self.username = username
        self.password_file = password_file
        self.ipmitool = ipmitool
        self.runner = runner
        self.cipher_suite = cipher_suite

    def _run(self, address: str, *args: str) -> str:
        return self._call(address, *args).stdout.strip()

    def _call(self, address: str, *args: str) -> subprocess.CompletedProcess:
        cipher = ["-C", str(self.cipher_suite)] if self.cipher_suite is not None else []
        argv = [self.ipmitool, "-I", "lanplus", *cipher, "-H", address, "-U", self.username,
                "-f", str(self.password_file), *args]
        try:
            proc = self.runner(argv)
        except FileNotFoundError:
            raise BMCError(f"{self.ipmitool} not found (apt install ipmitool)") from None
        except subprocess.TimeoutExpired:
            raise BMCError(f"ipmitool {' '.join(args)}: no answer from {address} in 60 s") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise BMCError(f"ipmitool {' '.join(args)}: {detail[-1] if detail else f'exit {proc.returncode}'}")
        return proc

    def is_on(self, address: str) -> bool:
        out = self._run(address, "chassis", "power", "status")  # "Chassis Power is on"
        if out.endswith(" on"):
            return True
        if out.endswith(" off"):
            return False
        raise BMCError(f"unexpected answer to power status: {out!r}")

    def act(self, address: str, action: str) -> str:
        if action == "status":
            return "on" if self.is_on(address) else "off"
        if action in ("on", "off"):
            return self._run(address, "chassis", "power", action)
        if action == "pxe":
            proc = self._call(address, "chassis", "bootdev", "pxe")
            why = bootdev_failure(proc.stdout or "", proc.stderr or "")
            if why:
                # Power-cycling now would boot the disk: stop before touching the power.
                raise BMCError(f"ipmitool chassis bootdev pxe: {why}")
        # A powered-off chassis refuses "cycle": turn it on instead, which is what was meant.
        if self.is_on(address):
            return self._run(address, "chassis", "power", "cycle")
        return self._run(address, "chassis", "power", "on")


# --- Redfish ------------------------------------------------------------------------------

class Redfish:
    def __init__(self, username: str, password: str, verify_tls: bool = False,
                 url_template: str = "https://{address}", timeout: float = 30):
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.url_template = url_template
        self.timeout = timeout
        self.context = ssl.create_default_context()
        if not verify_tls:
            # BMCs ship self-signed certificates; verification is opt-in (--verify-tls).
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def _request(self, address: str, method: str, path: str, body: dict | None = None) -> dict:
        url = self.url_template.format(address=address) + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", self.auth)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise BMCError(f"{method} {path}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BMCError(f"{method} {path}: {reason}") from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise BMCError(f"{method} {path}: answer is not JSON") from None

    def _system(self, address: str) -> str:
        members = self._request(address, "GET", "/redfish/v1/Systems").get("Members") or []
        if not members or "@odata.id" not in members[0]:
            raise BMCError("the BMC lists no computer system under /redfish/v1/Systems")
        return members[0]["@odata.id"]

    def _reset(self, address: str, system: str, reset_type: str) -> None:
        self._request(address, "POST", f"{system}/Actions/ComputerSystem.Reset", {"ResetType": reset_type})

    def act(self, address: str, action: str) -> str:
        system = self._system(address)
        state = self._request(address, "GET", system).get("PowerState", "")
        if action == "status":
            return state.lower() or "unknown"
        if action == "on":
            self._reset(address, system, "On")
            return "power on requested"
        if action == "off":
            self._reset(address, system, "ForceOff")
            return "power off requested"
        if action == "pxe":
            self._request(address, "PATCH", system, {"Boot": {"BootSourceOverrideTarget": "Pxe",
                                                              "BootSourceOverrideEnabled": "Once"}})
        if state == "On":
            self._reset(address, system, "ForceRestart")
            return ("next boot PXE, " if action == "pxe" else "") + "restart requested"
        self._reset(address, system, "On")
        return ("next boot PXE, " if action == "pxe" else "") + "power on requested"


# --- fan-out ------------------------------------------------------------------------------

def run_power(targets: list[BMCTarget], action: str, backend, secret: str = "", parallel: int = 32) -> list[PowerResult]:
    """Run one action on every target at once; results in the targets' order."""
    if action not in ACTIONS:
        raise BMCError(f"unknown power action {action!r} (expected one of {', '.join(ACTIONS)})")

    def one(target: BMCTarget) -> PowerResult:
        try:
            message = backend.act(target.address, action)
            return PowerResult(target.node, True, _mask(message, secret))
        except BMCError as exc:
            return PowerResult(target.node, False, _mask(str(exc), secret))

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(pool.map(one, targets))


def backend_for(cluster, verify_tls: bool = False):
    """(backend, password) for the manifest's `bmc` section, which the caller has checked is
    there: the password file must be private (like ssh's keys) and readable, else bad input
    naming bmc.password_file."""
    from podsys.cluster.secret_files import refuse_open_permissions
    from podsys.errors import InputError, Problem

    bmc = cluster.manifest.bmc
    password_file = cluster.base_dir / bmc.password_file
    refuse_open_permissions(password_file, "bmc.password_file")
    try:
        password = read_password(password_file)
    except BMCError as exc:
        raise InputError(Problem(str(cluster.manifest_path), None, "bmc.password_file", str(exc))) from None
    backend = (IPMI(bmc.username, password_file, cipher_suite=bmc.cipher_suite) if bmc.protocol == "ipmi"
               else Redfish(bmc.username, password, verify_tls=verify_tls))
    return backend, password
