from podsys.checks.findings import Verdict
from podsys.checks.slurm import gres_gpus, judge_slurm, parse_sinfo, parse_srun
from tests.unit.checks.helpers import profile

CPU, H100 = profile("cpu-only"), profile("hgx-h100-8gpu")


def run(sinfo, srun, each="", nodes=None):
    nodes = nodes or [("node1", CPU), ("node2", CPU), ("node3", CPU)]
    return judge_slurm({"sinfo": sinfo, "srun": srun, "srun-each": each}, nodes)


def verdicts(findings, check):
    return {f.node: f.verdict for f in findings if f.check == check}


def test_parsers():
    info = parse_sinfo("node1|idle|(null)\nnode1|idle|(null)\nnode2|down*|gpu:h100:8(S:0-1)\nnode3|drained|gpu:8")
    assert info["node1"]["state"] == "idle" and info["node2"] == {"state": "down", "responding": "no", "gres": "gpu:h100:8(S:0-1)"}
    assert gres_gpus("gpu:h100:8(S:0-1)") == 8 and gres_gpus("gpu:4,gpu:a100:2") == 6 and gres_gpus("(null)") == 0
    hosts, rc, error = parse_srun("node2\nnode1\nsrun: error: Task launch failed on node node3\nrc=1")
    assert hosts == {"node1", "node2"} and rc == 1 and "node3" in error


def test_all_idle_and_answering_passes():
    findings = run("node1|idle|(null)\nnode2|idle|(null)\nnode3|idle|(null)", "node1\nnode3\nnode2\nrc=0")
    assert set(verdicts(findings, "slurm.state").values()) == {Verdict.PASS}
    assert set(verdicts(findings, "slurm.srun").values()) == {Verdict.PASS}
    assert set(verdicts(findings, "slurm.gres").values()) == {Verdict.SKIP}


def test_not_responding_and_drained_fail_busy_warns():
    findings = run("node1|idle*|(null)\nnode2|drained|(null)\nnode3|mixed|(null)", "node3\nrc=0")
    assert verdicts(findings, "slurm.state") == {"node1": Verdict.FAIL, "node2": Verdict.FAIL, "node3": Verdict.WARN}


def test_missing_node_named_and_aborted_step_does_not_blame_healthy_nodes():
    each = "== node1\nnode1\nrc=0\n== node3\nsrun: error: Task launch for StepId=9.0 failed on node node3: Communication connection failure\nrc=1\n"
    findings = run("node1|idle|(null)\nnode2|idle|(null)\nnode3|idle|(null)", "node2\nsrun: error: Application launch failed\nrc=1", each)
    srun = verdicts(findings, "slurm.srun")
    assert srun == {"node1": Verdict.WARN, "node2": Verdict.PASS, "node3": Verdict.FAIL}
    assert "failed on node node3" in next(f.detail for f in findings if f.node == "node3" and f.check == "slurm.srun")


def test_unknown_node_and_gres():
    findings = run("node1|idle|gpu:h100:8\nnode2|idle|gpu:h100:4", "node1\nnode2\nrc=0",
                   nodes=[("node1", H100), ("node2", H100), ("node9", H100)])
    assert verdicts(findings, "slurm.state")["node9"] is Verdict.FAIL
    assert verdicts(findings, "slurm.gres") == {"node1": Verdict.PASS, "node2": Verdict.FAIL}


def test_controller_down_fails_every_node():
    findings = run("slurm_load_partitions: Unable to contact slurm controller (connect failure)", "")
    assert verdicts(findings, "slurm.state") == {n: Verdict.FAIL for n in ("node1", "node2", "node3")}
    assert "slurmctld" in findings[0].diagnosis
