"""podsys.provision.ramdisk and the ramdisk's scripts (podsys/data/ramdisk/): shellcheck-clean,
their helper functions run for real under sh, the newc archive read back by a real cpio."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from podsys.provision.ramdisk import Entry, cpio_newc, parse_ldd, ramdisk_key, script_paths
from tests.conftest import REPO_ROOT

RAMDISK_DIR = REPO_ROOT / "podsys/data/ramdisk"
FUNCTIONS = RAMDISK_DIR / "functions.sh"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (Debian package shellcheck)")
def test_scripts_are_shellcheck_clean():
    paths = script_paths()
    assert {p.name for p in paths} == {"init", "functions.sh"}
    proc = subprocess.run(["shellcheck", "--shell=sh", "--external-sources", *[p.name for p in paths]],
                          cwd=RAMDISK_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def run_function(snippet: str, shell: str = "sh") -> str:
    """Source functions.sh in a real POSIX shell (`busybox sh` too) and run `snippet`; its stdout."""
    proc = subprocess.run([*shell.split(), "-c", f'. "{FUNCTIONS}"; {snippet}'], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


CMDLINE = ("BOOT_IMAGE=vmlinuz console=ttyS0 podsys.image=http://10.0.0.1/boot/images/abc "
           "podsys.status=http://10.0.0.1:8081/api/v1/callback podsys.disk=/dev/nvme0n1 podsys.hostname=cpu01 "
           "podsys.ip=10.0.1.5/24 podsys.mac=52:54:00:00:00:01 podsys.firmware=uefi podsys.dns=10.0.0.1,10.0.0.2")


def test_cmdline_parsing_in_sh():
    out = run_function(f'parse_cmdline "{CMDLINE}"; '
                       'printf "%s|%s|%s|%s|%s|%s|%s|%s" "$IMAGE_URL" "$DISK" "$NODE_NAME" "$IP" "$MAC" "$FIRMWARE" "$GATEWAY" "$DNS"')
    assert out == ("http://10.0.0.1/boot/images/abc|/dev/nvme0n1|cpu01|10.0.1.5/24|52:54:00:00:00:01|uefi||"
                   "10.0.0.1,10.0.0.2")


def test_firmware_falls_back_to_what_the_machine_booted_with():
    out = run_function('parse_cmdline "podsys.disk=/dev/sda"; printf "%s" "$FIRMWARE"')
    assert out == ("uefi" if Path("/sys/firmware/efi").is_dir() else "bios")


def test_run_step_reports_the_stage_and_stops_with_the_steps_reason():
    # report and fail replaced: the real ones call the head and then wait forever.
    out = run_function('report() { echo "report $1 $2"; }; fail() { echo "fail $1: $2"; exit 0; }; '
                       'good() { echo ran good; }; bad() { FAIL_REASON="no disk /dev/sdz"; return 1; }; '
                       'run_step write good; run_step partition bad; echo not reached')
    assert out.splitlines() == ["report stage write", "ran good", "report stage partition", "fail partition: no disk /dev/sdz"]


def test_init_runs_every_install_step_through_run_step():
    init = (RAMDISK_DIR / "init").read_text()
    steps = [line.split()[1:] for line in init.splitlines() if line.startswith("run_step ")]
    assert steps == [["fetch", "fetch_image"], ["verify", "verify_image"], ["partition", "partition_disk"],
                     ["write", "write_image"], ["bootloader", "install_bootloader"], ["identity", "write_identity"]]


@pytest.mark.parametrize("disk, expected", [("/dev/sda", "/dev/sda2"), ("/dev/nvme0n1", "/dev/nvme0n1p2"),
                                            ("/dev/vda", "/dev/vda2")])
def test_partition_names_in_sh_match_python(disk, expected):
    from podsys.provision.partition import partition_device

    assert run_function(f'part_dev {disk} 2') == expected == partition_device(disk, 2)


def test_callback_messages_are_url_encoded():
    assert run_function('urlencode "sha256 mismatch: a&b=c #1 50%"') == "sha256%20mismatch:%20a%26b%3Dc%20%231%2050%25"


def test_verify_refuses_a_corrupted_download(tmp_path):
    image = tmp_path / "image.tar.zst"
    image.write_bytes(b"the real bytes")
    good = subprocess.run(["sha256sum", str(image)], capture_output=True, text=True, check=True).stdout.split()[0]
    (tmp_path / "sums").write_text(f"{good}  image.tar.zst\n")
    # verify_image reads /run/image.sha256; point a copy of the functions at our file instead.
    body = FUNCTIONS.read_text().replace("/run/image.sha256", str(tmp_path / "sums"))
    script = tmp_path / "f.sh"
    script.write_text(body)
    ok = subprocess.run(["sh", "-c", f'. "{script}"; IMAGE_FILE="{image}"; verify_image && echo OK'],
                        capture_output=True, text=True)
    assert ok.stdout.strip() == "OK"
    image.write_bytes(b"the real bytez")
    bad = subprocess.run(["sh", "-c", f'. "{script}"; IMAGE_FILE="{image}"; verify_image || echo "$FAIL_REASON"'],
                         capture_output=True, text=True)
    assert bad.stdout.startswith("sha256 mismatch: got ") and good in bad.stdout


def test_parse_ldd_output():
    # ldd output of /usr/sbin/sfdisk on Debian 12 (format: glibc's ldd(1))
    text = ("\tlinux-vdso.so.1 (0x00007ffd6b7f2000)\n"
            "\tlibfdisk.so.1 => /lib/x86_64-linux-gnu/libfdisk.so.1 (0x00007f2f8c6d5000)\n"
            "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2f8c4f4000)\n"
            "\t/lib64/ld-linux-x86-64.so.2 (0x00007f2f8c77a000)\n")
    assert parse_ldd(text) == ["/lib/x86_64-linux-gnu/libfdisk.so.1", "/lib/x86_64-linux-gnu/libc.so.6",
                               "/lib64/ld-linux-x86-64.so.2"]


CPIO = shutil.which("cpio") or (shutil.which("busybox") and "busybox")


@pytest.mark.skipif(CPIO is None, reason="neither cpio nor busybox installed")
def test_newc_archive_extracts_with_a_real_cpio(tmp_path):
    entries = [Entry("bin", stat.S_IFDIR | 0o755), Entry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
               Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"), Entry("etc", stat.S_IFDIR | 0o755),
               Entry("etc/odd", stat.S_IFREG | 0o600, b"x" * 5)]
    archive = cpio_newc(entries)
    assert archive == cpio_newc(list(reversed(entries))), "same entries, same bytes"
    cmd = ["busybox", "cpio"] if CPIO == "busybox" else ["cpio"]
    subprocess.run(cmd + ["-i", "-d", "-m"], input=archive, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin/sh").is_symlink() and (tmp_path / "bin/sh").readlink() == Path("busybox")
    assert (tmp_path / "etc/odd").read_bytes() == b"xxxxx"
    assert gzip.decompress(gzip.compress(archive, mtime=0)) == archive


def test_ramdisk_key_follows_the_scripts(monkeypatch):
    import podsys.provision.ramdisk as ramdisk

    before = ramdisk_key()
    assert before == ramdisk_key()
    original = ramdisk.script_text
    monkeypatch.setattr(ramdisk, "script_text", lambda name: original(name) + b"\n# edited\n")
    assert ramdisk_key() != before


FAKE_WGET = """#!/bin/sh
for arg in "$@"; do printf '%s\\n' "$arg"; done > "$(dirname "$0")/args"
if [ -n "$WGET_ANSWER" ]; then printf '%s\\n' "$WGET_ANSWER" > "$(dirname "$0")/answer"; fi
exit "${WGET_RC:-0}"
"""


def ramdisk_target(tmp_path: Path, keys: dict[str, str]) -> tuple[Path, Path]:
    """A target root with these ssh_host_<kind>_key.pub files, and a fake wget beside it that
    records its arguments."""
    ssh = tmp_path / "target/etc/ssh"
    ssh.mkdir(parents=True)
    for kind, key in keys.items():
        (ssh / f"ssh_host_{kind}_key.pub").write_text(f"{key} root@ramdisk\n")
    (ssh / "ssh_host_ed25519_key").write_text("PRIVATE, never sent\n")
    wget = tmp_path / "wget"
    wget.write_text(FAKE_WGET)
    wget.chmod(0o755)
    return tmp_path / "target", wget


def report_host_keys(target: Path, wget: Path, shell: str, rc: int = 0, answer: str = "") -> str:
    """Run report_host_keys with the fake wget exiting `rc`, having received `answer` from the head."""
    return run_function(f'TARGET="{target}"; WGET="{wget}"; STATUS_URL=http://10.0.0.1:8081/api/v1/callback; '
                        f'HOST_KEYS_ANSWER="{wget.parent}/answer"; export WGET_RC={rc} WGET_ANSWER="{answer}"; '
                        'report_host_keys && echo OK || echo "FAILED: $FAIL_REASON"', shell)


SHELLS = [s for s in ("dash", "busybox") if shutil.which(s)] or ["sh"]


@pytest.mark.parametrize("shell", SHELLS)
def test_host_key_report_posts_every_public_key_form_encoded(tmp_path, shell):
    from urllib.parse import parse_qs

    from podsys.provision.state import parse_host_keys
    from tests.unit.provision.host_key_samples import ECDSA, ED25519, RSA

    target, wget = ramdisk_target(tmp_path, {"rsa": RSA, "ed25519": ED25519, "ecdsa": ECDSA})
    sh = "busybox sh" if shell == "busybox" else shell
    assert report_host_keys(target, wget, sh) == "OK\n"
    args = (tmp_path / "args").read_text().splitlines()
    assert args[-1] == "http://10.0.0.1:8081/api/v1/callback"
    body = next(a for a in args if a.startswith("--post-data=")).removeprefix("--post-data=")
    assert "%0A" in body and " " not in body and "\n" not in body and "+" not in body
    form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    assert (form["event"], form["stage"]) == ("stage", "identity")
    # ed25519 first, without the comments, and just what the status service accepts.
    assert parse_host_keys(form["host_keys"]) == [ED25519, ECDSA, RSA]
    assert "PRIVATE" not in body


def test_a_failed_or_empty_key_report_fails_the_step(tmp_path):
    from tests.unit.provision.host_key_samples import ED25519

    target, wget = ramdisk_target(tmp_path, {"ed25519": ED25519})
    assert report_host_keys(target, wget, "sh", rc=4) == (
        "FAILED: cannot report the SSH host keys to http://10.0.0.1:8081/api/v1/callback\n")
    # The head refused them (400): its reason is the install's.
    assert report_host_keys(target, wget, "sh", rc=8, answer="host_keys line 1: not a key") == (
        "FAILED: cannot report the SSH host keys to http://10.0.0.1:8081/api/v1/callback: host_keys line 1: not a key\n")
    (target / "etc/ssh/ssh_host_ed25519_key.pub").unlink()
    assert report_host_keys(target, wget, "sh").startswith("FAILED: no SSH host keys in ")


def test_write_identity_reports_the_keys_right_after_making_them():
    functions = FUNCTIONS.read_text()
    body = functions[functions.index("write_identity() {"):]
    keygen = body.index('ssh-keygen -A')
    assert body.index("report_host_keys || return 1") > keygen
    assert body.index("report_host_keys || return 1") < body.index("10-provision.network")


def bootloader_target(tmp_path: Path, rocky: bool, shim: bool = True) -> Path:
    """An unpacked image's root: Rocky's (grub2-tools, shim and GRUB under /boot/efi) or Debian's."""
    target = tmp_path / "target"
    for folder in ("etc/default", "usr/sbin", "boot/efi", "dev", "proc", "sys"):
        (target / folder).mkdir(parents=True, exist_ok=True)
    if rocky:
        mkconfig = target / "usr/sbin/grub2-mkconfig"
        mkconfig.write_text("#!/bin/sh\n")
        mkconfig.chmod(0o755)
        efi = target / "boot/efi/EFI"
        (efi / "rocky").mkdir(parents=True)
        (efi / "rocky/grubx64.efi").write_text("grub\n")
        (efi / "rocky/shimx64.efi").write_text("shim\n")
        if shim:
            (efi / "BOOT").mkdir()
            (efi / "BOOT/BOOTX64.EFI").write_text("shim\n")
    return target


