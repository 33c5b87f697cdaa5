"""The bundle's signed apt repository: the site key, Packages/Release, InRelease/Release.gpg.

The site key is generated once per bundle directory into `keys/` (0700; the exported private
key 0600), outside the served `repo/` tree, and reused on every rebuild so nodes keep trusting
it. Nodes get only the public half (`repo/podsys-site.asc`, `signed-by`)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from podsys.errors import PodsysError

PUBLIC_KEY_ASC = "podsys-site.asc"
PUBLIC_KEY_GPG = "podsys-site.gpg"
COMPONENT = "main"


def _tool(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise PodsysError(f"{name} not found: install the Debian package {package}")
    return exe


def _run(args: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        raise PodsysError(f"{what} failed: {' '.join(err.strip().splitlines()[-2:])}")
    return proc


# Without /run/user/<uid> (root on a head, CI), gpg-agent puts its socket in the gpg home, and a
# Unix socket path has 108 bytes (unix(7)): a deep bundle work directory kept the agent from
# starting ("No agent running"). A longer home is reached through a short link in the temp dir.
_GPG_HOME_MAX = 72


def _short_link(home: Path) -> Path:
    return Path(tempfile.gettempdir()) / f"podsys-gnupg-{hashlib.sha256(str(home).encode()).hexdigest()[:16]}"


def _short_home(home: Path) -> str:
    if len(str(home)) <= _GPG_HOME_MAX:
        return str(home)
    link = _short_link(home)
    if not (link.is_symlink() and os.readlink(link) == str(home)):
        link.unlink(missing_ok=True)
        link.symlink_to(home)
    return str(link)


def _drop_short_home(home: Path) -> None:
    """Remove the short link of `home`, if it is ours and points there (stop_agent: the key's
    work is done; a link kept would outlive a removed work directory in the temp dir)."""
    link = _short_link(home)
    if link.is_symlink() and os.readlink(link) == str(home):
        link.unlink()


class SiteKey:
    """A gpg home in `keys_dir/gnupg` holding the site's signing key."""

    def __init__(self, keys_dir: Path):
        self.keys_dir = Path(keys_dir)
        self.home = self.keys_dir / "gnupg"
        self.gpg = _tool("gpg", "gnupg")

    def _gpg(self, *args: str, what: str, **kw) -> subprocess.CompletedProcess:
        return _run([self.gpg, "--homedir", _short_home(self.home), "--batch", "--pinentry-mode", "loopback",
                     "--passphrase", "", *args], what, **kw)

    def ensure(self, uid: str) -> str:
        """The key's fingerprint; generated on first use."""
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        self.home.mkdir(exist_ok=True)
        os.chmod(self.home, 0o700)
        fpr = self.fingerprint()
        if fpr is None:
            self._gpg("--quick-gen-key", uid, "ed25519", "sign", "never", what="generating the site key")
            fpr = self.fingerprint()
            if fpr is None:
                raise PodsysError("generating the site key failed: gpg made no secret key")
            private = self.keys_dir / "site-private.asc"
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._gpg("--armor", "--export-secret-keys", fpr, what="exporting the site key").stdout)
        return fpr

    def fingerprint(self) -> str | None:
        if not self.home.exists():
            return None
        proc = subprocess.run([self.gpg, "--homedir", _short_home(self.home), "--batch", "--with-colons", "--list-secret-keys"],
                              capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("fpr:"):
                return line.split(":")[9]
        return None

    def export_public(self, dest_dir: Path) -> None:
        fpr = self.fingerprint()
        armored = self._gpg("--armor", "--export", fpr, what="exporting the public key").stdout
        binary = self._gpg("--export", fpr, what="exporting the public key").stdout
        _write_if_changed(dest_dir / PUBLIC_KEY_ASC, armored)
        _write_if_changed(dest_dir / PUBLIC_KEY_GPG, binary)

    def sign_clear(self, src: Path, dest: Path) -> None:
        dest.unlink(missing_ok=True)
        self._gpg("--digest-algo", "SHA512", "--clearsign", "-o", str(dest), str(src), what=f"signing {src.name}")

    def sign_detached(self, src: Path, dest: Path, armor: bool = True) -> None:
        dest.unlink(missing_ok=True)
        args = ["--digest-algo", "SHA512", "--detach-sign", "-o", str(dest)]
        if armor:
            args.insert(2, "--armor")
        self._gpg(*args, str(src), what=f"signing {src.name}")

    def stop_agent(self) -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf and self.home.exists():
            subprocess.run([gpgconf, "--homedir", _short_home(self.home), "--kill", "gpg-agent"], capture_output=True)
        _drop_short_home(self.home)


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def build_repository(repo: Path, suite: str, key: SiteKey, label: str, arch: str = "amd64") -> None:
    """Packages(.gz) for pool/, then a Release signed into InRelease and Release.gpg."""
    ftparchive = _tool("apt-ftparchive", "apt-utils")
    dist = repo / "dists" / suite
    binary = dist / COMPONENT / f"binary-{arch}"
    binary.mkdir(parents=True, exist_ok=True)
    packages = _run([ftparchive, "packages", "pool"], "apt-ftparchive packages", cwd=repo).stdout
    _write_if_changed(binary / "Packages", packages)
    _write_if_changed(binary / "Packages.gz", gzip.compress(packages, 9, mtime=0))
    conf = {
        "Origin": "podsys", "Label": label, "Suite": suite, "Codename": suite,
        "Architectures": arch, "Components": COMPONENT, "Description": f"podsys offline bundle ({label})",
    }
    opts = []
    for k, v in conf.items():
        opts += ["-o", f"APT::FTPArchive::Release::{k}={v}"]
    # Old signatures and Release go first so the new Release does not list them.
    for stale in ("Release", "InRelease", "Release.gpg"):
        (dist / stale).unlink(missing_ok=True)
    release = _run([ftparchive, *opts, "release", str(dist)], "apt-ftparchive release").stdout
    (dist / "Release").write_bytes(release)
    key.sign_clear(dist / "Release", dist / "InRelease")
    key.sign_detached(dist / "Release", dist / "Release.gpg", armor=False)


def gpgv_check(keyring: Path, signature: Path, data: Path | None = None) -> str | None:
    """None when `signature` (inline, or detached over `data`) verifies with `keyring`; else why."""
    gpgv = _tool("gpgv", "gpgv")
    args = [gpgv, "--keyring", str(keyring), str(signature)] + ([str(data)] if data else [])
    with tempfile.TemporaryDirectory() as home:  # gpgv wants a home; never the user's
        proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "GNUPGHOME": home})
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.splitlines() if "BAD" in ln or "Can't check" in ln or "no valid" in ln.lower()]
    return (lines or proc.stderr.strip().splitlines()[-1:] or ["bad signature"])[0].replace("gpgv: ", "")


def parse_deb822_hashes(text: str, field: str = "SHA256") -> dict[str, tuple[str, int]]:
    """Release-style 'SHA256:' block -> {path: (sha256, size)}."""
    out: dict[str, tuple[str, int]] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            inside = True
            continue
        if inside:
            if not line.startswith(" "):
                inside = False
                continue
            digest, size, path = line.split()
            out[path] = (digest, int(size))
    return out


def parse_packages(text: str) -> list[dict[str, str]]:
    stanzas, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current = {}
            continue
        if line[0] in " \t":
            continue
        key, _, value = line.partition(":")
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
