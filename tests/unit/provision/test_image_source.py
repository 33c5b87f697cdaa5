"""Which package source images are built from, what the head serves from the image store, and
`podsys deploy`'s image step on a store that is already current (it builds nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podsys.cluster.load import load_cluster
from podsys.deploy.node_images import ensure_node_images
from podsys.provision import image_boot
from podsys.provision.image import cluster_images
from podsys.provision.image_build import ARCHIVE, CHECKSUM, RECORD, sha256_file
from podsys.provision.image_source import image_source
from podsys.provision.ramdisk import ramdisk_dir, ramdisk_key
from podsys.provision.render import render_files
from tests.unit.provision.test_image import manifest


def with_packages(tmp_path: Path, packages: str) -> Path:
    path = manifest(tmp_path)
    path.write_text(path.read_text() + packages)
    return path


@pytest.mark.parametrize("packages, mirror, options", [
    ("packages: {source: online, upstream: 'http://mirror.site/debian/'}", "http://mirror.site/debian", ()),
    ("packages: {source: proxy, upstream: 'http://mirror.site/debian', proxy: 'http://squid.site:3128'}",
     "http://mirror.site/debian", ('Acquire::http::Proxy "http://squid.site:3128/"',)),
    ("packages: {source: proxy}", "http://deb.debian.org/debian", ()),
    ("packages: {source: bundle}", "http://10.40.0.1/repo", ()),
])
def test_images_are_built_from_what_the_nodes_packages_come_through(tmp_path, packages, mirror, options):
    source = image_source(load_cluster(with_packages(tmp_path, packages + "\n")))
    assert (source.mirror, source.apt_options) == (mirror, options)


def test_rocky_images_take_epel_from_the_manifest(tmp_path):
    path = manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}')
    path.write_text(path.read_text() + "packages: {source: proxy, upstream: 'http://mirror.site/rocky', "
                                       "epel: 'http://mirror.site/epel/'}\n")
    cluster = load_cluster(path)
    source = image_source(cluster)
    (image,) = cluster_images(cluster)
    epel = source.build_repositories(image.spec)[-1]
    assert (epel.name, epel.url, epel.key_url) == ("epel", "http://mirror.site/epel/9/Everything/x86_64/",
                                                  "http://mirror.site/epel/RPM-GPG-KEY-EPEL-9")
    assert source.build_repositories(image.spec)[0].url == "http://mirror.site/rocky/9/BaseOS/x86_64/os/"


def test_a_bad_epel_url_is_a_one_line_input_error(tmp_path):
    from podsys.errors import InputError

    path = manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}')
    path.write_text(path.read_text() + "packages: {source: proxy, epel: 'mirror.site/epel'}\n")
    with pytest.raises(InputError) as err:
        load_cluster(path)
    assert "packages.epel" in str(err.value) and "http:// or https:// URL" in str(err.value)


def test_proxy_source_says_which_proxy():
    from podsys.provision.image_source import ImageSource

    assert ImageSource("http://m/debian", ('Acquire::http::Proxy "http://p:3142/"',)).describe() == \
        "http://m/debian via http://p:3142/"


def test_the_head_serves_each_image_once_and_the_ramdisk_archive_last(tmp_path):
    cluster = load_cluster(manifest(tmp_path))
    served = json.loads(render_files(cluster)[image_boot.SERVED_FILE])
    (image,) = cluster_images(cluster)
    ramdisk = f"ramdisk-{ramdisk_key()[:16]}"
    assert served["images"] == [{"key": image.spec.key, "name": image.spec.name}]
    assert served["folders"] == [image.spec.key, ramdisk]
    image_files = [f for folder, f in served["files"] if folder == image.spec.key]
    assert image_files[0] == CHECKSUM and image_files[-1] == ARCHIVE
    assert {"partitions-bios.sfdisk", "partitions-uefi.min-bytes"} <= set(image_files)
    assert [f for folder, f in served["files"] if folder == ramdisk] == ["vmlinuz", "initrd.img"]


def test_no_image_nodes_serve_nothing(tmp_path):
    groups = """\
  - name: cpu
    hosts: cpu01
    hardware: cpu-only
    start_address: 10.40.1.1
    provisioning: {method: installer}
    nodes:
      cpu01: {mac: "52:54:00:00:00:01"}
"""
    cluster = load_cluster(manifest(tmp_path, groups=groups))
    assert json.loads(render_files(cluster)[image_boot.SERVED_FILE]) == {"images": [], "folders": [], "files": []}


def test_deploy_builds_nothing_when_the_store_is_current(tmp_path, monkeypatch):
    cluster = load_cluster(manifest(tmp_path))
    (image,) = cluster_images(cluster)
    store = cluster.workspace.images_dir
    folder = store / image.spec.key
    folder.mkdir(parents=True)
    (folder / ARCHIVE).write_bytes(b"archive bytes")
    (folder / RECORD).write_text(json.dumps({"key": image.spec.key, "name": image.spec.name,
                                             "sha256": sha256_file(folder / ARCHIVE), "build_seconds": 1}))
    rd = ramdisk_dir(store)
    rd.mkdir()
    (rd / "ramdisk.json").write_text(json.dumps({"key": ramdisk_key(), "kernel": "6.1.0-test"}))

    def no_build(*args, **kwargs):
        raise AssertionError("mmdebstrap run for a current store")
    monkeypatch.setattr("subprocess.run", no_build)
    monkeypatch.setattr("subprocess.Popen", no_build)
    said: list[str] = []
    records = ensure_node_images(cluster, said.append)
    assert [r["key"] for r in records] == [image.spec.key, ramdisk_key()]
    assert said[0] == f"image {image.spec.name} (2 nodes): up to date"
    # A tampered archive is no longer current: deploy would rebuild it (here: the build is refused).
    (folder / ARCHIVE).write_bytes(b"tampered")
    with pytest.raises(AssertionError, match="mmdebstrap run"):
        ensure_node_images(cluster, said.append)


def test_vendor_keys_are_fetched_and_a_different_key_is_refused(tmp_path):
    import functools
    import http.server
    import threading

    from podsys.bundle.repo import SiteKey
    from podsys.provision.image import BuildRepo
    from podsys.provision.image_build import ImageError, fetch_key

    key = SiteKey(tmp_path / "keys")
    fingerprint = key.ensure("podsys test <t@podsys.invalid>")
    key.export_public(tmp_path)
    key.stop_agent()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/podsys-site.asc"
        good = BuildRepo("cuda", "http://x/", "/", "", url, fingerprint)
        assert b"BEGIN PGP PUBLIC KEY BLOCK" in fetch_key(good)
        with pytest.raises(ImageError, match="not EB693B30"):
            fetch_key(BuildRepo("cuda", "http://x/", "/", "", url, "EB693B3035CD5710E231E123A4B469963BF863CC"))
        with pytest.raises(ImageError, match="cannot fetch its key"):
            fetch_key(BuildRepo("cuda", "http://x/", "/", "", url + ".missing", None))
    finally:
        server.shutdown()
