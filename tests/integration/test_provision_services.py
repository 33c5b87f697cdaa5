"""The head's boot services, really run: dnsmasq, nginx and the status service started from the
rendered configuration in a network namespace with a bridge, and clients in other namespaces.

Topology (names carry a per-run prefix so parallel runs cannot collide):
  <p>-srv  br0 10.213.77.1/24: dnsmasq (DHCP+TFTP), nginx :80, status service :8081
  <p>-c1   eth0 (MAC of node n1) -> DHCP probes; later 10.213.77.11 = n1's address
  <p>-c2   eth0 (a MAC not in the manifest) -> no offer; later 10.213.77.99, not a node
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from podsys.cluster.load import load_cluster
from podsys.layout import HeadPaths
from podsys.provision.render import boot_script, render_files
from podsys.provision.state import StateStore, load_nodes_file
from tests.conftest import podsys

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SUBNET = "10.213.77"
HEAD = f"{SUBNET}.1"
MACS = {"n1": "02:50:53:00:00:01", "n2": "02:50:53:00:00:02", "n3": "02:50:53:00:00:03"}
UNKNOWN_MAC = "02:50:53:00:00:99"
IPXE_DIR = Path("/usr/lib/ipxe")

MANIFEST = f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: pxt, domain: pxt.local}}
head: {{hostname: head, interface: br0, address: {HEAD}}}
networks:
  provision: {{cidr: {SUBNET}.0/24, gateway: {SUBNET}.254}}
os: {{distro: debian, version: "12"}}
provisioning:
  dns: true
  root_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPodsysTestKeyOnlyForTests000000000000000000 test@head"]
node_groups:
  - name: compute
    hosts: n[1-3]
    hardware: cpu-only
    start_address: {SUBNET}.11
    disk: /dev/vda
    provisioning: {{method: installer}}
    nodes:
""" + "".join(f'      {n}: {{mac: "{m}"}}\n' for n, m in MACS.items())


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "dnsmasq", "nginx", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (see .ci/apt-packages.txt)"
    if not (IPXE_DIR / "undionly.kpxe").is_file():
        return "Debian's ipxe package is not installed (/usr/lib/ipxe)"
    return None


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Lab:
    def __init__(self, root: Path):
        self.prefix = "psp" + uuid.uuid4().hex[:6]
        self.srv, self.c1, self.c2 = (f"{self.prefix}-{s}" for s in ("srv", "c1", "c2"))
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.paths = HeadPaths(
            boot_root=str(root / "boot"), repo_root=str(root / "repo"), tftp_root=str(root / "tftp"),
            leases_file=str(root / "dnsmasq.leases"), access_log=str(root / "nginx-access.log"),
        )
        self.state_dir = root / "state"

    # network --------------------------------------------------------------------------------
    def up_network(self) -> None:
        for ns in (self.srv, self.c1, self.c2):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.srv, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.srv, "addr", "add", f"{HEAD}/24", "dev", "br0")
        sh("ip", "-n", self.srv, "link", "set", "br0", "up")
        for i, (ns, mac) in enumerate(((self.c1, MACS["n1"]), (self.c2, UNKNOWN_MAC)), start=1):
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", self.srv)
            sh("ip", "-n", self.srv, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")

    def in_ns(self, ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, **kw)

    def start(self, ns: str, argv: list[str], log: str) -> subprocess.Popen:
        out = open(self.root / log, "w")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    # services --------------------------------------------------------------------------------
    def render(self) -> dict[str, str]:
        manifest = self.root / "cluster.yaml"
        manifest.write_text(MANIFEST)
        self.cluster = load_cluster(manifest)
        files = render_files(self.cluster, self.paths)
        self.files = files
        for rel, content in files.items():
            target = self.root / "build" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        # What the provision role does on the head: boot tree, TFTP root, boot states.
        shutil.copytree(self.root / "build/provision/boot", self.paths.boot_root)
        Path(self.paths.repo_root, "debian/dists").mkdir(parents=True)
        Path(self.paths.tftp_root).mkdir()
        for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi"):
            shutil.copyfile(IPXE_DIR / name, Path(self.paths.tftp_root) / name)
        nodes, default = load_nodes_file(self.root / "build/provision/nodes.json")
        self.store = StateStore(self.state_dir, Path(self.paths.boot_root), nodes, default)
        self.store.init_boot_states()
        return files

    def start_services(self) -> None:
        build = self.root / "build/provision"
        self.start(self.srv, ["dnsmasq", "--keep-in-foreground", f"--conf-file={build}/dnsmasq.conf",
                              f"--pid-file={self.root}/dnsmasq.pid", "--user=root", "--group=root",
                              "--log-facility=-"], "dnsmasq.log")
        (self.root / "nginx-tmp").mkdir()
        wrapper = self.root / "nginx.conf"
        temp = self.root / "nginx-tmp"
        wrapper.write_text(
            "user root;\nworker_processes 1;\ndaemon off;\n"
            f"pid {self.root}/nginx.pid;\nerror_log {self.root}/nginx-error.log;\n"
            "events { worker_connections 64; }\n"
            "http {\n  include /etc/nginx/mime.types;\n"
            + "".join(f"  {k}_temp_path {temp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  include {build}/nginx-site.conf;\n}}\n"
        )
        self.start(self.srv, ["nginx", "-c", str(wrapper), "-e", str(self.root / "nginx-error.log")], "nginx.log")
        self.start(self.srv, [sys.executable, "-m", "podsys.provision.status", "--nodes", str(build / "nodes.json"),
                              "--state-dir", str(self.state_dir), "--listen", HEAD, "--port", "8081"], "status.log")
        sh("ip", "-n", self.c1, "addr", "add", f"{SUBNET}.11/24", "dev", "eth0")
        sh("ip", "-n", self.c2, "addr", "add", f"{SUBNET}.99/24", "dev", "eth0")
        for url in (f"http://{HEAD}/boot/ipxe/boot.ipxe", f"http://{HEAD}:8081/api/v1/status"):
            deadline = time.monotonic() + 20
            while self.curl(self.c1, url)[0] != 200:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} never came up; logs in {self.root}")
                time.sleep(0.2)

    def curl(self, ns: str, url: str) -> tuple[int, str]:
        proc = self.in_ns(ns, "curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}", url, check=False)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), body

    def probe(self, ns: str, mac: str, *extra: str) -> dict | None:
        proc = self.in_ns(ns, sys.executable, str(HERE / "dhcp_probe.py"), "eth0", mac, *extra)
        return json.loads(proc.stdout)["offer"]

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for ns in (self.srv, self.c1, self.c2):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _missing_requirements()
    if reason:
        pytest.skip(reason)
    lab = Lab(tmp_path_factory.mktemp("provision-services"))
    try:
        lab.up_network()
        lab.render()
        lab.start_services()
        yield lab
    finally:
        lab.down()


