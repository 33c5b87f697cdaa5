"""`podsys deploy`'s image step with `packages.source: bundle`: intact images in the bundle's
images/ are imported into the workspace store, not built; without them it builds as always.
A build here would run mmdebstrap, so subprocess fails loudly instead."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from podsys.bundle.images import bundle_images, wanted_images
from podsys.cluster.load import load_cluster
from podsys.deploy.node_images import ensure_node_images
from podsys.provision.image_build import ARCHIVE, ImageStore
from podsys.provision.ramdisk import ramdisk_key
from tests.unit.bundle.test_bundle_images import fake_store
from tests.unit.provision.test_image import manifest


def _cluster(tmp_path: Path, source: str = "bundle"):
    path = manifest(tmp_path)
    path.write_text(path.read_text() + f"packages: {{source: {source}, bundle_path: '{tmp_path / 'bundle'}'}}\n")
    return load_cluster(path)


def _bundle_with_images(tmp_path: Path, cluster) -> list:
    """A bundle built elsewhere: images made in another store, carried into <bundle_path>/images."""
    elsewhere = tmp_path / "build-machine-store"
    items = fake_store(elsewhere, cluster)
    bundle_images(items, elsewhere, tmp_path / "bundle", "cluster.yaml")
    return items


@pytest.fixture
def no_build(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"build started: {args[0] if args else kwargs}")
    monkeypatch.setattr("subprocess.run", refuse)
    monkeypatch.setattr("subprocess.Popen", refuse)


def test_deploy_imports_the_bundled_images_instead_of_building(tmp_path, no_build):
    cluster = _cluster(tmp_path)
    image, ramdisk = _bundle_with_images(tmp_path, cluster)
    said: list[str] = []
    records = ensure_node_images(cluster, said.append)
    assert [r["key"] for r in records] == [image.folder, ramdisk_key()]
    assert said == [f"image {image.name} (2 nodes): from the bundle",
                    f"deploy ramdisk {ramdisk.folder}: from the bundle: kernel 6.1.0-test"]
    store = ImageStore(cluster.workspace.images_dir)
    assert store.is_current(image.folder)
    assert os.path.samefile(store.folder(image.folder) / ARCHIVE, tmp_path / "bundle" / "images" / image.folder / ARCHIVE)
    # The next deploy finds the store current and imports nothing.
    said.clear()
    ensure_node_images(cluster, said.append)
    assert said == [f"image {image.name} (2 nodes): up to date", f"deploy ramdisk {ramdisk.folder}: kernel 6.1.0-test"]


def test_a_corrupt_store_copy_is_replaced_from_the_bundle(tmp_path, no_build):
    cluster = _cluster(tmp_path)
    image, _ramdisk = _bundle_with_images(tmp_path, cluster)
    store = ImageStore(cluster.workspace.images_dir)
    (store.folder(image.folder)).mkdir(parents=True)
    (store.folder(image.folder) / ARCHIVE).write_bytes(b"half an archive")
    said: list[str] = []
    ensure_node_images(cluster, said.append)
    assert said[0].endswith("from the bundle") and store.is_current(image.folder)


def test_without_images_in_the_bundle_deploy_builds_as_before(tmp_path, no_build):
    cluster = _cluster(tmp_path)
    (tmp_path / "bundle").mkdir()  # a bundle built without --images
    with pytest.raises(AssertionError, match="build started"):
        ensure_node_images(cluster, lambda line: None)
    assert not list(ImageStore(cluster.workspace.images_dir).records())


def test_a_bundle_without_this_image_says_so_and_builds(tmp_path, no_build):
    cluster = _cluster(tmp_path)
    image, _ramdisk = _bundle_with_images(tmp_path, cluster)
    shutil.rmtree(tmp_path / "bundle" / "images" / image.folder)
    said: list[str] = []
    with pytest.raises(AssertionError, match="build started"):
        ensure_node_images(cluster, said.append)
    assert said[0] == f"{image.name}: not in {tmp_path / 'bundle' / 'images'} (or not intact there); building it"


def test_a_corrupt_bundled_image_is_not_imported(tmp_path, no_build):
    cluster = _cluster(tmp_path)
    image, _ramdisk = _bundle_with_images(tmp_path, cluster)
    bundled = tmp_path / "bundle" / "images" / image.folder / ARCHIVE
    bundled.unlink()  # a hard link to the build machine's store: break it before changing bytes
    bundled.write_bytes(b"tampered")
    with pytest.raises(AssertionError, match="build started"):
        ensure_node_images(cluster, lambda line: None)
    assert not ImageStore(cluster.workspace.images_dir).is_current(image.folder)


def test_other_package_sources_never_look_at_the_bundle(tmp_path, no_build):
    cluster = _cluster(tmp_path, source="online")
    _bundle_with_images(tmp_path, cluster)
    with pytest.raises(AssertionError, match="build started"):
        ensure_node_images(cluster, lambda line: None)


def test_bundle_and_deploy_agree_on_the_folders(tmp_path):
    cluster = _cluster(tmp_path)
    assert [i.folder for i in wanted_images(cluster)][-1] == f"ramdisk-{ramdisk_key()[:16]}"
