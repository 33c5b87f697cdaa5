"""The offline bundle: everything an air-gapped site needs, in one signed directory (and ISO).

Layout of a bundle directory:

    repo/                 signed apt repository (served): dists/<suite>/..., pool/main (distribution
                          closure), pool/vendor (vendor .debs), podsys-site.asc/.gpg (public key)
    wheels/               podsys and its Python dependencies (pip install --no-index)
    wheels/addons/<set>/  the add-on layers' PyPI wheels (batchspawner, mlflow, mlflow-client), for
                          the target's Python; deploy copies them when the manifest has none
    boot/ipxe/            iPXE binaries from Debian's ipxe package
    boot/<os>/            installer netboot kernel + initrd, where the distribution has them
    vendor/               vendor files that are not packages (pyxis, nccl-tests tarballs ...)
    images/               with --images: the node images and deploy ramdisk the manifest's nodes
                          install from, as in the image store (podsys/bundle/images.py)
    bundle.json           what was built: OS, suite, layers, stack, key fingerprint
    CONTENTS.sha256       sha256 of every file above (sha256sum format), signed: CONTENTS.sha256.asc
    keys/                 the site's private key (0700/0600): never served, never in the ISO
    .work/                private apt state and caches (reused by the next build)

Building is side effects at the edges: `plan_bundle` is pure (what to fetch), `build_bundle`
fetches and signs, `verify_bundle` checks, `write_iso` packs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import yaml

from podsys.bundle.addon_packages import addon_packages
from podsys.bundle.addon_wheels import ADDONS_DIR, WheelSet, WheelSetResult, build_wheel_sets, wheel_sets
from podsys.bundle.apt import AptFile, PrivateApt, target_for
from podsys.bundle.images import IMAGES_DIR, BundledImage, bundle_images, wanted_images
from podsys.bundle.repo import (
    PUBLIC_KEY_GPG,
    SiteKey,
    build_repository,
    gpgv_check,
    parse_deb822_hashes,
    parse_packages,
    sha256_file,
)
from podsys.bundle.vendor import VendorArtifact, deb_fields, load_vendor_lock, upstream_version
from podsys.errors import InputError, PodsysError, Problem

CONTENTS = "CONTENTS.sha256"
CONTENTS_SIG = "CONTENTS.sha256.asc"
SERVED = ("repo", "wheels", "boot", "vendor", IMAGES_DIR, "bundle.json", CONTENTS, CONTENTS_SIG)
IPXE_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
FORMAT = 1


@lru_cache(maxsize=1)
def layer_packages_data() -> dict:
    return yaml.safe_load((resources.files("podsys") / "data" / "bundle-packages.yaml").read_text())


@dataclass
class BundlePlan:
    """What a bundle holds, decided from the manifest alone (pure)."""

    os_key: str
    cluster: str
    layers: tuple[str, ...]
    stack_id: str | None
    packages: list[str]  # distribution packages to resolve (closure added by apt)
    vendor_packages: list[tuple[str, str | None, str]] = field(default_factory=list)  # (name, version, why)
    vendor_sources: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    mirror: str | None = None
    wheels: bool = True
    installer: bool = True
    ipxe: bool = True
    # Recommends are not needed for apt to install (it skips unavailable ones); leaving them
    # out makes the bundle much smaller (python3-pip alone recommends a compiler toolchain).
    recommends: bool = False
    # The add-on layers' PyPI wheels (podsys/bundle/addon_wheels.py), with --wheels only.
    wheel_sets: list[WheelSet] = field(default_factory=list)
    # With --images: the store folders to carry (images, then the ramdisk), where they are built,
    # and the manifest to name in `podsys image build` when one is missing.
    node_images: bool = False
    images: list[BundledImage] = field(default_factory=list)
    image_store: str | None = None
    manifest_path: str = "cluster.yaml"

    def as_dict(self) -> dict:
        """What `podsys bundle build --plan --json` prints."""
        return {
            "os": self.os_key, "cluster": self.cluster, "layers": list(self.layers), "stack": self.stack_id,
            "packages": self.packages,
            "vendor_packages": [{"name": n, "version": v, "why": why} for n, v, why in self.vendor_packages],
            "vendor_sources": [{"file": f, "why": why} for f, why in self.vendor_sources],
            "wheels": self.wheels, "installer": self.installer, "ipxe": self.ipxe, "recommends": self.recommends,
            "addon_wheels": [{"set": s.name, "layer": s.layer, "requirements": list(s.requirements),
                              "directory": f"{ADDONS_DIR}/{s.name}/"} for s in self.wheel_sets],
            "node_images": self.node_images, "image_store": self.image_store,
            "images": [i.as_dict() for i in self.images],
        }


def plan_bundle(cluster, only: list[str] | None = None, wheels: bool = True, installer: bool = True,
                recommends: bool = False, images: bool = False, image_store: Path | None = None) -> BundlePlan:
    """The bundle a manifest needs: head services + every layer's packages + the stack's plan,
    and with `images` the node images from the image store."""
    plan = _plan_packages(cluster, only, wheels, installer, recommends)
    if images:
        plan.node_images = True
        plan.images = wanted_images(cluster)
        plan.image_store = str(Path(image_store).absolute() if image_store else cluster.workspace.images_dir)
        plan.manifest_path = str(cluster.manifest_path)
    return plan


def _plan_packages(cluster, only: list[str] | None, wheels: bool, installer: bool, recommends: bool) -> BundlePlan:
    from podsys.cluster.stack_packages import package_plan

    manifest = cluster.manifest
    os_key = manifest.os.key
    target_for(os_key)  # refuses OSes podsys cannot bundle
    data = layer_packages_data()["apt"]
    layers: list[str] = []
    for node in cluster.nodes:
        layers += [layer for layer in node.layers if layer not in layers]
    for layer in manifest.layers:
        if layer not in layers:
            layers.append(layer)
    if only is not None:
        return BundlePlan(os_key, cluster.name, tuple(layers), cluster.stack.id if cluster.stack else None,
                          sorted(set(only)), mirror=manifest.packages.upstream, wheels=wheels, installer=installer,
                          ipxe="ipxe" in only, recommends=recommends, wheel_sets=wheel_sets(layers) if wheels else [])
    wanted: list[str] = list(data["head"])
    for layer in layers:
        wanted += data.get(layer, [])
    wanted += addon_packages(manifest, layers)  # from the add-on roles' own defaults
    if "container" in layers and manifest.slurm.source == "distro":
        wanted.append("libslurm-dev")  # pyxis builds against the distribution's Slurm headers
    if {"gpu", "infiniband"} & set(layers):
        wanted.append(layer_packages_data()["kernel_headers"][manifest.os.distro])

    vendor: dict[str, tuple[str | None, str]] = {}
    sources: dict[str, str] = {}
    stack = cluster.stack
    options = {"gpu": manifest.gpu.model_dump(), "infiniband": manifest.infiniband.model_dump()}
    hosts = [(cluster.profile_of(n), n.layers, False, n.name) for n in cluster.nodes]
    if manifest.infiniband.opensm and "infiniband" in layers:
        hosts.append((None, ("infiniband",), True, manifest.head.hostname))
    seen: set = set()
    for profile, node_layers, is_head, name in hosts:
        key = (profile.id if profile else None, tuple(node_layers), is_head)
        if key in seen or not ({"gpu", "infiniband", "container"} & set(node_layers)):
            continue
        seen.add(key)
        for pkg in package_plan(stack, os_key, profile, {**options, "layers": list(node_layers), "is_head": is_head}):
            why = f"{pkg.component} on {name}"
            if pkg.component == "kernel_headers":
                continue  # the headers meta package above follows the kernel the bundle ships
            if pkg.origin == "distribution":
                wanted.append(pkg.name)
            elif pkg.origin == "source":
                sources.setdefault(pkg.spec, why)
            else:
                vendor.setdefault(pkg.name, (pkg.version, why))
    for name, why in _monitoring_vendor_packages(cluster, layers):
        vendor.setdefault(name, (None, why))
    packages = sorted(set(wanted))
    return BundlePlan(
        os_key, cluster.name, tuple(layers), stack.id if stack else None, packages,
        vendor_packages=[(n, v, why) for n, (v, why) in sorted(vendor.items())],
        vendor_sources=sorted(sources.items()), mirror=manifest.packages.upstream, wheels=wheels, installer=installer,
        recommends=recommends, wheel_sets=wheel_sets(layers) if wheels else [],
    )


def _monitoring_vendor_packages(cluster, layers: list[str]) -> list[tuple[str, str]]:
    """(package, why) for the monitoring role's vendor packages this cluster installs."""
    if "monitoring" not in layers:
        return []
    extra = layer_packages_data().get("vendor", {})
    wanted = []
    if any(cluster.profile_of(n).has_gpu for n in cluster.nodes if "monitoring" in n.layers):
        wanted += [(name, "dcgm-exporter on GPU nodes") for name in extra.get("monitoring_gpu", [])]
    if cluster.manifest.monitoring.grafana:
        wanted += [(name, "monitoring.grafana on the head") for name in extra.get("grafana", [])]
    return wanted


