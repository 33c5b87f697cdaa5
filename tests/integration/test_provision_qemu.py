"""End to end (slow, not in default CI): a QEMU VM with an empty disk PXE-boots from the lab
head's boot services, installs Debian 12 unattended from the rendered preseed, reports to the
status service, is switched to local boot, boots from its disk and answers SSH with the head's
key. Run it with `python3 -m pytest -m slow tests/integration/test_provision_qemu.py`.

The VM's NIC is a tap on the lab's provision bridge. Installer packages come from the head's
package cache (apt-cacher-ng on the head, chained to the lab's host proxy), which nginx serves
to installers as /repo/ - the production path for `packages.source: proxy`. KVM is used when
/dev/kvm works, else TCG (much slower)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from podsys.lab import cluster as labmod
from podsys.lab.plan import LabPlan
from podsys.provision.media import DEBIAN_NETBOOT_PACKAGE_DIR, add_media
from tests.integration.test_provision_role import render_variant
from tests.conftest import REPO_ROOT as REPO

pytestmark = [pytest.mark.integration, pytest.mark.lab, pytest.mark.slow]

VM_MAC = "52:54:00:6f:00:01"
VM_NAME = "vm01"
PLAYBOOK = "- name: Head node boot services\n  hosts: head\n  gather_facts: false\n  roles:\n    - role: provision\n"


def missing() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "scp"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt install qemu-system-x86 qemu-utils ipxe-qemu openssh-client)"
    if not Path("/usr/lib/ipxe/qemu/efi-virtio.rom").is_file():
        return "QEMU's iPXE option ROMs are missing (apt install ipxe-qemu)"
    if not DEBIAN_NETBOOT_PACKAGE_DIR.is_dir():
        return "Debian netboot files missing (apt install debian-installer-12-netboot-amd64)"
    return None


def kvm_works() -> bool:
    """True only if a KVM guest really executes: nested KVM can open /dev/kvm and then never
    run a guest instruction. Boots the netboot kernel and waits for its first console line."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    kernel = DEBIAN_NETBOOT_PACKAGE_DIR / "debian-installer/amd64/linux"
    with tempfile.TemporaryDirectory() as tmp:
        console = Path(tmp) / "console.log"
        proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-display", "none",
                                 "-monitor", "none", "-serial", f"file:{console}", "-no-reboot", "-kernel", str(kernel),
                                 "-append", "console=ttyS0 panic=-1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        seen = False
        while time.monotonic() < deadline and proc.poll() is None and not seen:
            time.sleep(0.5)
            seen = console.is_file() and b"Linux version" in console.read_bytes()
        proc.kill()
        proc.wait()
    return seen


def head_http(lab, url: str) -> tuple[int, str]:
    code = ("import urllib.request as u, urllib.error as e\n"
            f"try:\n r = u.urlopen({url!r}, timeout=10); print(r.status); print(r.read().decode())\n"
            "except e.HTTPError as x:\n print(x.code)\n")
    encoded = base64.b64encode(code.encode()).decode()
    out = lab.ssh(lab.head, f"python3 -c \"import base64; exec(base64.b64decode('{encoded}'))\"").stdout
    status, _, body = out.partition("\n")
    return int(status), body


def head_udeb_status(lab, repo: str) -> str | None:
    """None if the first udeb in the installer's package list downloads through `repo`
    (fetched on the head, the path the installer takes); else what went wrong."""
    code = ("import lzma, urllib.request as u, urllib.error as e\n"
            f"repo = {repo!r}\n"
            "idx = lzma.decompress(u.urlopen(repo + '/dists/bookworm/main/debian-installer/binary-amd64/Packages.xz',"
            " timeout=60).read()).decode()\n"
            "name = next(l.split(': ', 1)[1] for l in idx.splitlines() if l.startswith('Filename: '))\n"
            "try:\n u.urlopen(repo + '/' + name, timeout=60).read(); print('ok')\n"
            "except e.HTTPError as x:\n print(f'HTTP {x.code} for {name}')\n")
    encoded = base64.b64encode(code.encode()).decode()
    out = lab.ssh(lab.head, f"python3 -c \"import base64; exec(base64.b64decode('{encoded}'))\"").stdout.strip()
    return None if out == "ok" else out