# --- DHCP ------------------------------------------------------------------------------------

def test_bios_client_gets_its_reservation_and_undionly(lab):
    offer = lab.probe(lab.c1, MACS["n1"], "--arch", "0")
    assert offer is not None
    assert (offer["yiaddr"], offer["hostname"], offer["file"]) == (f"{SUBNET}.11", "n1", "undionly.kpxe")
    assert offer["siaddr"] == HEAD and offer["netmask"] == "255.255.255.0" and offer["router"] == f"{SUBNET}.254"


def test_uefi_x86_client_gets_snponly(lab):
    offer = lab.probe(lab.c1, MACS["n2"], "--arch", "7")
    assert offer is not None
    assert (offer["yiaddr"], offer["hostname"], offer["file"]) == (f"{SUBNET}.12", "n2", "snponly.efi")


def test_arm64_uefi_client_gets_the_arm64_ipxe(lab):
    offer = lab.probe(lab.c1, MACS["n3"], "--arch", "11")
    assert offer is not None
    assert (offer["yiaddr"], offer["file"]) == (f"{SUBNET}.13", "ipxe-arm64.efi")


def test_ipxe_client_is_chained_to_the_http_script(lab):
    offer = lab.probe(lab.c1, MACS["n1"], "--arch", "7", "--user-class", "iPXE")
    assert offer is not None
    assert offer["file"] == f"http://{HEAD}/boot/ipxe/boot.ipxe"


def test_unknown_mac_gets_no_offer(lab):
    assert lab.probe(lab.c2, UNKNOWN_MAC, "--arch", "0", "--timeout", "3") is None


def test_tftp_serves_the_first_stage_file(lab):
    out = lab.root / "fetched.kpxe"
    lab.in_ns(lab.c1, "curl", "-sS", "-m", "20", "-o", str(out), f"tftp://{HEAD}/undionly.kpxe")
    assert out.read_bytes() == (IPXE_DIR / "undionly.kpxe").read_bytes()


