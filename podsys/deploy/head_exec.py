"""One command on the head over SSH with bytes streamed in or out: the add-ons' verbs
(`podsys accounting backup|restore`, `podsys images import`) use it. Same access settings and
host-key policy as `podsys check` (podsys/checks/runner.py)."""

from __future__ import annotations

import time
from typing import BinaryIO

from podsys.checks.runner import AccessSettings, SSHExecutor, remote_command
from podsys.cluster.model import Cluster
from podsys.errors import PodsysError

CHUNK = 1 << 20


def run_on_head(cluster: Cluster, command: str, *, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
                timeout: float = 3600) -> bytes:
    """Run `command` (a shell string) on the head as the access user (sudo -n when not root),
    feeding `stdin` and writing its output to `stdout` (else returning it). Non-zero exit ->
    PodsysError with the tail of its stderr."""
    executor = SSHExecutor(AccessSettings.from_cluster(cluster))
    head = cluster.manifest.head.hostname
    try:
        try:
            channel = executor.client(head).get_transport().open_session(timeout=30)
        except Exception as exc:  # paramiko, socket and our own errors all mean: unreachable
            raise PodsysError(f"cannot reach the head {head} over SSH: {exc}") from None
        channel.exec_command(remote_command(command, cluster.manifest.access.user))
        if stdin is not None:
            while chunk := stdin.read(CHUNK):
                channel.sendall(chunk)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            busy = False
            while channel.recv_ready():
                data = channel.recv(CHUNK)
                if stdout is not None:
                    stdout.write(data)
                else:
                    out += data
                busy = True
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(CHUNK)
                busy = True
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise PodsysError(f"the command on the head timed out after {timeout:.0f} s")
            if not busy:
                channel.status_event.wait(0.05)
        rc = channel.recv_exit_status()
        channel.close()
        if rc != 0:
            raise PodsysError(f"the command on the head failed (rc {rc}): {err.decode(errors='replace').strip()[-500:]}")
        return bytes(out)
    finally:
        executor.close()
