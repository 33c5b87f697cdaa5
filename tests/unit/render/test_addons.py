"""What the storage and training layers render: mount units systemd accepts (checked with the
real `systemd-analyze verify`), unit names as `systemd-escape --path` makes them, ganesha
exports, and each node group's training environment from its hardware profile."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from podsys.cluster.load import load_cluster
from podsys.render.storage import ganesha_conf, mount_unit_name, storage_mounts
from podsys.render.training import group_env
from tests.unit.manifest_samples import MACS, VALID, write_manifest

STORAGE = VALID.replace("layers: [base, gpu, infiniband, slurm, monitoring]",
                        "layers: [base, gpu, infiniband, slurm, monitoring, storage, training]") + """\
storage:
  exports: [{path: /srv/shared, squash: no_root_squash}]
  mounts:
    - {kind: nfs, source: "mu01:/srv/shared", path: /shared, options: [vers=4.1]}
    - {kind: lustre, source: "10.0.0.5@o2ib:10.0.0.6@o2ib:/scratch", path: /lustre/scratch}
    - {kind: beegfs, source: mgmt01, path: /mnt/bee-gfs}
    - {kind: gpfs, source: gpfs01, path: /gpfs/fs1, node_groups: [gpu]}
    - {kind: lab-bind, path: /labshared}
  home: /shared/home
training:
  socket_interface: bond0
  env: {NCCL_DEBUG: WARN}
"""


@pytest.fixture()
def cluster(tmp_path):
    return load_cluster(write_manifest(tmp_path, STORAGE, MACS))


@pytest.mark.parametrize("path", ["/shared", "/lustre/scratch", "/mnt/bee-gfs", "/gpfs/fs1", "/a/b.c/-x_y:z", "/caf\u00e9"])
@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="systemd-escape not installed (Debian package systemd)")
def test_unit_names_match_systemd_escape(path):
    real = subprocess.run(["systemd-escape", "--path", "--suffix=mount", path], capture_output=True, text=True, check=True)
    assert mount_unit_name(path) == real.stdout.strip()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)")
def test_every_mount_unit_passes_systemd_analyze_verify(cluster, tmp_path):
    mounts = storage_mounts(cluster)
    assert [m["kind"] for m in mounts] == ["nfs", "lustre", "beegfs", "gpfs"]  # lab-bind gets no unit
    for mount in mounts:
        unit = tmp_path / mount["name"]
        unit.write_text(mount["content"])
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert proc.returncode == 0, (mount["name"], proc.stderr)
    # The check can fail: a unit not named after its mount point is refused.
    wrong = tmp_path / "wrong.mount"
    wrong.write_text(mounts[0]["content"])
    assert subprocess.run(["systemd-analyze", "verify", str(wrong)], capture_output=True).returncode != 0


def test_mount_units_carry_kind_source_and_options(cluster):
    by_kind = {m["kind"]: m for m in storage_mounts(cluster)}
    nfs = by_kind["nfs"]["content"]
    assert "What=mu01:/srv/shared\n" in nfs and "Type=nfs\n" in nfs and "Options=_netdev,hard,vers=4.1\n" in nfs
    assert "What=10.0.0.5@o2ib:10.0.0.6@o2ib:/scratch\n" in by_kind["lustre"]["content"]
    bee = by_kind["beegfs"]["content"]
    assert "What=beegfs_nodev\n" in bee and "cfgFile=/etc/beegfs/beegfs-client.conf" in bee
    assert by_kind["gpfs"]["node_groups"] == ["gpu"] and by_kind["nfs"]["node_groups"] is None


def test_ganesha_exports_to_the_provision_network(cluster):
    conf = ganesha_conf(cluster)
    assert 'Path = "/srv/shared";' in conf and "Squash = No_Root_Squash;" in conf
    assert 'Clients = 10.10.0.0/16;' in conf and "Access_Type = RW;" in conf and "Export_Id = 1;" in conf


def test_training_env_for_an_hgx_h100_infiniband_group(cluster):
    env = dict(line.split("=", 1) for line in group_env(cluster, "gpu").splitlines() if not line.startswith("#"))
    assert env["NCCL_SOCKET_IFNAME"] == "=bond0" and env["PODSYS_DIST_BACKEND"] == "nccl"
    assert env["NCCL_NVLS_ENABLE"] == "1"  # H100 HGX: third-generation NVSwitch
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["PODSYS_GPUS_PER_NODE"] == "8"
    assert env["NCCL_IB_HCA"] == "mlx5" and env["UCX_NET_DEVICES"].startswith("mlx5_0:1,")
    assert "NCCL_IB_GID_INDEX" not in env  # InfiniBand, not RoCE
    assert env["NCCL_DEBUG"] == "WARN"


def test_training_env_on_roce_a100_and_cpu_only_groups(tmp_path):
    text = STORAGE.replace("hardware: hgx-h100-8gpu", "hardware: roce-a100").replace(
        "hardware_profiles: {}", "") + """\
hardware_profiles:
  roce-a100:
    gpu: {model: A100, product_name: NVIDIA A100-SXM4-80GB, count: 8, architecture: Ampere,
          compute_capability: "8.0", nvswitch: true}
    hca: {count: 4, rate_gbps: 200, link_layer: Ethernet}
"""
    cluster = load_cluster(write_manifest(tmp_path, text, MACS))
    env = dict(line.split("=", 1) for line in group_env(cluster, "gpu").splitlines() if not line.startswith("#"))
    assert env["NCCL_IB_GID_INDEX"] == "3"  # RoCE v2
    assert env["NCCL_NVLS_ENABLE"] == "0"  # Ampere NVSwitch has no NVLink SHARP
    assert env["UCX_NET_DEVICES"] == "mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1"


def test_dump_headers_of_mysql_and_mariadb_are_recognised():
    from podsys.addons.accounting import is_dump

    # MariaDB 10.11.18 on Debian 12 (the lab head's `mysqldump --single-transaction --databases
    # slurm_acct_db | head -2`, captured by hand): the sandbox line comes first.
    assert is_dump(b"/*M!999999\\- enable the sandbox mode */ \n"
                   b"-- MariaDB dump 10.19  Distrib 10.11.18-MariaDB, for debian-linux-gnu (x86_64)\n")
    assert not is_dump(b"hello\nworld\n") and not is_dump(b"")
