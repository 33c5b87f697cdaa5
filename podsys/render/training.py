"""The training layer's per-node-group environment file, from the hardware profile and the
manifest's networks. Pure. Each variable carries its reason and source:

- NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME: the interface for bootstrap and socket traffic;
  `=NAME` matches exactly. NCCL env docs, https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html
  (NCCL_SOCKET_IFNAME); PyTorch distributed docs (GLOO_SOCKET_IFNAME).
- NCCL_IB_HCA: which RDMA devices NCCL uses; a prefix (`mlx5`) takes every port of every
  device starting with it. Same page (NCCL_IB_HCA).
- NCCL_IB_GID_INDEX=3 on RoCE: RoCE v2 over IPv4 sits at GID index 3 on ConnectX with the
  default GID table; NCCL before 2.21 used index 0 (RoCE v1) unless told. Same page
  (NCCL_IB_GID_INDEX, "default -1 since 2.21").
- NCCL_NVLS_ENABLE: NVLink SHARP needs third-generation NVSwitch (Hopper, Blackwell HGX);
  0 elsewhere saves NCCL probing for it. Same page (NCCL_NVLS_ENABLE).
- UCX_NET_DEVICES: the RDMA ports UCX (MPI, UCC) uses, `device:port`. UCX FAQ,
  https://openucx.readthedocs.io/en/master/faq.html ("Which network devices does UCX use?").
- CUDA_DEVICE_MAX_CONNECTIONS=1: Megatron-LM refuses tensor/context parallelism without it
  (megatron/training/arguments.py, validate_args), to keep compute and communication kernels
  in issue order; set on GPU groups only.
"""

from __future__ import annotations

from podsys.cluster.model import Cluster
from podsys.layout import MODELS_HTTPS_PORT

# Layer models (roles/models): the jobs' MLflow client lives in a venv that also sees the
# system's python3-torch, and trusts the site certificate web_tls writes on the head.
# MLFLOW_TRACKING_SERVER_CERT_PATH: MLflow's environment variable for a private CA bundle
# (mlflow/environment_variables.py).
MLFLOW_CLIENT_PYTHON = "/opt/podsys/mlflow-client/bin/python3"
SITE_CERTIFICATE = "/etc/podsys/tls/site.crt"

NVLS_ARCHITECTURES = ("hopper", "blackwell")


def _line(key: str, value: str) -> str:
    return f"{key}={value}"


def group_env(cluster: Cluster, group: str) -> str:
    m = cluster.manifest
    group_spec = next(g for g in m.node_groups if g.name == group)
    profile = cluster.profiles[group_spec.hardware]
    training = m.training
    iface = training.socket_interface
    lines = [f"# Written by podsys (training layer) for node group {group} ({group_spec.hardware}).",
             "# Sourced by the sbatch template; plain KEY=value so systemd and enroot can read it too."]
    if iface:
        lines += [_line("NCCL_SOCKET_IFNAME", f"={iface}"), _line("GLOO_SOCKET_IFNAME", iface)]
    else:
        lines.append(_line("NCCL_SOCKET_IFNAME", "^lo,docker"))
    if profile.gpu is not None:
        lines.append(_line("PODSYS_DIST_BACKEND", "nccl"))
        lines.append(_line("PODSYS_GPUS_PER_NODE", str(profile.gpu.count)))
        nvls = profile.gpu.nvswitch and profile.gpu.architecture.lower() in NVLS_ARCHITECTURES
        lines.append(_line("NCCL_NVLS_ENABLE", "1" if nvls else "0"))
        lines.append(_line("CUDA_DEVICE_MAX_CONNECTIONS", "1"))
    else:
        lines.append(_line("PODSYS_DIST_BACKEND", "gloo"))
        lines.append(_line("PODSYS_GPUS_PER_NODE", "0"))
    if profile.hca is not None:
        lines.append(_line("NCCL_IB_HCA", "mlx5"))
        lines.append(_line("UCX_NET_DEVICES", ",".join(f"mlx5_{i}:1" for i in range(profile.hca.count))))
        if profile.hca.link_layer == "Ethernet":
            lines.append(_line("NCCL_IB_GID_INDEX", "3"))
    if training.pytorch == "distro":
        # Debian 12's python3-torch 1.13 on Python 3.11: torchrun cannot parse its own default
        # --redirects/--tee "0" (Std.from_str iterates the IntFlag, and 3.11 no longer yields
        # the zero member: torch/distributed/elastic/multiprocessing/api.py); "1" parses. Output
        # then reaches the job log through the tee, each line prefixed with [default<rank>]:.
        lines.append(_line("PODSYS_TORCHRUN_ARGS", '"--redirects 1 --tee 1"'))
    lines += [_line("PODSYS_IMAGE_DIR", training.image_dir), _line("PODSYS_CHECKPOINT_DIR", training.checkpoint_dir),
              _line("PODSYS_NODE_TIMEOUT", str(training.node_timeout))]
    if "models" in m.layers:
        lines += [_line("MLFLOW_TRACKING_URI", f"https://{m.head.hostname}:{MODELS_HTTPS_PORT}"),
                  _line("MLFLOW_TRACKING_SERVER_CERT_PATH", SITE_CERTIFICATE),
                  _line("PODSYS_PYTHON", MLFLOW_CLIENT_PYTHON),
                  # MLflow records the git commit when git is there; nodes have none, and GitPython
                  # would print its "Bad git executable" notice into every job log.
                  _line("GIT_PYTHON_REFRESH", "quiet")]
    lines += [_line(k, v) for k, v in sorted(training.env.items())]
    return "\n".join(lines) + "\n"


def training_vars(cluster: Cluster) -> dict:
    """{group name: env file text} for groups with the training layer."""
    groups = {n.group for n in cluster.nodes_with_layer("training")}
    return {"podsys_training_env": {g: group_env(cluster, g) for g in sorted(groups)}}
