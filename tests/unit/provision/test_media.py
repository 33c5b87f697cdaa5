"""podsys.provision.media and `podsys provision media add`. ISOs are built with xorriso (the
same tool that reads them); a tree laid out like Debian's netboot package stands in for it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from podsys.provision.media import DEBIAN_NETBOOT_PACKAGE_DIR, MediaError, add_media, plan
from tests.conftest import invoke

needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed (apt install xorriso)")


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def make_iso(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    src = tree(tmp_path / f"{name}-src", files)
    iso = tmp_path / f"{name}.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-r", "-J", "-V", name.upper(), "-o", str(iso), str(src)],
                   check=True, capture_output=True)
    return iso


def netboot_dir(tmp_path: Path) -> Path:
    return tree(tmp_path / "netboot", {"debian-installer/amd64/linux": b"kernel-bytes",
                                       "debian-installer/amd64/initrd.gz": b"initrd-bytes"})


def test_debian_netboot_directory(tmp_path):
    boot = tmp_path / "boot"
    record = add_media(netboot_dir(tmp_path), "debian-12", boot)
    media = boot / "media/debian-12"
    assert (media / "vmlinuz").read_bytes() == b"kernel-bytes" and (media / "initrd").read_bytes() == b"initrd-bytes"
    assert record["sha256"]["vmlinuz"] == hashlib.sha256(b"kernel-bytes").hexdigest()
    sums = (media / "SHA256SUMS").read_text().splitlines()
    assert f"{hashlib.sha256(b'initrd-bytes').hexdigest()}  initrd" in sums
    assert json.loads((media / "media.json").read_text())["kind"] == "debian-netboot-dir"
    # sha256sum itself agrees with what was recorded
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=media, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_debian_netboot_tarball_and_replacement(tmp_path):
    boot = tmp_path / "boot"
    add_media(netboot_dir(tmp_path), "debian-12", boot)
    tarball = tmp_path / "netboot.tar.gz"
    src = tree(tmp_path / "tar-src", {"debian-installer/amd64/linux": b"newer-kernel",
                                      "debian-installer/amd64/initrd.gz": b"newer-initrd"})
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname=".")
    record = add_media(tarball, "debian-12", boot)
    assert record["kind"] == "debian-netboot-tar"
    assert (boot / "media/debian-12/vmlinuz").read_bytes() == b"newer-kernel"
    assert sorted(p.name for p in (boot / "media").iterdir()) == ["debian-12"]  # no staging leftovers


@needs_xorriso
def test_ubuntu_iso_keeps_the_iso_for_casper(tmp_path):
    iso = make_iso(tmp_path, "ubuntu", {"casper/vmlinuz": b"uk", "casper/initrd": b"ui", ".disk/info": b"Ubuntu-Server 24.04"})
    record = add_media(iso, "ubuntu-24.04", tmp_path / "boot")
    media = tmp_path / "boot/media/ubuntu-24.04"
    assert (media / "vmlinuz").read_bytes() == b"uk" and (media / "initrd").read_bytes() == b"ui"
    assert (media / "ubuntu.iso").read_bytes() == iso.read_bytes()
    assert set(record["sha256"]) == {"vmlinuz", "initrd", "ubuntu.iso"}
    assert (media / "vmlinuz").stat().st_mode & 0o777 == 0o644


@needs_xorriso
def test_rocky_iso_takes_stage2_and_treeinfo(tmp_path):
    iso = make_iso(tmp_path, "rocky", {"images/pxeboot/vmlinuz": b"rk", "images/pxeboot/initrd.img": b"ri",
                                       "images/install.img": b"squashfs", ".treeinfo": b"[general]\nversion = 9.4\n"})
    record = add_media(iso, "rocky-9", tmp_path / "boot")
    media = tmp_path / "boot/media/rocky-9"
    assert (media / "images/install.img").read_bytes() == b"squashfs" and (media / ".treeinfo").is_file()
    assert record["sha256"]["images/install.img"] == hashlib.sha256(b"squashfs").hexdigest()


@needs_xorriso
def test_debian_cd_and_foreign_media_are_refused(tmp_path):
    cd = make_iso(tmp_path, "debcd", {"install.amd/vmlinuz": b"k", "install.amd/initrd.gz": b"i"})
    with pytest.raises(MediaError, match="netboot"):
        plan(cd)
    other = make_iso(tmp_path, "other", {"README": b"x"})
    with pytest.raises(MediaError, match="neither an Ubuntu"):
        plan(other)


def test_media_for_the_wrong_os_is_refused(tmp_path):
    with pytest.raises(MediaError, match="is debian installer media, not for ubuntu-24.04"):
        add_media(netboot_dir(tmp_path), "ubuntu-24.04", tmp_path / "boot")


def test_media_add_command(tmp_path):
    result = invoke("provision", "media", "add", str(netboot_dir(tmp_path)), "--os",
                    "debian-12", "--boot-root", str(tmp_path / "boot"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["os"] == "debian-12"
    bad = invoke("provision", "media", "add", str(tmp_path / "nothing"), "--os", "debian-12",
                 "--boot-root", str(tmp_path / "boot"))
    assert bad.exit_code == 2 and "no such file or directory" in bad.output


@pytest.mark.skipif(not DEBIAN_NETBOOT_PACKAGE_DIR.is_dir(), reason="debian-installer-12-netboot-amd64 not installed")
def test_real_debian_netboot_package(tmp_path):
    record = add_media(DEBIAN_NETBOOT_PACKAGE_DIR, "debian-12", tmp_path / "boot")
    kernel = (tmp_path / "boot/media/debian-12/vmlinuz").read_bytes()
    assert kernel[0x202:0x206] == b"HdrS"  # the Linux x86 boot protocol header
    assert record["sha256"]["initrd"] == hashlib.sha256((DEBIAN_NETBOOT_PACKAGE_DIR / "debian-installer/amd64/initrd.gz").read_bytes()).hexdigest()
