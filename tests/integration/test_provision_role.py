"""The provision role applied to the lab's head (a real systemd host) by ansible-playbook, then
used from a compute node as a PXE client would: DHCP with option 93, TFTP, the HTTP boot
tree, installer callbacks. The lab's containers never PXE-boot themselves, so this test renders
a copy of lab.yaml with `pxe: true` for their (real) MACs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from podsys.cluster.load import load_cluster
from tests.conftest import REPO_ROOT as REPO, podsys

pytestmark = [pytest.mark.integration, pytest.mark.lab]

HERE = Path(__file__).parent

PLAYBOOK = """\
- name: Head node boot services
  hosts: head
  gather_facts: false
  roles:
    - role: provision
"""


def ansible_playbook(build: Path, playbook: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ansible-playbook"
    argv = [str(exe) if exe.is_file() else shutil.which("ansible-playbook") or "ansible-playbook",
            "-i", str(build / "inventory/hosts.yml"), str(playbook)]
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "playbooks/roles"), "ANSIBLE_HOST_KEY_CHECKING": "True",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_PIPELINING": "True"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)


def recap(output: str) -> dict[str, int]:
    line = next(ln for ln in output.splitlines() if ln.startswith("head ") and "ok=" in ln)
    return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}


def render_variant(directory: Path, name: str, data: dict):
    """<name>-lab.yaml in `directory` from manifest data, rendered by `podsys render` into
    <name>-build (inventory and boot files). Returns (build dir, resolved cluster)."""
    manifest = directory / f"{name}-lab.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    build = directory / f"{name}-build"
    proc = podsys("render", manifest, "--output", build)
    assert proc.returncode == 0, proc.stderr
    return build, load_cluster(manifest)


@pytest.fixture(scope="module")
def provisioned(lab_cluster):
    lab = lab_cluster
    data = yaml.safe_load(lab.manifest.read_text())
    for group in data["node_groups"]:
        group["pxe"] = True
        # The boot tree checks below follow the installer's per-node config (preseed.cfg).
        group["provisioning"] = {"method": "installer"}
    build, cluster = render_variant(lab.directory, "provision", data)
    playbook = lab.directory / "provision-play.yml"
    playbook.write_text(PLAYBOOK)
    first = ansible_playbook(build, playbook)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    # Copy the test clients onto the first compute node (python3 is all a node has).
    node = lab.nodes[0]
    for script in ("dhcp_probe.py", "tftp_get.py"):
        encoded = base64.b64encode((HERE / script).read_bytes()).decode()
        lab.ssh(node, f"echo {encoded} | base64 -d > /tmp/{script}")
    return {"lab": lab, "build": build, "playbook": playbook, "cluster": cluster, "node": node}


def test_second_run_changes_nothing(provisioned):
    again = ansible_playbook(provisioned["build"], provisioned["playbook"])
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout)["changed"] == 0, again.stdout[-3000:]


def test_services_are_running_on_the_head(provisioned):
    lab = provisioned["lab"]
    for unit in ("dnsmasq", "nginx", "podsys-provision-status"):
        assert lab.ssh(lab.head, f"systemctl is-active {unit}").stdout.strip() == "active"
    assert lab.ssh(lab.head, "test -e /etc/nginx/sites-enabled/default", check=False).returncode != 0


def test_node_gets_its_reservation_and_boot_file(provisioned):
    lab, node = provisioned["lab"], provisioned["node"]
    spec = provisioned["cluster"].node(node)
    out = lab.ssh(node, f"python3 /tmp/dhcp_probe.py eth0 {spec.mac} --arch 7").stdout
    offer = json.loads(out)["offer"]
    assert offer is not None, out
    assert (offer["yiaddr"], offer["hostname"], offer["file"]) == (spec.provision_ip, node, "snponly.efi")
    out = lab.ssh(node, f"python3 /tmp/dhcp_probe.py eth0 {spec.mac} --arch 0 --user-class iPXE").stdout
    head = lab.addresses[lab.head]
    assert json.loads(out)["offer"]["file"] == f"http://{head}/boot/ipxe/boot.ipxe"
    unknown = lab.ssh(node, "python3 /tmp/dhcp_probe.py eth0 02:ff:00:00:00:01 --arch 0 --timeout 3").stdout
    assert json.loads(unknown)["offer"] is None


def test_tftp_serves_the_ipxe_binary(provisioned):
    lab, node = provisioned["lab"], provisioned["node"]
    head = lab.addresses[lab.head]
    size, digest = lab.ssh(node, f"python3 /tmp/tftp_get.py {head} undionly.kpxe /tmp/undionly.kpxe").stdout.split()
    expected = lab.ssh(lab.head, "sha256sum /usr/lib/ipxe/undionly.kpxe").stdout.split()[0]
    assert digest == expected and int(size) > 10_000


def http(lab, host: str, url: str) -> tuple[int, str]:
    code = (f"import urllib.request as u, urllib.error as e\n"
            f"try:\n r = u.urlopen({url!r}, timeout=10); print(r.status); print(r.read().decode())\n"
            f"except e.HTTPError as x:\n print(x.code)\n")
    encoded = base64.b64encode(code.encode()).decode()
    out = lab.ssh(host, f"python3 -c \"import base64; exec(base64.b64decode('{encoded}'))\"").stdout
    status, _, body = out.partition("\n")
    return int(status), body


def test_boot_tree_install_then_local_after_the_callback(provisioned):
    lab, node = provisioned["lab"], provisioned["node"]
    head = lab.addresses[lab.head]
    spec = provisioned["cluster"].node(node)
    script_url = f"http://{head}/boot/ipxe/nodes/{spec.mac.replace(':', '-')}.ipxe"
    lab.ssh(lab.head, f"PYTHONPATH=/opt/podsys-provision python3 -m podsys.provision.state install {node} "
                      "--nodes /etc/podsys/provision/nodes.json --state-dir /var/lib/podsys/provision")
    code, body = http(lab, node, script_url)
    if code != 200:
        # nginx forwards the script's path to the status service, which makes it from nodes.json
        served = lab.ssh(lab.head, "journalctl -u podsys-provision-status -n 20 --no-pager; "
                                   "tail -5 /var/log/nginx/error.log", check=False)
        pytest.fail(f"{script_url}: HTTP {code}\n{served.stdout}{served.stderr}")
    assert f"url=http://{head}/boot/nodes/{node}/preseed.cfg" in body
    assert http(lab, node, f"http://{head}/boot/nodes/{node}/preseed.cfg")[0] == 200
    # Another node's installer config (root keys, password hash) is not served to this one.
    other = next(n.name for n in provisioned["cluster"].nodes if n.name != node and n.pxe)
    assert http(lab, node, f"http://{head}/boot/nodes/{other}/preseed.cfg")[0] == 403
    for path in ("/etc/passwd", "/", "/boot/../etc/shadow", "/var/lib/podsys/provision/nodes-state.json"):
        assert http(lab, node, f"http://{head}{path}")[0] in (400, 403, 404), path
    callback = f"http://{head}:8081/api/v1/callback"
    assert http(lab, node, f"{callback}?event=start")[0] == 200
    assert http(lab, node, f"{callback}?event=finish")[0] == 200
    code, body = http(lab, node, script_url)
    assert code == 200 and "sanboot" in body and "kernel" not in body
    # The head is not a node: its callbacks are refused.
    assert http(lab, lab.head, f"{callback}?event=fail")[0] == 403
    page = http(lab, node, f"http://{head}:8081/")[1]
    assert f"<td>{node}</td><td>local</td><td>installed</td>" in page