def check_vendor_coverage(plan: BundlePlan, artifacts: list[VendorArtifact], lock: Path | None) -> list[Problem]:
    """Every vendor package and source tarball the plan needs must be in vendor.lock."""
    debs: dict[str, str] = {}
    for art in artifacts:
        if art.is_deb:
            fields = deb_fields(art.path)
            debs[fields.get("Package", "")] = fields.get("Version", "")
    files = {art.file for art in artifacts}
    where = str(lock) if lock else "vendor.lock"
    problems = []
    for name, version, why in plan.vendor_packages:
        have = debs.get(name)
        if have is None:
            wanted = f"{name} {version}" if version else name
            problems.append(Problem(where, None, "artifacts", f"needs {wanted} ({why}) from the vendor repository; download it and list it"))
        elif version and upstream_version(have) != version and have.split(":", 1)[-1] != version:
            problems.append(Problem(where, None, "artifacts", f"{name} is {have} but the stack pins {version} ({why})"))
    for file, why in plan.vendor_sources:
        if file not in files:
            problems.append(Problem(where, None, "artifacts", f"needs {file} ({why}); download it and list it"))
    return problems


# ---------------------------------------------------------------- building

Progress = Callable[[str, int, int], None]  # (label, done, total) in bytes or files


FETCH_ATTEMPTS = 4  # a mirror's 503 or dropped connection lasts seconds: 2, 4, 8 s apart


