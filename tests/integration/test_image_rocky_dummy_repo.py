"""A Rocky 9 node image, built for real with dnf --installroot on this Debian host: Debian's dnf
and rpm install the image spec's packages from signed repositories laid out like a Rocky mirror
and EPEL (tests/integration/dummy_rocky_repo.py), served on loopback in their place. The build

* fetches each repository's key and checks its fingerprint before dnf runs (a wrong key: no
  build, nothing in the store),
* has dnf check every package's signature against that key (a repository whose packages are
  signed by another key fails the build with dnf's reason),
* leaves an image whose rpm database is where Rocky's rpm reads it (/var/lib/rpm, not Debian's
  ~/.rpmdb), with networkd and sshd enabled, the kernel in /boot, the ESP's files under
  /boot/efi, a generic-initramfs dracut setting, SELinux relabelling at first boot, no dnf
  cache and no secret,
* records every package's version (RHEL's epoch included) and is not rebuilt when unchanged.

Only the image build: the packages are empty, so nothing in the image runs. Seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from podsys.cluster.load import load_cluster
from podsys.provision import image as image_module
from podsys.provision.image import cluster_images
from podsys.provision.image_build import ARCHIVE, PACKAGES, ImageError, ImageStore, build_image, parse_package_list
from podsys.provision.image_source import ImageSource
from tests.integration import dummy_rocky_repo
from tests.integration.dummy_rocky_repo import KERNEL, TestSigner
from tests.integration.loopback_http import serve_directory

MANIFEST = """\
apiVersion: podsys/v1
kind: Cluster
metadata: {name: rockyimg}
head: {hostname: head, interface: eth0, address: 10.0.2.2}
networks:
  provision: {cidr: 10.0.2.0/24}
os: {distro: rocky, version: "9"}
layers: [base, slurm, monitoring]
node_groups:
  - name: cpu
    hosts: cpu[01-02]
    hardware: cpu-only
    start_address: 10.0.2.15
    disk: /dev/vda
    nodes:
      cpu01: {mac: "52:54:00:7c:00:01"}
      cpu02: {mac: "52:54:00:7c:00:02"}
"""
TOOLS = ("dnf", "rpm", "rpmbuild", "rpmsign", "createrepo_c", "gpg", "zstd", "unshare", "systemctl")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the build mounts /proc, /sys and /dev into the image root)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing {', '.join(absent)} (Debian packages dnf, rpm, createrepo-c, gnupg, zstd)" if absent else None


pytestmark = [pytest.mark.integration, pytest.mark.skipif(missing() is not None, reason=missing() or "")]


@pytest.fixture(scope="module")
def rocky(tmp_path_factory):
    """The cluster, its one image, the signed dummy tree served on loopback and its signer."""
    work = tmp_path_factory.mktemp("rocky")
    (work / "cluster.yaml").write_text(MANIFEST)
    cluster = load_cluster(work / "cluster.yaml")
    (image,) = cluster_images(cluster)
    homes = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))  # gpg-agent's socket path is limited
    signer = TestSigner(homes / "a")
    other = TestSigner(homes / "b")
    placed = dummy_rocky_repo.build_tree(work / "build", work / "tree", list(image.spec.packages), signer)
    # The same packages, published with another key where Rocky's and EPEL's are.
    for name in ("rocky", "epel"):
        (work / "forged" / name).mkdir(parents=True)
        for entry in (work / "tree" / name).iterdir():
            target = work / "forged" / name / entry.name
            if entry.is_dir():
                target.symlink_to(entry)
            else:
                target.write_text(other.public_key())
    server = serve_directory(work)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {"image": image, "signer": signer, "other": other, "placed": placed, "tree": f"{base}/tree",
               "forged": f"{base}/forged"}
    finally:
        server.shutdown()
        signer.close()
        other.close()
        shutil.rmtree(homes, ignore_errors=True)


def trust(monkeypatch, fingerprint: str) -> None:
    """The dummy tree is signed by the test's key: it stands in for Rocky's and EPEL's."""
    monkeypatch.setitem(image_module.ROCKY_KEYS, "9", ("RPM-GPG-KEY-Rocky-9", fingerprint))
    monkeypatch.setitem(image_module.EPEL_KEYS, "9", ("RPM-GPG-KEY-EPEL-9", fingerprint))


