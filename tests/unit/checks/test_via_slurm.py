"""`podsys check --via-slurm`: the heavy probes become Slurm jobs in a reservation on the idle
nodes; busy nodes get SKIP with the reason and no job. The head is a replay of what sinfo,
scontrol and srun print (formats: slurm.schedmd.com sinfo/scontrol man pages; srun passes the
job's own stdout/stderr through), the probes' outputs are the captured fixtures of
test_check_runner."""

import json
import re
import shlex

import pytest

from podsys.checks import via_slurm
from podsys.checks.findings import Verdict
from podsys.checks.live import Probe, ProbeResult
from podsys.checks.runner import run_checks
from podsys.cluster.load import load_cluster
from tests.conftest import REPO_ROOT as ROOT
from tests.unit.checks.helpers import fixture
from tests.unit.checks.test_runner import gpu_answer

HEAD = "mu01"  # the head of manifests/hgx-h100-32.yaml


@pytest.fixture(scope="module")
def pod():
    return load_cluster(ROOT / "manifests" / "hgx-h100-32.yaml")


# --- pure parts -------------------------------------------------------------------------------

def test_sinfo_states_and_idle_split():
    text = "gpu001 idle\ngpu002 allocated\ngpu002 allocated\ngpu003 mixed\ngpu004 idle*\ngpu005 drained\n"
    states = via_slurm.parse_sinfo_states(text)
    idle, busy = via_slurm.split_idle(["gpu001", "gpu002", "gpu003", "gpu004", "gpu005", "gpu006"], states)
    assert idle == ["gpu001"]
    assert busy["gpu002"] == "busy in Slurm (allocated): heavy checks run only on idle nodes"
    assert set(busy) == {"gpu002", "gpu003", "gpu004", "gpu005", "gpu006"} and "not in Slurm" in busy["gpu006"]
    with pytest.raises(ValueError, match="line 1"):
        via_slurm.parse_sinfo_states("PARTITION AVAIL TIMELIMIT NODES\n")


def test_reservation_refuses_busy_nodes_itself():
    command = via_slurm.create_reservation_command("podsys-check-1", ["gpu001", "gpu002"], "root", 42)
    assert command == "scontrol create reservation ReservationName=podsys-check-1 StartTime=now Duration=42 Nodes=gpu001,gpu002 Users=root"
    assert "IGNORE_JOBS" not in command.upper()


def test_node_probe_becomes_one_exclusive_srun_job_on_that_node():
    command = via_slurm.job_command(Probe("gpu001", "nvbandwidth", "nvbandwidth -t x", timeout=600), "podsys-check-1", HEAD, gpus=8)
    args = shlex.split(command)
    assert args[0] == "srun" and "--reservation=podsys-check-1" in args and "--exclusive" in args
    assert "--nodelist=gpu001" in args and "--nodes=1" in args and "--gres=gpu:8" in args and "--time=10" in args
    assert args[-3:-1] == ["bash", "-c"] and args[-1].endswith("; nvbandwidth -t x")
    assert via_slurm.job_of("podsys-slurm-job 4711 gpu001\n") == ("4711", "gpu001")
    assert via_slurm.job_of("srun: error: Unable to allocate resources\n") is None


def test_head_probe_gets_the_reservation_on_its_own_srun():
    probe = Probe(HEAD, "ib_write_bw-gpu001-gpu002", "timeout 600 srun -N2 -n2 -w gpu001,gpu002 bash -c 'x'")
    assert via_slurm.job_command(probe, "r1", HEAD) == "timeout 600 srun --reservation=r1 --exclusive -N2 -n2 -w gpu001,gpu002 bash -c 'x'"
    with pytest.raises(ValueError, match="without srun"):
        via_slurm.job_command(Probe(HEAD, "x", "echo hi"), "r1", HEAD)


def test_gpu_probe_splits_off_its_dcgm_diag():
    from podsys.checks.live_gpu import gpu_sections
    from podsys.checks.live import sections_script

    probe = Probe("gpu001", "gpu", sections_script(gpu_sections(2)), timeout=900)
    light, dcgm = via_slurm.split_gpu_probe(probe, gpu_sections(2))
    assert "dcgmi" not in light.command and "nvidia-smi topo -m" in light.command
    assert dcgm.name == "gpu-dcgm" and "dcgmi diag -r 2" in dcgm.command and dcgm.timeout == 900
    assert via_slurm.split_gpu_probe(probe, gpu_sections(0)) == (probe, None)


# --- the whole run against a replayed head ----------------------------------------------------

