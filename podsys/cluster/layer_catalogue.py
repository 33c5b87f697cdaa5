"""What each layer installs: the core layers and the add-ons, for `podsys layers` and the README.

One entry per layer a manifest can name in `layers:`. Roles are the Ansible roles site.yml runs
for it, packages the Debian/Ubuntu names (GPU and InfiniBand packages depend on the stack the
matrix pins: `podsys compat list` shows them), services the systemd units it leaves running,
section the manifest key that configures it and smoke the test that proves it on the lab."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from podsys.cluster.schema import ADDON_LAYERS


@dataclass(frozen=True)
class LayerInfo:
    name: str
    summary: str
    roles: tuple[str, ...]
    packages: tuple[str, ...]
    services: tuple[str, ...]
    section: str | None
    smoke: str

    @property
    def kind(self) -> str:
        return "add-on" if self.name in ADDON_LAYERS else "core"

    def as_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind}


CATALOGUE: tuple[LayerInfo, ...] = (
    LayerInfo("base", "hostname, /etc/hosts, chrony from the head, users with fixed UIDs, apt through the head",
              ("package_proxy", "base"), ("apt-cacher-ng", "chrony"), ("apt-cacher-ng", "chrony"),
              "users, packages, access", "tests/integration/test_deploy_lab.py"),
    LayerInfo("gpu", "the stack's NVIDIA driver, fabric manager, CUDA, NCCL, DCGM",
              ("nvidia_driver", "fabric_manager", "cuda", "nccl", "dcgm"),
              ("nvidia-driver (stack pin)", "nvidia-fabricmanager", "cuda-toolkit", "libnccl2", "datacenter-gpu-manager"),
              ("nvidia-persistenced", "nvidia-fabricmanager", "nvidia-dcgm"), "gpu",
              "tests/integration/test_stack_roles.py"),
    LayerInfo("infiniband", "MLNX/DOCA OFED of the stack or inbox rdma-core, opensm, IPoIB, perftest",
              ("infiniband", "perftest"), ("doca-ofed or rdma-core", "perftest", "opensm"), ("openibd", "opensm"),
              "infiniband", "tests/integration/test_stack_roles.py"),
    LayerInfo("slurm", "munge, slurmctld on the head, slurmd on nodes, slurm.conf and gres.conf",
              ("slurm",), ("munge", "slurmctld", "slurm-client", "slurmd"), ("munge", "slurmctld", "slurmd"),
              "slurm", "tests/integration/test_deploy_lab.py"),
    LayerInfo("monitoring", "Prometheus and alert rules on the head, node_exporter everywhere, dcgm-exporter on GPU nodes",
              ("monitoring",), ("prometheus", "prometheus-node-exporter", "datacenter-gpu-manager-exporter", "grafana"),
              ("prometheus", "prometheus-node-exporter"), "monitoring", "tests/integration/test_deploy_lab.py"),
    LayerInfo("container", "NVIDIA container toolkit, enroot and the pyxis Slurm plugin",
              ("nvidia_container_toolkit",), ("nvidia-container-toolkit", "enroot", "pyxis (built)"), (),
              None, "tests/integration/test_stack_roles.py"),
    LayerInfo("accounting", "slurmdbd + MariaDB on the head, limits enforced; teams, users, fair-share, "
              "limits and QOS applied with sacctmgr; `podsys accounting backup|restore`",
              ("accounting",), ("mariadb-server", "slurmdbd"), ("mariadb", "slurmdbd"), "accounts",
              "tests/integration/test_addon_accounting.py"),
    LayerInfo("storage", "NFS export from the head (nfs-ganesha), client mounts of NFS/Lustre/BeeGFS/GPFS, "
              "per-user home and scratch directories",
              ("storage",), ("nfs-ganesha", "nfs-ganesha-vfs", "nfs-common", "lustre-client", "beegfs-client"),
              ("nfs-ganesha", "<path>.mount"), "storage", "tests/integration/test_addon_training.py"),
    LayerInfo("training", "per-group NCCL/UCX environment file, site image directory for enroot, "
              "a multi-node torchrun sbatch template with checkpoint-resume",
              ("training",), ("slurm-client (nodes)", "python3-torch (pytorch: distro; else the job's image)"), (), "training",
              "tests/integration/test_addon_training.py"),
    LayerInfo("notebooks", "JupyterHub on the head behind nginx with TLS (web_tls: the manifest's certificate or a "
              "self-signed one), PAM login with the manifest's password hashes, each user's notebook server a "
              "Slurm job on a node (batchspawner) in the shared home",
              ("web_tls", "notebooks"), ("jupyterhub", "nginx", "python3-pip", "sudo", "batchspawner (wheel)"),
              ("jupyterhub", "nginx"), "notebooks", "tests/integration/test_addon_notebooks.py"),
    LayerInfo("models", "MLflow tracking server and model registry on the head (backend in the accounting MariaDB, "
              "artifacts on shared storage) behind nginx with TLS and the users' logins on port 5443; the "
              "training template logs to it; `podsys models list`",
              ("models", "web_tls"), ("mlflow (PyPI wheels)", "PyMySQL (PyPI wheels)", "mlflow-skinny (nodes)",
                                       "nginx", "python3-venv"),
              ("mlflow", "nginx"), "models", "tests/integration/test_addon_models.py"),
)

CORE_LAYERS = tuple(info.name for info in CATALOGUE if info.kind == "core")


def layer_info(name: str) -> LayerInfo:
    for info in CATALOGUE:
        if info.name == name:
            return info
    raise KeyError(name)