def build(rocky, store: ImageStore, base: str, lines: list[str]):
    source = ImageSource(f"{base}/rocky", epel=f"{base}/epel")
    spec = rocky["image"].spec
    return build_image(rocky["image"], store, source.mirror, lines.append, vendor=source.build_repositories(spec),
                       key_proxy=source.proxy)


def rpm_query(root: Path, *args: str) -> set[str]:
    proc = subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_rocky_image_holds_its_packages_from_the_signed_repositories(rocky, tmp_path, monkeypatch):
    trust(monkeypatch, rocky["signer"].fingerprint)
    store = ImageStore(tmp_path / "images")
    lines: list[str] = []
    record, built = build(rocky, store, rocky["tree"], lines)
    assert built and record["kernel"] == KERNEL
    assert any(line.startswith(f"{record['name']}: dnf --installroot from baseos, appstream, crb, epel") for line in lines)
    # dnf's milestones reach the progress, not one line per package.
    assert "dnf: Complete!" in lines and any(line.startswith("dnf: Importing GPG key 0x") for line in lines)
    assert any(line.startswith("dnf: Install ") and "Packages" in line for line in lines) and len(lines) < 20
    folder = store.folder(record["key"])
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("partitions-")) == [
        "build.log", "image.json", "image.sha256", "image.tar.zst", "keys", "packages.tsv"]

    # Every package of the spec, at its version (RHEL's epoch written as rpm does); keys are not packages.
    versions = parse_package_list((folder / PACKAGES).read_text())
    assert set(versions) == set(rocky["placed"]) and record["packages"] == len(versions)
    assert {name.split("=", 1)[0] for name in rocky["image"].spec.packages} <= set(versions)
    assert versions["grub2-pc"] == "1:2.06-92.el9" and versions["kernel"] == "5.14.0-503.14.1.el9_5"
    assert rocky["placed"]["slurm-slurmd"] == "epel" and versions["slurm-slurmd"] == "1.0-1.el9"

    root = tmp_path / "unpacked"
    root.mkdir()
    subprocess.run(["tar", "-I", "zstd", "-xf", str(folder / ARCHIVE), "-C", str(root)], check=True)
    # Rocky's rpm reads /var/lib/rpm; Debian's own default (~/.rpmdb) must not have been used.
    assert (root / "var/lib/rpm/rpmdb.sqlite").is_file() and not (root / "root/.rpmdb").exists()
    installed = rpm_query(root, "-qa", "--qf", "%{NAME}\\n")
    assert set(versions) <= installed
    # dnf imported the repositories' key (rpm's gpg-pubkey, version = its short id) and checked
    # each package with it.
    assert rocky["signer"].fingerprint[-8:].lower() in rpm_query(root, "-q", "gpg-pubkey", "--qf", "%{VERSION}\\n")

    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / "sshd.service") == "/usr/lib/systemd/system/sshd.service"
    assert os.readlink(wants / "systemd-networkd.service") == "/usr/lib/systemd/system/systemd-networkd.service"
    assert (root / f"boot/vmlinuz-{KERNEL}").read_text() == "dummy kernel image\n"
    assert (root / f"boot/initramfs-{KERNEL}.img").is_file()
    assert 'hostonly="no"' in (root / "etc/dracut.conf.d/90-podsys.conf").read_text()
    assert (root / ".autorelabel").is_file()  # /etc/selinux/config is in the image
    assert (root / "boot/efi/EFI/BOOT/BOOTX64.EFI").is_file() and (root / "boot/efi/EFI/rocky/grubx64.efi").is_file()
    assert not (root / "var/cache/dnf").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert not list((root / "proc").iterdir()) and not list((root / "dev").iterdir())  # mounts were the build's own

    # Unchanged: not built again.
    again, built_again = build(rocky, store, rocky["tree"], lines)
    assert not built_again and again["sha256"] == record["sha256"]


def test_a_key_with_another_fingerprint_stops_the_build_before_dnf(rocky, tmp_path, monkeypatch):
    trust(monkeypatch, rocky["signer"].fingerprint)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError) as err:
        build(rocky, store, rocky["forged"], [])
    message = str(err.value)
    assert message.startswith("baseos repository: the key at ") and "/forged/rocky/RPM-GPG-KEY-Rocky-9 is " in message
    assert message.endswith(f"not {rocky['signer'].fingerprint}")
    assert store.records() == [] and not list(store.root.glob(".build-*"))


