"""`podsys image list|show|rm` on a store, and `image build --plan` (which builds nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from podsys.provision.image_build import ARCHIVE, PACKAGES, RECORD, ImageStore, sha256_file
from tests.conftest import invoke
from tests.unit.provision.test_image import manifest


def fake_image(store: Path, key: str, name: str) -> None:
    """A store entry as image_build writes it (record, archive, package list); the archive's
    bytes are arbitrary, its recorded sha256 is the real one."""
    folder = store / key
    folder.mkdir(parents=True)
    (folder / ARCHIVE).write_bytes(b"not really zstd")
    (folder / PACKAGES).write_text("bash\t5.2.15-2+b7\nslurmd\t22.05.8-4+deb12u3\n")
    record = {"key": key, "name": name, "nodes": ["cpu01"], "sha256": sha256_file(folder / ARCHIVE),
              "archive_bytes": 15, "unpacked_bytes": 100, "packages": 2, "built": "2026-11-29T00:00:00Z"}
    (folder / RECORD).write_text(json.dumps(record))


def test_list_show_rm(tmp_path):
    store = tmp_path / "images"
    fake_image(store, "a" * 64, "debian-12-cpu-only-aaaaaaaaaaaa")
    fake_image(store, "ab" + "c" * 62, "debian-12-cpu-only-abcccccccccc")
    listed = invoke("image", "list", "--store", store, "--json")
    assert listed.exit_code == 0 and [r["name"] for r in json.loads(listed.stdout)] == [
        "debian-12-cpu-only-aaaaaaaaaaaa", "debian-12-cpu-only-abcccccccccc"]
    shown = invoke("image", "show", "abc", "--store", store, "--packages")
    assert shown.exit_code == 0 and '"key": "abcc' in shown.stdout and "slurmd\t22.05.8-4+deb12u3" in shown.stdout
    ambiguous = invoke("image", "show", "a", "--store", store)
    assert ambiguous.exit_code == 2 and "'a' matches 2 images" in ambiguous.stderr
    missing = invoke("image", "rm", "nosuch", "--store", store)
    assert missing.exit_code == 2 and "no image 'nosuch'" in missing.stderr and "Traceback" not in missing.output
    removed = invoke("image", "rm", "debian-12-cpu-only-aaaaaaaaaaaa", "--store", store)
    assert removed.exit_code == 0 and not (store / ("a" * 64)).exists()
    assert ImageStore(store).is_current("ab" + "c" * 62)
    (store / ("ab" + "c" * 62) / ARCHIVE).write_bytes(b"tampered")
    assert not ImageStore(store).is_current("ab" + "c" * 62), "a changed archive is rebuilt"


def test_build_plan_prints_keys_and_commands_and_builds_nothing(tmp_path):
    path = manifest(tmp_path)
    result = invoke("image", "build", path, "--plan", "--mirror", "http://10.40.0.1/repo/debian", "--store", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "debian-12-cpu-only-" in result.stdout and "nodes 2" in result.stdout
    assert "mmdebstrap --mode=root" in result.stdout and "http://10.40.0.1/repo/debian" in result.stdout
    assert not (tmp_path / "s").exists()


ROCKY = 'os: {distro: rocky, version: "9"}\npackages: {source: proxy, proxy: "http://proxy.site:3128"}'


def test_rocky_build_plan_prints_the_dnf_commands_through_the_sites_proxy(tmp_path):
    path = manifest(tmp_path, os_line=ROCKY)
    result = invoke("image", "build", path, "--plan", "--epel-mirror", "http://mirror.site/epel", "--store", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "rocky-9-cpu-only-" in result.stdout and "dnf -y --installroot=ROOT --releasever=9" in result.stdout
    assert "--repofrompath=baseos,http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/" in result.stdout
    assert "--repofrompath=epel,http://mirror.site/epel/9/Everything/x86_64/" in result.stdout
    assert "--setopt=proxy=http://proxy.site:3128/" in result.stdout
    assert "systemctl --root=" in result.stdout and not (tmp_path / "s").exists()


def test_the_ramdisk_of_a_rocky_site_is_built_from_debian_through_the_same_proxy(tmp_path, monkeypatch):
    # The builds themselves are replaced (they need root and mirrors): what is checked is what
    # the command hands them.
    import podsys.provision.image_build as image_build
    import podsys.provision.ramdisk as ramdisk

    calls = {}

    def build_image(image, store, mirror, progress, **kw):
        calls["image"] = (mirror, kw)
        return {"name": image.spec.name, "build_seconds": 1.0, "archive_bytes": 1 << 20, "sha256": "0" * 64,
                "packages": 1, "kernel": "k"}, True

    def build_ramdisk(store_root, mirror, progress, apt_options=(), force=False):
        calls["ramdisk"] = (mirror, apt_options)
        return {"kernel": "6.1.0", "initrd_bytes": 1 << 20, "key": "f" * 64}

    monkeypatch.setattr(image_build, "build_image", build_image)
    monkeypatch.setattr(ramdisk, "build_ramdisk", build_ramdisk)
    path = manifest(tmp_path, os_line=ROCKY)
    result = invoke("image", "build", path, "--store", tmp_path / "s")
    assert result.exit_code == 0, result.output
    mirror, kw = calls["image"]
    assert mirror == "http://dl.rockylinux.org/pub/rocky" and kw["key_proxy"] == "http://proxy.site:3128/"
    assert [r.name for r in kw["vendor"]] == ["baseos", "appstream", "crb", "epel"]
    assert calls["ramdisk"] == ("http://deb.debian.org/debian", ('Acquire::http::Proxy "http://proxy.site:3128/"',))
    assert "deploy ramdisk: kernel 6.1.0" in result.stdout
