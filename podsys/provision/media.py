"""Installer media in the boot tree: `podsys provision media add ISO_OR_NETBOOT`.

Every OS ends up under `<boot root>/media/<os key>/` with the names the iPXE install scripts
use (`vmlinuz`, `initrd`), plus what that installer fetches over HTTP:
  ubuntu  live-server ISO   casper/vmlinuz, casper/initrd, and the ISO itself (`ubuntu.iso`,
                            casper's `url=` loads it into RAM: it holds the squashfs)
  rocky   DVD / boot ISO    images/pxeboot/{vmlinuz,initrd.img}, images/install.img (the stage2
                            squashfs) and .treeinfo (`inst.stage2=` reads both)
  debian  netboot           debian-installer/amd64/{linux,initrd.gz} from a netboot directory
                            (Debian's `debian-installer-12-netboot-amd64` package installs one
                            at /usr/lib/debian-installer/images/12/amd64/text) or netboot.tar.gz
Each file's sha256 is recorded in SHA256SUMS (sha256sum format) and media.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_NETBOOT_PACKAGE_DIR = Path("/usr/lib/debian-installer/images/12/amd64/text")


class MediaError(Exception):
    pass


@dataclass
class MediaPlan:
    kind: str  # ubuntu-iso | rocky-iso | debian-netboot-dir | debian-netboot-tar
    distro: str
    files: dict[str, str] = field(default_factory=dict)  # destination name -> path inside the source


UBUNTU_ISO = {"vmlinuz": "/casper/vmlinuz", "initrd": "/casper/initrd"}
ROCKY_ISO = {"vmlinuz": "/images/pxeboot/vmlinuz", "initrd": "/images/pxeboot/initrd.img",
             "images/install.img": "/images/install.img", ".treeinfo": "/.treeinfo"}
DEBIAN_NETBOOT = {"vmlinuz": "debian-installer/amd64/linux", "initrd": "debian-installer/amd64/initrd.gz"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def iso_files(iso: Path) -> set[str]:
    """Every regular file path in the ISO (xorriso reads it without mounting)."""
    try:
        proc = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"],
                              capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError:
        raise MediaError("xorriso not found (apt install xorriso): it reads ISO images without mounting them") from None
    if proc.returncode != 0:
        raise MediaError(f"{iso}: not a readable ISO image ({proc.stderr.strip().splitlines()[-1:] or ['xorriso failed']})")
    return {line.strip().strip("'") for line in proc.stdout.splitlines() if line.strip().startswith("'")}


def is_iso9660(path: Path) -> bool:
    """The ISO 9660 primary volume descriptor's "CD001" at 32769. Checked before tarfile,
    which takes the zero-filled system area of an ISO for an empty tar archive."""
    with path.open("rb") as fh:
        fh.seek(0x8001)
        return fh.read(5) == b"CD001"


def plan(source: Path) -> MediaPlan:
    """What to take from SOURCE, decided by what is inside it (not by its name)."""
    if source.is_dir():
        if all((source / p).is_file() for p in DEBIAN_NETBOOT.values()):
            return MediaPlan("debian-netboot-dir", "debian", dict(DEBIAN_NETBOOT))
        raise MediaError(f"{source}: no debian-installer/amd64/linux + initrd.gz in this directory")
    if not source.is_file():
        raise MediaError(f"{source}: no such file or directory")
    if not is_iso9660(source) and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            names = {n.removeprefix("./") for n in tar.getnames()}
        if all(p in names for p in DEBIAN_NETBOOT.values()):
            return MediaPlan("debian-netboot-tar", "debian", dict(DEBIAN_NETBOOT))
        raise MediaError(f"{source}: a tarball without debian-installer/amd64/linux + initrd.gz")
    files = iso_files(source)
    if all(p in files for p in UBUNTU_ISO.values()):
        return MediaPlan("ubuntu-iso", "ubuntu", dict(UBUNTU_ISO))
    if all(p in files for p in ROCKY_ISO.values()):
        return MediaPlan("rocky-iso", "rocky", dict(ROCKY_ISO))
    if "/install.amd/vmlinuz" in files:
        raise MediaError(f"{source}: a Debian CD/DVD installer cannot boot over the network; use the netboot files "
                         f"(apt install debian-installer-12-netboot-amd64, then add {DEBIAN_NETBOOT_PACKAGE_DIR})")
    raise MediaError(f"{source}: neither an Ubuntu live-server ISO (casper/) nor a Rocky ISO (images/pxeboot/)")


def _extract(source: Path, media: MediaPlan, staging: Path) -> None:
    for dest, inner in media.files.items():
        target = staging / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if media.kind == "debian-netboot-dir":
            shutil.copyfile(source / inner, target)
        elif media.kind == "debian-netboot-tar":
            with tarfile.open(source) as tar:
                member = next(m for m in tar.getmembers() if m.name.removeprefix("./") == inner)
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise MediaError(f"{source}: {inner} is not a regular file")
                with target.open("wb") as out:
                    shutil.copyfileobj(extracted, out)
        else:
            proc = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(source), "-extract", inner, str(target)],
                                  capture_output=True, text=True, timeout=1800, check=False)
            if proc.returncode != 0 or not target.is_file():
                raise MediaError(f"{source}: cannot extract {inner}")
        os.chmod(target, 0o644)  # xorriso keeps the ISO's read-only modes
    if media.kind == "ubuntu-iso":
        shutil.copyfile(source, staging / "ubuntu.iso")
        os.chmod(staging / "ubuntu.iso", 0o644)


def add_media(source: Path, os_key: str, boot_root: Path) -> dict:
    """Extract SOURCE into <boot_root>/media/<os_key>/ and record checksums. The new tree is
    built next to the old one and swapped in, so a node booting meanwhile never sees half."""
    media = plan(source)
    if not os_key.startswith(media.distro + "-"):
        raise MediaError(f"{source} is {media.distro} installer media, not for {os_key}")
    media_root = boot_root / "media"
    media_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{os_key}.", dir=media_root))
    try:
        _extract(source, media, staging)
        sums = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            sums[path.relative_to(staging).as_posix()] = sha256_file(path)
        (staging / "SHA256SUMS").write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
        record = {"os": os_key, "kind": media.kind, "source": str(source), "sha256": sums}
        (staging / "media.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        final = media_root / os_key
        old = media_root / f".{os_key}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        if old.exists():
            shutil.rmtree(old)
        return record
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
