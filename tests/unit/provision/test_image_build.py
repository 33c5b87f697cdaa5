"""podsys.provision.image_build: what a head must have before a build starts."""

from __future__ import annotations

import shutil

import pytest

from podsys.provision import image_build
from podsys.provision.image_build import ImageError, refuse_unbuildable
from tests.unit.provision.test_image import spec


def path_with(tmp_path, tools: list[str]) -> str:
    """A PATH holding only links to these tools."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in tools:
        (folder / tool).symlink_to(shutil.which(tool) or "/bin/true")
    return str(folder)


def test_a_rocky_build_names_the_debian_packages_it_lacks(tmp_path, monkeypatch):
    rocky = spec(distro="rocky", version="9", suite=None, packages=("kernel",))
    monkeypatch.setenv("PATH", path_with(tmp_path, ["unshare", "systemctl"]))
    with pytest.raises(ImageError) as err:
        refuse_unbuildable(rocky)
    assert str(err.value) == (f"{rocky.name}: building rocky-9 images needs dnf (Debian package dnf), "
                              "rpm (Debian package rpm) on this head")


def test_an_ubuntu_build_needs_ubuntus_archive_key(tmp_path, monkeypatch):
    ubuntu = spec(distro="ubuntu", version="24.04", suite="noble", packages=("linux-image-generic",))
    monkeypatch.setenv("PATH", path_with(tmp_path, ["mmdebstrap"]))
    monkeypatch.setattr(image_build, "UBUNTU_KEYRING", tmp_path / "ubuntu-archive-keyring.gpg")
    with pytest.raises(ImageError, match=r"needs Ubuntu's archive key .*ubuntu-archive-keyring.gpg \(package ubuntu-keyring"):
        refuse_unbuildable(ubuntu)
    (tmp_path / "ubuntu-archive-keyring.gpg").write_bytes(b"key")
    refuse_unbuildable(ubuntu)
    refuse_unbuildable(spec())  # Debian: mmdebstrap is all it needs