def _transient(exc: OSError) -> bool:
    """Worth another try: a server error or a network failure; not a 404 or a refusal."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return True


def _fetch(url: str, dest: Path, sha256: str, size: int | None) -> None:
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    h.update(block)
            break
        except OSError as exc:  # URLError, HTTPError, timeouts
            part.unlink(missing_ok=True)
            if attempt == FETCH_ATTEMPTS or not _transient(exc):
                raise PodsysError(f"download of {url} failed: {exc}") from None
            time.sleep(2 ** attempt)
    if h.hexdigest() != sha256 or (size is not None and part.stat().st_size != size):
        part.unlink(missing_ok=True)
        raise PodsysError(f"{dest.name}: downloaded file does not match its sha256 from the signed index ({url})")
    os.replace(part, dest)


def _have(path: Path, sha256: str, size: int | None) -> bool:
    return path.is_file() and (size is None or path.stat().st_size == size) and sha256_file(path) == sha256


def download(files: list[AptFile], dest_of: Callable[[AptFile], Path], on_progress: Progress | None = None,
             workers: int = 4, label: str = "packages") -> tuple[int, int]:
    """Fetch what is not already there (checked by sha256). Returns (downloaded, reused)."""
    todo, reused = [], 0
    for f in files:
        if _have(dest_of(f), f.sha256, f.size):
            reused += 1
        else:
            todo.append(f)
    total = sum(f.size for f in todo)
    done = 0
    if on_progress:
        on_progress(label, 0, total)

    def one(f: AptFile) -> int:
        dest = dest_of(f)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch(f.url, dest, f.sha256, f.size)
        return f.size

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for size in pool.map(one, todo):
            done += size
            if on_progress:
                on_progress(label, done, total)
    return len(todo), reused


def pool_path(repo: Path, f: AptFile) -> Path:
    return repo / "pool" / "main" / f.filename[0] / f.filename


def _prune(directory: Path, keep: set[Path]) -> int:
    removed = 0
    if directory.exists():
        for path in directory.rglob("*"):
            if path.is_file() and path not in keep:
                path.unlink()
                removed += 1
    return removed


def _vendor_flat_repo(work: Path, debs: list[Path]) -> str | None:
    """A trusted local index of the vendor .debs so apt resolves their dependencies too."""
    if not debs:
        return None
    flat = work / "vendor-flat"
    shutil.rmtree(flat, ignore_errors=True)
    flat.mkdir(parents=True)
    for deb in debs:
        (flat / deb.name).symlink_to(deb.resolve())
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=flat, capture_output=True, check=True).stdout
    (flat / "Packages").write_bytes(packages)
    return f"deb [trusted=yes] file:{flat} ./"


def _project_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _source_digest(root: Path) -> str:
    """Changes whenever podsys's source or its dependency list changes."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted(p for p in (root / "podsys").rglob("*") if p.is_file() and "__pycache__" not in p.parts)]
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def build_wheels(dest: Path, log: Callable[[str], None], marker: Path | None = None) -> int:
    """podsys and its dependencies as wheels. Skipped when the source is unchanged since the last
    build (`marker`), built offline from `dest` when possible, else fetched from PyPI."""
    root = _project_root()
    if root is None:
        raise PodsysError("bundle: podsys is not installed from a source tree, so its wheel cannot be built here")
    dest.mkdir(parents=True, exist_ok=True)
    digest = _source_digest(root)
    if marker is not None and marker.is_file():
        recorded = marker.read_text().split()
        if recorded and recorded[0] == digest and all((dest / name).is_file() for name in recorded[1:]):
            return len(list(dest.glob("*.whl")))
    count = _pip_wheels(dest, root, log)
    if marker is not None:
        marker.write_text(" ".join([digest, *sorted(p.name for p in dest.glob("*.whl"))]) + "\n")
    return count


