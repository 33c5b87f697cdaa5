"""Per-node boot and install state, kept on the head.

Two things per node, in one JSON file under the state directory:
  - the boot state, `install` (the next PXE boot runs the installer or the deploy ramdisk) or
    `local` (it boots the disk). The status service reads it on every boot request and answers
    the matching iPXE script (podsys.provision.boot_scripts), so a switch is one write here;
  - the install progress the installer reports back (state, stage, started, finished, message).

The install-finished callback switches a node to `local`, so a reboot never re-installs;
`podsys reinstall HOSTLIST` switches nodes back. Stdlib only: the status service runs this on
the head without podsys's other dependencies."""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

BOOT_STATES = ("install", "local")
EVENTS = ("start", "stage", "finish", "fail")
STATE_FILE = "nodes-state.json"
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
MAX_HOST_KEYS = 8
MAX_HOST_KEY_CHARS = 1000
_HOST_KEY_RE = re.compile(r"(?P<type>[a-z0-9-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})")


class StateError(Exception):
    pass


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_record(boot: str) -> dict:
    return {"boot": boot, "state": "pending", "stage": "", "started": None, "finished": None,
            "message": "", "updated": None, "host_keys": []}


def parse_host_keys(text: str) -> list[str]:
    """The deploy ramdisk's `host_keys` callback value -> its keys, one `<type> <base64>` a line.
    Whatever passes here ends up in the admin's known_hosts and is then trusted for the node,
    and any caller on the provision network can send it: anything but plain public keys of the
    types OpenSSH makes is refused whole (ValueError) rather than trimmed."""
    lines = text.split("\n")
    if not text or len(lines) > MAX_HOST_KEYS:
        raise ValueError(f"host_keys: expected 1 to {MAX_HOST_KEYS} lines, got {len(lines) if text else 0}")
    return [_checked_host_key(n, line) for n, line in enumerate(lines, start=1)]


