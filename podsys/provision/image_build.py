"""Build node images and keep them in a content-keyed store (`podsys image build|list|show|rm`).

Store layout (one folder per image key; `.podsys/images/` beside the manifest, or the head's
HeadPaths.image_root, which nginx serves under /boot/images/):
  <key>/image.tar.zst     the root filesystem (tar, numeric owners, xattrs), zstd
  <key>/image.sha256      "<sha256>  image.tar.zst" (sha256sum -c format; the ramdisk checks it)
  <key>/packages.tsv      every installed package and its version (dpkg-query; rpm -qa for Rocky)
  <key>/image.json        the spec, the nodes it was built for, sizes, sha256, build time
  <key>/partitions-{bios,uefi}.{sfdisk,min-bytes}  the install disk's plan (podsys.provision.partition)

A GPU/InfiniBand image's build first fetches its vendor repositories' keys (checking the
fingerprints podsys knows) into the scratch folder's apt/, with the sources and pins the
build's hooks copy in (image.vendor_apt_files). A Rocky image's build fetches every
repository's key (the distribution's, EPEL's, the vendor's) into keys/ the same way, and dnf
checks each package against them.

A folder appears only once complete (built in a scratch folder, then renamed), so a killed
build never leaves a half image that a later `build` would take as up to date."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from podsys.errors import InputError, PodsysError, Problem
from podsys.provision.partition import plan_files
from podsys.provision.image import (
    DNF_REPO_NAMES,
    DRACUT_CONF,
    RPM_DBPATH,
    RPM_QUERY_FORMAT,
    SECRET_PATHS,
    BuildRepo,
    ImageSpec,
    NodeImage,
    dnf_commands,
    dnf_finish_script,
    in_build_namespace,
    mmdebstrap_command,
    pack_command,
    parse_package_list,
    rpm_macros,
    vendor_apt_files,
    vendor_package_names,
)

ARCHIVE = "image.tar.zst"
CHECKSUM = "image.sha256"
PACKAGES = "packages.tsv"
RECORD = "image.json"

Progress = Callable[[str], None]
# dnf's milestones (its transaction summary, key imports, the transaction, the end): a few
# lines for a build of minutes, not one per package.
DNF_PROGRESS = ("Importing GPG key", "Install ", "Upgrade ", "Running transaction", "Complete!")


class ImageError(PodsysError):
    pass


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageStore:
    root: Path

    def folder(self, key: str) -> Path:
        return self.root / key

    def record(self, key: str) -> dict | None:
        path = self.folder(key) / RECORD
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def records(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        found = [self.record(p.name) for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        return sorted((r for r in found if r), key=lambda r: r["name"])

    def resolve(self, ref: str) -> dict:
        """An image by key, key prefix or name; an input error naming the choices otherwise."""
        matches = [r for r in self.records() if r["key"].startswith(ref) or r["name"] == ref]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(r["name"] for r in self.records()) or "none"
        if not matches:
            message = f"no image {ref!r} in {self.root} (images: {known})"
        else:
            message = f"{ref!r} matches {len(matches)} images; give more of the key (images: {known})"
        raise InputError(Problem("command line", None, "IMAGE", message))

    def is_current(self, key: str) -> bool:
        """Built and intact: the archive's sha256 is the recorded one."""
        rec = self.record(key)
        archive = self.folder(key) / ARCHIVE
        return rec is not None and archive.is_file() and sha256_file(archive) == rec["sha256"]

    def remove(self, key: str) -> None:
        shutil.rmtree(self.folder(key))


def leftover_secrets(root: Path) -> list[str]:
    """Secret files still in a built root (must be none: every node gets its own)."""
    found = []
    for pattern in SECRET_PATHS:
        for path in glob.glob(str(root / pattern)):
            p = Path(path)
            if p.name == "machine-id" and p.parent == root / "etc" and p.stat().st_size == 0:
                continue  # emptied on purpose: systemd fills it at first boot
            found.append(str(p.relative_to(root)))
    return sorted(found)


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _run_logged(cmd: list[str], log: Path, progress: Progress, label: str, env: dict | None = None) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        tail: list[str] = []
        try:
            for line in proc.stdout:
                out.write(line)
                line = line.rstrip()
                tail = (tail + [line])[-3:]
                if line.startswith(("I: ", "mmdebstrap: ")):
                    progress(f"{label}: {line.split(': ', 1)[1]}")
                elif line.startswith(DNF_PROGRESS):
                    progress(f"{label}: {line}")
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        if proc.wait() != 0:
            raise ImageError(f"{label} failed (exit {proc.returncode}): {'; '.join(tail)} (log: {log})")


KEY_TIMEOUT_S = 60