def installer_dialog(serial: Path) -> str | None:
    """The text of an error dialog debian-installer shows on the serial console ("[!!] ..."),
    which means it stopped and waits for a human."""
    if not serial.is_file():
        return None
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\(.|[^\x20-\x7e\n]", " ", serial.read_text(errors="replace"))
    marker = text.rfind("[!!]")
    return " ".join(text[marker:marker + 600].split()) if marker >= 0 else None


def vm_ssh(lab, address: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    argv = ["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", f"ProxyJump={lab.head}",
            "-i", str(lab.private_key), f"root@{address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pxe_head(lab_cluster):
    reason = missing()
    if reason:
        pytest.skip(reason)
    lab = lab_cluster
    plan = LabPlan.from_dict(labmod.load_state(labmod.paths_for(lab.directory))["plan"])
    data = yaml.safe_load(lab.manifest.read_text())
    subnet = data["networks"]["provision"]["cidr"].rsplit(".", 1)[0]
    vm_ip = f"{subnet}.200"
    pub = Path(str(lab.private_key) + ".pub")
    if not pub.is_file():
        pub_text = subprocess.run(["ssh-keygen", "-y", "-f", str(lab.private_key)], capture_output=True, text=True,
                                  check=True).stdout.strip()
        data.setdefault("provisioning", {})["root_authorized_keys"] = [pub_text]
    data["node_groups"].append({"name": "pxevm", "hosts": VM_NAME, "hardware": "cpu-only", "start_address": vm_ip,
                                "disk": "/dev/vda", "provisioning": {"method": "installer"},
                                "nodes": {VM_NAME: {"mac": VM_MAC}}})
    build, cluster = render_variant(lab.directory, "e2e", data)
    playbook = lab.directory / "e2e-play.yml"
    playbook.write_text(PLAYBOOK)
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "playbooks/roles"), "ANSIBLE_NOCOLOR": "1"}
    exe = Path(sys.executable).parent / "ansible-playbook"
    play = subprocess.run([str(exe) if exe.is_file() else "ansible-playbook", "-i", str(build / "inventory/hosts.yml"),
                           str(playbook)], capture_output=True, text=True, env=env, timeout=900)
    assert play.returncode == 0, play.stdout[-3000:]
    # The head's package cache (what the package_proxy role sets up for source: proxy).
    head_ip = lab.addresses[lab.head]
    acng = (f"BindAddress: {head_ip}\\nPort: 3142\\nProxy: {lab.proxy_url}\\n")
    lab.ssh(lab.head, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends apt-cacher-ng",
            timeout=900)
    lab.ssh(lab.head, f"printf '{acng}' > /etc/apt-cacher-ng/zz-podsys.conf && "
                      f"echo '{lab.mirror.rstrip('/')}/' > /etc/apt-cacher-ng/backends_debian && "
                      "systemctl restart apt-cacher-ng")
    # Debian's network installer downloads most of itself (.udeb files) from the mirror. Some
    # mirrors reachable from sandboxes serve .deb files only; then no netboot install can
    # complete, and the test says so instead of timing out.
    udeb = head_udeb_status(lab, f"http://{head_ip}/repo/debian")
    if udeb:
        pytest.skip(f"the Debian mirror behind the head's cache serves no installer components ({udeb}): "
                    "Debian's netboot installer cannot download its .udeb files here")
    # Installer media into the boot tree, as `podsys provision media add` does on a head.
    media = lab.directory / "e2e-boot"
    add_media(DEBIAN_NETBOOT_PACKAGE_DIR, "debian-12", media)
    scp = subprocess.run(["scp", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", "-r",
                          str(media / "media/debian-12"), f"{lab.head}:/srv/podsys/boot/media/"],
                         capture_output=True, text=True, timeout=300)
    assert scp.returncode == 0, scp.stderr
    return {"lab": lab, "plan": plan, "vm_ip": vm_ip, "cluster": cluster}


@pytest.fixture(scope="module")
def vm(pxe_head, tmp_path_factory):
    plan: LabPlan = pxe_head["plan"]
    work = tmp_path_factory.mktemp("qemu")
    disk = work / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "8G"], check=True, capture_output=True)
    tap = f"{plan.prefix}-tvm"[:15]
    ns = plan.bridge_netns
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", tap, "master", plan.bridge, "up"], check=True)
    accel = ["-accel", "kvm"] if kvm_works() else ["-accel", "tcg"]  # no -cpu host: nested KVM refuses some MSRs
    argv = ["ip", "netns", "exec", ns, "qemu-system-x86_64", *accel, "-m", "1536", "-smp", "2",
            "-display", "none", "-serial", f"file:{work / 'serial.log'}", "-monitor", "none",
            "-drive", f"file={disk},if=virtio,format=qcow2",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={VM_MAC}",
            "-boot", "order=nc"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=open(work / "qemu.out", "w"), stderr=subprocess.STDOUT)
    try:
        yield {**pxe_head, "proc": proc, "work": work, "started": started, "kvm": accel[1] == "kvm"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["ip", "-n", ns, "link", "del", tap], capture_output=True)


