"""The GPU/IB/NCCL probes' shell plumbing, run for real by bash on this machine with the
NVIDIA/Mellanox tools replaced by shims that replay the fixtures (no GPU or HCA here)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from podsys.checks.runner import probe_load, run_checks
from podsys.checks.live_gpu import gpu_probes
from podsys.checks.live_infiniband import ib_pair_command, ib_pairs
from podsys.checks.live_nccl import nccl_multinode_command
from podsys.checks.findings import Verdict
from podsys.checks.live import Context, ProbeResult
from podsys.cluster.load import load_cluster
from tests.unit.checks.helpers import FIXTURES
from tests.conftest import REPO_ROOT as ROOT


SHIMS = {
    "nvidia-smi": """case "$*" in
  *--query-gpu=*) cat {f}/nvidia_smi_query_8xh100_healthy.csv ;;
  "topo -m") cat {f}/nvidia_smi_topo_8xh100_missing_nvlink.txt ;;
  "nvlink -s") cat {f}/nvidia_smi_nvlink_s_inactive.txt ;;
  *) echo "nvidia-smi: unexpected arguments $*" >&2; exit 2 ;;
esac""",
    "dmesg": "cat {f}/dmesg_xid79_and_downtrained_nic.txt",
    "systemd-detect-virt": "echo none",
    "lspci": '[ "$1" = -vvv ] && cat {f}/lspci_acs_enabled.txt',
    "dcgmi": '[ "$*" = "diag -r 1" ] && cat {f}/dcgmi_diag_r2_pass_dcgm3.txt',
    "ibstat": "cat {f}/ibstat_8x_ndr_degraded_and_down.txt",
    "nvbandwidth": "cat {f}/nvbandwidth_8xh100_healthy.txt",
    "all_reduce_perf": '[ "$*" = "-b 1G -e 16G -f 2 -g 8" ] && [ "$NCCL_DEBUG" = INFO ] && cat {f}/nccl_all_reduce_8xh100_single_node.txt',
}


class LocalBash:
    """Runs each probe's command with bash here, shims first on PATH."""

    def __init__(self, bin_dir: Path):
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        self.ran = []

    def run(self, probe):
        self.ran.append(probe.name)
        proc = subprocess.run(["bash", "-c", probe.command], capture_output=True, text=True, env=self.env, timeout=60)
        return ProbeResult(probe.host, probe.name, probe.command, proc.returncode, proc.stdout, proc.stderr)

    def close(self):
        pass


@pytest.fixture(scope="module")
def pod():
    return load_cluster(ROOT / "manifests" / "hgx-h100-32.yaml")


@pytest.fixture
def shims(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SHIMS.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body.format(f=FIXTURES) + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_single_gpu_node_probes_run_and_are_judged(pod, shims, tmp_path):
    executor = LocalBash(shims)
    findings = run_checks(pod, only=["gpu", "bandwidth", "infiniband", "nccl"], skip=[], limit="gpu001",
                          output_dir=tmp_path / "report", executor=executor)
    got = {(f.check, f.verdict) for f in findings}
    assert ("gpu.count", Verdict.PASS) in got
    assert ("gpu.topology", Verdict.FAIL) in got and ("gpu.nvlink", Verdict.FAIL) in got
    assert ("gpu.xid", Verdict.FAIL) in got and ("gpu.pcie_acs", Verdict.FAIL) in got
    assert ("gpu.dcgm_diag", Verdict.PASS) in got
    assert ("bandwidth.device_to_device_memcpy_write_ce", Verdict.PASS) in got
    assert ("infiniband.pcie_link", Verdict.FAIL) in got
    assert sum(1 for f in findings if f.check == "infiniband.ports" and f.verdict is Verdict.FAIL) == 2
    assert ("infiniband.errors", Verdict.SKIP) in got  # no /sys/class/infiniband on this machine
    assert ("nccl.all_reduce", Verdict.PASS) in got and ("nccl.transport", Verdict.PASS) in got
    skipped = {f.check: f.detail for f in findings if f.verdict is Verdict.SKIP}
    assert "not on PATH" in skipped["nccl.all_gather"]
    assert skipped["infiniband.ib_write_bw"] == "ib_write_bw needs two InfiniBand nodes"
    assert skipped["nccl.multinode.all_reduce"] == "multi-node NCCL needs two GPU nodes"
    assert sorted(executor.ran) == ["gpu", "infiniband", "nccl", "nvbandwidth"]
    raw = tmp_path / "report" / "raw" / "gpu001"
    assert "NV18" in (raw / "gpu.txt").read_text()


def test_missing_tools_fail_or_skip_with_reasons(pod, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    executor = LocalBash(empty)
    executor.env["PATH"] = f"{empty}:/usr/bin:/bin"  # no nvidia-smi, ibstat or nccl-tests here
    findings = run_checks(pod, only=["gpu.count", "bandwidth", "nccl", "infiniband.ports"], skip=[], limit="gpu001",
                          output_dir=tmp_path / "r", executor=executor)
    by_check = {f.check: f for f in findings}
    assert by_check["gpu.count"].verdict is Verdict.FAIL and "driver" in by_check["gpu.count"].diagnosis
    assert by_check["bandwidth.nvbandwidth"].verdict is Verdict.SKIP
    assert by_check["infiniband.ports"].verdict is Verdict.FAIL
    assert by_check["nccl.all_reduce"].verdict is Verdict.SKIP


def test_dcgm_level_changes_command_and_load(pod):
    ctx0 = Context(cluster=pod, nodes=(pod.nodes[0],), head="mu01", dcgm_level=0)
    ctx3 = Context(cluster=pod, nodes=(pod.nodes[0],), head="mu01", dcgm_level=3)
    (p0,), (p3,) = gpu_probes(ctx0), gpu_probes(ctx3)
    assert "dcgmi" not in p0.command and "dcgmi diag -r 3" in p3.command
    assert probe_load(p0, ctx0) == () and probe_load(p3, ctx3) == ("gpu001",)
    assert p3.timeout > p0.timeout


def test_pairs_and_srun_commands():
    assert ib_pairs(["a"]) == [] and ib_pairs(["a", "b"]) == [("a", "b")]
    assert ib_pairs(["a", "b", "c"]) == [("a", "b"), ("b", "c"), ("c", "a")]
    command = ib_pair_command("gpu001", "gpu002", "10.10.1.1", ["mlx5_0", "mlx5_3"])
    assert command.startswith("timeout 600 srun -N2 -n2 --ntasks-per-node=1 -w gpu001,gpu002 bash -c ")
    assert "-d mlx5_3 -p 18516 10.10.1.1" in command and "--report_gbits" in command
    multi = nccl_multinode_command(["gpu001", "gpu002"], 8)
    assert "NCCL_ALGO=Ring" in multi and "--ntasks-per-node=8" in multi and "all_reduce_perf -b 1G -e 16G -f 2 -g 1" in multi
