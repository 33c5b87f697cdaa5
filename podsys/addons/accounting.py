"""`podsys accounting backup|restore`: a consistent dump of Slurm's accounting database on the
head, streamed over SSH to a local file (0600), and that dump loaded back.

The dump is mysqldump --single-transaction (one consistent InnoDB snapshot while slurmdbd keeps
running); restore stops slurmdbd, loads the dump, starts slurmdbd again and has slurmctld
re-read associations. No database password is needed: root on the head reaches MariaDB
through its unix socket."""

from __future__ import annotations

import os
from pathlib import Path

from podsys.cluster.model import Cluster
from podsys.errors import InputError, PodsysError, Problem
from podsys.deploy.head_exec import run_on_head

DATABASE = "slurm_acct_db"  # the accounting role's accounting_database_name
DUMP_COMMAND = f"mysqldump --single-transaction --routines --triggers --databases {DATABASE}"
RESTORE_COMMAND = (
    "bash -c 'set -e; systemctl stop slurmdbd; trap \"systemctl start slurmdbd\" EXIT; mysql; "
    "systemctl start slurmdbd; trap - EXIT; "
    # slurmctld re-reads associations from slurmdbd on reconfigure, once slurmdbd answers.
    "for i in $(seq 60); do sacctmgr -nP show cluster format=cluster >/dev/null 2>&1 && break; sleep 1; done; "
    "scontrol reconfigure'"
)
# The header comment of a dump: MySQL's mysqldump, or MariaDB's ("-- MariaDB dump 10.19 Distrib
# 10.11..."). MariaDB since 10.11.8 puts a `/*M!999999\- enable the sandbox mode */` line first.
DUMP_MARKERS = (b"-- MySQL dump", b"-- MariaDB dump")


def is_dump(head: bytes) -> bool:
    """Whether the first bytes of a file are a mysqldump header (within its first three lines)."""
    return any(line.startswith(DUMP_MARKERS) for line in head.splitlines()[:3])


def _require_layer(cluster: Cluster) -> None:
    if "accounting" not in cluster.manifest.layers:
        raise InputError(Problem(str(cluster.manifest_path), None, "layers", "layer 'accounting' is not enabled"))


def backup(cluster: Cluster, output: Path) -> int:
    """Dump the accounting database into `output` (created 0600); returns its size in bytes."""
    _require_layer(cluster)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            run_on_head(cluster, DUMP_COMMAND, stdout=handle)
        with open(tmp, "rb") as handle:
            if not is_dump(handle.read(512)):
                raise PodsysError("the head's mysqldump produced no dump")
        os.replace(tmp, output)
        return output.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


def restore(cluster: Cluster, dump: Path) -> None:
    """Load a dump made by `backup` back into the head's accounting database."""
    _require_layer(cluster)
    dump = Path(dump)
    if not dump.is_file():
        raise InputError(Problem(str(dump), None, "", "file not found"))
    with open(dump, "rb") as handle:
        if not is_dump(handle.read(512)):
            raise InputError(Problem(str(dump), 1, "", "not a dump made by `podsys accounting backup`"))
        handle.seek(0)
        run_on_head(cluster, RESTORE_COMMAND, stdin=handle)
