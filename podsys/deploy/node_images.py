"""`podsys deploy`'s first bare-metal step: every node image and the deploy ramdisk the
manifest's image-installed nodes need, built into the workspace's image store unless an intact
build with the same key is there. The provision role then copies them onto the head.

An unchanged manifest costs one sha256 of each archive; a changed pin builds a new image."""

from __future__ import annotations

from typing import Callable

from podsys.cluster.model import Cluster


def ensure_node_images(cluster: Cluster, say: Callable[[str], None]) -> list[dict]:
    """Build what is missing; returns the image records (the ramdisk's last). Raises
    PodsysError (ImageError, RamdiskError) naming the failed step and its log."""
    from podsys.provision.image import cluster_images
    from podsys.provision.image_build import ImageStore, build_image
    from podsys.provision.image_source import image_source
    from podsys.provision.ramdisk import build_ramdisk

    images = cluster_images(cluster)
    if not images:
        return []
    store = ImageStore(cluster.workspace.images_dir)
    source = image_source(cluster)
    records = []
    for image in images:
        record, built = build_image(image, store, source.mirror, say, apt_options=source.apt_options)
        state = f"built in {record['build_seconds']} s from {source.describe()}" if built else "up to date"
        say(f"image {record['name']} ({len(image.nodes)} nodes): {state}")
        records.append(record)
    ramdisk = build_ramdisk(store.root, source.mirror, say, apt_options=source.apt_options)
    say(f"deploy ramdisk ramdisk-{ramdisk['key'][:16]}: kernel {ramdisk['kernel']}")
    records.append(ramdisk)
    return records
