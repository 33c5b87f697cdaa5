"""`podsys accounting backup|restore`: a consistent dump of Slurm's accounting database on the
head, streamed over SSH to a local file (0600), and that dump loaded back.

The dump is mysqldump --single-transaction (one consistent InnoDB snapshot, slurmdbd keeps
running); restore stops slurmdbd, loads the dump, starts slurmdbd again and has slurmctld
re-read associations. The database password is never needed: root on the head reaches MariaDB
through its unix socket."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from podsys.checks.runner import AccessSettings, SSHExecutor, remote_command
from podsys.cluster.model import Cluster
from podsys.errors import InputError, PodsysError, Problem

DATABASE = "slurm_acct_db"  # the accounting role's accounting_database_name
DUMP_COMMAND = f"mysqldump --single-transaction --routines --triggers --databases {DATABASE}"
RESTORE_COMMAND = (
    "set -e; systemctl stop slurmdbd; trap 'systemctl start slurmdbd' EXIT; mysql; "
    "systemctl start slurmdbd; trap - EXIT; "
    # slurmctld re-reads associations from slurmdbd on reconfigure.
    "for i in $(seq 60); do sacctmgr -nP show cluster format=cluster >/dev/null 2>&1 && break; sleep 1; done; "
    "scontrol reconfigure"
)
DUMP_MARKER = b"-- MySQL dump"  # mysqldump's (and MariaDB's) first line starts with it


def _session(cluster: Cluster):
    executor = SSHExecutor(AccessSettings.from_cluster(cluster))
    head = cluster.manifest.head.hostname
    try:
        channel = executor.client(head).get_transport().open_session(timeout=30)
    except Exception as exc:
        executor.close()
        raise PodsysError(f"cannot reach the head {head} over SSH: {exc}") from None
    return executor, channel


def _finish(channel, command: str, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    err = bytearray()
    while not channel.exit_status_ready():
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        if time.monotonic() > deadline:
            raise PodsysError(f"{command.split()[0]} on the head timed out")
        channel.status_event.wait(0.1)
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(65536)
    rc = channel.recv_exit_status()
    if rc != 0:
        raise PodsysError(f"{command.split(';')[0][:60]} on the head failed (rc {rc}): "
                          f"{err.decode(errors='replace').strip()[-500:]}")


def backup(cluster: Cluster, output: Path) -> int:
    """Dump the accounting database into `output` (created 0600); returns its size in bytes."""
    if "accounting" not in cluster.manifest.layers:
        raise InputError(Problem(str(cluster.manifest_path), None, "layers", "layer 'accounting' is not enabled"))
    output = Path(output)
    tmp = output.with_name(f".{output.name}.partial")
    executor, channel = _session(cluster)
    try:
        channel.exec_command(remote_command(DUMP_COMMAND, cluster.manifest.access.user))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        size = 0
        with os.fdopen(fd, "wb") as handle:
            while True:
                chunk = channel.recv(1 << 20)
                if not chunk:
                    break
                handle.write(chunk)
                size += len(chunk)
        _finish(channel, DUMP_COMMAND)
        with open(tmp, "rb") as handle:
            if not handle.read(len(DUMP_MARKER)) == DUMP_MARKER:
                raise PodsysError("the head's mysqldump produced no dump")
        os.replace(tmp, output)
        return size
    finally:
        tmp.unlink(missing_ok=True)
        channel.close()
        executor.close()


def restore(cluster: Cluster, dump: Path) -> None:
    """Load a dump made by `backup` back into the head's accounting database."""
    dump = Path(dump)
    if not dump.is_file():
        raise InputError(Problem(str(dump), None, "", "file not found"))
    with open(dump, "rb") as handle:
        if handle.read(len(DUMP_MARKER)) != DUMP_MARKER:
            raise InputError(Problem(str(dump), 1, "", "not a dump made by `podsys accounting backup`"))
    executor, channel = _session(cluster)
    try:
        channel.exec_command(remote_command(f"bash -c {shlex.quote(RESTORE_COMMAND)}", cluster.manifest.access.user))
        with open(dump, "rb") as handle:
            while chunk := handle.read(1 << 20):
                channel.sendall(chunk)
        channel.shutdown_write()
        _finish(channel, RESTORE_COMMAND)
    finally:
        channel.close()
        executor.close()
