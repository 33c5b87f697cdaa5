"""The deploy ramdisk: the distribution's kernel plus an initramfs of our own, both from
distribution packages, that installs a node image (podsys/data/ramdisk/init).

Built like an image: mmdebstrap a small root from the site's package source (Debian's kernel,
busybox-static and the disk tools), then take the kernel out of it and pack into a newc cpio
archive only what the install needs: busybox and its applets, the disk tools with the shared
libraries they link, the kernel modules for NICs, disk controllers and file systems, and the
scripts. The boot loader is not in the ramdisk: it is installed from inside the written image
(chroot), so it always matches the image's own GRUB packages.

Store layout: <image store>/ramdisk-<key>/{vmlinuz, initrd.img, ramdisk.json}, and the builder
root it was packed from (ramdisk-root-<key>/, kept so that a script edit only re-packs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from podsys.errors import PodsysError

RECIPE_VERSION = 1
SUITE = "bookworm"
# Debian 12 packages (packages.debian.org/bookworm): the kernel, a static busybox for the shell
# and tools, sfdisk (fdisk), mke2fs (e2fsprogs), mkfs.fat (dosfstools), zstd, GNU tar (keeps
# xattrs, which busybox tar drops), blkid (util-linux, essential), and GNU wget: busybox-static's
# wget crashes in its address lookup (glibc's resolver in a static binary), even for an IP URL.
PACKAGES = ("linux-image-amd64", "busybox-static", "fdisk", "e2fsprogs", "dosfstools", "zstd", "tar", "wget")
# Dynamically linked tools copied in with their libraries (paths inside the builder root).
TOOLS = ("/usr/sbin/sfdisk", "/usr/sbin/mke2fs", "/usr/sbin/mkfs.fat", "/usr/bin/zstd", "/usr/bin/tar",
         "/usr/sbin/blkid", "/usr/bin/wget", "/usr/bin/kmod")
# kmod's modprobe resolves modaliases (busybox's does not); kmod comes with the kernel package.
TOOL_LINKS = {"/usr/sbin/mkfs.ext4": "mke2fs", "/usr/sbin/mkfs.vfat": "mkfs.fat", "/usr/sbin/modprobe": "../bin/kmod"}
# Kernel module trees (under /lib/modules/<version>/kernel) a node may need to reach the head
# and write its disk: Ethernet and virtio NICs, SATA/SAS/NVMe/virtio disks, ext4 and FAT.
# kernel/block holds t10-pi, which sd_mod (every SCSI/SATA/SAS disk) needs.
MODULE_TREES = (
    "drivers/net/ethernet", "drivers/net/virtio_net.ko", "drivers/net/net_failover.ko", "drivers/net/mii.ko",
    "drivers/net/mdio", "drivers/net/phy", "drivers/net/mdio.ko", "net/core/failover.ko",
    "block", "drivers/block", "drivers/ata", "drivers/scsi", "drivers/nvme", "drivers/virtio", "drivers/md",
    "drivers/pci", "fs/ext4", "fs/jbd2", "fs/mbcache.ko", "fs/fat", "fs/nls", "lib", "crypto",
    "arch/x86/crypto", "drivers/dca", "drivers/ptp", "drivers/pps", "drivers/hwmon",
)
SCRIPTS = {"init": ("init", 0o755), "lib/podsys/functions.sh": ("functions.sh", 0o644)}

Progress = Callable[[str], None]


class RamdiskError(PodsysError):
    pass


def ramdisk_key(mirror_independent_inputs: dict | None = None) -> str:
    """Hash of the recipe, the package list and the scripts' bytes: edit a script, new ramdisk."""
    inputs = {"recipe": RECIPE_VERSION, "suite": SUITE, "packages": PACKAGES, "modules": MODULE_TREES,
              "tools": TOOLS, "links": TOOL_LINKS,
              "scripts": {name: hashlib.sha256(script_text(src)).hexdigest() for name, (src, _) in SCRIPTS.items()}}
    inputs.update(mirror_independent_inputs or {})
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def script_text(name: str) -> bytes:
    return resources.files("podsys.data").joinpath("ramdisk").joinpath(name).read_bytes()


