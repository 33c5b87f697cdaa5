"""Resolving Debian/Ubuntu packages for the TARGET release with a private apt configuration.

apt runs with its own sources.list (the target suite, signed-by the distribution's keyring), its
own lists, cache and an empty dpkg status, so nothing of the build machine's apt state leaks in
and the dependency closure is complete (an empty status means nothing is assumed installed).
`apt-get install --print-uris` gives every file with its size and SHA256; downloading is left
to the caller."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from podsys.errors import InputError, PodsysError


@dataclass(frozen=True)
class AptTarget:
    os_key: str
    suite: str
    mirror: str
    components: tuple[str, ...]
    keyring: str
    security_mirror: str | None
    python: str  # the target's python3 (wheels must match it)
    # Netboot kernel + initrd, packaged by the distribution: (package, directory inside it)
    installer_package: tuple[str, str] | None = None
    # The release's glibc: the newest manylinux_2_Y wheel tag it runs (PEP 600). Sources:
    # packages.debian.org/bookworm/libc6 (2.36), packages.ubuntu.com/jammy/libc6 (2.35),
    # packages.ubuntu.com/noble/libc6 (2.39); tabulated in github.com/mayeut/pep600_compliance.
    glibc: tuple[int, int] = (2, 17)

    def source_lines(self, mirror: str | None = None) -> list[str]:
        mirror = (mirror or self.mirror).rstrip("/")
        comps = " ".join(self.components)
        signed = f"[signed-by={self.keyring}]"
        lines = [f"deb {signed} {mirror} {self.suite} {comps}", f"deb {signed} {mirror} {self.suite}-updates {comps}"]
        if self.security_mirror:
            lines.append(f"deb {signed} {self.security_mirror} {self.suite}-security {comps}")
        return lines


TARGETS: dict[str, AptTarget] = {
    "debian-12": AptTarget(
        "debian-12", "bookworm", "http://deb.debian.org/debian", ("main",),
        "/usr/share/keyrings/debian-archive-keyring.gpg", "http://deb.debian.org/debian-security", "3.11",
        ("debian-installer-12-netboot-amd64", "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64"),
        glibc=(2, 36),
    ),
    "ubuntu-22.04": AptTarget(
        "ubuntu-22.04", "jammy", "http://archive.ubuntu.com/ubuntu", ("main", "universe"),
        "/usr/share/keyrings/ubuntu-archive-keyring.gpg", "http://security.ubuntu.com/ubuntu", "3.10", glibc=(2, 35),
    ),
    "ubuntu-24.04": AptTarget(
        "ubuntu-24.04", "noble", "http://archive.ubuntu.com/ubuntu", ("main", "universe"),
        "/usr/share/keyrings/ubuntu-archive-keyring.gpg", "http://security.ubuntu.com/ubuntu", "3.12", glibc=(2, 39),
    ),
}


def target_for(os_key: str) -> AptTarget:
    try:
        return TARGETS[os_key]
    except KeyError:
        raise InputError(
            f"bundle: no offline bundle for {os_key}; podsys builds apt bundles for {', '.join(TARGETS)}"
        ) from None


@dataclass(frozen=True)
class AptFile:
    url: str
    filename: str
    size: int
    sha256: str


_URI_LINE = re.compile(r"^'(?P<url>[^']+)' (?P<name>\S+) (?P<size>\d+) (?P<hash>\S+)$")


def parse_print_uris(text: str) -> list[AptFile]:
    """Lines of `apt-get --print-uris install`: 'URL' FILE SIZE SHA256:HEX."""
    out = []
    for line in text.splitlines():
        m = _URI_LINE.match(line.strip())
        if not m:
            continue
        algo, _, digest = m["hash"].partition(":")
        if algo.upper() != "SHA256":
            raise PodsysError(f"apt gave no SHA256 for {m['name']} ({m['hash']}); the target repository is too old")
        out.append(AptFile(m["url"], m["name"], int(m["size"]), digest.lower()))
    return out


class PrivateApt:
    """apt-get/apt-cache confined to `root` and the target's sources."""

    def __init__(self, root: Path, target: AptTarget, mirror: str | None = None, extra_sources: list[str] | None = None,
                 recommends: bool = True, arch: str = "amd64"):
        self.root, self.target, self.arch = Path(root), target, arch
        self.mirror, self.recommends = mirror, recommends
        self.extra_sources = list(extra_sources or [])
        for sub in ("etc/sources.list.d", "etc/preferences.d", "etc/apt.conf.d", "etc/trusted.gpg.d",
                    "state/lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state/status").touch()
        (self.root / "etc/sources.list").write_text("\n".join(target.source_lines(mirror) + self.extra_sources) + "\n")

    def options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc": r / "etc",
            "Dir::Etc::SourceList": r / "etc/sources.list",
            "Dir::Etc::SourceParts": r / "etc/sources.list.d",
            "Dir::Etc::Preferences": r / "etc/preferences",
            "Dir::Etc::PreferencesParts": r / "etc/preferences.d",
            "Dir::Etc::Parts": r / "etc/apt.conf.d",
            "Dir::Etc::Trusted": r / "etc/trusted.gpg",
            "Dir::Etc::TrustedParts": r / "etc/trusted.gpg.d",
            "Dir::State": r / "state",
            "Dir::State::status": r / "state/status",
            "Dir::Cache": r / "cache",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Install-Recommends": "true" if self.recommends else "false",
            "Acquire::Languages": "none",
            "Acquire::ForceHash": "SHA256",  # --print-uris then reports SHA256, not MD5
            "Acquire::Retries": "8",  # index downloads ride out a mirror's brief 503s (backing off)
            "Debug::NoLocking": "1",  # our own dirs; never take the build machine's dpkg lock
        }
        out = []
        for key, value in opts.items():
            out += ["-o", f"{key}={value}"]
        return out

    def _run(self, tool: str, args: list[str]) -> str:
        exe = shutil.which(tool)
        if exe is None:
            raise PodsysError(f"{tool} not found: the bundle needs apt (Debian/Ubuntu build machine)")
        proc = subprocess.run([exe, *self.options(), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "W:"))] or proc.stderr.splitlines()[-3:]
            raise PodsysError(f"{tool} {' '.join(args[:2])} for {self.target.os_key} failed: {' | '.join(errors)}")
        return proc.stdout

    def update(self) -> None:
        self._run("apt-get", ["-q", "update"])

    def resolve(self, packages: list[str]) -> list[AptFile]:
        """Every .deb installing `packages` on an empty system needs (the full closure)."""
        if not packages:
            return []
        try:
            text = self._run("apt-get", ["install", "-y", "-qq", "--print-uris", *packages])
        except PodsysError as exc:
            missing = re.findall(r"Unable to locate package (\S+)|Package '?(\S+?)'? has no installation candidate", str(exc))
            names = sorted({a or b for a, b in missing})
            if names:
                raise PodsysError(f"bundle: {self.target.os_key} ({self.target.suite}) has no package {', '.join(names)}") from None
            raise
        return parse_print_uris(text)

    def list_file(self, suffix: str) -> Path | None:
        """A downloaded index, e.g. the mirror's InRelease (already signature-checked by apt)."""
        for path in (self.root / "state/lists").iterdir():
            if path.name.endswith(suffix):
                return path
        return None
