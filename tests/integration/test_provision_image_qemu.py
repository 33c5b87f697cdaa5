"""Image-based install, for real: `podsys image build` builds a Debian 12 node image and the
deploy ramdisk with mmdebstrap; a QEMU VM (software emulation) boots that ramdisk with the
kernel command line the head's iPXE script would give it, fetches the image over HTTP, writes
it to its blank virtio disk, reports every stage to the real status service, and reboots; the
VM then boots its disk (SeaBIOS, and OVMF for UEFI) and answers SSH with the head's key under
its own name. A corrupted download and a disk too small fail with their stage named.

What this does not cover (see README): PXE/iPXE and the BMC; here QEMU loads the ramdisk
directly (-kernel/-initrd) and user-mode networking stands in for the provision network.

Images are built once into PODSYS_IMAGE_TEST_STORE (default /var/cache/podsys/image-test) from
the host's Debian mirror, so later runs only boot VMs."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from podsys.cluster.load import load_cluster
from podsys.lab.plan import host_debian_mirror
from podsys.provision.image import cluster_images
from podsys.provision.ramdisk import ramdisk_dir
from podsys.provision.state import NodeInfo, StateStore
from podsys.provision.status import StatusServer
from tests.conftest import podsys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STORE = Path(os.environ.get("PODSYS_IMAGE_TEST_STORE", "/var/cache/podsys/image-test"))
OVMF = Path("/usr/share/ovmf/OVMF.fd")
NODE = "img01"
MAC = "52:54:00:7a:00:01"
GUEST_IP = "10.0.2.15"  # QEMU user networking's guest address; the host is 10.0.2.2
INSTALL_TIMEOUT_S = 1500
BOOT_TIMEOUT_S = 900

MANIFEST = f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: imgtest}}
head: {{hostname: head, interface: eth0, address: 10.0.2.2}}
networks:
  provision: {{cidr: 10.0.2.0/24}}
os: {{distro: debian, version: "12"}}
layers: [base, slurm, monitoring]
node_groups:
  - name: cpu
    hosts: {NODE}
    hardware: cpu-only
    start_address: {GUEST_IP}
    disk: /dev/vda
    nodes: {{{NODE}: {{mac: "{MAC}"}}}}
"""


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap --mode=root)"
    for tool in ("mmdebstrap", "qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen", "zstd"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (.ci/apt-packages.txt)"
    if host_debian_mirror() is None:
        return "no Debian mirror configured on this host"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("image")
    manifest = work / "cluster.yaml"
    manifest.write_text(MANIFEST)
    started = time.monotonic()
    proc = podsys("image", "build", manifest, "--store", STORE, "--mirror", host_debian_mirror(),
                  "--apt-option", 'Acquire::Check-Valid-Until "false"', timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (image,) = cluster_images(load_cluster(manifest))
    listed = json.loads(podsys("image", "list", "--store", STORE, "--json", check=True).stdout)
    (record,) = [r for r in listed if r["key"] == image.spec.key]
    print(f"image build: {time.monotonic() - started:.0f} s ({proc.stdout.strip()})")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return {"work": work, "record": record, "key": key, "manifest": manifest}


class Head:
    """The head's two HTTP services for the VM: the boot tree (images, ramdisk, keys) and the
    real status service, each on a free localhost port that the guest reaches as 10.0.2.2.
    QEMU's user networking makes the guest's connections come from 127.0.0.1."""

    def __init__(self, work: Path, record: dict, key: Path, corrupt: bool = False):
        self.boot = work / f"boot-{'bad' if corrupt else 'good'}"
        self.boot.mkdir(exist_ok=True)
        image_dir = STORE / record["key"]
        served = self.boot / record["key"]
        served.mkdir(exist_ok=True)
        for f in image_dir.iterdir():
            target = served / f.name
            if not target.exists():
                target.symlink_to(f)
        if corrupt:
            (served / "image.sha256").unlink()
            (served / "image.sha256").write_text("0" * 64 + "  image.tar.zst\n")
        ramdisk = ramdisk_dir(STORE)
        if not (self.boot / ramdisk.name).exists():
            (self.boot / ramdisk.name).symlink_to(ramdisk)
        (self.boot / "keys").mkdir(exist_ok=True)
        (self.boot / "keys/authorized_keys").write_text(Path(str(key) + ".pub").read_text())
        handler = functools.partial(QuietFiles, directory=str(self.boot))
        self.files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.events: list[tuple[str, str, str]] = []
        store = StateStore(work / f"state-{self.boot.name}", None, {NODE: NodeInfo(NODE, "127.0.0.1", MAC)})
        original = store.record_event

        def record(name, event, stage="", message=""):
            self.events.append((event, stage, message))
            return original(name, event, stage, message)

        store.record_event = record  # type: ignore[method-assign]
        self.store = store
        self.status = StatusServer(("127.0.0.1", 0), store, "imgtest", quiet=True)
        for server in (self.files, self.status):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def urls(self, record: dict) -> dict:
        base = f"http://10.0.2.2:{self.files.server_address[1]}"
        return {"image": f"{base}/{record['key']}", "ramdisk": f"{base}/{ramdisk_dir(STORE).name}",
                "keys": f"{base}/keys/authorized_keys",
                "status": f"http://10.0.2.2:{self.status.server_address[1]}/api/v1/callback"}

    def close(self):
        for server in (self.files, self.status):
            server.shutdown()
            server.server_close()


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def qemu(disk: Path, serial: Path, firmware: str, ssh_port: int | None = None, kernel: dict | None = None,
         args: str = "") -> subprocess.Popen:
    netdev = "user,id=n0" + (f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22" if ssh_port else "")
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "2048", "-smp", "2", "-display", "none", "-no-reboot",
           "-monitor", "none", "-serial", f"file:{serial}",
           "-drive", f"file={disk},if=virtio,format=qcow2", "-netdev", netdev,
           "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"]
    if firmware == "uefi":
        cmd += ["-bios", str(OVMF)]
    if kernel:
        cmd += ["-kernel", kernel["vmlinuz"], "-initrd", kernel["initrd"], "-append", args]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ramdisk_cmdline(urls: dict) -> str:
    return (f"console=ttyS0,115200n8 podsys.image={urls['image']} podsys.status={urls['status']} "
            f"podsys.keys={urls['keys']} podsys.disk=/dev/vda podsys.hostname={NODE} podsys.fqdn={NODE}.cluster.local "
            f"podsys.mac={MAC} podsys.ip={GUEST_IP}/24 podsys.gateway=10.0.2.2 podsys.head_ip=10.0.2.2 podsys.head_name=head")


def ramdisk_files() -> dict:
    folder = ramdisk_dir(STORE)
    return {"vmlinuz": str(folder / "vmlinuz"), "initrd": str(folder / "initrd.img")}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, serial: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None and not predicate():
            break
        time.sleep(2)
    tail = serial.read_text(errors="replace")[-3000:] if serial and serial.exists() else ""
    raise AssertionError(f"{what} did not happen within {timeout} s\n--- serial console ---\n{tail}")


def ssh(port: int, key: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "root@127.0.0.1", command],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def install(built, firmware: str, disk_size: str = "4G", corrupt: bool = False):
    work = built["work"]
    head = Head(work, built["record"], built["key"], corrupt=corrupt)
    disk = work / f"{firmware}-{disk_size}-{'bad' if corrupt else 'ok'}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), disk_size], check=True)
    serial = disk.with_suffix(".install.log")
    started = time.monotonic()
    vm = qemu(disk, serial, firmware, kernel=ramdisk_files(), args=ramdisk_cmdline(head.urls(built["record"])))
    return head, vm, disk, serial, started


def node_record(head: Head) -> dict:
    return head.store.records()[NODE]


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_ramdisk_installs_the_image_and_the_node_boots_its_disk(built, firmware):
    if firmware == "uefi" and not OVMF.is_file():
        pytest.skip("OVMF not installed (Debian package ovmf)")
    head, vm, disk, serial, started = install(built, firmware)
    try:
        wait_for(lambda: vm.poll() is not None, INSTALL_TIMEOUT_S, "install and reboot", vm, serial)
        install_s = time.monotonic() - started
        rec = node_record(head)
        assert rec["state"] == "installed" and rec["boot"] == "local", (rec, serial.read_text()[-2000:])
        stages = [stage for event, stage, _ in head.events if event in ("start", "stage")]
        for expected in ("network", "fetch", "verify", "partition", "write", "bootloader", "identity"):
            assert expected in stages, f"stage {expected} never reported: {stages}"
        fetched = [int(m.split("=")[1]) for e, s, m in head.events if s == "fetch" and m.startswith("bytes=")]
        assert fetched and fetched[-1] == built["record"]["archive_bytes"]
        assert f"({firmware})" in rec["message"]
    finally:
        if vm.poll() is None:
            vm.kill()
        head.close()
    port = free_port()
    boot_serial = disk.with_suffix(".boot.log")
    booted = qemu(disk, boot_serial, firmware, ssh_port=port)
    try:
        wait_for(lambda: ssh(port, built["key"], "true").returncode == 0, BOOT_TIMEOUT_S, "SSH on the installed disk",
                 booted, boot_serial)
        out = ssh(port, built["key"], "hostname; cat /etc/machine-id; ls /etc/ssh/ssh_host_ed25519_key; "
                  "test -e /etc/munge/munge.key && echo MUNGE-KEY-BAKED || echo no-munge-key; "
                  "findmnt -no SOURCE /; test -d /sys/firmware/efi && echo uefi || echo bios; "
                  "dpkg-query -W -f='${Status}\\n' slurmd prometheus-node-exporter").stdout.split()
        assert out[0] == NODE
        assert len(out[1]) == 32
        assert out[2] == "/etc/ssh/ssh_host_ed25519_key"
        assert out[3] == "no-munge-key", "the cluster's munge key comes from the slurm role, never the image"
        assert out[4] == "/dev/vda2"
        assert out[5] == firmware
        assert out[6:].count("installed") == 2
        print(f"{firmware}: install {install_s:.0f} s (TCG), then SSH up")
    finally:
        booted.kill()
        booted.wait()


def test_corrupted_download_fails_at_verify_and_leaves_the_disk_alone(built):
    head, vm, disk, serial, _ = install(built, "bios", corrupt=True)
    try:
        wait_for(lambda: node_record(head)["state"] == "failed", INSTALL_TIMEOUT_S, "the failure report", vm, serial)
        rec = node_record(head)
        assert rec["stage"] == "verify" and rec["message"].startswith("sha256 mismatch"), rec
        assert "partition" not in [s for _, s, _ in head.events]
    finally:
        vm.kill()
        vm.wait()
        head.close()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["actual-size"] < 1 << 20, "nothing was written to the disk"


def test_disk_too_small_fails_at_partition_naming_both_sizes(built):
    head, vm, _disk, serial, _ = install(built, "bios", disk_size="1G")
    try:
        wait_for(lambda: node_record(head)["state"] == "failed", INSTALL_TIMEOUT_S, "the failure report", vm, serial)
        rec = node_record(head)
        assert rec["stage"] == "partition", rec
        assert rec["message"].startswith("disk /dev/vda has 1024 MiB, the image needs "), rec
    finally:
        vm.kill()
        vm.wait()
        head.close()
