"""Files that hold a secret podsys uses (the BMC password, the SSH private key) must be private
to their owner: like ssh with a key, podsys refuses one that its group or others can read,
rather than use a secret that may already have leaked."""

from __future__ import annotations

import stat
from pathlib import Path

from podsys.errors import InputError, Problem


def refuse_open_permissions(path: Path, field: str) -> None:
    """InputError (exit 2) naming the file and its mode when group or others have any access.
    A missing file is left to whoever reads it (it reports that itself)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        raise InputError(Problem(str(path), None, field,
                                 f"mode {mode:04o} lets group or others read it; secrets must be private "
                                 f"(chmod 600 {path})"))