def _pip_wheels(dest: Path, root: Path, log: Callable[[str], None]) -> int:
    base = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(dest)]
    offline = subprocess.run([*base, "--no-index", "--find-links", str(dest), str(root)], capture_output=True, text=True)
    if offline.returncode != 0:
        log("wheels: fetching podsys's dependencies from PyPI")
        # The build backend goes in too, so the next build (and the head) can build offline.
        backend = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                                  "--only-binary=:all:", "--dest", str(dest), "setuptools>=68", "wheel"],
                                 capture_output=True, text=True)
        online = subprocess.run([*base, "--find-links", str(dest), str(root)], capture_output=True, text=True)
        if backend.returncode != 0 or online.returncode != 0:
            online = online if online.returncode != 0 else backend
            raise PodsysError(f"bundle: pip wheel failed: {' '.join(online.stderr.strip().splitlines()[-2:])}")
    return len(list(dest.glob("*.whl")))


def _extract_ipxe(repo: Path, boot: Path) -> list[str]:
    debs = sorted((repo / "pool" / "main" / "i").glob("ipxe_*.deb"))
    if not debs:
        return []
    out = boot / "ipxe"
    marker = out / "SOURCE"
    if marker.is_file() and marker.read_text().strip() == debs[-1].name and all((out / f).is_file() for f in IPXE_FILES):
        return list(IPXE_FILES)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), tmp], check=True, capture_output=True)
        out.mkdir(parents=True, exist_ok=True)
        found = []
        for name in IPXE_FILES:
            src = Path(tmp) / "usr/lib/ipxe" / name
            if src.is_file():
                shutil.copyfile(src, out / name)
                found.append(name)
    marker.write_text(debs[-1].name + "\n")
    return found


def _fetch_installer(apt: PrivateApt, work: Path, boot: Path, log: Callable[[str], None],
                     on_progress: Progress | None = None) -> list[str]:
    """Netboot kernel + initrd from the distribution's own installer package (signed like every
    other package through the mirror's Release), unpacked into boot/<os>/."""
    target = apt.target
    if not target.installer_package:
        log(f"installer: {target.os_key} has no netboot package; list the installer ISO in vendor.lock")
        return []
    package, inner = target.installer_package
    files = [f for f in apt.resolve([package]) if f.filename.startswith(f"{package}_")]
    if not files:
        raise PodsysError(f"installer: {target.suite} has no {package}")
    cache = work / "installer"
    download(files, lambda f: cache / f.filename, on_progress, label="installer")
    deb = cache / files[0].filename
    _prune(cache, {deb})
    out = boot / target.os_key
    marker = out / "SOURCE"
    names = ("linux", "initrd.gz")
    if marker.is_file() and marker.read_text().strip() == deb.name and all((out / n).is_file() for n in names):
        return list(names)
    log(f"installer: unpacking {deb.name}")
    out.mkdir(parents=True, exist_ok=True)
    import tarfile

    wanted = {f"./{inner}/{n}": n for n in names}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    got = []
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                with tar.extractfile(member) as src, open(out / wanted[member.name], "wb") as dst:
                    shutil.copyfileobj(src, dst)
                got.append(wanted[member.name])
    proc.wait()
    if sorted(got) != sorted(names):
        raise PodsysError(f"installer: {deb.name} has no {inner}/linux and initrd.gz")
    marker.write_text(deb.name + "\n")
    return list(names)