def install_bootloader(target: Path, firmware: str, shell: str = "sh") -> list[str]:
    """install_bootloader for real, with chroot, mount and blkid replaced (they would act on this
    machine): chroot prints what it would run. Its output lines, then OK or FAILED: reason."""
    logs = target.parent / "logs"
    logs.mkdir(exist_ok=True)
    out = run_function(f'TARGET="{target}"; LOG_DIR="{logs}"; DISK=/dev/vda; FIRMWARE={firmware}; ROOT_DEV=/dev/vda2; '
                       'ESP_DEV=/dev/vda1; chroot() { echo "chroot $*" >&3; }; mount() { :; }; '
                       'uuid_of() { echo "uuid-of-$1"; }; '
                       '{ install_bootloader && echo OK || echo "FAILED: $FAIL_REASON"; } 3>&1', shell)
    return [line.replace(str(target), "T") for line in out.splitlines()]


@pytest.mark.parametrize("shell", SHELLS)
def test_rocky_bios_installs_grub2_into_the_install_disk_and_writes_classic_entries(tmp_path, shell):
    target = bootloader_target(tmp_path, rocky=True)
    sh = "busybox sh" if shell == "busybox" else shell
    assert install_bootloader(target, "bios", sh) == [
        "chroot T grub2-install --target=i386-pc /dev/vda", "chroot T grub2-mkconfig -o /boot/grub2/grub.cfg", "OK"]
    assert (target / "etc/default/grub").read_text().splitlines()[-1] == "GRUB_ENABLE_BLSCFG=false"
    assert (target / "etc/fstab").read_text() == "UUID=uuid-of-/dev/vda2 / ext4 errors=remount-ro 0 1\n"