def test_vm_pxe_installs_debian_boots_from_disk_and_answers_ssh(vm):
    lab, work = vm["lab"], vm["work"]
    status_url = f"http://{lab.addresses[lab.head]}:8081/api/v1/status"
    deadline = vm["started"] + (60 * 60 if vm["kvm"] else 150 * 60)
    seen_stages: list[str] = []
    record = {}
    while time.monotonic() < deadline:
        assert vm["proc"].poll() is None, (work / "qemu.out").read_text()[-2000:]
        dialog = installer_dialog(work / "serial.log")
        assert dialog is None, f"debian-installer stopped at a question: {dialog}"
        record = {r["node"]: r for r in json.loads(head_http(lab, status_url)[1])["nodes"]}[VM_NAME]
        if record["stage"] and (not seen_stages or seen_stages[-1] != record["stage"]):
            seen_stages.append(record["stage"])
        if record["state"] in ("installed", "failed"):
            break
        time.sleep(20)
    serial_tail = (work / "serial.log").read_text(errors="replace")[-3000:] if (work / "serial.log").exists() else ""
    assert record.get("state") == "installed", f"{record}\nstages {seen_stages}\n{serial_tail}"
    installed_after = time.monotonic() - vm["started"]
    assert record["boot"] == "local"
    assert record["started"] and record["finished"] and seen_stages, (record, seen_stages)
    # After the installer's reboot the VM PXE-boots again, is told to boot its disk, and comes up.
    address = vm["vm_ip"]
    ssh_deadline = time.monotonic() + (15 * 60 if vm["kvm"] else 40 * 60)
    result = None
    while time.monotonic() < ssh_deadline:
        result = vm_ssh(lab, address, "hostname; cat /etc/debian_version; ip -4 -o addr show")
        if result.returncode == 0:
            break
        time.sleep(15)
    assert result is not None and result.returncode == 0, f"no SSH to {address}: {result and result.stderr}\n{serial_tail}"
    lines = result.stdout.splitlines()
    assert lines[0] == VM_NAME and lines[1].startswith("12.")
    assert f"inet {address}/" in result.stdout
    total = time.monotonic() - vm["started"]
    print(f"\nQEMU e2e ({'KVM' if vm['kvm'] else 'TCG'}): installed after {installed_after / 60:.1f} min, "
          f"SSH from disk after {total / 60:.1f} min; stages seen: {seen_stages}")
