"""Where podsys keeps things: the workspace beside a manifest (or a lab directory) and, on the
head, the paths and ports its services use. Every command reads these names from here.

Workspace (`.podsys/` next to the manifest, git-ignored):
  build/                    rendered build directory (`podsys render`, `podsys deploy`)
    logs/                   deploy logs and ansible-runner artifacts
    secrets/                secrets podsys keeps (the munge key), 0600, never printed
    deploy-state.json       last result per host (`deploy --resume`)
  check/<UTC time>/         one `podsys check` run: report and raw probe outputs
  images/<key>/             node images (`podsys image build`)
  lab/                      `podsys lab` state, key pair, logs, node roots
  deploy-<cluster>.lock     held while a deploy of that cluster runs
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

WORKSPACE_DIR = ".podsys"

# Inside a build directory.
BUILD_LOGS_DIR = "logs"
# The slurm role's slurm_munge_key_cache default spells the same folder (inventory_dir/../secrets).
BUILD_SECRETS_DIR = "secrets"
DEPLOY_STATE_FILE = "deploy-state.json"


@dataclass(frozen=True)
class Workspace:
    """The `.podsys/` folder of one directory (a manifest's, or a lab's)."""

    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / WORKSPACE_DIR

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def check_dir(self) -> Path:
        return self.root / "check"

    def check_run_dir(self, when: datetime) -> Path:
        return self.check_dir / when.strftime("%Y%m%d-%H%M%S")

    @property
    def images_dir(self) -> Path:
        """Node images built here (`podsys image build`), one folder per image key."""
        return self.root / "images"

    @property
    def lab_dir(self) -> Path:
        return self.root / "lab"

    def deploy_lock(self, cluster_name: str) -> Path:
        return self.root / f"deploy-{cluster_name}.lock"


def build_logs_dir(build_dir: Path) -> Path:
    return build_dir / BUILD_LOGS_DIR


def build_secrets_dir(build_dir: Path) -> Path:
    return build_dir / BUILD_SECRETS_DIR


def deploy_state_file(build_dir: Path) -> Path:
    return build_dir / DEPLOY_STATE_FILE


# --- the head ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadPaths:
    """Where things live on the head. The provision role's defaults use these (provision_*_root,
    provision_leases_file, provision_state_dir); tests pass their own."""

    boot_root: str = "/srv/podsys/boot"
    repo_root: str = "/srv/podsys/repo"
    tftp_root: str = "/srv/podsys/tftp"
    leases_file: str = "/var/lib/misc/podsys-dnsmasq.leases"
    access_log: str = "/var/log/nginx/podsys-access.log"
    state_dir: str = "/var/lib/podsys/provision"  # install/boot state of the status service
    image_root: str = "/srv/podsys/boot/images"  # node images, served by nginx under /boot/images/


HEAD_PATHS = HeadPaths()

# Ports podsys's services take on the head's provision address whatever the manifest says (the
# roles' defaults: package_proxy_port, slurm.conf's SlurmctldPort/SlurmdPort,
# monitoring_prometheus_port; the exporter ports reach the monitoring role through render's
# podsys_monitoring variables).
SSH_PORT = 22
PACKAGE_CACHE_PORT = 3142  # apt-cacher-ng (packages.source: proxy)
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
PROMETHEUS_PORT = 9090
NODE_EXPORTER_PORT = 9100
SLURMDBD_PORT = 6819  # on the head with the accounting layer
DCGM_EXPORTER_PORT = 9400  # on GPU nodes only, so not a head port

FIXED_HEAD_PORTS = {SSH_PORT: "sshd", PACKAGE_CACHE_PORT: "the package cache (packages.source: proxy)",
                    SLURMCTLD_PORT: "slurmctld", SLURMD_PORT: "slurmd", PROMETHEUS_PORT: "Prometheus",
                    NODE_EXPORTER_PORT: "node_exporter"}
# Layer models: nginx (TLS, basic auth) on MODELS_HTTPS_PORT in front of the MLflow server,
# which listens on 127.0.0.1:MLFLOW_PORT only (roles/models).
MODELS_HTTPS_PORT = 5443
MLFLOW_PORT = 5000
FIXED_HEAD_PORTS[MODELS_HTTPS_PORT] = "the models layer's nginx (MLflow over TLS)"

# Layer notebooks: nginx serves the hub over TLS on NOTEBOOKS_HTTPS_PORT; JupyterHub's proxy
# listens on loopback only; the hub API, which the notebook servers on the nodes call back, on
# the provision address. 8081 is JupyterHub's own default for that API but provisioning's
# status_port default too, so the hub API takes 8091 (free on the head: see FIXED_HEAD_PORTS
# and provisioning's http/status/bundle ports, which checks refuse to collide with these).
NOTEBOOKS_HTTPS_PORT = 443
JUPYTERHUB_PROXY_PORT = 8000  # configurable-http-proxy, 127.0.0.1 only (nginx in front)
JUPYTERHUB_PROXY_API_PORT = 8001  # its REST API, 127.0.0.1 only
JUPYTERHUB_API_PORT = 8091  # hub API on the provision address
NOTEBOOKS_HEAD_PORTS = {NOTEBOOKS_HTTPS_PORT: "nginx (notebooks, https)", JUPYTERHUB_PROXY_PORT: "JupyterHub's proxy",
                        JUPYTERHUB_PROXY_API_PORT: "JupyterHub's proxy API", JUPYTERHUB_API_PORT: "the JupyterHub API"}


# On every node: where the health role installs podsys health's Slurm wrappers (roles/health
# health_bin_dir); slurm.conf's HealthCheckProgram and Prolog name them.
HEALTH_BIN_DIR = "/usr/local/sbin"
HEALTH_SLURM_PROGRAM = f"{HEALTH_BIN_DIR}/podsys-health-slurm"
HEALTH_PROLOG_PROGRAM = f"{HEALTH_BIN_DIR}/podsys-health-prolog"
