"""Node images in the offline bundle: DIR/images/<key>/ and DIR/images/ramdisk-<key16>/, the same
folders as the image store, so an air-gapped head installs nodes without building anything
(it may have no mirror to build from until the bundle's repository is served).

Only what the head serves (image_boot.IMAGE_FILES, RAMDISK_FILES) plus the records that say
what a folder is (image.json, packages.tsv, ramdisk.json) travel; build logs and the ramdisk's
builder root stay behind. Files are hard-linked when the store is on the bundle's file system
(an image is gigabytes), else copied. A folder appears only complete: staged in a hidden
folder, then renamed, so a killed build never leaves a half image that looks intact.

`podsys deploy` imports them back into its workspace store the same way (import_bundled)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from podsys.errors import PodsysError

IMAGES_DIR = "images"
STAGING_PREFIX = ".tmp-"

Log = Callable[[str], None]


class BundleImageError(PodsysError):
    pass


@dataclass(frozen=True)
class BundledImage:
    """One folder of the image store the bundle carries: a node image or the deploy ramdisk."""

    folder: str
    name: str
    nodes: int = 0

    @property
    def is_ramdisk(self) -> bool:
        return self.folder.startswith("ramdisk-")

    @property
    def files(self) -> tuple[str, ...]:
        from podsys.provision.image_boot import IMAGE_FILES, RAMDISK_FILES
        from podsys.provision.image_build import PACKAGES

        if self.is_ramdisk:
            return (*RAMDISK_FILES, "ramdisk.json")
        return (*IMAGE_FILES, PACKAGES)

    def as_dict(self) -> dict:
        return {"folder": self.folder, "name": self.name, "nodes": self.nodes, "directory": f"{IMAGES_DIR}/{self.folder}/"}


def wanted_images(cluster) -> list[BundledImage]:
    """Every image the manifest's nodes install from, then the deploy ramdisk; none when no node
    is installed from an image (pure: keys are hashes of the manifest and podsys's scripts)."""
    from podsys.provision.image import cluster_images
    from podsys.provision.image_boot import ramdisk_folder

    images = [BundledImage(img.spec.key, img.spec.name, len(img.nodes)) for img in cluster_images(cluster)]
    if not images:
        return []
    return [*images, BundledImage(ramdisk_folder(), "deploy ramdisk")]


def _payload(item: BundledImage) -> tuple[str, str, str]:
    """(record file, the large file it vouches for, the record's sha256 field)."""
    from podsys.provision.image_build import ARCHIVE, RECORD

    return ("ramdisk.json", "initrd.img", "initrd_sha256") if item.is_ramdisk else (RECORD, ARCHIVE, "sha256")


def intact_problem(folder: Path, item: BundledImage) -> str | None:
    """Why `folder` is not a complete, uncorrupted copy of `item` (None when it is). The archive
    (initrd for the ramdisk) must have the sha256 its record names; that is what the ramdisk and
    `podsys image build` trust too."""
    from podsys.provision.image_build import sha256_file

    record_name, payload, digest_key = _payload(item)
    missing = [name for name in item.files if not (folder / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        record = json.loads((folder / record_name).read_text())
    except ValueError:
        return f"{record_name} is not JSON"
    if not str(record.get("key", "")).startswith(item.folder.removeprefix("ramdisk-")):
        return f"{record_name} is for another key ({record.get('key')})"
    if not record.get(digest_key) or sha256_file(folder / payload) != record[digest_key]:
        return f"{payload} does not match the sha256 in {record_name}"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link_or_copy(src: Path, dest: Path) -> bool:
    """True when hard-linked. Any refusal (another file system, a read-only ISO, protected
    hard links for another user's files) falls back to a copy."""
    try:
        os.link(src, dest)
        return True
    except OSError:
        shutil.copyfile(src, dest)
        return False


def place_folder(src: Path, parent: Path, item: BundledImage) -> str:
    """Put `item`'s files from `src` into parent/<folder>, replacing what is there; returns
    "linked" or "copied". Copies are checked again after copying (a bad read from a disc or a
    full disk must not leave an image that only fails on the node)."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{item.folder}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        linked = [_link_or_copy(src / name, staging / name) for name in item.files]
        if not all(linked):
            why = intact_problem(staging, item)
            if why:
                raise BundleImageError(f"{item.name} ({item.folder}): copy from {src} is not intact: {why}")
        target = parent / item.folder
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "linked" if all(linked) else "copied"


def _already_there(src: Path, dest: Path, item: BundledImage) -> bool:
    """A warm rebuild: every file is the store's own (same inode) or has the same bytes; the
    large one by its recorded sha256 (the store's copy was checked just before)."""
    from podsys.provision.image_build import sha256_file

    record_name, payload, digest_key = _payload(item)
    for name in item.files:
        a, b = src / name, dest / name
        if _same_file(a, b):
            continue
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            return False
        if name == payload:
            if sha256_file(b) != json.loads((src / record_name).read_text())[digest_key]:
                return False
        elif a.read_bytes() != b.read_bytes():
            return False
    return True


def check_store(items: list[BundledImage], store: Path, manifest: Path | str) -> None:
    """Refuse before anything is written when the store lacks an image or holds a corrupt one."""
    problems = []
    for item in items:
        why = intact_problem(store / item.folder, item)
        if why:
            what = "the deploy ramdisk" if item.is_ramdisk else f"image {item.name}"
            problems.append(f"{what} ({item.folder[:24]}) is not built in {store} ({why})")
    if problems:
        raise BundleImageError("; ".join(problems) + f": run `podsys image build {manifest}` first "
                               "(or give --image-store where the images are)")


def _prune(parent: Path, keep: set[str]) -> list[str]:
    """Remove folders the manifest no longer needs and staging left by a killed build."""
    removed = []
    if parent.is_dir():
        for path in sorted(parent.iterdir()):
            if path.name in keep:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def bundle_images(items: list[BundledImage], store: Path, bundle_dir: Path, manifest: Path | str,
                  log: Log = lambda m: None) -> list[dict]:
    """Copy (hard-link) `items` from the image store into bundle_dir/images/; returns one record
    per folder with how it got there ("reused", "linked", "copied")."""
    store, parent = Path(store), Path(bundle_dir) / IMAGES_DIR
    check_store(items, store, manifest)
    for name in _prune(parent, {item.folder for item in items}):
        log(f"images: removed {name} (no longer needed by the manifest)")
    results = []
    for item in items:
        src = store / item.folder
        if _already_there(src, parent / item.folder, item):
            state = "reused"
        else:
            log(f"images: {item.name} ({item.folder[:16]}) into the bundle")
            state = place_folder(src, parent, item)
        size = sum((parent / item.folder / name).stat().st_size for name in item.files)
        results.append({**item.as_dict(), "state": state, "bytes": size})
    return results


def import_bundled(bundle_images_dir: Path, store: Path, item: BundledImage) -> str | None:
    """Deploy's side: put an intact bundled folder into the workspace store; returns "linked" or
    "copied", or None when the bundle does not hold it intact (deploy then builds it)."""
    src = Path(bundle_images_dir) / item.folder
    if not src.is_dir() or intact_problem(src, item) is not None:
        return None
    return place_folder(src, Path(store), item)