def test_rocky_uefi_boots_the_images_shim_and_hands_grub_to_the_root_file_system(tmp_path):
    target = bootloader_target(tmp_path, rocky=True)
    # RHEL's grub2-install refuses EFI targets: only the config is made.
    assert install_bootloader(target, "uefi") == ["chroot T grub2-mkconfig -o /boot/grub2/grub.cfg", "OK"]
    assert (target / "boot/efi/EFI/rocky/grub.cfg").read_text() == (
        "search --no-floppy --fs-uuid --set=dev uuid-of-/dev/vda2\nset prefix=($dev)/boot/grub2\n"
        "export $prefix\nconfigfile $prefix/grub.cfg\n")
    assert "UUID=uuid-of-/dev/vda1 /boot/efi vfat umask=0077 0 1" in (target / "etc/fstab").read_text()
    missing = bootloader_target(tmp_path / "noshim", rocky=True, shim=False)
    assert install_bootloader(missing, "uefi") == ["FAILED: no EFI/BOOT/BOOTX64.EFI in the image (package shim-x64)"]


def test_debian_images_keep_grub_install_and_update_grub(tmp_path):
    target = bootloader_target(tmp_path, rocky=False)
    assert install_bootloader(target, "uefi") == [
        "chroot T grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram",
        "chroot T update-grub", "OK"]
    assert "BLSCFG" not in (target / "etc/default/grub").read_text()


def test_the_images_own_boot_efi_files_are_copied_onto_the_esp(tmp_path):
    target = bootloader_target(tmp_path, rocky=True)
    esp = tmp_path / "esp"
    # mount/umount replaced: the "ESP" is a plain folder here.
    out = run_function(f'TARGET="{target}"; ESP_MOUNT="{esp}"; ESP_DEV=/dev/vda1; mount() {{ :; }}; umount() {{ :; }}; '
                       'copy_image_esp && echo OK')
    assert out == "OK\n"
    assert sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file()) == [
        "EFI/BOOT/BOOTX64.EFI", "EFI/rocky/grubx64.efi", "EFI/rocky/shimx64.efi"]
    debian = bootloader_target(tmp_path / "debian", rocky=False)
    untouched = tmp_path / "untouched"
    assert run_function(f'TARGET="{debian}"; ESP_MOUNT="{untouched}"; mount() {{ exit 9; }}; copy_image_esp && echo OK') == "OK\n"
    assert not untouched.exists()
