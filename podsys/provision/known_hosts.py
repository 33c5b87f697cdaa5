"""The admin's known_hosts after a node was (re)installed: the deploy ramdisk makes new host
keys and reports them to the head (podsys/data/ramdisk/functions.sh, report_host_keys);
`podsys deploy` writes them here before it first connects, since every podsys connection
refuses unknown host keys.

update_known_hosts is pure text in, text out; write_known_hosts is the one place that touches
the file."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Sequence

from podsys.provision.state import atomic_write

DEFAULT_SSH_PORT = 22


def entry_host(entry: str) -> str:
    """One comma-separated host field entry -> the host it names (`[host]:port` -> host)."""
    if entry.startswith("[") and "]" in entry:
        return entry[1:entry.index("]")]
    return entry


def names_any(line: str, names: set[str]) -> bool:
    """The line is a plain (not hashed, not @marker) entry whose host field names one of `names`.
    Marker lines stay: a @revoked key must remain revoked after a reinstall, and a
    @cert-authority line is not one host's key. Hashed |1| lines cannot be matched by name."""
    fields = line.split()
    if not fields or fields[0].startswith(("#", "@", "|")):
        return False
    return any(entry_host(entry).lower() in names for entry in fields[0].split(","))


def without_names(line: str, names: set[str]) -> str | None:
    """A plain line that names any of `names`, with those entries taken out of its host field:
    the key stays true for the other hosts the line names (a line the admin shares between a
    node and its alias). None when only `names` were on it."""
    host, rest = line.split(None, 1)  # names_any found a host field: there is a key after it
    others = [entry for entry in host.split(",") if entry_host(entry).lower() not in names]
    return f"{','.join(others)} {rest}" if others else None


def host_field(names: Sequence[str], port: int) -> str:
    # OpenSSH and paramiko look a non-standard port up as [host]:port only.
    unique = list(dict.fromkeys(n for n in names if n))
    return ",".join(unique if port == DEFAULT_SSH_PORT else [f"[{n}]:{port}" for n in unique])


def update_known_hosts(text: str, names: Sequence[str], keys: Sequence[str], port: int = DEFAULT_SSH_PORT) -> str:
    """known_hosts text with `names` (on any port) taken out of every plain line (a line left
    naming no host goes), then one line per key naming all of them; everything else stays as
    it was, in order."""
    wanted = {n.lower() for n in names if n}
    kept = []
    for line in text.splitlines(keepends=True):
        if not names_any(line, wanted):
            kept.append(line)
        elif (rest := without_names(line, wanted)) is not None:
            kept.append(rest)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    field = host_field(names, port)
    added = [f"{field} {' '.join(key.split()[:2])}\n" for key in keys]
    return "".join(kept + added)


def write_known_hosts(path: Path, names: Sequence[str], keys: Sequence[str], port: int = DEFAULT_SSH_PORT) -> bool:
    """Rewrite `path` with the node's keys; True when it changed. Atomic (a temporary file in the
    same directory, then a rename), so an ssh reading it at the same moment sees the old or the
    new file, never half of one; the file keeps its mode. Unchanged content is not rewritten:
    the deploy asks on every poll. A symlink is followed: the rename replaces its target."""
    path = Path(path).resolve()
    try:
        old = path.read_text()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        old, mode = "", 0o644
    new = update_known_hosts(old, names, keys, port)
    if new == old:
        return False
    atomic_write(path, new, mode, make_parents=False)  # a missing directory is the admin's to fix
    return True
