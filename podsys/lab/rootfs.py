"""Root filesystems for lab nodes: one debootstrap Debian 12 root built once and cached, then a
copy-on-write overlay (or, where overlayfs cannot be mounted, a plain copy) per node, made
node-specific: hostname, machine-id, its own SSH host key, the lab key, network units."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Callable

from podsys.errors import PodsysError
from podsys.lab.plan import LabNode, LabPlan, networkd_units

SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2",
    "iputils-ping", "ca-certificates", "sudo", "gnupg", "procps", "less",
)
# Bump when the build steps below change, so old caches are not reused.
BUILD_VERSION = 1
DEFAULT_CACHE = Path("/var/cache/podsys/lab")


def cache_root() -> Path:
    return Path(os.environ.get("PODSYS_LAB_CACHE", DEFAULT_CACHE))


def cache_key(mirror: str) -> str:
    spec = {"suite": SUITE, "mirror": mirror, "packages": PACKAGES, "version": BUILD_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def cached_rootfs(mirror: str) -> Path:
    return cache_root() / f"debian-{SUITE}-{cache_key(mirror)}" / "rootfs"


def ensure_base_rootfs(mirror: str, progress: Callable[[str], None]) -> Path:
    """The cached base root for this mirror, debootstrapping it first if needed. A file lock
    makes concurrent `lab up`s (two test sessions) build it once; the build happens in a
    scratch directory renamed into place, so a killed build never leaves a half root behind."""
    rootfs = cached_rootfs(mirror)
    if (rootfs.parent / "ready").exists():
        return rootfs
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("debootstrap: waiting for another podsys building the same root")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (rootfs.parent / "ready").exists():
            return rootfs
        # Holding the lock, no other build runs: scratch dirs still here are from killed builds.
        for stale in cache_root().glob(".build-*"):
            remove_tree(stale)
        scratch = cache_root() / f".build-{cache_key(mirror)}-{os.getpid()}"
        scratch.mkdir(parents=True)
        try:
            _debootstrap(scratch / "rootfs", mirror, progress)
            _prepare_base(scratch / "rootfs")
            remove_tree(rootfs.parent)
            scratch.rename(rootfs.parent)
            (rootfs.parent / "ready").write_text(json.dumps({"mirror": mirror, "packages": PACKAGES}) + "\n")
        finally:
            remove_tree(scratch)
    return rootfs


def _debootstrap(target: Path, mirror: str, progress: Callable[[str], None]) -> None:
    cmd = [
        "nice", "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        "--components=main", SUITE, str(target), mirror,
    ]
    log_lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            log_lines.append(line)
            if line.startswith(("I: Retrieving", "I: Extracting", "I: Unpacking", "I: Configuring",
                                "I: Installing", "I: Resolving", "I: Validating", "I: Base")):
                progress(f"debootstrap: {line[3:]}")
    except BaseException:
        # Interrupted: stop debootstrap before the caller removes the tree it is writing.
        proc.terminate()
        proc.wait()
        raise
    if proc.wait() != 0:
        tail = "; ".join(log_lines[-3:])
        raise PodsysError(f"debootstrap {SUITE} from {mirror} failed: {tail}")


def _prepare_base(root: Path) -> None:
    """Strip what must differ per node and enable networkd, once, in the shared base."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    subprocess.run(["chroot", str(root), "systemctl", "enable", "systemd-networkd"],
                   capture_output=True, check=True)
    # Nothing is listening for these in a container; they only slow the boot down.
    subprocess.run(["chroot", str(root), "systemctl", "mask", "systemd-networkd-wait-online.service",
                    "e2scrub_reap.service"], capture_output=True)
    subprocess.run(["chroot", str(root), "apt-get", "clean"], capture_output=True)


# --- per node ---------------------------------------------------------------------------------


def node_dir(lab_dir: Path, node: LabNode) -> Path:
    return lab_dir / "nodes" / node.hostname


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def mounts_under(path: Path) -> list[Path]:
    base = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        found = [Path(line.split()[4]) for line in f if line.split()[4].startswith(base)]
    return sorted(found, key=lambda p: len(str(p)), reverse=True)