def dns_query(name: str) -> bytes:
    header = struct.pack("!HHHHHH", 0x5053, 0x0100, 1, 0, 0, 0)  # id, RD, one question
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)  # A, IN


def test_dns_answers_node_names_when_enabled(lab):
    """provisioning.dns: true -> dnsmasq answers for the cluster domain from its reservations."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
        f"s.sendto(bytes.fromhex('{dns_query('n2.pxt.local').hex()}'), ('{HEAD}', 53))\n"
        "print(s.recv(512).hex())\n"
    )
    reply = bytes.fromhex(lab.in_ns(lab.c1, sys.executable, "-c", code).stdout.strip())
    answers = struct.unpack("!H", reply[6:8])[0]
    assert reply[3] & 0x0F == 0 and answers >= 1  # NOERROR with an answer
    assert reply[-4:] == bytes([10, 213, 77, 12])  # the A record: n2's reserved address


def test_dnsmasq_accepts_every_rendered_variant(tmp_path):
    """dnsmasq's own syntax check on the config for each manifest option that changes it."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed")
    variants = {
        "dns-off": "",
        "dns-on": "  dns: true\n",
        "discovery": "  discovery: {enabled: true, range_start: 10.213.77.100, range_end: 10.213.77.150}\n",
    }
    for name, extra in variants.items():
        manifest = tmp_path / f"{name}.yaml"
        manifest.write_text(MANIFEST.replace("  dns: true\n", extra).replace(
            "provision: {cidr", "provision: {mtu: 9000, cidr"))
        conf = tmp_path / f"{name}.conf"
        conf.write_text(render_files(load_cluster(manifest))["provision/dnsmasq.conf"])
        proc = sh("dnsmasq", "--test", f"--conf-file={conf}", check=False)
        assert proc.returncode == 0 and "syntax check OK" in proc.stderr, (name, proc.stderr)
    broken = tmp_path / "broken.conf"
    broken.write_text(conf.read_text().replace("dhcp-range=set:provision,", "dhcp-range=set:provision,nonsense,"))
    assert sh("dnsmasq", "--test", f"--conf-file={broken}", check=False).returncode != 0


# --- HTTP boot tree ------------------------------------------------------------------------------

def test_node_in_install_state_boots_the_installer(lab):
    lab.store.set_boot_state(["n2"], "install")
    code, body = lab.curl(lab.c1, f"http://{HEAD}/boot/ipxe/nodes/02-50-53-00-00-02.ipxe")
    assert code == 200
    assert body.startswith("#!ipxe")
    assert f"kernel http://{HEAD}/boot/media/debian-12/vmlinuz" in body
    assert f"url=http://{HEAD}/boot/nodes/n2/preseed.cfg" in body
    assert "sanboot" not in body
    # nginx hands over the status service's script unchanged: what render's table makes
    assert body == boot_script(lab.files, MACS["n2"], "install")
    assert not (Path(lab.paths.boot_root) / "ipxe/nodes").exists()  # made per request, no files
    # The installer config (root keys, hash) is served to its own node's address only.
    code, preseed = lab.curl(lab.c1, f"http://{HEAD}/boot/nodes/n2/preseed.cfg")
    assert code == 403 and "netcfg" not in preseed


def test_installer_config_is_served_to_its_own_node_only(lab):
    code, preseed = lab.curl(lab.c1, f"http://{HEAD}/boot/nodes/n1/preseed.cfg")  # c1 is n1's address
    assert code == 200 and f"netcfg/get_ipaddress string {SUBNET}.11" in preseed
    for path in ("/boot/nodes/n1/preseed.cfg", "/boot/nodes/n3/preseed.cfg", "/boot/nodes/", "/boot/nodes/n1/"):
        code, body = lab.curl(lab.c2, f"http://{HEAD}{path}")  # c2: on the network, not a node
        assert code == 403 and "netcfg" not in body, (path, code)
    code, _ = lab.curl(lab.c1, f"http://{HEAD}/boot/nodes/n3/preseed.cfg")
    assert code == 403


def test_node_in_local_state_boots_the_disk(lab):
    lab.store.set_boot_state(["n3"], "local")
    code, body = lab.curl(lab.c1, f"http://{HEAD}/boot/ipxe/nodes/02-50-53-00-00-03.ipxe")
    assert code == 200
    assert "sanboot --no-describe --drive 0x80" in body and "kernel" not in body
    assert body == boot_script(lab.files, MACS["n3"], "local")