class SlurmHead:
    """SSH executor replay: the head answers sinfo/scontrol like Slurm 22.05 and runs srun jobs
    by answering the job's probe as its node would; nodes answer the light probes directly."""

    def __init__(self, states, refuse_first=None):
        self.states = dict(states)
        self.refuse_first = refuse_first  # a node that turns busy between sinfo and the reservation
        self.ran = []
        self.reservations = {}

    def run(self, probe):
        self.ran.append((probe.host, probe.name, probe.command))
        c = probe.command
        if probe.host == HEAD and c == via_slurm.SINFO_STATES:
            return ProbeResult(probe.host, probe.name, c, 0, "".join(f"{n} {s}\n" for n, s in self.states.items()))
        if probe.host == HEAD and c.startswith("scontrol create reservation"):
            nodes = re.search(r"Nodes=(\S+)", c).group(1).split(",")
            if self.refuse_first in nodes:
                self.states[self.refuse_first] = "allocated"
                self.refuse_first = None
                return ProbeResult(probe.host, probe.name, c, 1, "", "Error creating the reservation: Requested nodes are busy\n")
            name = re.search(r"ReservationName=(\S+)", c).group(1)
            self.reservations[name] = nodes
            return ProbeResult(probe.host, probe.name, c, 0, f"Reservation created: {name}\n")
        if probe.host == HEAD and c.startswith("scontrol delete"):
            self.reservations.pop(c.split("=", 1)[1])
            return ProbeResult(probe.host, probe.name, c, 0, "")
        if probe.host == HEAD and " --reservation=" in c:
            reservation = re.search(r"--reservation=(\S+)", c).group(1)
            assert reservation in self.reservations
            job_nodes = re.search(r"(?:--nodelist=|-w )(\S+)", c).group(1).split(",")
            assert set(job_nodes) <= set(self.reservations[reservation]), (job_nodes, self.reservations)
            node = job_nodes[0]
            out = gpu_answer(node, probe.name if probe.name != "gpu-dcgm" else "gpu", c)
            if probe.name == "gpu-dcgm":
                out = f"### dcgm\n{fixture('dcgmi_diag_r2_pass_dcgm3.txt')}\n"
            marker = f"podsys-slurm-job {4700 + len(self.ran)} {node}\n" if "--nodelist=" in c else ""
            return ProbeResult(probe.host, probe.name, c, 0, out, marker)
        assert probe.host != HEAD or probe.name in ("versions",), f"unexpected head command {c}"
        if probe.name in ("gpu-dcgm", "nccl", "nvbandwidth") or (probe.name == "gpu" and "dcgmi" in c):
            raise AssertionError(f"heavy probe {probe.name} went straight to {probe.host} over SSH")
        return ProbeResult(probe.host, probe.name, c, 0, gpu_answer(probe.host, probe.name, c))

    def close(self):
        pass


def verdicts(findings, check):
    return {f.node: f.verdict for f in findings if f.check == check}


def run_via_slurm(pod, tmp_path, head):
    slurm_run = via_slurm.SlurmRun()
    findings = run_checks(pod, only=["gpu", "bandwidth", "nccl", "infiniband"], skip=[], limit="gpu[001-003]",
                          output_dir=tmp_path, executor=head, dcgm_level=2, slurm_run=slurm_run)
    return findings, slurm_run


