"""Air-gapped use of the bundle on a lab cluster (about a minute; the node is put back as it was): the head installs podsys from the bundle's
wheels (python3-venv itself from the bundle's repository), verifies the bundle and serves it; a
compute node that can reach nothing but the head gets the bundle source from the package_source
role and installs Slurm's node daemon, munge and the Prometheus node exporter from it, which then
run. (The full `podsys deploy` from the bundle needs the package_proxy role's bundle mode; see
the report.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_bundle import LAB, _skip_unless_ready, podsys
from tests.integration.test_stack_roles import _failures, run_roles, _vars

pytestmark = [pytest.mark.integration, pytest.mark.lab]

REMOTE = "/srv/podsys-bundle-airgap"
PORT = 8080
NODE_PACKAGES = ["slurmd", "munge", "prometheus-node-exporter"]
ONLY = ["python3-venv", "python3-apt", "gpgv", *NODE_PACKAGES]


@pytest.fixture(scope="module")
def airgap_bundle(tmp_path_factory) -> Path:
    _skip_unless_ready()
    out = tmp_path_factory.mktemp("airgap") / "bundle"
    args = ["bundle", "build", str(LAB), "--output", str(out), "--no-installer"]
    for name in ONLY:
        args += ["--only", name]
    podsys(*args)
    return out


def _push(lab, bundle: Path, node: str) -> None:
    lab.ssh(node, f"rm -rf {REMOTE} && mkdir -p {REMOTE}")
    tops = [p.name for p in bundle.iterdir() if p.name not in ("keys", ".work")]
    tar = subprocess.Popen(["tar", "-C", str(bundle), "-cf", "-", *tops], stdout=subprocess.PIPE)
    subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", node, f"tar -C {REMOTE} -xf -"],
                   stdin=tar.stdout, check=True, capture_output=True)
    assert tar.wait() == 0


def test_head_serves_the_bundle_and_a_cut_off_node_installs_from_it(fresh_lab_cluster, airgap_bundle, tmp_path):
    lab = fresh_lab_cluster
    head, node = lab.head, lab.nodes[-1]
    head_ip = lab.addresses[head]
    _push(lab, airgap_bundle, head)
    check_installed = "dpkg-query -W -f='${Package} ${Status}\\n' " + " ".join([*NODE_PACKAGES, "python3-apt"])
    before = lab.ssh(node, check_installed, check=False).stdout
    added = [p for p in [*NODE_PACKAGES, "python3-apt"] if f"{p} install ok installed" not in before]
    only_bundle = (f"-o Dir::Etc::SourceList={REMOTE}.list -o Dir::Etc::SourceParts=/nonexistent "
                   "-o Acquire::http::Proxy=DIRECT")
    lab.ssh(head, f"echo 'deb [signed-by={REMOTE}/repo/podsys-site.gpg] file:{REMOTE}/repo bookworm main' > {REMOTE}.list")
    try:
        # The head: python3-venv from the bundle's repository only, podsys from its wheels only.
        lab.ssh(head, f"apt-get {only_bundle} update -q && DEBIAN_FRONTEND=noninteractive "
                      f"apt-get {only_bundle} install -y -q python3-venv", timeout=900)
        lab.ssh(head, f"python3 -m venv /opt/podsys-airgap && /opt/podsys-airgap/bin/pip install -q --no-index "
                      f"--find-links {REMOTE}/wheels podsys", timeout=900)
        verify = lab.ssh(head, f"/opt/podsys-airgap/bin/podsys bundle verify {REMOTE} --json")
        assert json.loads(verify.stdout)["ok"] is True
        lab.ssh(head, f"systemd-run --unit podsys-bundle-airgap /opt/podsys-airgap/bin/podsys bundle serve {REMOTE} "
                      f"--bind {head_ip} --port {PORT}")
        # The service is up once it answers (systemd-run returns before podsys has started).
        lab.ssh(head, "for i in $(seq 60); do python3 -c \"import urllib.request; urllib.request.urlopen("
                      f"'http://{head_ip}:{PORT}/repo/podsys-site.asc', timeout=2)\" 2>/dev/null && exit 0; sleep 0.5; done; "
                      "systemctl status podsys-bundle-airgap; exit 1")

        # The node: no route anywhere but the head.
        cut_off = lab.ssh(node, "python3 -c \"import urllib.request; urllib.request.urlopen('http://deb.debian.org/', timeout=5)\"",
                          check=False)
        assert cut_off.returncode != 0
        lab.ssh(node, "mkdir -p /root/apt-sources-before && mv /etc/apt/sources.list /etc/apt/sources.list.d/* "
                      "/root/apt-sources-before/ 2>/dev/null; true")
        variables = _vars("r535-cuda12.2", None, package_source_bundle_base_url=f"http://{head_ip}:{PORT}")
        variables["package_source_bundle_repo_url"] = f"http://{head_ip}:{PORT}/repo"
        variables["package_source_bundle_key_url"] = f"http://{head_ip}:{PORT}/repo/podsys-site.asc"
        rc, events = run_roles(tmp_path / "source", lab, ["package_source"], variables, check=False,
                               aliases={node: {"ansible_host": node}})
        assert rc == 0, _failures(events)
        listing = lab.ssh(node, "cat /etc/apt/sources.list.d/*.sources; apt-get update 2>&1", check=False)
        install = lab.ssh(node, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {' '.join(NODE_PACKAGES)}", timeout=900, check=False)
        assert install.returncode == 0, listing.stdout + install.stderr
        assert lab.ssh(node, "systemctl is-active prometheus-node-exporter").stdout.strip() == "active"
        metrics = lab.ssh(node, "python3 -c \"import urllib.request; "
                                "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=10).read().decode())\"")
        assert "node_cpu_seconds_total" in metrics.stdout
        assert re.match(r"slurm(-wlm)? \d+\.\d+", lab.ssh(node, "slurmd -V").stdout)
        policy = lab.ssh(node, "apt-cache policy slurmd").stdout
        assert f"http://{head_ip}:{PORT}/repo bookworm/main" in policy
    finally:
        lab.ssh(head, "systemctl stop podsys-bundle-airgap; rm -rf /opt/podsys-airgap", check=False)
        lab.ssh(head, f"rm -rf {REMOTE} {REMOTE}.list", check=False)
        # Put the node back as it was: only what this test added goes, no autoremove.
        purge = f"apt-get purge -y -q {' '.join(added)}; " if added else ""
        lab.ssh(node, f"DEBIAN_FRONTEND=noninteractive {purge}rm -f /etc/apt/sources.list.d/podsys-bundle.sources "
                      "/etc/apt/apt.conf.d/80podsys-bundle-direct /usr/share/keyrings/podsys-bundle.asc; "
                      "mv /root/apt-sources-before/sources.list /etc/apt/ 2>/dev/null; "
                      "mv /root/apt-sources-before/* /etc/apt/sources.list.d/ 2>/dev/null; rm -rf /root/apt-sources-before; "
                      "apt-get update -q >/dev/null 2>&1; true", check=False, timeout=900)