def clone_rootfs(base: Path, dest: Path) -> str:
    """Give a node its own root at dest/root. Returns how: 'overlay' (instant, copy-on-write)
    or 'copy'."""
    root = dest / "root"
    if is_mounted(root):
        return "overlay"
    for sub in ("upper", "work", "root"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={base},upperdir={dest / 'upper'},workdir={dest / 'work'}"
    if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)],
                      capture_output=True).returncode == 0:
        return "overlay"
    shutil.rmtree(root)
    proc = subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PodsysError(f"cannot copy the base root to {root}: {proc.stderr.strip()}")
    return "copy"


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts everything below `path` and refuses to recurse into a mount:
    a killed debootstrap can leave the host's /proc, /sys or /dev bound inside its target."""
    if not path.exists():
        return
    for mount in mounts_under(path) + ([path] if is_mounted(path) else []):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    left = mounts_under(path)
    if left or is_mounted(path):
        raise PodsysError(f"cannot unmount {(left or [path])[0]}; not removing {path}")
    shutil.rmtree(path, ignore_errors=True)


def remove_node_root(dest: Path) -> None:
    remove_tree(dest)


def generate_host_key(root: Path, hostname: str) -> str:
    """A fresh ed25519 host key inside the node's root; returns its public line."""
    key = root / "etc/ssh/ssh_host_ed25519_key"
    for old in (key, key.with_suffix(".pub")):
        if old.exists():
            old.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{hostname}", "-f", str(key)],
                   check=True, capture_output=True)
    return key.with_suffix(".pub").read_text().strip()


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)  # write_text keeps an existing file's mode, whatever debootstrap left


def customise_node(root: Path, plan: LabPlan, node: LabNode, authorized_key: str,
                   apt_settings: dict[str, str]) -> str:
    """Write everything node-specific into its root; returns the node's SSH host public key."""
    _write(root / "etc/hostname", node.hostname + "\n")
    _write(root / "etc/hosts",
           f"127.0.0.1\tlocalhost\n{node.address}\t{node.hostname}\n"
           "::1\tlocalhost ip6-localhost ip6-loopback\n")
    _write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    # debootstrap copied the host's resolver, which no lab node can reach; like an air-gapped
    # cluster the lab has no DNS until a deploy provides one, and names come from /etc/hosts.
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    _write(resolv, "# podsys lab: no DNS server reachable; names resolve from /etc/hosts\n")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    _write(ssh_dir / "authorized_keys", authorized_key.strip() + "\n", 0o600)
    netdir = root / "etc/systemd/network"
    netdir.mkdir(parents=True, exist_ok=True)
    for name, text in networkd_units(plan, node).items():
        _write(netdir / name, text)
    apt_conf = root / "etc/apt/apt.conf.d"
    for name, text in apt_settings.items():
        _write(apt_conf / name, text)
    if node.role == "head":
        # The head's only way out: the host's proxy on the uplink (a site proxy, in real life).
        _write(apt_conf / "01podsys-lab-proxy", f'Acquire::http::Proxy "{plan.proxy_url}";\n')
        # Every SSH session to a compute node opens one to the head first (ProxyCommand); with
        # many Ansible forks, sshd's default MaxStartups (10) would drop some of them.
        _write(root / "etc/ssh/sshd_config.d/podsys-lab-jumphost.conf", "MaxStartups 100:30:200\n")
    return generate_host_key(root, node.hostname)


# The lab's packages come from one shared upstream mirror that now and then answers 503 for a
# few seconds; apt's default three retries (1, 2, 4 s apart) give up inside that window, and a
# whole deploy fails on one file. Eight retries back off to about two minutes in all.
LAB_APT_RETRIES = {"03podsys-lab-retries": 'Acquire::Retries "8";\n'}


def host_apt_settings() -> dict[str, str]:
    """apt options for the lab's nodes: retries that ride out a mirror's brief outages, and what
    they must share with the host for its mirror to work (a snapshot mirror's Release files are
    past Valid-Until, and the host has turned that check off)."""
    settings = dict(LAB_APT_RETRIES)
    proc = subprocess.run(["apt-config", "dump", "Acquire::Check-Valid-Until"], capture_output=True, text=True)
    if proc.returncode == 0 and '"false"' in proc.stdout:
        settings["02podsys-lab-valid-until"] = 'Acquire::Check-Valid-Until "false";\n'
    return settings