def contents_files(bundle: Path) -> list[Path]:
    """Every file the contents manifest covers (served/packed files; not keys/, not .work/)."""
    out = []
    for top in SERVED:
        path = bundle / top
        if top in (CONTENTS, CONTENTS_SIG):
            continue
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".part"))
    return out


def write_contents(bundle: Path, key: SiteKey) -> int:
    files = contents_files(bundle)
    lines = [f"{sha256_file(p)}  {p.relative_to(bundle).as_posix()}" for p in files]
    (bundle / CONTENTS).write_text("\n".join(lines) + "\n")
    key.sign_detached(bundle / CONTENTS, bundle / CONTENTS_SIG)
    return len(lines)


@dataclass
class BuildResult:
    bundle: Path
    fingerprint: str
    packages: int
    downloaded: int
    reused: int
    wheels: int
    boot: list[str]
    vendor: int
    files: int
    bytes: int
    addon_wheels: list[WheelSetResult] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["bundle"] = str(self.bundle)
        return d


def build_bundle(plan: BundlePlan, output: Path, vendor_lock: Path | None = None, vendor_dir: Path | None = None,
                 on_progress: Progress | None = None, log: Callable[[str], None] = lambda m: None) -> BuildResult:
    output = Path(output).absolute()
    target = target_for(plan.os_key)
    artifacts = load_vendor_lock(vendor_lock, vendor_dir) if vendor_lock else []
    problems = check_vendor_coverage(plan, artifacts, vendor_lock)
    if problems:
        raise InputError(problems)
    for tool, package in (("apt-get", "apt"), ("apt-ftparchive", "apt-utils"), ("gpg", "gnupg"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise PodsysError(f"bundle: {tool} not found; install the Debian package {package}")

    repo, work = output / "repo", output / ".work"
    # First: a missing image is the manifest owner's to build, better said before minutes of downloads.
    images = _bundle_node_images(plan, output, log)
    repo.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    key = SiteKey(output / "keys")
    fingerprint = key.ensure(f"podsys site key ({plan.cluster}) <podsys@{plan.cluster}.invalid>")
    key.export_public(repo)

    # Vendor files: .debs into the repository, the rest into vendor/.
    vendor_pool, vendor_files = repo / "pool" / "vendor", output / "vendor"
    keep_vendor: set[Path] = set()
    for art in artifacts:
        dest = (vendor_pool if art.is_deb else vendor_files) / art.file
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not _have(dest, art.sha256, None):
            shutil.copyfile(art.path, dest)
        keep_vendor.add(dest)
    _prune(vendor_pool, keep_vendor)
    _prune(vendor_files, keep_vendor)

    log(f"resolving {len(plan.packages)} packages and their dependencies for {plan.os_key} ({target.suite})")
    vendor_debs = sorted(p for p in keep_vendor if p.suffix == ".deb")
    extra = [line for line in [_vendor_flat_repo(work, vendor_debs)] if line]
    apt = PrivateApt(work / f"apt-{plan.os_key}", target, mirror=plan.mirror, extra_sources=extra,
                     recommends=plan.recommends)
    apt.update()
    requested = plan.packages + [name for name, _, _ in plan.vendor_packages]
    files = [f for f in apt.resolve(requested) if not f.url.startswith("file:")]
    downloaded, reused = download(files, lambda f: pool_path(repo, f), on_progress)
    _prune(repo / "pool" / "main", {pool_path(repo, f) for f in files})

    log("building and signing the repository")
    build_repository(repo, target.suite, key, label=f"podsys-{plan.cluster}")

    wheels = build_wheels(output / "wheels", log, marker=work / "wheels.done") if plan.wheels else 0
    addon_wheels = build_wheel_sets(plan.wheel_sets, output, work, target.python, target.glibc, log)
    boot: list[str] = []
    if plan.ipxe:
        boot += [f"ipxe/{n}" for n in _extract_ipxe(repo, output / "boot")]
    if plan.installer:
        boot += [f"{plan.os_key}/{n}" for n in _fetch_installer(apt, work, output / "boot", log, on_progress)]

    meta = {
        "format": FORMAT,
        "cluster": plan.cluster,
        "os": plan.os_key,
        "suite": target.suite,
        "layers": list(plan.layers),
        "stack": plan.stack_id,
        "fingerprint": fingerprint,
        "python": target.python,
        "recommends": plan.recommends,
        "built_with_python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "packages": len(files) + len(vendor_debs),
        "vendor": [{"name": a.name, "file": a.file, "sha256": a.sha256} for a in artifacts],
        "addon_wheels": {s.name: list(s.requirements) for s in plan.wheel_sets},
        "images": [{"folder": i["folder"], "name": i["name"]} for i in images],
    }
    if meta["python"] != meta["built_with_python"]:
        log(f"warning: wheels are built with Python {meta['built_with_python']}, the target has {meta['python']}")
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    if not (output / "bundle.json").is_file() or (output / "bundle.json").read_text() != text:
        (output / "bundle.json").write_text(text)
    count = write_contents(output, key)
    key.stop_agent()
    size = sum(p.stat().st_size for p in contents_files(output))
    return BuildResult(output, fingerprint, len(files) + len(vendor_debs), downloaded, reused, wheels, boot,
                       len(artifacts), count, size, addon_wheels, images)


def _bundle_node_images(plan: BundlePlan, output: Path, log: Callable[[str], None]) -> list[dict]:
    if not plan.node_images:
        return []
    if not plan.images:
        log("images: no node is installed from an image (no PXE node with provisioning.method: image)")
    return bundle_images(plan.images, Path(plan.image_store or "."), output, plan.manifest_path, log)


# ---------------------------------------------------------------- verifying


@dataclass
class VerifyReport:
    bundle: Path
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _keyring_fingerprint(keyring: Path) -> str | None:
    gpg = shutil.which("gpg")
    if gpg is None:
        return None
    with tempfile.TemporaryDirectory() as home:
        proc = subprocess.run([gpg, "--homedir", home, "--batch", "--with-colons", "--show-keys", str(keyring)],
                              capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    return None


def verify_bundle(bundle: Path, fingerprint: str | None = None, on_progress: Progress | None = None) -> VerifyReport:
    """Signatures (contents manifest, InRelease, Release.gpg) and every checksum: the contents
    manifest's sha256 per file, Release -> Packages, Packages -> each .deb. Names every bad file."""
    bundle = Path(bundle)
    report = VerifyReport(bundle)
    keyring = bundle / "repo" / PUBLIC_KEY_GPG
    if not keyring.is_file():
        report.problems.append(f"repo/{PUBLIC_KEY_GPG}: missing (not a podsys bundle?)")
        return report
    report.fingerprint = _keyring_fingerprint(keyring)
    if fingerprint and (report.fingerprint or "").upper() != fingerprint.replace(" ", "").upper():
        report.problems.append(f"repo/{PUBLIC_KEY_GPG}: key {report.fingerprint} is not the expected {fingerprint}")
        return report
    manifest, sig = bundle / CONTENTS, bundle / CONTENTS_SIG
    if not manifest.is_file() or not sig.is_file():
        report.problems.append(f"{CONTENTS}: missing or unsigned")
        return report
    why = gpgv_check(keyring, sig, manifest)
    if why:
        report.problems.append(f"{CONTENTS}: bad signature ({why})")

    listed: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            listed[rel] = digest
    present = {p.relative_to(bundle).as_posix() for p in contents_files(bundle)}
    for rel in sorted(present - set(listed)):
        report.problems.append(f"{rel}: not in {CONTENTS} (added after the build)")
    total = len(listed)
    for i, (rel, digest) in enumerate(sorted(listed.items()), 1):
        path = bundle / rel
        if not path.is_file():
            report.problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            report.problems.append(f"{rel}: sha256 mismatch (tampered or corrupt)")
        report.checked += 1
        if on_progress:
            on_progress("verify", i, total)

    report.problems += _verify_apt_chain(bundle / "repo", keyring)
    return report


def _verify_apt_chain(repo: Path, keyring: Path) -> list[str]:
    problems = []
    for dist in sorted((repo / "dists").glob("*")):
        rel = dist.relative_to(repo.parent).as_posix()
        inrelease, release, detached = dist / "InRelease", dist / "Release", dist / "Release.gpg"
        for sig, data in ((inrelease, None), (detached, release)):
            if not sig.is_file():
                problems.append(f"{rel}/{sig.name}: missing")
                continue
            why = gpgv_check(keyring, sig, data)
            if why:
                problems.append(f"{rel}/{sig.name}: bad signature ({why})")
        if not release.is_file():
            continue
        for path, (digest, size) in parse_deb822_hashes(release.read_text(errors="replace")).items():
            target = dist / path
            if target.is_file() and (target.stat().st_size != size or sha256_file(target) != digest):
                problems.append(f"{rel}/{path}: does not match the signed Release")
        for packages in dist.glob("*/binary-*/Packages"):
            for stanza in parse_packages(packages.read_text(errors="replace")):
                deb = repo / stanza.get("Filename", "")
                name = f"repo/{stanza.get('Filename')}"
                if not deb.is_file():
                    problems.append(f"{name}: missing (listed in {packages.name})")
                elif sha256_file(deb) != stanza.get("SHA256"):
                    problems.append(f"{name}: does not match the signed Packages index")
    return problems


# ---------------------------------------------------------------- ISO


def iso_volume_id(bundle: Path) -> str:
    try:
        meta = json.loads((bundle / "bundle.json").read_text())
        name = f"PODSYS_{meta.get('cluster', '')}_{meta.get('os', '')}"
    except (OSError, ValueError):
        name = "PODSYS_BUNDLE"
    return "".join(c if c.isalnum() else "_" for c in name.upper())[:32]


def write_iso(bundle: Path, iso: Path) -> list[str]:
    """An ISO 9660 (Rock Ridge + Joliet) image of the served bundle: no keys/, no .work/."""
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise PodsysError("xorriso not found: install the Debian package xorriso")
    bundle, iso = Path(bundle).absolute(), Path(iso).absolute()
    if not (bundle / CONTENTS).is_file():
        raise InputError(f"{bundle}: not a built bundle (no {CONTENTS}); run podsys bundle build first")
    grafts = []
    for top in SERVED:
        if (bundle / top).exists():
            grafts.append(f"/{top}={bundle / top}")
    iso.parent.mkdir(parents=True, exist_ok=True)
    iso.unlink(missing_ok=True)
    proc = subprocess.run(
        [xorriso, "-as", "mkisofs", "-quiet", "-r", "-J", "-joliet-long", "-V", iso_volume_id(bundle),
         "-o", str(iso), "-graft-points", *grafts],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise PodsysError(f"xorriso failed: {' '.join(proc.stderr.strip().splitlines()[-2:])}")
    return [g.split("=", 1)[0] for g in grafts]


# ---------------------------------------------------------------- serving


def make_server(bundle: Path, bind: str, port: int):
    """An HTTP server for the served parts of the bundle (never keys/ or .work/)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    bundle = Path(bundle).absolute()
    if not (bundle / "repo" / "dists").is_dir():
        raise InputError(f"{bundle}: not a built bundle (no repo/dists); run podsys bundle build first")

    class Handler(SimpleHTTPRequestHandler):
        def send_head(self):
            top = self.path.split("?", 1)[0].lstrip("/").split("/", 1)[0]
            if top and top not in SERVED:
                self.send_error(404, "not part of the served bundle")
                return None
            return super().send_head()

        def list_directory(self, path):
            if Path(path).resolve() == bundle:  # the root lists only what is served
                self.send_error(404, "no listing; see /repo, /wheels, /boot, /vendor, /images")
                return None
            return super().list_directory(path)

        def log_message(self, fmt, *args):  # one line per request on stderr, like nginx's access log
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return ThreadingHTTPServer((bind, port), functools.partial(Handler, directory=str(bundle)))
