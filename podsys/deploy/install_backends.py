"""The real side of `podsys deploy`'s installs (podsys/deploy/installs.py): the head's install
state (over SSH, or the status service's URL), BMC power, the SSH probe and Slurm drains.
Every function here talks to something that cannot run in a unit test; each is small."""

from __future__ import annotations

import shlex
import urllib.error
import urllib.request
from typing import Mapping

from podsys.cluster.model import Cluster
from podsys.deploy.head_exec import run_on_head
from podsys.deploy.installs import NodeRecord, records_from_state_show, records_from_status_json
from podsys.errors import InputError, PodsysError, Problem
from podsys.layout import HEAD_PATHS

# Where the provision role puts the state tool and the node list on the head
# (podsys/playbooks/roles/provision/defaults/main.yml: provision_service_dir, provision_config_dir).
HEAD_SERVICE_DIR = "/opt/podsys-provision"
HEAD_NODES_FILE = "/etc/podsys/provision/nodes.json"


def state_command(action: str, names: list[str] = ()) -> str:
    """The provision role's own state tool on the head (the one its `init` task runs)."""
    argv = ["/usr/bin/python3", "-m", "podsys.provision.state", action, *names, "--nodes", HEAD_NODES_FILE,
            "--state-dir", HEAD_PATHS.state_dir, "--boot-root", HEAD_PATHS.boot_root]
    return f"PYTHONPATH={HEAD_SERVICE_DIR} " + " ".join(shlex.quote(a) for a in argv)


def head_records(cluster: Cluster) -> dict[str, NodeRecord]:
    return records_from_state_show(run_on_head(cluster, state_command("show"), timeout=60).decode(errors="replace"))


def url_records(url: str, timeout: float = 10) -> dict[str, NodeRecord]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/status", timeout=timeout) as resp:
            text = resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise PodsysError(f"cannot read the status service at {url}: {getattr(exc, 'reason', exc)}") from None
    return records_from_status_json(text)


def set_install_on_head(cluster: Cluster, names: list[str]) -> str:
    """`podsys reinstall` from a workstation: the head switches the nodes to `install`."""
    return run_on_head(cluster, state_command("install", names), timeout=60).decode(errors="replace").strip()


def bmc_power(cluster: Cluster):
    """(power function, nodes it reaches), or (None, []) without a `bmc` section. The function
    sets next boot to PXE and power-cycles (or powers on) every node at once; it returns each
    node's error, "" when it worked, with the password masked."""
    from podsys.provision.power import BMCTarget, backend_for, run_power

    if cluster.manifest.bmc is None:
        return None, []
    backend, password = backend_for(cluster)
    reachable = [n.name for n in cluster.nodes if n.bmc_ip]

    def power(names: list[str]) -> Mapping[str, str]:
        targets = [BMCTarget(n, cluster.node(n).bmc_ip or "") for n in names]
        return {r.node: "" if r.ok else r.message for r in run_power(targets, "pxe", backend, secret=password)}

    return power, reachable


class SSHProbe:
    """Does the node answer SSH as the access user with the access key (the head's key, which
    the ramdisk put in root's authorized_keys)? Host keys are checked like every podsys SSH:
    the keys the ramdisk reported for this install are written to access.known_hosts_file
    first, as the only way to trust a freshly installed node without trusting on first use."""

    def __init__(self, cluster: Cluster, executor=None):  # executor: a test's fake, else paramiko's
        from podsys.checks.runner import AccessSettings, SSHExecutor

        self.cluster = cluster
        self.executor = executor or SSHExecutor(AccessSettings.from_cluster(cluster), connect_timeout=10)

    def trust_host_keys(self, node: str, keys: tuple[str, ...]) -> str:
        """Write the node's reported keys for its name, FQDN and provision address; "" when
        done, else why they cannot be trusted."""
        from podsys.provision.known_hosts import write_known_hosts

        access = self.cluster.access
        if access.known_hosts_file is None:
            return f"access.known_hosts_file is not set: cannot trust {node}'s new host keys"
        spec = self.cluster.node(node)
        try:
            write_known_hosts(access.known_hosts_file, [spec.name, spec.fqdn, spec.provision_ip], keys, access.port)
        except OSError as exc:
            return f"cannot write {node}'s new host keys to {access.known_hosts_file}: {exc}"
        return ""

    def __call__(self, node: str, record: NodeRecord) -> str:
        from podsys.checks.live import Probe

        # A node that reported no keys (a ramdisk from before the report) is probed as it was:
        # the admin may have put its keys in known_hosts by hand.
        if record.host_keys:
            why = self.trust_host_keys(node, record.host_keys)
            if why:
                return why
        result = self.executor.run(Probe(node, "install-reachable", "true", timeout=20))
        if result.rc == 0:
            return ""
        return result.error or f"rc {result.rc}: {(result.stderr or result.stdout).strip()[-200:]}"

    def close(self) -> None:
        self.executor.close()