def _checked_host_key(n: int, line: str) -> str:
    if len(line) > MAX_HOST_KEY_CHARS:
        raise ValueError(f"host_keys line {n}: longer than {MAX_HOST_KEY_CHARS} characters")
    found = _HOST_KEY_RE.fullmatch(line)
    if found is None:
        raise ValueError(f"host_keys line {n}: not `<type> <base64>`")
    key_type = found["type"]
    if key_type not in HOST_KEY_TYPES:
        raise ValueError(f"host_keys line {n}: key type {key_type!r} is not one of {', '.join(HOST_KEY_TYPES)}")
    try:
        blob = base64.b64decode(found["blob"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"host_keys line {n}: the key is not valid base64") from None
    # An SSH public key blob starts with its own type name (RFC 4253 6.6): a line whose two
    # halves disagree is not a key OpenSSH wrote.
    if len(blob) < 4 or blob[4:4 + struct.unpack(">I", blob[:4])[0]] != key_type.encode():
        raise ValueError(f"host_keys line {n}: the key's blob is not a {key_type} key")
    return line


def apply_event(record: dict, event: str, stage: str = "", message: str = "", now: str | None = None,
                host_keys: list[str] | None = None) -> dict:
    """The record after one installer callback. Pure; the caller persists it. `host_keys`
    (already checked by parse_host_keys) replaces the node's keys; None leaves them."""
    if event not in EVENTS:
        raise StateError(f"unknown event {event!r} (expected one of {', '.join(EVENTS)})")
    now = now or utc_now()
    rec = dict(record)
    # The iPXE script reports a "pxe" stage before the installer says "start": an install
    # began at the earliest callback of a run.
    running = rec["state"] == "installing" and rec.get("started")
    if event in ("start", "stage") and not running:
        # A new run makes new keys: an install retried after a failure never went through
        # set_boot_state, and the old system's keys must not be trusted for the new one.
        rec["host_keys"] = []
    if event == "start":
        rec.update(state="installing", stage=stage or "started", started=rec["started"] if running else now,
                   finished=None)
    elif event == "stage":
        if not running:
            rec.update(state="installing", started=now, finished=None)
        rec["stage"] = stage or rec.get("stage", "")
    elif event == "finish":
        if not rec.get("started"):
            rec["started"] = now
        # The installed system boots from disk from now on: never install twice by accident.
        rec.update(state="installed", stage=stage or "finished", finished=now, boot="local")
    elif event == "fail":
        rec.update(state="failed", stage=stage or rec.get("stage", ""), finished=now)
    if message:
        rec["message"] = message[:300]
    if host_keys is not None:
        rec["host_keys"] = list(host_keys)
    rec["updated"] = now
    return rec


def duration_seconds(record: dict, now: datetime | None = None) -> int | None:
    if not record.get("started"):
        return None
    start = datetime.strptime(record["started"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    if record.get("finished"):
        end = datetime.strptime(record["finished"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    else:
        end = now or datetime.now(timezone.utc)
    return max(0, int((end - start).total_seconds()))


def format_duration(seconds: int | None) -> str:
    if seconds is None:
        return ""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: str
    mac: str


def load_nodes_file(path: Path) -> tuple[dict[str, NodeInfo], str]:
    """The rendered provision/nodes.json -> ({name: NodeInfo}, default boot state)."""
    data = json.loads(Path(path).read_text())
    nodes = {name: NodeInfo(name, n["ip"], n["mac"]) for name, n in data["nodes"].items()}
    return nodes, data.get("default_boot_state", "install")


class StateStore:
    """The JSON state file. Every change happens under an exclusive lock and lands with an
    atomic rename, so the status service and the CLI can write at the same time.

    `boot_root` is no longer used (the status service makes the iPXE scripts; nothing is
    copied into the boot tree): it stays in the signature for the callers that pass it."""

    def __init__(self, state_dir: Path, boot_root: Path | None, nodes: dict[str, NodeInfo],
                 default_boot: str = "install"):
        self.state_dir = Path(state_dir)
        self.boot_root = Path(boot_root) if boot_root else None
        self.nodes = nodes
        self.default_boot = default_boot
        self._by_ip = {n.ip: n.name for n in nodes.values()}
        self._boot_cache: tuple[bytes, dict[str, str | None]] | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    def node_for_address(self, address: str) -> str | None:
        return self._by_ip.get(address)

    @contextlib.contextmanager
    def _locked(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.path}: unreadable state file ({exc})") from None
        return data.get("nodes", {})

    def _write(self, records: dict[str, dict]) -> None:
        atomic_write(self.path, json.dumps({"nodes": records}, indent=2, sort_keys=True) + "\n", 0o644)

    def records(self) -> dict[str, dict]:
        """Every manifest node's record; nodes never seen get a fresh pending one."""
        stored = self._read()
        return {name: {**new_record(self.default_boot), **stored.get(name, {})} for name in self.nodes}

    def boot_state(self, name: str) -> str:
        """The node's boot state now (the default for a node never seen): what its next PXE
        boot is answered with. Every boot request asks, and thousands of nodes may boot at
        once: the file is read each time (any process may have switched a node), but parsed
        again only when its bytes changed. Not by inode and mtime: a reused inode within one
        timestamp tick would serve a stale state, and a stale `install` wipes a disk."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.default_boot
        except OSError as exc:
            raise StateError(f"{self.path}: unreadable state file ({exc})") from None
        cached = self._boot_cache
        if cached is None or cached[0] != raw:
            try:
                records = json.loads(raw).get("nodes", {})
            except ValueError as exc:
                raise StateError(f"{self.path}: unreadable state file ({exc})") from None
            cached = self._boot_cache = (raw, {n: r.get("boot") for n, r in records.items()})
        return cached[1].get(name) or self.default_boot

    def set_boot_state(self, names: list[str], boot: str) -> list[str]:
        """Switch nodes to `install` or `local`; returns the names whose boot state changed.
        Switching to `install` also resets the install progress: a new install is pending."""
        if boot not in BOOT_STATES:
            raise StateError(f"unknown boot state {boot!r} (expected install or local)")
        unknown = [n for n in names if n not in self.nodes]
        if unknown:
            raise StateError(f"not PXE nodes of this cluster: {', '.join(unknown)}")
        changed = []
        with self._locked():
            stored = self._read()
            for name in names:
                rec = {**new_record(self.default_boot), **stored.get(name, {})}
                if name not in stored or rec["boot"] != boot:
                    changed.append(name)
                if boot == "install" and rec["boot"] != "install":
                    rec = new_record("install")
                rec["boot"] = boot
                stored[name] = rec
            self._write(stored)
        return changed

    def init_boot_states(self) -> list[str]:
        """Give every node without a record its default boot state. Returns the nodes that got
        one: a second run, []."""
        with self._locked():
            stored = self._read()
            changed = [name for name in self.nodes if name not in stored]
            for name in changed:
                stored[name] = new_record(self.default_boot)
            if changed:
                self._write(stored)
        return changed

    def record_event(self, name: str, event: str, stage: str = "", message: str = "",
                     host_keys: list[str] | None = None) -> dict:
        with self._locked():
            stored = self._read()
            rec = {**new_record(self.default_boot), **stored.get(name, {})}
            new = apply_event(rec, event, stage, message, host_keys=host_keys)
            stored[name] = new
            self._write(stored)
        return new


def atomic_write(path: Path, content: str | bytes, mode: int, make_parents: bool = True) -> None:
    """Replace `path` by a rename, so a reader sees the old file or the new one, never half."""
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """`python3 -m podsys.provision.state init ...`: what the provision role runs on the head."""
    parser = argparse.ArgumentParser(prog="podsys-provision-state")
    parser.add_argument("action", choices=["init", "install", "local", "show"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--nodes", required=True, type=Path, help="rendered provision/nodes.json")
    parser.add_argument("--state-dir", required=True, type=Path)
    # Scripts were once copied into the boot tree: the option is still accepted, and unused.
    parser.add_argument("--boot-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        nodes, default = load_nodes_file(args.nodes)
        store = StateStore(args.state_dir, None, nodes, default)
        if args.action == "init":
            changed = store.init_boot_states()
            print(f"changed: {len(changed)}")
        elif args.action == "show":
            print(json.dumps(store.records(), indent=2, sort_keys=True))
        else:
            changed = store.set_boot_state(args.names or list(nodes), args.action)
            print(f"changed: {len(changed)}")
    except (StateError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
