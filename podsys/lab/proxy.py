"""The host side of the head's uplink: apt-cacher-ng run as a plain process with its own
config, cache and log directories, bound only to the host's uplink address, fetching only
from the host's own Debian mirror."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from podsys.errors import PodsysError
from podsys.lab.plan import PROXY_PORT, PROXY_PORT_ALTERNATIVES, LabPlan

SUPPORT_DIR = Path("/usr/lib/apt-cacher-ng")
SOCKET_DIR = Path("/run/podsys/lab-sockets")


def proxy_config(plan: LabPlan, proxy_dir: Path) -> str:
    """acng.conf: BindAddress pins the listener to the uplink; the Remap line sends every
    request for a known Debian mirror to backends_debian (the host's mirror) instead of
    whichever public mirror the client named."""
    return (
        f"CacheDir: {proxy_dir / 'cache'}\n"
        f"LogDir: {proxy_dir / 'log'}\n"
        f"SupportDir: {SUPPORT_DIR}\n"
        f"Port: {plan.proxy_port}\n"
        f"BindAddress: {plan.host_uplink_address}\n"
        f"PidFile: {proxy_dir / 'apt-cacher-ng.pid'}\n"
        f"SocketPath: {socket_path(plan)}\n"
        "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian # Debian archives\n"
        "ReportPage: acng-report.html\n"
        "ExThreshold: 4\n"
    )


def socket_path(plan: LabPlan) -> Path:
    """acng's local control socket. Not under the lab directory: a Unix socket path must fit
    in 108 bytes, and lab directories (pytest temp dirs) can be longer."""
    return SOCKET_DIR / f"{plan.prefix}-acng.sock"


def write_proxy_config(plan: LabPlan, proxy_dir: Path, mirror: str) -> Path:
    conf = proxy_dir / "conf"
    for sub in (conf, proxy_dir / "cache", proxy_dir / "log"):
        sub.mkdir(parents=True, exist_ok=True)
    (conf / "acng.conf").write_text(proxy_config(plan, proxy_dir))
    (conf / "backends_debian").write_text(mirror.rstrip("/") + "/\n")
    return conf


def start_proxy(plan: LabPlan, proxy_dir: Path, mirror: str) -> int:
    conf = write_proxy_config(plan, proxy_dir, mirror)
    SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    log = open(proxy_dir / "apt-cacher-ng.out", "ab")
    proc = subprocess.Popen(
        ["apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = (proxy_dir / "apt-cacher-ng.out").read_text(errors="replace").strip().splitlines()
            raise PodsysError(f"apt-cacher-ng exited at start: {out[-1] if out else 'no output'}")
        if port_open(plan.host_uplink_address, plan.proxy_port):
            return proc.pid
        time.sleep(0.2)
    raise PodsysError(f"apt-cacher-ng did not listen on {plan.host_uplink_address}:{plan.proxy_port} within 15 s")


def free_port(address: str) -> int:
    """3142 unless the host already listens on it for all addresses (an apt-cacher-ng service
    installed the usual way does): a listener on *:3142 blocks binding uplink:3142 too."""
    for port in (PROXY_PORT, *PROXY_PORT_ALTERNATIVES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
                return port
            except OSError:
                continue
    raise PodsysError(f"no free port for the lab's apt proxy on {address}")


def port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