def test_heavy_tests_run_as_jobs_on_idle_nodes_and_busy_nodes_skip(pod, tmp_path):
    head = SlurmHead({"gpu001": "idle", "gpu002": "idle", "gpu003": "allocated"})
    findings, slurm_run = run_via_slurm(pod, tmp_path, head)
    # the busy node: its heavy checks SKIP with the reason, and no job (nor SSH run) went there
    for check in ("gpu.dcgm_diag", "bandwidth.nvbandwidth", "nccl.all_reduce"):
        found = [f for f in findings if f.check == check and f.node == "gpu003"]
        assert found and all(f.verdict is Verdict.SKIP and "busy in Slurm (allocated)" in f.detail for f in found), found
    assert not any("gpu003" in c for host, name, c in head.ran if "--reservation" in c or c.startswith("scontrol create"))
    assert not any(host == "gpu003" and name in ("nccl", "nvbandwidth", "gpu-dcgm") for host, name, _ in head.ran)
    multinode = [f for f in findings if f.check.startswith("nccl.multinode")]
    assert multinode and all(f.verdict is Verdict.SKIP for f in multinode)
    pairs = {f.node.split(" ")[0]: f.verdict for f in findings if f.check == "infiniband.ib_write_bw"}
    assert pairs["gpu002->gpu001"] is Verdict.PASS and pairs["gpu003->gpu002"] is Verdict.SKIP and pairs["gpu001->gpu003"] is Verdict.SKIP
    # the idle nodes: judged by the same judges as podsys check, from the jobs' outputs
    assert verdicts(findings, "gpu.dcgm_diag") == {"gpu001": Verdict.PASS, "gpu002": Verdict.PASS, "gpu003": Verdict.SKIP}
    assert verdicts(findings, "nccl.all_reduce")["gpu001"] is Verdict.PASS
    assert verdicts(findings, "gpu.count") == {"gpu001": Verdict.PASS, "gpu002": Verdict.FAIL, "gpu003": Verdict.PASS}  # light: over SSH, busy or not
    # reservation made on exactly the idle nodes, deleted at the end; the jobs recorded
    created = [c for _, _, c in head.ran if c.startswith("scontrol create")]
    assert len(created) == 1 and "Nodes=gpu001,gpu002 " in created[0]
    assert head.reservations == {} and slurm_run.reservation.startswith("podsys-check-") and not slurm_run.error
    assert {(j["probe"], j["node"]) for j in slurm_run.jobs} == {(p, n) for p in ("gpu-dcgm", "nccl", "nvbandwidth") for n in ("gpu001", "gpu002")}
    index = json.loads((tmp_path / "raw" / "index.json").read_text())
    dcgm = next(e for e in index if e["host"] == "gpu001" and e["probe"] == "gpu-dcgm")
    assert "srun " in dcgm["command"] and "--nodelist=gpu001" in dcgm["command"]
    light = next(e for e in index if e["host"] == "gpu003" and e["probe"] == "gpu")
    assert "dcgmi" not in light["command"] and "nvidia-smi topo -m" in light["command"]
    assert not any(e["host"] == "gpu003" and e["probe"] == "gpu-dcgm" and e["rc"] is not None for e in index)


def test_a_node_that_turns_busy_before_the_reservation_is_left_out(pod, tmp_path):
    head = SlurmHead({"gpu001": "idle", "gpu002": "idle", "gpu003": "idle"}, refuse_first="gpu002")
    findings, slurm_run = run_via_slurm(pod, tmp_path, head)
    created = [c for _, _, c in head.ran if c.startswith("scontrol create")]
    assert len(created) == 2 and "Nodes=gpu001,gpu003 " in created[1]
    assert verdicts(findings, "gpu.dcgm_diag") == {"gpu001": Verdict.PASS, "gpu002": Verdict.SKIP, "gpu003": Verdict.PASS}
    assert slurm_run.busy == {"gpu002": "busy in Slurm (allocated): heavy checks run only on idle nodes"}


def test_slurm_not_answering_skips_every_heavy_check_and_runs_no_job(pod, tmp_path):
    class NoSlurm(SlurmHead):
        def run(self, probe):
            if probe.command == via_slurm.SINFO_STATES:
                self.ran.append((probe.host, probe.name, probe.command))
                return ProbeResult(probe.host, probe.name, probe.command, 1, "", "slurm_load_partitions: Unable to contact slurm controller\n")
            return super().run(probe)

    head = NoSlurm({})
    findings, slurm_run = run_via_slurm(pod, tmp_path, head)
    dcgm = [f for f in findings if f.check == "gpu.dcgm_diag"]
    assert len(dcgm) == 3 and all(f.verdict is Verdict.SKIP and "Unable to contact slurm controller" in f.detail for f in dcgm)
    assert not any("srun" in c or c.startswith("scontrol create") for _, _, c in head.ran)
    assert not slurm_run.reservation


def test_report_is_the_same_as_podsys_check(pod, tmp_path):
    from podsys.checks.report import write_report

    head = SlurmHead({"gpu001": "idle", "gpu002": "idle", "gpu003": "idle"})
    findings, slurm_run = run_via_slurm(pod, tmp_path, head)
    paths = write_report(findings, tmp_path, {"via_slurm": slurm_run.meta()})
    data = json.loads(paths["json"].read_text())
    assert data["via_slurm"]["reservation"] == slurm_run.reservation and len(data["via_slurm"]["jobs"]) == 9
    dcgm = [f for f in data["findings"] if f["check"] == "gpu.dcgm_diag"]
    assert [f["verdict"] for f in dcgm] == ["PASS"] * 3 and dcgm[0]["tier"] == "active" and dcgm[0]["fault"] == "dcgm-diag"
    assert data["exit_code"] == 1  # gpu002's 7 of 8 GPUs, judged over SSH as always
    assert "gpu.dcgm_diag" in paths["html"].read_text()
