"""Signed dnf repositories of dummy packages laid out like a Rocky 9 mirror and EPEL, for
building a Rocky node image for real with dnf --installroot where no Rocky mirror is reachable.

The tree (served on loopback by the test):
  rocky/9/{BaseOS,AppStream,CRB}/x86_64/os/   repodata (createrepo_c) + signed .rpm files
  rocky/RPM-GPG-KEY-Rocky-9                   the test's signing key, where Rocky's is
  epel/9/Everything/x86_64/                   slurm, node_exporter, networkd (EPEL's packages)
  epel/RPM-GPG-KEY-EPEL-9

Every package the image spec names exists, empty apart from what the build acts on: unit files
(the build enables networkd and sshd), the kernel's /lib/modules/<k>/vmlinuz (kernel-core's
layout: the build copies it to /boot), an initramfs standing for the one kernel-install's dracut
makes on a real build (no dracut can run in an image of dummy packages), the shim and GRUB EFI
files under /boot/efi (shim-x64, grub2-efi-x64), /etc/selinux/config (selinux-policy) and a
filled /etc/machine-id (the build must empty it). GRUB's packages carry RHEL's epoch 1. Nothing
in them runs: there is no shell in an image made of them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_RELEASE = "5.14.0-503.14.1.el9_5"
KERNEL = f"{KERNEL_RELEASE}.x86_64"
EPEL_PACKAGES = {"slurm-slurmd", "golang-github-prometheus-node-exporter", "systemd-networkd", "dkms"}

UNIT = "[Unit]\nDescription=dummy {name}\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n"


@dataclass
class DummyRpm:
    name: str
    version: str = "1.0"
    release: str = "1.el9"
    epoch: int | None = None
    files: dict[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


def dummy_packages(names: list[str]) -> list[DummyRpm]:
    """One dummy package per name the image spec installs (name or name-version spec)."""
    made: dict[str, DummyRpm] = {}
    for spec in names:
        name = spec.split("=", 1)[0]
        made[name] = DummyRpm(name)
    special = {
        "kernel": DummyRpm("kernel", "5.14.0", "503.14.1.el9_5", requires=("kernel-core",)),
        "kernel-core": DummyRpm("kernel-core", "5.14.0", "503.14.1.el9_5", files={
            f"/lib/modules/{KERNEL}/vmlinuz": "dummy kernel image\n",
            f"/boot/initramfs-{KERNEL}.img": "dummy initramfs\n"}),
        "openssh-server": DummyRpm("openssh-server", "8.7p1", "43.el9", files={
            "/usr/lib/systemd/system/sshd.service": UNIT.format(name="sshd")}),
        "systemd-networkd": DummyRpm("systemd-networkd", "253.4", "1.el9", files={
            "/usr/lib/systemd/system/systemd-networkd.service": UNIT.format(name="systemd-networkd")}),
        "systemd": DummyRpm("systemd", "252", "46.el9_5.2", files={"/etc/machine-id": "0123456789abcdef0123456789abcdef\n"},
                            requires=("selinux-policy",)),
        "selinux-policy": DummyRpm("selinux-policy", "38.1.45", "3.el9_5", files={"/etc/selinux/config": "SELINUX=enforcing\n"}),
        "shim-x64": DummyRpm("shim-x64", "15.8", "4.el9_3", files={
            "/boot/efi/EFI/BOOT/BOOTX64.EFI": "dummy shim\n", "/boot/efi/EFI/BOOT/fbx64.efi": "dummy fallback\n",
            "/boot/efi/EFI/rocky/shimx64.efi": "dummy shim\n", "/boot/efi/EFI/rocky/BOOTX64.CSV": "shimx64.efi,Rocky Linux,,\n"}),
        "grub2-efi-x64": DummyRpm("grub2-efi-x64", "2.06", "92.el9", epoch=1, files={
            "/boot/efi/EFI/rocky/grubx64.efi": "dummy grub\n"}),
        "grub2-pc": DummyRpm("grub2-pc", "2.06", "92.el9", epoch=1),
    }
    for name, rpm in special.items():
        if name in made or name in ("kernel-core", "selinux-policy"):
            made[name] = rpm
    return list(made.values())


def _spec_text(rpm: DummyRpm) -> str:
    lines = [f"Name: {rpm.name}", f"Version: {rpm.version}", f"Release: {rpm.release}",
             f"Summary: dummy {rpm.name} (podsys dummy Rocky repository)", "License: MIT", "BuildArch: noarch"]
    if rpm.epoch is not None:
        lines.append(f"Epoch: {rpm.epoch}")
    lines += [f"Requires: {r}" for r in rpm.requires]
    lines += ["%description", f"dummy {rpm.name}", "%install"]
    for path, text in rpm.files.items():
        lines.append(f"mkdir -p %{{buildroot}}{Path(path).parent}")
        lines.append(f"printf '%s' {shlex_quote(text)} > %{{buildroot}}{path}")
    lines += ["%files", *rpm.files]
    return "\n".join(lines) + "\n"


def shlex_quote(text: str) -> str:
    """Quoted for the spec's shell, with rpm's macro character escaped."""
    return shlex.quote(text).replace("%", "%%")


def build_rpm(work: Path, rpm: DummyRpm) -> Path:
    spec = work / "specs" / f"{rpm.name}.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(_spec_text(rpm))
    top = work / "top"
    proc = subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return top / "RPMS" / "noarch" / f"{rpm.name}-{rpm.version}-{rpm.release}.noarch.rpm"


class TestSigner:
    """A throw-away RSA signing key in a short gpg home (gpg-agent's socket path is limited)."""

    __test__ = False  # not a pytest class

    def __init__(self, home: Path, uid: str = "podsys dummy rocky repository <tests@podsys.invalid>"):
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg("--quick-gen-key", uid, "rsa2048", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys").stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def _gpg(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--passphrase", "", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc

    def public_key(self) -> str:
        return self._gpg("--armor", "--export", self.fingerprint).stdout

    def sign(self, rpms: list[Path]) -> None:
        # Debian's rpm names gpg2 as its signer (%__gpg); Debian installs it as gpg.
        proc = subprocess.run(["rpmsign", "--define", f"__gpg {shutil.which('gpg')}", "--define", f"_gpg_path {self.home}",
                               "--define", f"_gpg_name {self.fingerprint}", "--addsign", *map(str, rpms)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True)


def build_tree(work: Path, tree: Path, names: list[str], signer: TestSigner, major: str = "9") -> dict[str, str]:
    """Build, sign and publish the dummy packages for `names` under `tree`; returns
    {package: the repository folder it went to}."""
    folders = {"baseos": tree / "rocky" / major / "BaseOS/x86_64/os", "appstream": tree / "rocky" / major / "AppStream/x86_64/os",
               "crb": tree / "rocky" / major / "CRB/x86_64/os", "epel": tree / "epel" / major / "Everything/x86_64"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    placed: dict[str, str] = {}
    rpms = []
    for rpm in dummy_packages(names):
        built = build_rpm(work, rpm)
        repo = "epel" if rpm.name in EPEL_PACKAGES else "baseos"
        target = folders[repo] / built.name
        shutil.copy(built, target)
        rpms.append(target)
        placed[rpm.name] = repo
    signer.sign(rpms)
    for folder in folders.values():
        proc = subprocess.run(["createrepo_c", "-q", str(folder)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    key = signer.public_key()
    (tree / "rocky" / f"RPM-GPG-KEY-Rocky-{major}").write_text(key)
    (tree / "epel" / f"RPM-GPG-KEY-EPEL-{major}").write_text(key)
    return placed


# NVIDIA's rhel9 repository serves the driver as module streams (nvidia-driver:<branch>-open,
# -dkms, latest...); the packages of a stream are modular and invisible until it is enabled.
STREAM_PACKAGES = ("nvidia-driver", "kmod-nvidia-open-dkms", "nvidia-persistenced", "nvidia-fabricmanager",
                   "libnvidia-nscq")


def _pin_rpm(name: str, version: str) -> DummyRpm:
    """A pin's version as rpm's version-release: 2.27.7-1+cuda13.0 -> 2.27.7 / 1+cuda13.0."""
    if "-" in version:
        version, release = version.rsplit("-", 1)
    else:
        release = "1.el9"
    return DummyRpm(name, version, release)


def _modulemd(name: str, stream: str, rpms: list[DummyRpm]) -> str:
    artifacts = "".join(f"    - {r.name}-0:{r.version}-{r.release}.noarch\n" for r in rpms)
    return (f"---\ndocument: modulemd\nversion: 2\ndata:\n  name: {name}\n  stream: \"{stream}\"\n  version: 1\n"
            f"  context: \"00000000\"\n  arch: x86_64\n  summary: dummy {name}\n  description: dummy {name}\n"
            f"  license:\n    module: [MIT]\n  profiles:\n    default:\n      rpms: [{name}]\n"
            f"  artifacts:\n    rpms:\n{artifacts}...\n")


def build_vendor_repo(work: Path, folder: Path, pins: tuple[str, ...], stream: str, newer_branch: str,
                      signer: TestSigner) -> None:
    """The plan's vendor packages at their pinned versions in a signed repository with the
    driver's module stream, and a newer branch's stream beside it (which the enabled stream must
    keep dnf from taking)."""
    folder.mkdir(parents=True, exist_ok=True)
    module, pinned_stream = stream.split(":", 1)
    streams: dict[str, list[DummyRpm]] = {pinned_stream: [], f"{newer_branch}-open": []}
    rpms = []
    for pin in pins:
        name, _, version = pin.partition("=")
        rpm = _pin_rpm(name, version)
        built = build_rpm(work / "vendor", rpm)
        shutil.copy(built, folder / built.name)
        rpms.append(folder / built.name)
        if name in STREAM_PACKAGES:
            streams[pinned_stream].append(rpm)
            newer = DummyRpm(name, f"{newer_branch}.10.01", "1.el9")
            built = build_rpm(work / "vendor-newer", newer)
            shutil.copy(built, folder / built.name)
            rpms.append(folder / built.name)
            streams[f"{newer_branch}-open"].append(newer)
    signer.sign(rpms)
    proc = subprocess.run(["createrepo_c", "-q", str(folder)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    modules = work / "modules.yaml"
    modules.write_text("".join(_modulemd(module, s, r) for s, r in streams.items()))
    proc = subprocess.run(["modifyrepo_c", "--mdtype=modules", str(modules), str(folder / "repodata")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (folder / "D42D0685.pub").write_text(signer.public_key())
