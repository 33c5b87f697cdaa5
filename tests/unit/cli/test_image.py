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
