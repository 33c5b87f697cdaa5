"""A GPU node image, built for real with mmdebstrap, carries its vendor packages: the signed dummy
NVIDIA/DOCA repository (tests/integration/dummy_nvidia_repo.py) is served on loopback in place
of NVIDIA's and Mellanox's, the Debian packages come from the host's Debian mirror (as in
test_provision_image_qemu.py), and the image then holds

* every vendor package of the plan at the matrix's version, and the driver's dependencies at the
  driver's version although the repository also has a newer driver (the build's pins),
* the repository's key at the path the package_source role uses, fetched and checked against
  the fingerprint it was given, and no build-only sources or pins,
* the headers of its own kernel (not the build host's), and the driver package's DKMS module
  (a real one, built with gcc against those headers by the build's dkms hook) for that kernel,
* no secret.

Only the image build: no lab, no VM. Slow (a few hundred MB from the mirror): not in default CI."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from podsys.bundle.repo import SiteKey
from podsys.cluster.load import load_cluster
from podsys.lab.plan import host_debian_mirror
from podsys.provision.image import BuildRepo, cluster_images
from podsys.provision.image_build import ARCHIVE, PACKAGES, ImageStore, build_image, parse_package_list
from tests.integration import dummy_nvidia_repo
from tests.integration.loopback_http import serve_directory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STACK = "r580-cuda13.0"
MANIFEST = f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: gpuimg}}
head: {{hostname: head, interface: eth0, address: 10.0.2.2}}
networks:
  provision: {{cidr: 10.0.2.0/24}}
os: {{distro: debian, version: "12"}}
stack: {STACK}
layers: [base, gpu, infiniband]
node_groups:
  - name: gpu
    hosts: gpu01
    hardware: hgx-h100-8gpu
    start_address: 10.0.2.15
    disk: /dev/vda
    nodes: {{gpu01: {{mac: "52:54:00:7b:00:01"}}}}
"""


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap --mode=root)"
    for tool in ("mmdebstrap", "zstd", "dpkg-deb", "apt-ftparchive", "gpg"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (.ci/apt-packages.txt)"
    if host_debian_mirror() is None:
        return "no Debian mirror configured on this host"
    return None


def members(archive: Path) -> set[str]:
    out = subprocess.run(["tar", "-I", "zstd", "-tf", str(archive)], capture_output=True, text=True, check=True).stdout
    return {line.removeprefix("./") for line in out.splitlines()}


def test_gpu_image_holds_the_pinned_vendor_packages_and_their_key(tmp_path):
    reason = missing()
    if reason:
        pytest.skip(reason)
    # The dummy repository: the plan's names at the plan's versions plus a newer driver. Its
    # kernel-headers entry is named for no real kernel, so the image takes Debian's headers.
    from podsys.cluster.matrix import load_matrix

    stack = load_matrix().stack(STACK)
    versions = dummy_nvidia_repo.build(tmp_path / "dummy", stack, kernel="podsys-unused", dkms_source=True)
    fingerprint = SiteKey(tmp_path / "dummy" / "keys").fingerprint()
    server = serve_directory(tmp_path / "dummy")
    try:
        manifest = tmp_path / "cluster.yaml"
        manifest.write_text(MANIFEST)
        (image,) = cluster_images(load_cluster(manifest))
        spec = image.spec
        assert spec.vendor_packages and {r.name for r in spec.repositories} == {"cuda", "ofed"}
        base = f"http://127.0.0.1:{server.server_address[1]}/repo"
        # One repository stands in for both (it holds the driver, CUDA, ... and doca-ofed).
        vendor = (BuildRepo("cuda", base, dummy_nvidia_repo.SUITE, "main", f"{base}/podsys-site.asc", fingerprint),)
        store = ImageStore(tmp_path / "store")
        said: list[str] = []
        record, built = build_image(image, store, host_debian_mirror(), said.append,
                                    apt_options=('Acquire::Check-Valid-Until "false"',), vendor=vendor)
        assert built, said
    finally:
        server.shutdown()

    folder = store.folder(spec.key)
    installed = parse_package_list((folder / PACKAGES).read_text())
    # Every vendor package of the plan, the pinned ones at the plan's version; the record says so
    # too. (Unpinned ones, perftest, may come from Debian at a higher version: no assertion.)
    for pkg in spec.vendor_packages:
        name = pkg.split("=", 1)[0]
        assert name in installed and record["vendor_packages"][name] == installed[name], name
        if "=" in pkg:
            assert installed[name] == versions[name], (name, installed[name], versions[name])
    assert "deferred_vendor_packages" not in record
    # The repository has 580.105.08 too: the pins hold the driver's dependencies at the driver's.
    assert installed["libcuda1"] == versions["libcuda1"] == f"{stack.driver}-1"
    assert installed["nvidia-kernel-open-dkms"] == f"{stack.driver}-1"
    # The headers of the image's own kernel (the meta package's), not of the build host's.
    assert record["kernel"] != platform.release()
    assert f"linux-headers-{record['kernel']}" in installed and "linux-headers-amd64" in installed

    files = members(folder / ARCHIVE)
    # The driver package's DKMS source was built by the build's hook for the image's kernel (its
    # postinst only added it: the chroot's running kernel is the build host's).
    # (merged /usr: the archive holds usr/lib, and lib is a link to it)
    module = f"usr/lib/modules/{record['kernel']}/updates/dkms/{dummy_nvidia_repo.DKMS_MODULE}.ko"
    assert [f for f in files if f.startswith(module)], sorted(f for f in files if "/updates/" in f)
    assert not [f for f in files if f.startswith(f"usr/lib/modules/{platform.release()}/")]
    assert "usr/share/keyrings/podsys-cuda.asc" in files, "the key stays: the node's apt trusts the same repository"
    assert "etc/apt/sources.list.d/podsys-cuda.sources" not in files, "the role writes the node's sources"
    assert "etc/apt/preferences.d/podsys-image-build" not in files and "etc/apt/apt.conf.d/99mmdebstrap" not in files
    assert not [f for f in files if f.startswith("etc/ssh/ssh_host_") or f in ("etc/munge/munge.key", "var/lib/dbus/machine-id")]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-I", "zstd", "-xf", str(folder / ARCHIVE), "-C", str(out),
                    "./usr/share/keyrings/podsys-cuda.asc", "./etc/machine-id"], check=True)
    assert (out / "usr/share/keyrings/podsys-cuda.asc").read_bytes() == (tmp_path / "dummy/repo/podsys-site.asc").read_bytes()
    assert (out / "etc/machine-id").read_text() == ""
