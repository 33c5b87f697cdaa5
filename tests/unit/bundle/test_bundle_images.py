"""The bundle's node images (`podsys bundle build --images`): copied from the image store into
DIR/images/, covered by CONTENTS.sha256 and verify, reused on a warm rebuild, refused with the
command to build them when the store lacks one. No network: the store entries are fakes whose
recorded sha256 is the real one, the contents are signed with a throwaway site key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from podsys.bundle.build import contents_files, verify_bundle, write_contents
from podsys.bundle.images import BundleImageError, BundledImage, bundle_images, wanted_images
from podsys.cluster.load import load_cluster
from podsys.provision.image_boot import IMAGE_FILES
from podsys.provision.image_build import ARCHIVE, PACKAGES, RECORD
from podsys.provision.ramdisk import ramdisk_key
from tests.conftest import invoke
from tests.unit.provision.test_image import manifest


def fake_store_entry(store: Path, item: BundledImage, payload: bytes = b"archive bytes") -> Path:
    """A store folder as `podsys image build` leaves it, with every file the bundle carries."""
    folder = store / item.folder
    folder.mkdir(parents=True)
    digest = hashlib.sha256(payload).hexdigest()
    if item.is_ramdisk:
        (folder / "vmlinuz").write_bytes(b"kernel")
        (folder / "initrd.img").write_bytes(payload)
        (folder / "ramdisk.json").write_text(json.dumps({"key": ramdisk_key(), "kernel": "6.1.0-test",
                                                         "initrd_sha256": digest}))
        (folder / "ramdisk-root-unrelated").write_text("the builder root stays in the store")
        return folder
    for name in IMAGE_FILES:
        (folder / name).write_text(f"{name}\n")
    (folder / ARCHIVE).write_bytes(payload)
    (folder / PACKAGES).write_text("bash\t5.2.15-2+b7\n")
    (folder / RECORD).write_text(json.dumps({"key": item.folder, "name": item.name, "sha256": digest,
                                             "build_seconds": 1}))
    (folder / "build.log").write_text("not carried")
    return folder


def fake_store(store: Path, cluster) -> list[BundledImage]:
    items = wanted_images(cluster)
    for item in items:
        fake_store_entry(store, item)
    return items


@pytest.fixture
def site(tmp_path):
    """A cluster, its image store filled, and an empty bundle with a site key."""
    from podsys.bundle.repo import SiteKey

    if shutil.which("gpg") is None:
        pytest.skip("gpg not installed (Debian package gnupg)")
    cluster = load_cluster(manifest(tmp_path))
    store = cluster.workspace.images_dir
    items = fake_store(store, cluster)
    bundle = tmp_path / "bundle"
    key = SiteKey(bundle / "keys")
    key.ensure("podsys test <root@localhost>")
    (bundle / "repo").mkdir()
    key.export_public(bundle / "repo")
    yield cluster, store, items, bundle, key
    key.stop_agent()


def test_the_manifest_needs_its_image_then_the_ramdisk(tmp_path):
    items = wanted_images(load_cluster(manifest(tmp_path)))
    assert [i.is_ramdisk for i in items] == [False, True]
    assert items[0].nodes == 2 and items[1].folder == f"ramdisk-{ramdisk_key()[:16]}"


def test_images_are_carried_listed_in_contents_and_verified(site):
    cluster, store, items, bundle, key = site
    results = bundle_images(items, store, bundle, cluster.manifest_path)
    assert [r["state"] for r in results] == ["linked", "linked"]  # tmp_path: one file system
    image, ramdisk = (bundle / "images" / i.folder for i in items)
    assert sorted(p.name for p in image.iterdir()) == sorted([*IMAGE_FILES, PACKAGES])
    assert sorted(p.name for p in ramdisk.iterdir()) == ["initrd.img", "ramdisk.json", "vmlinuz"]
    assert os.path.samefile(image / ARCHIVE, store / items[0].folder / ARCHIVE)
    write_contents(bundle, key)
    listed = (bundle / "CONTENTS.sha256").read_text()
    assert f"images/{items[0].folder}/{ARCHIVE}" in listed and f"images/{items[1].folder}/initrd.img" in listed
    assert verify_bundle(bundle).ok

    (image / "partitions-uefi.sfdisk").write_text("label: gpt\ntampered\n")
    (ramdisk / "extra").write_text("added")
    problems = verify_bundle(bundle).problems
    assert f"images/{items[0].folder}/partitions-uefi.sfdisk: sha256 mismatch (tampered or corrupt)" in problems
    assert f"images/{items[1].folder}/extra: not in CONTENTS.sha256 (added after the build)" in problems


def test_the_iso_and_the_server_include_images():
    from podsys.bundle.build import SERVED

    assert "images" in SERVED  # write_iso grafts and make_server serve exactly SERVED


def test_a_warm_rebuild_reuses_what_is_there(site, monkeypatch):
    cluster, store, items, bundle, _key = site
    monkeypatch.setattr(os, "link", _refuse_link)  # another file system: copies
    assert [r["state"] for r in bundle_images(items, store, bundle, cluster.manifest_path)] == ["copied", "copied"]
    archive = bundle / "images" / items[0].folder / ARCHIVE
    inode = archive.stat().st_ino
    assert [r["state"] for r in bundle_images(items, store, bundle, cluster.manifest_path)] == ["reused", "reused"]
    assert archive.stat().st_ino == inode
    # A corrupted copy in the bundle is replaced, not reused.
    archive.write_bytes(b"archive bytez")
    assert [r["state"] for r in bundle_images(items, store, bundle, cluster.manifest_path)] == ["copied", "reused"]
    assert archive.read_bytes() == b"archive bytes"


def _refuse_link(src, dst):
    raise OSError(18, "Invalid cross-device link")


def test_folders_the_manifest_no_longer_needs_and_staging_leftovers_go(site):
    cluster, store, items, bundle, _key = site
    (bundle / "images" / ("0" * 64)).mkdir(parents=True)
    (bundle / "images" / ".tmp-killed-123").mkdir()
    said: list[str] = []
    bundle_images(items, store, bundle, cluster.manifest_path, said.append)
    assert sorted(p.name for p in (bundle / "images").iterdir()) == sorted(i.folder for i in items)
    assert f"images: removed {'0' * 64} (no longer needed by the manifest)" in said


def test_a_missing_or_corrupt_image_names_the_command_that_builds_it(site):
    cluster, store, items, bundle, _key = site
    shutil.rmtree(store / items[0].folder)
    (store / items[1].folder / "initrd.img").write_bytes(b"corrupt")
    with pytest.raises(BundleImageError) as err:
        bundle_images(items, store, bundle, cluster.manifest_path)
    message = str(err.value)
    assert f"image {items[0].name}" in message and "missing image.sha256" in message
    assert "the deploy ramdisk" in message and "initrd.img does not match the sha256 in ramdisk.json" in message
    assert f"run `podsys image build {cluster.manifest_path}` first" in message
    assert not (bundle / "images").exists(), "nothing written before the check"


def test_images_are_off_by_default_and_shown_by_plan(tmp_path):
    path = manifest(tmp_path)
    off = invoke("bundle", "build", path, "--output", tmp_path / "b", "--plan", "--json")
    assert off.exit_code == 0, off.output
    assert json.loads(off.stdout)["node_images"] is False and json.loads(off.stdout)["images"] == []
    on = invoke("bundle", "build", path, "--output", tmp_path / "b", "--plan", "--json", "--images",
                "--image-store", tmp_path / "elsewhere")
    plan = json.loads(on.stdout)
    assert plan["node_images"] is True and plan["image_store"] == str(tmp_path / "elsewhere")
    assert [i["directory"] for i in plan["images"]][-1] == f"images/ramdisk-{ramdisk_key()[:16]}/"
    assert plan["images"][0]["name"].startswith("debian-12-cpu-only-") and plan["images"][0]["nodes"] == 2
    text = invoke("bundle", "build", path, "--output", tmp_path / "b", "--plan", "--images")
    assert text.exit_code == 0 and f"(from {tmp_path / '.podsys' / 'images'})" in text.stdout.replace("\n", "")
    assert not (tmp_path / "b").exists()


def test_contents_skip_nothing_under_images(site):
    cluster, store, items, bundle, _key = site
    bundle_images(items, store, bundle, cluster.manifest_path)
    covered = {p.relative_to(bundle).as_posix() for p in contents_files(bundle)}
    assert {f"images/{items[0].folder}/{name}" for name in (*IMAGE_FILES, PACKAGES)} <= covered


def test_build_bundle_refuses_a_missing_image_before_fetching_anything(tmp_path, monkeypatch):
    import podsys.bundle.build as build
    from podsys.bundle.build import build_bundle, plan_bundle

    monkeypatch.setattr(build.shutil, "which", lambda tool: f"/usr/bin/{tool}")  # tools "installed"
    monkeypatch.setattr(build, "PrivateApt", None)  # any apt work would fail with a TypeError
    cluster = load_cluster(manifest(tmp_path))
    plan = plan_bundle(cluster, only=["bash"], wheels=False, installer=False, images=True)
    with pytest.raises(BundleImageError, match=r"run `podsys image build .*cluster\.yaml` first"):
        build_bundle(plan, tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "repo").exists() and not (tmp_path / "bundle" / "keys").exists()