def test_unknown_mac_gets_no_boot_script(lab):
    """A MAC that is not in the manifest gets 404 through nginx; boot.ipxe then boots the disk."""
    for name in (UNKNOWN_MAC.replace(":", "-") + ".ipxe", "02-50-53-00-00-01", "nodes-state.json", ""):
        code, body = lab.curl(lab.c2, f"http://{HEAD}/boot/ipxe/nodes/{name}")
        assert code == 404 and "#!ipxe" not in body, (name, code)
    entry = lab.curl(lab.c2, f"http://{HEAD}/boot/ipxe/boot.ipxe")[1]
    assert "|| goto nonode" in entry and "sanboot" in entry.split(":nonode", 1)[1]


def test_nothing_outside_the_boot_tree_is_served(lab):
    (Path(lab.paths.boot_root) / "escape").symlink_to("/etc/passwd")
    for path in ("/etc/passwd", "/", "/boot/../etc/passwd", "/boot/escape", "/nginx.conf", "/state/"):
        code, body = lab.curl(lab.c1, f"http://{HEAD}{path}")
        assert code in (400, 403, 404), (path, code)
        assert "root:x:" not in body
    code, _ = lab.curl(lab.c1, f"http://{HEAD}/boot/ipxe/")
    assert code in (403, 404)  # no directory listings of the boot tree


# --- install callbacks ---------------------------------------------------------------------------

def test_callbacks_move_a_node_through_its_install(lab):
    lab.store.set_boot_state(["n1"], "install")
    base = f"http://{HEAD}:8081/api/v1/callback"
    assert lab.curl(lab.c1, f"{base}?event=start")[0] == 200
    rows = {r["node"]: r for r in json.loads(lab.curl(lab.c1, f"http://{HEAD}:8081/api/v1/status")[1])["nodes"]}
    assert rows["n1"]["state"] == "installing" and rows["n1"]["started"]
    assert lab.curl(lab.c1, f"{base}?event=stage&stage=partitioning")[0] == 200
    rows = {r["node"]: r for r in json.loads(lab.curl(lab.c1, f"http://{HEAD}:8081/api/v1/status")[1])["nodes"]}
    assert rows["n1"]["stage"] == "partitioning"
    assert lab.curl(lab.c1, f"{base}?event=finish&message=done")[0] == 200
    rows = {r["node"]: r for r in json.loads(lab.curl(lab.c1, f"http://{HEAD}:8081/api/v1/status")[1])["nodes"]}
    assert rows["n1"]["state"] == "installed" and rows["n1"]["boot"] == "local" and rows["n1"]["finished"]
    # The next PXE boot of n1 boots its disk: the served script followed the state.
    code, script = lab.curl(lab.c1, f"http://{HEAD}/boot/ipxe/nodes/02-50-53-00-00-01.ipxe")
    assert code == 200 and "sanboot" in script and "kernel" not in script
    code, page = lab.curl(lab.c1, f"http://{HEAD}:8081/")
    assert code == 200 and 'http-equiv="refresh"' in page
    assert "<td>n1</td><td>local</td><td>installed</td>" in page


def test_callback_from_an_unlisted_address_is_refused(lab):
    before = lab.store.records()
    code, body = lab.curl(lab.c2, f"http://{HEAD}:8081/api/v1/callback?event=finish")
    assert code == 403 and "not a node" in body
    assert lab.store.records() == before


def test_podsys_status_shows_the_recorded_states(lab):
    lab.store.record_event("n2", "start")
    proc = podsys("status", lab.root / "cluster.yaml", "--state-dir", lab.state_dir, "--boot-root", lab.paths.boot_root,
                  "--json", check=True, timeout=30)
    rows = {r["node"]: r for r in json.loads(proc.stdout)["nodes"]}
    assert rows["n2"]["state"] == "installing" and rows["n2"]["started"]
    table = podsys("status", lab.root / "cluster.yaml", "--state-dir", lab.state_dir, "--boot-root", lab.paths.boot_root,
                   env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    cells = {tuple(c.strip() for c in line.split("│")[1:4]) for line in table.splitlines() if line.count("│") > 3}
    assert ("n2", "install", "installing") in cells, table