def test_packages_signed_by_another_key_fail_the_build_with_dnfs_reason(rocky, tmp_path, monkeypatch):
    # The forged tree serves the other key, trusted here: the packages' signatures do not match it.
    trust(monkeypatch, rocky["other"].fingerprint)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError) as err:
        build(rocky, store, rocky["forged"], [])
    message = str(err.value)
    assert message.startswith("dnf failed (exit 1): ") and "GPG check FAILED" in message
    assert store.records() == []


def test_podsys_image_build_builds_the_rocky_image(rocky, tmp_path, monkeypatch):
    from tests.conftest import invoke

    trust(monkeypatch, rocky["signer"].fingerprint)
    (tmp_path / "cluster.yaml").write_text(MANIFEST)
    store = tmp_path / "images"
    result = invoke("image", "build", tmp_path / "cluster.yaml", "--mirror", f"{rocky['tree']}/rocky",
                    "--epel-mirror", f"{rocky['tree']}/epel", "--no-ramdisk", "--store", store)
    assert result.exit_code == 0, result.output
    name = rocky["image"].spec.name
    assert f"{name}: built in " in result.stdout and f"kernel {KERNEL}" in result.stdout
    listed = invoke("image", "list", "--store", store, "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == [name]


GPU_MANIFEST = """\
apiVersion: podsys/v1
kind: Cluster
metadata: {name: rockygpu}
head: {hostname: head, interface: eth0, address: 10.0.2.2}
networks:
  provision: {cidr: 10.0.2.0/24}
os: {distro: rocky, version: "9"}
stack: r580-cuda13.0
layers: [base, gpu]
node_groups:
  - name: gpu
    hosts: gpu01
    hardware: hgx-h100-8gpu
    start_address: 10.0.2.15
    disk: /dev/vda
    nodes: {gpu01: {mac: "52:54:00:7c:01:01"}}
"""


def test_a_rocky_gpu_image_holds_the_pinned_driver_stream_and_vendor_packages(rocky, tmp_path, monkeypatch):
    """The driver's module stream is enabled before the install: the repository's newer branch
    (its own stream) stays out, and every vendor package is in at the matrix's version."""
    (tmp_path / "cluster.yaml").write_text(GPU_MANIFEST)
    (image,) = cluster_images(load_cluster(tmp_path / "cluster.yaml"))
    spec = image.spec
    assert spec.module_streams == ("nvidia-driver:580-open",)
    signer = rocky["signer"]
    tree = tmp_path / "tree"
    base_names = [p for p in spec.packages if p not in spec.vendor_packages]
    dummy_rocky_repo.build_tree(tmp_path / "build", tree, base_names, signer)
    vendor_pins = tuple(pin for pin in spec.pins if f"{pin.replace('=', '-', 1)}" in spec.vendor_packages)
    dummy_rocky_repo.build_vendor_repo(tmp_path / "build", tree / "cuda/rhel9/x86_64", vendor_pins, spec.module_streams[0],
                                       "590", signer)
    server = serve_directory(tree)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        trust(monkeypatch, signer.fingerprint)
        source = ImageSource(f"{base}/rocky", epel=f"{base}/epel")
        cuda = f"{base}/cuda/rhel9/x86_64/"
        repos = tuple(dataclasses.replace(r, url=cuda, key_url=f"{cuda}D42D0685.pub", fingerprint=signer.fingerprint)
                      if r.name == "cuda" else r for r in source.build_repositories(spec))
        store = ImageStore(tmp_path / "images")
        record, built = build_image(image, store, source.mirror, lambda line: None, vendor=repos)
    finally:
        server.shutdown()
    assert built and record["vendor_repositories"] == [{"name": "cuda", "url": cuda}]
    vendor = record["vendor_packages"]
    assert vendor["nvidia-driver"] == "580.95.05-1.el9" and vendor["kmod-nvidia-open-dkms"] == "580.95.05-1.el9"
    assert vendor["libnccl"] == "2.27.7-1+cuda13.0" and len(vendor) == len(spec.vendor_packages)
    versions = parse_package_list((store.folder(record["key"]) / PACKAGES).read_text())
    assert not any(v.startswith("590.") for v in versions.values())
    root = tmp_path / "unpacked"
    root.mkdir()
    subprocess.run(["tar", "-I", "zstd", "-xf", str(store.folder(record["key"]) / ARCHIVE), "-C", str(root),
                    "./etc/dnf/modules.d"], check=True)
    module = (root / "etc/dnf/modules.d/nvidia-driver.module").read_text()
    assert "stream=580-open" in module and "state=enabled" in module