def key_fingerprints(key: bytes) -> list[str]:
    """Fingerprints of the (primary) keys in an OpenPGP key file, armored or not."""
    with tempfile.TemporaryDirectory() as home:  # gpg wants a home; never the user's
        proc = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys"], input=key, capture_output=True,
                              env={**os.environ, "GNUPGHOME": home})
    if proc.returncode != 0:
        raise ImageError(f"not an OpenPGP key: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    lines = proc.stdout.decode(errors="replace").splitlines()
    return [line.split(":")[9] for i, line in enumerate(lines)
            if line.startswith("fpr:") and i > 0 and lines[i - 1].startswith("pub:")]


def fetch_key(repo: BuildRepo, proxy: str = "") -> bytes:
    """The repository's signing key from its key_url (through `proxy` when given), refused when
    podsys knows its fingerprint and the key is another."""
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    try:
        with urllib.request.build_opener(*handlers).open(repo.key_url, timeout=KEY_TIMEOUT_S) as response:
            key = response.read()
    except OSError as exc:
        raise ImageError(f"{repo.name} repository: cannot fetch its key {repo.key_url}: {exc}") from None
    if repo.fingerprint:
        found = key_fingerprints(key)
        if repo.fingerprint.upper() not in [f.upper() for f in found]:
            raise ImageError(f"{repo.name} repository: the key at {repo.key_url} is {', '.join(found) or 'no key'}, "
                             f"not {repo.fingerprint}")
    return key


def prepare_vendor_apt(spec: ImageSpec, vendor: tuple[BuildRepo, ...], mirror: str, apt_dir: Path,
                       proxy: str = "") -> None:
    """The keys and files the build's hooks copy into the image (image.vendor_apt_files)."""
    apt_dir.mkdir(parents=True, exist_ok=True)
    for repo in vendor:
        (apt_dir / repo.key_file).write_bytes(fetch_key(repo, proxy))
    for name, text in vendor_apt_files(spec, vendor, mirror, str(apt_dir)).items():
        (apt_dir / name).write_text(text)


# mmdebstrap verifies an Ubuntu archive with this keyring (mmdebstrap(1), "signed-by"; its
# get_keyring_by_suite): package ubuntu-keyring on Ubuntu, in bookworm-backports on Debian.
UBUNTU_KEYRING = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")


def refuse_unbuildable(spec: ImageSpec) -> None:
    """Before any work: the tools this head needs to build `spec`, named with their Debian packages."""
    if spec.family == "apt":
        tools = (("mmdebstrap", "mmdebstrap"),)
    else:
        tools = (("dnf", "dnf"), ("rpm", "rpm"), ("unshare", "util-linux"), ("systemctl", "systemd"))
    missing = [f"{tool} (Debian package {package})" for tool, package in tools if shutil.which(tool) is None]
    if spec.distro == "ubuntu" and not UBUNTU_KEYRING.is_file():
        missing.append(f"Ubuntu's archive key {UBUNTU_KEYRING} (package ubuntu-keyring; on Debian 12 from "
                       "bookworm-backports)")
    if missing:
        raise ImageError(f"{spec.name}: building {spec.os_key} images needs {', '.join(missing)} on this head")


def build_image(image: NodeImage, store: ImageStore, mirror: str, progress: Progress,
                force: bool = False, apt_options: tuple[str, ...] = (), vendor: tuple[BuildRepo, ...] = (),
                key_proxy: str = "") -> tuple[dict, bool]:
    """Build `image` into the store unless an intact build of the same key is there. Returns
    (record, built_now). vendor: image_source's build_repositories (apt: the repositories of
    its vendor packages; dnf: every repository the build reads); key_proxy: the proxy their keys
    are fetched through, and dnf's proxy."""
    spec = image.spec
    if not force and store.is_current(spec.key):
        return store.record(spec.key) or {}, False
    refuse_unbuildable(spec)
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another image build in this store")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and store.is_current(spec.key):
            return store.record(spec.key) or {}, False
        for stale in store.root.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = store.root / f".build-{spec.key[:16]}-{os.getpid()}"
        scratch.mkdir()
        try:
            record = _build_into(spec, image.nodes, scratch, mirror, progress, apt_options, vendor, key_proxy)
            target = store.folder(spec.key)
            if target.exists():
                shutil.rmtree(target)
            scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return record, True


def _build_into(spec: ImageSpec, nodes: tuple[str, ...], scratch: Path, mirror: str, progress: Progress,
                apt_options: tuple[str, ...], vendor: tuple[BuildRepo, ...] = (), key_proxy: str = "") -> dict:
    started = time.monotonic()
    root = scratch / "root"
    log = scratch / "build.log"
    packages_file = scratch / PACKAGES
    if spec.family == "apt":
        _build_root_apt(spec, scratch, root, log, packages_file, mirror, progress, apt_options, vendor, key_proxy)
    else:
        _build_root_dnf(spec, scratch, root, log, packages_file, progress, vendor, key_proxy)
    secrets = leftover_secrets(root)
    if secrets:
        raise ImageError(f"{spec.name}: secrets left in the image: {', '.join(secrets)}")
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError(f"{spec.name}: no kernel in /boot after the build")
    unpacked = tree_bytes(root)
    progress(f"{spec.name}: packing ({unpacked >> 20} MiB unpacked)")
    _run_logged(pack_command(str(root), str(scratch / ARCHIVE)), log, progress, "tar")
    shutil.rmtree(root)
    digest = sha256_file(scratch / ARCHIVE)
    (scratch / CHECKSUM).write_text(f"{digest}  {ARCHIVE}\n")
    for name, text in plan_files(unpacked).items():
        (scratch / name).write_text(text)
    versions = parse_package_list(packages_file.read_text())
    vendor_names = vendor_package_names(spec)
    absent = [n for n in vendor_names if n not in versions]
    if absent:
        raise ImageError(f"{spec.name}: vendor packages not installed in the image: {', '.join(absent)}")
    record = {
        "key": spec.key, "name": spec.name, "spec": spec.as_dict(), "nodes": list(nodes),
        "sha256": digest, "archive_bytes": (scratch / ARCHIVE).stat().st_size, "unpacked_bytes": unpacked,
        "kernel": kernels[-1], "packages": len(versions), "mirror": mirror,
        # In the image, at these versions (the GPU/InfiniBand roles find them installed).
        "vendor_packages": {n: versions[n] for n in vendor_names},
        "vendor_repositories": [{"name": r.name, "url": r.url} for r in vendor
                                if r.name not in DNF_REPO_NAMES] if spec.vendor_packages else [],
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (scratch / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _build_root_apt(spec: ImageSpec, scratch: Path, root: Path, log: Path, packages_file: Path, mirror: str,
                    progress: Progress, apt_options: tuple[str, ...], vendor: tuple[BuildRepo, ...],
                    key_proxy: str) -> None:
    apt_dir = scratch.resolve() / "apt"  # apt reads Signed-By keys by absolute path
    # The command first: it refuses vendor packages without their repositories before any fetch.
    try:
        command = mmdebstrap_command(spec, mirror, str(root), str(packages_file), apt_options, vendor, str(apt_dir))
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    if spec.vendor_packages:
        progress(f"{spec.name}: vendor repositories {', '.join(r.url for r in vendor)}")
        prepare_vendor_apt(spec, vendor, mirror, apt_dir, key_proxy)
    progress(f"{spec.name}: mmdebstrap {spec.suite} from {mirror} ({len(spec.packages)} packages)")
    _run_logged(command, log, progress, "mmdebstrap")


def _build_root_dnf(spec: ImageSpec, scratch: Path, root: Path, log: Path, packages_file: Path,
                    progress: Progress, repos: tuple[BuildRepo, ...], proxy: str) -> None:
    """dnf --installroot from `repos` (image_source: the distribution's, EPEL and the vendor's),
    their keys fetched and fingerprint-checked first, through `proxy` when given."""
    if not repos:
        raise ImageError(f"{spec.name}: no repositories to build {spec.os_key} from")
    if spec.vendor_packages and all(r.name in DNF_REPO_NAMES for r in repos):
        raise ImageError(f"{spec.name}: its vendor packages ({', '.join(spec.vendor_packages[:3])} ...) need their repositories")
    keys = scratch.resolve() / "keys"
    keys.mkdir()
    for repo in repos:
        if repo.gpgcheck or repo.repo_gpgcheck:
            (keys / repo.key_file).write_bytes(fetch_key(repo, proxy))
    home = scratch.resolve() / "home"  # rpm reads ~/.rpmmacros: the image's database path
    home.mkdir()
    (home / ".rpmmacros").write_text(rpm_macros())
    env = {**os.environ, "HOME": str(home)}
    image_root = str(root.resolve())
    path, text = DRACUT_CONF
    (root / path).parent.mkdir(parents=True)
    (root / path).write_text(text)
    progress(f"{spec.name}: dnf --installroot from {', '.join(r.name for r in repos)} ({len(spec.packages)} packages)")
    for command in dnf_commands(spec, repos, image_root, str(keys), proxy):
        _run_logged(in_build_namespace(image_root, command), log, progress, "dnf", env)
    finish = ["sh", "-e", "-c", dnf_finish_script(bool(spec.vendor_packages)), "finish", image_root]
    _run_logged(in_build_namespace(image_root, finish), log, progress, "image set-up", env)
    query = subprocess.run(["rpm", "--root", image_root, "--dbpath", RPM_DBPATH, "-qa", "--qf", RPM_QUERY_FORMAT],
                           capture_output=True, text=True, env=env)
    if query.returncode != 0:
        raise ImageError(f"{spec.name}: rpm -qa in the image failed: {query.stderr.strip()[-300:]}")
    shutil.rmtree(home)
    # rpm lists each imported key as a gpg-pubkey "package"; they are keys, not software.
    packages_file.write_text("".join(line + "\n" for line in sorted(query.stdout.splitlines())
                                     if line and not line.startswith("gpg-pubkey\t")))