def script_paths() -> list[Path]:
    """The scripts on disk (for shellcheck)."""
    base = Path(str(resources.files("podsys.data").joinpath("ramdisk")))
    return [base / src for src, _ in SCRIPTS.values()]


# --- the cpio archive (newc, what the kernel's initramfs unpacker reads) ------------------------


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, no leading /
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""  # file content, or a symlink's target


def _newc_header(ino: int, mode: int, nlink: int, size: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(f"{v:08X}".encode() for v in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """A newc cpio archive (kernel Documentation/driver-api/early-userspace/buffer-format.rst):
    owners root, mtime 0, entries sorted so the same inputs give the same bytes; parents first."""
    out = io.BytesIO()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        name = entry.path.encode()
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        header = _newc_header(ino, entry.mode, nlink, len(entry.data), name)
        out.write(header + name + b"\0")
        out.write(_pad4(len(header) + len(name) + 1))
        out.write(entry.data)
        out.write(_pad4(len(entry.data)))
    trailer = b"TRAILER!!!"
    header = _newc_header(0, 0, 1, 0, trailer)
    out.write(header + trailer + b"\0" + _pad4(len(header) + len(trailer) + 1))
    return out.getvalue()


def parse_ldd(text: str) -> list[str]:
    """ldd output -> the absolute paths of the libraries (and the loader) a binary loads."""
    paths = []
    for line in text.splitlines():
        match = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(0x", line)
        if match:
            paths.append(match.group(1))
    return paths


MERGED_USR = ("bin", "sbin", "lib", "lib64")


def merged_usr_path(path: str) -> str:
    """/lib/x -> usr/lib/x: in the archive only usr/ holds files; /bin, /sbin, /lib, /lib64 are
    symlinks to it (as on Debian 12), and the kernel's unpacker cannot create a file under a
    symlink whose target directory comes later in the archive."""
    path = path.lstrip("/")
    first = path.split("/", 1)[0]
    return f"usr/{path}" if first in MERGED_USR and "/" in path else path


class _Tree:
    """Entries under construction, each path once, parent directories added as needed."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _dirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self.entries.setdefault(d, Entry(d, stat.S_IFDIR | 0o755))

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        path = merged_usr_path(path)
        self._dirs(path)
        self.entries[path] = Entry(path, stat.S_IFREG | perm, data)

    def link(self, path: str, target: str) -> None:
        path = merged_usr_path(path)
        self._dirs(path)
        self.entries[path] = Entry(path, stat.S_IFLNK | 0o777, target.encode())

    def dir(self, path: str) -> None:
        path = path.lstrip("/")
        self._dirs(path + "/x")


def _copy_from_root(tree: _Tree, root: Path, path: str) -> None:
    """Copy root/path into the tree at path; a symlink is kept and its target copied too."""
    source = root / path.lstrip("/")
    if source.is_symlink():
        target = os.readlink(source)
        tree.link(path, target)
        resolved = target if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(path), target))
        _copy_from_root(tree, root, resolved)
        return
    tree.file(path, source.read_bytes(), stat.S_IMODE(source.stat().st_mode))


def _libraries(root: Path, binary: str) -> list[str]:
    proc = subprocess.run(["chroot", str(root), "ldd", binary], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RamdiskError(f"ldd {binary} in the builder root failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_ldd(proc.stdout)


def assemble(root: Path, kernel_version: str) -> bytes:
    """The initramfs (gzip'd newc cpio) from a builder root."""
    tree = _Tree()
    for d in ("proc", "sys", "dev", "run", "target", "tmp", "usr/bin", "usr/sbin"):
        tree.dir(d)
    for name in ("bin", "sbin", "lib", "lib64"):
        tree.link(name, f"usr/{name}")  # merged /usr, like Debian 12
    busybox = root / "usr/bin/busybox"
    if not busybox.is_file():
        busybox = root / "bin/busybox"
    tree.file("usr/bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet.rsplit("/", 1)[-1] == "busybox":
            continue  # the binary itself, listed among its applets
        # Debian's binaries, copied below, replace these where both exist (sfdisk, tar, blkid:
        # busybox's lack options the scripts use).
        tree.link(applet, "/usr/bin/busybox")
    for tool in TOOLS:
        _copy_from_root(tree, root, tool)
        for lib in _libraries(root, tool):
            _copy_from_root(tree, root, lib)
    for link, target in TOOL_LINKS.items():
        tree.link(link, target)
    modules = root / "usr/lib/modules" / kernel_version
    if not modules.is_dir():
        modules = root / "lib/modules" / kernel_version
    for meta in sorted(modules.glob("modules.*")):
        tree.file(f"usr/lib/modules/{kernel_version}/{meta.name}", meta.read_bytes())
    for sub in MODULE_TREES:
        src = modules / "kernel" / sub
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
        for f in files:
            tree.file(f"usr/lib/modules/{kernel_version}/{f.relative_to(modules)}", f.read_bytes())
    for dest, (src, perm) in SCRIPTS.items():
        tree.file(dest, script_text(src), perm)
    return gzip.compress(cpio_newc(tree.entries.values()), compresslevel=6, mtime=0)


def ramdisk_dir(store_root: Path) -> Path:
    return store_root / f"ramdisk-{ramdisk_key()[:16]}"


def builder_root_dir(store_root: Path) -> Path:
    """The ramdisk's builder root, kept so that a script edit only re-packs the initramfs."""
    inputs = {"recipe": RECIPE_VERSION, "suite": SUITE, "packages": PACKAGES}
    return store_root / f"ramdisk-root-{hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]}"


def _builder_root(store_root: Path, mirror: str, progress: Progress, apt_options: tuple[str, ...]) -> Path:
    root = builder_root_dir(store_root)
    if (root / ".podsys-ready").is_file():
        return root
    scratch = store_root / f".ramdisk-root-build-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--components=main",
           f"--include={','.join(PACKAGES)}", "--aptopt=APT::Install-Recommends \"false\"",
           # The builder root's own initrd is never used: keep it minimal (MODULES=list) so the
           # kernel's postinst does not spend minutes packing every module.
           "--essential-hook=mkdir -p \"$1\"/etc/initramfs-tools/conf.d && "
           "echo MODULES=list > \"$1\"/etc/initramfs-tools/conf.d/podsys-ramdisk-builder",
           "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",  # as the images: no fsync per file
           *[f"--aptopt={o}" for o in apt_options], SUITE, str(scratch), mirror]
    progress(f"ramdisk: mmdebstrap {SUITE} from {mirror}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        tail = "; ".join(proc.stderr.strip().splitlines()[-3:])
        raise RamdiskError(f"ramdisk root build failed: {tail}")
    (scratch / ".podsys-ready").write_text(mirror + "\n")
    shutil.rmtree(root, ignore_errors=True)
    scratch.rename(root)
    return root


def build_ramdisk(store_root: Path, mirror: str, progress: Progress, apt_options: tuple[str, ...] = (),
                  force: bool = False) -> dict:
    """Build (unless built) the kernel + initrd into the store; returns its record."""
    target = ramdisk_dir(store_root)
    record_path = target / "ramdisk.json"
    if record_path.is_file() and not force:
        return json.loads(record_path.read_text())
    started = time.monotonic()
    store_root.mkdir(parents=True, exist_ok=True)
    if force:
        shutil.rmtree(builder_root_dir(store_root), ignore_errors=True)
    root = _builder_root(store_root, mirror, progress, apt_options)
    scratch = store_root / f".ramdisk-build-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        kernels = sorted(p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise RamdiskError("no kernel in the ramdisk builder root")
        version = kernels[-1]
        progress(f"ramdisk: packing initramfs for kernel {version}")
        initrd = assemble(root, version)
        shutil.copyfile(root / "boot" / f"vmlinuz-{version}", scratch / "vmlinuz")
        (scratch / "initrd.img").write_bytes(initrd)
        record = {"key": ramdisk_key(), "kernel": version, "initrd_bytes": len(initrd),
                  "initrd_sha256": hashlib.sha256(initrd).hexdigest(), "mirror": mirror,
                  "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "build_seconds": round(time.monotonic() - started, 1)}
        (scratch / "ramdisk.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return record
