"""Processes the lab runs: systemd-nspawn containers (started in the background, each in its
node's network namespace) and finding, probing and stopping them and the proxy again by what
their command lines name, since the process that started them is long gone by `lab down`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from podsys.lab.plan import LabNode


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_alive(pid: int | None) -> bool:
    """Running, not a zombie (the host's PID 1 may not reap what we leave behind)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_nspawn_of(pid: int, machine: str) -> bool:
    args = proc_cmdline(pid)
    return bool(args) and args[0].endswith("systemd-nspawn") and machine in args


def nspawn_pids_with_prefix(prefix: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = proc_cmdline(int(entry.name))
            if args and args[0].endswith("systemd-nspawn") and any(a.startswith(prefix + "-") for a in args):
                found.append(int(entry.name))
    return found


def proxy_pids_for(conf_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = proc_cmdline(int(entry.name))
            if args and "apt-cacher-ng" in os.path.basename(args[0]) and str(conf_dir) in args:
                found.append(int(entry.name))
    return found


def terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM (nspawn turns it into an orderly container shutdown), then SIGKILL."""
    pids = [p for p in pids if proc_alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if proc_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def nspawn_command(node: LabNode, root: Path, binds: tuple[tuple[Path, str], ...] = ()) -> list[str]:
    # nsenter first: nspawn mounts the container's /sys before it joins the namespace named by
    # --network-namespace-path, so without it /sys/class/net inside shows the host's NICs
    # (and Ansible's interface facts would too). nsenter execs, so the pid stays nspawn's.
    return [
        "nsenter", f"--net=/run/netns/{node.netns}", "--",
        "systemd-nspawn", "--boot", "--keep-unit", "--register=no",
        # networkd inside needs it; the namespace is the node's own, so this reaches nothing else.
        "--capability=CAP_NET_ADMIN",
        f"--network-namespace-path=/run/netns/{node.netns}",
        "-D", str(root), "-M", node.machine, f"--hostname={node.hostname}",
        "--console=read-only", "--link-journal=no", "--resolv-conf=off",
        # The lab's shared storage (lab.yaml's `lab-bind` mounts): a host directory in every node.
        *(f"--bind={host}:{inside}" for host, inside in binds),
        # The head's user-space NFS server (nfs-ganesha's VFS FSAL) opens files by handle;
        # nspawn's seccomp filter refuses open_by_handle_at unless allowed by name.
        *(["--system-call-filter=open_by_handle_at"] if node.role == "head" else []),
    ]


def boot_container(log_dir: Path, node: LabNode, root: Path, binds: tuple[tuple[Path, str], ...] = ()) -> int:
    """Start the node's container in the background (its own session, so it outlives the
    podsys process); its console goes to <log_dir>/<hostname>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{node.hostname}.log", "ab") as log:
        proc = subprocess.Popen(
            nspawn_command(node, root, binds), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc.pid


def sshd_answers(node: LabNode) -> bool:
    """Probe the node's sshd from inside its own namespace (compute nodes are unreachable
    from the host by design) and check it speaks SSH."""
    probe = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{node.address}',22),timeout=1)\n"
        "s.settimeout(2)\n"
        "sys.exit(0 if s.recv(4)==b'SSH-' else 1)\n"
    )
    try:
        proc = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c", probe],
                              capture_output=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False  # a loaded machine; the caller's deadline decides
    return proc.returncode == 0


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def boot_failure(log: Path) -> str:
    """The line of a container's console log that says why it died (the last failure)."""
    try:
        lines = [ANSI.sub("", line).strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no console log"
    failures = [line for line in lines if line.startswith(("Failed", "Error", "[!!!!!!]"))
                and not line.startswith("Failed to create symlink /sys/fs/cgroup")]
    return failures[-1] if failures else (next((l for l in reversed(lines) if l), "no output"))
