"""`podsys deploy`'s first bare-metal step: every node image and the deploy ramdisk the
manifest's image-installed nodes need, built into the workspace's image store unless an intact
build with the same key is there. The provision role then copies them onto the head.

With `packages.source: bundle`, an intact copy in the offline bundle (<bundle_path>/images/,
`podsys bundle build --images`) is imported instead of built: an air-gapped head may have no
mirror to build from until the bundle's repository is served.

An unchanged manifest costs one sha256 of each archive; a changed pin builds a new image."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from podsys.cluster.model import Cluster


def bundled_images_dir(cluster: Cluster) -> Path | None:
    """The bundle's images/ on this machine (deploy runs on the head, where the bundle is)."""
    from podsys.bundle.images import IMAGES_DIR

    packages = cluster.manifest.packages
    if packages.source != "bundle":
        return None
    folder = Path(packages.bundle_path) / IMAGES_DIR
    return folder if folder.is_dir() else None


def _from_bundle(bundled: Path | None, store, folder: str, name: str, say: Callable[[str], None]) -> str | None:
    """"current" when the store already holds `folder` intact, "imported" when it now holds the
    bundle's copy, None when it must be built (no bundle, or the bundle lacks it)."""
    from podsys.bundle.images import BundledImage, import_bundled, intact_problem

    if bundled is None:
        return None
    item = BundledImage(folder, name)
    if intact_problem(store.root / folder, item) is None:
        return "current"
    if import_bundled(bundled, store.root, item) is None:
        say(f"{name}: not in {bundled} (or not intact there); building it")
        return None
    return "imported"


def ensure_node_images(cluster: Cluster, say: Callable[[str], None]) -> list[dict]:
    """Build (or import from the bundle) what is missing; returns the image records (the
    ramdisk's last). Raises PodsysError (ImageError, RamdiskError) naming the failed step and
    its log."""
    from podsys.provision.image import cluster_images
    from podsys.provision.image_boot import ramdisk_folder
    from podsys.provision.image_build import ImageStore, build_image
    from podsys.provision.image_source import image_source
    from podsys.provision.ramdisk import build_ramdisk

    images = cluster_images(cluster)
    if not images:
        return []
    store = ImageStore(cluster.workspace.images_dir)
    source = image_source(cluster)
    bundled = bundled_images_dir(cluster)
    records = []
    for image in images:
        # Checked here already (one sha256), so build_image need not hash the archive again.
        got = _from_bundle(bundled, store, image.spec.key, image.spec.name, say)
        if got is not None:
            record = store.record(image.spec.key) or {}
            state = "from the bundle" if got == "imported" else "up to date"
        else:
            spec = image.spec
            record, built = build_image(image, store, source.mirror, say,
                                        apt_options=source.build_apt_options(spec),
                                        vendor=source.build_repositories(spec), key_proxy=source.proxy)
            state = f"built in {record['build_seconds']} s from {source.describe()}" if built else "up to date"
        say(f"image {record.get('name', image.spec.name)} ({len(image.nodes)} nodes): {state}")
        records.append(record)
    from_bundle = _from_bundle(bundled, store, ramdisk_folder(), "deploy ramdisk", say)
    ramdisk = build_ramdisk(store.root, source.ramdisk_source, say, apt_options=source.apt_options)
    origin = ": from the bundle" if from_bundle == "imported" else ""
    say(f"deploy ramdisk ramdisk-{ramdisk['key'][:16]}{origin}: kernel {ramdisk['kernel']}")
    records.append(ramdisk)
    return records
