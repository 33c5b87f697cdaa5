"""Rolling upgrades: batch planning, Slurm output parsing, drain/resume decisions, the state
machine (podsys/deploy/rollout.py), the stack override and the batch driver
(podsys/deploy/upgrade.py) against a slurmctld stand-in that answers in scontrol's format."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from hostlist import expand_hostlist
from rich.console import Console

from podsys.checks.findings import failed, passed, skip
from podsys.checks.live import Probe, ProbeResult
from podsys.deploy.rollout import (
    DrainAction, Phase, Rollout, SlurmNode, advance, drain_action, failures_by_node, is_upgrade_reason, jobs_on,
    parse_scontrol_show_node, parse_squeue, parse_state, plan_batches, resume_decision, upgrade_reason,
)
from podsys.deploy.upgrade import SlurmControl, Upgrade, UpgradeOptions, load_cluster_with_stack, read_extra_vars, upgrade_extravars
from podsys.errors import InputError
from tests.conftest import invoke
from tests.unit.manifest_samples import VALID, write_manifest

# `scontrol show node` as Slurm 22.05 (Debian 12's slurm-wlm) prints it: slurm_sprint_node_table
# in src/api/node_info.c: records separated by a blank line, `Reason=<text> [<user>@<time>]` on
# its own line, '*' after the base state for a node that does not respond.
SCONTROL_SHOW_NODE = """\
NodeName=node01 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.05
   AvailableFeatures=(null)
   ActiveFeatures=(null)
   Gres=(null)
   NodeAddr=node01 NodeHostName=node01 Version=22.05.8
   OS=Linux 6.1.0-27-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)
   RealMemory=1961 AllocMem=0 FreeMem=1210 Sockets=2 Boards=1
   State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Partitions=compute
   BootTime=2026-11-28T23:10:04 SlurmdStartTime=2026-11-28T23:12:40
   LastBusyTime=2026-11-29T00:01:12
   CfgTRES=cpu=2,mem=1961M,billing=2
   AllocTRES=
   CapWatts=n/a
   CurrentWatts=0 AveWatts=0
   ExtSensorsJoules=n/s ExtSensorsWatts=0 ExtSensorsTemp=n/s
   Reason=podsys:upgrade to r580-cuda13.0 [root@2026-11-29T00:05:31]

NodeName=node02 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=1 CPUEfctv=2 CPUTot=2 CPULoad=0.90
   NodeAddr=node02 NodeHostName=node02 Version=22.05.8
   OS=Linux 6.1.0-27-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)
   RealMemory=1961 AllocMem=0 FreeMem=1190 Sockets=2 Boards=1
   State=MIXED+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Partitions=compute
   Reason=bad DIMM, ticket 4711 [alice@2026-11-28T22:00:00]

NodeName=node03 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=N/A
   NodeAddr=node03 NodeHostName=node03 Version=22.05.8
   State=DOWN*+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Partitions=compute
   Reason=podsys:gpu-xid-79 [root@2026-11-28T21:00:00]

NodeName=node04 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=2 CPUEfctv=2 CPUTot=2 CPULoad=1.98
   NodeAddr=node04 NodeHostName=node04 Version=22.05.8
   State=ALLOCATED ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Partitions=compute

"""

# `scontrol -o show node`: the same pairs, one line per node (Reason among them).
SCONTROL_ONE_LINE = (
    "NodeName=node01 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.05 "
    "OS=Linux 6.1.0-27-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01) RealMemory=1961 "
    "State=IDLE+DRAIN ThreadsPerCore=1 Partitions=compute "
    "Reason=podsys:upgrade to r580-cuda13.0 [root@2026-11-29T00:05:31] Comment=(null)\n"
    "NodeName=node02 Arch=x86_64 State=IDLE ThreadsPerCore=1 Partitions=compute\n"
)


def test_scontrol_multi_line_records_give_state_flags_and_reason_without_user_and_time():
    nodes = parse_scontrol_show_node(SCONTROL_SHOW_NODE)
    assert set(nodes) == {"node01", "node02", "node03", "node04"}
    assert nodes["node01"] == SlurmNode("node01", "idle", frozenset({"drain"}), "podsys:upgrade to r580-cuda13.0")
    assert nodes["node02"].state == "mixed" and nodes["node02"].busy and nodes["node02"].reason == "bad DIMM, ticket 4711"
    assert nodes["node03"].flags == {"drain", "not_responding"} and nodes["node03"].state == "down"
    assert nodes["node04"] == SlurmNode("node04", "allocated", frozenset(), "")


def test_scontrol_one_line_form_ends_the_reason_at_its_user_and_time():
    nodes = parse_scontrol_show_node(SCONTROL_ONE_LINE)
    assert nodes["node01"].reason == "podsys:upgrade to r580-cuda13.0" and nodes["node01"].drain_set
    assert nodes["node02"] == SlurmNode("node02", "idle", frozenset(), "")


@pytest.mark.parametrize("text,base,flags", [
    ("IDLE", "idle", set()), ("MIXED+DRAIN", "mixed", {"drain"}), ("IDLE*+DRAIN", "idle", {"drain", "not_responding"}),
    ("DOWN+DRAIN+NOT_RESPONDING", "down", {"drain", "not_responding"}), ("", "unknown", set()),
])
def test_state_values(text, base, flags):
    assert parse_state(text) == (base, frozenset(flags))


def test_squeue_expands_compressed_nodelists_and_keeps_only_jobs_holding_the_batch():
    # squeue -h -o '%i|%T|%N' (squeue(1): %i job id, %T long state, %N nodes; pending: empty)
    text = "101|RUNNING|node[01-02]\n102|PENDING|\n103|COMPLETING|node04\n104|RUNNING|node03\n"
    jobs = parse_squeue(text)
    assert jobs[0].nodes == ("node01", "node02") and jobs[1].nodes == ()
    assert [j.job_id for j in jobs_on(jobs, ["node02", "node04"])] == ["101", "103"]
    assert jobs_on(jobs, ["node05"]) == []


def test_batches_keep_order_and_refuse_a_size_below_one():
    assert plan_batches(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert plan_batches(["a"], 4) == [["a"]]
    with pytest.raises(InputError, match="--batch"):
        plan_batches(["a"], 0)


def test_only_the_upgrade_prefix_is_ours():
    assert is_upgrade_reason(upgrade_reason("r580-cuda13.0"))
    assert is_upgrade_reason("podsys:upgrade")
    assert not is_upgrade_reason("podsys:gpu-xid-79")  # a health drain
    assert not is_upgrade_reason("podsys:upgraded by hand")
    assert not is_upgrade_reason("bad DIMM podsys:upgrade")


def test_drain_action_never_overwrites_someone_elses_drain():
    nodes = parse_scontrol_show_node(SCONTROL_SHOW_NODE)
    assert drain_action(nodes["node04"]) is DrainAction.DRAIN  # running a job: drain, then wait
    assert drain_action(nodes["node01"]) is DrainAction.OURS
    assert drain_action(nodes["node02"]) is DrainAction.FOREIGN  # the admin's DIMM ticket
    assert drain_action(nodes["node03"]) is DrainAction.FOREIGN  # a health drain
    assert drain_action(SlurmNode("n", "down", frozenset(), "Not responding")) is DrainAction.FOREIGN
    assert drain_action(None) is DrainAction.NOT_IN_SLURM


def test_resume_only_a_passing_node_that_carries_our_drain():
    nodes = parse_scontrol_show_node(SCONTROL_SHOW_NODE)
    assert resume_decision("node01", nodes["node01"], True).resume
    failing = resume_decision("node01", nodes["node01"], False, ["gpu.count: 7 of 8"])
    assert not failing.resume and "gpu.count: 7 of 8" in failing.why
    admin = resume_decision("node02", nodes["node02"], True)
    assert not admin.resume and "bad DIMM" in admin.why
    assert not resume_decision("node03", nodes["node03"], True).resume
    assert not resume_decision("node04", nodes["node04"], True).resume  # not drained at all
    assert not resume_decision("node09", None, True).resume


def test_failures_by_node_counts_pairs_and_cluster_findings_for_their_nodes():
    findings = [
        passed("node01", "gpu.count"),
        failed("node02", "gpu.count", "7 GPUs, profile says 8", "reseat the GPU"),
        failed("node01->node03", "infiniband.bandwidth", "180 Gb/s", "check the cable"),
        skip("node01", "nccl.all_reduce", "cpu-only profile"),
        failed("cluster", "nccl.multinode", "bus bandwidth 20 GB/s", ""),
    ]
    out = failures_by_node(findings, ["node01", "node02"])
    assert out["node02"] == ["gpu.count: 7 GPUs, profile says 8 (reseat the GPU)", "nccl.multinode: bus bandwidth 20 GB/s"]
    assert out["node01"][0].startswith("node01->node03 infiniband.bandwidth") and len(out["node01"]) == 2
    assert failures_by_node([passed("node01", "gpu.count")], ["node01"]) == {"node01": []}


def test_state_machine_allows_only_its_transitions_and_stops_later_batches():
    assert advance(Phase.PLANNED, "drain") is Phase.DRAINING
    assert advance(Phase.CHECKING, "checks-failed") is Phase.FAILED
    with pytest.raises(ValueError, match="no transition from planned"):
        advance(Phase.PLANNED, "passed")
    with pytest.raises(ValueError):
        advance(Phase.DONE, "drain")
    rollout = Rollout.plan("r580-cuda13.0", ["a", "b", "c"], 1)
    first = rollout.batches[0]
    for event in ("drain", "jobs-done", "installed", "checks-failed"):
        first.step(event)
    rollout.stop_after(first)
    assert [b.phase for b in rollout.batches] == [Phase.FAILED, Phase.NOT_STARTED, Phase.NOT_STARTED]
    assert rollout.failed_batch is first and not rollout.succeeded
    assert rollout.as_dict()["stopped_at_batch"] == 1


# ----------------------------------------------------------------------------- the stack override


def test_stack_override_goes_through_the_matrix_and_leaves_the_manifest_alone(tmp_path):
    path = write_manifest(tmp_path)
    before = path.read_text()
    cluster = load_cluster_with_stack(path, "r570-cuda12.8")
    assert cluster.stack.id == "r570-cuda12.8" and path.read_text() == before


def test_the_old_stacks_driver_may_be_replaced_and_nothing_else():
    """Without this the nvidia_driver role refuses every R570 -> R580 upgrade (it stops on any
    driver other than the stack's unless gpu.replace_driver): the upgrade replaces exactly the
    driver of the stack it moves from."""
    extra = upgrade_extravars("570.172.08", "580.95.05", "podsys lab stop {node}", {"nccl_tests_build": False})
    assert extra == {"nvidia_driver_replaceable": ["570.172.08"], "node_reboot_controller_command": "podsys lab stop {node}",
                     "nccl_tests_build": False}
    assert upgrade_extravars("580.95.05", "580.95.05") == {}  # same driver: nothing to replace
    assert upgrade_extravars(None, "580.95.05") == {}  # a cpu-only cluster's stack pins no driver


def test_extra_vars_file_is_a_mapping_of_role_variables_never_podsys_ones(tmp_path):
    good = tmp_path / "extra.yml"
    good.write_text("package_source_mode: bundle\nnode_reboot_timeout: 300\n")
    assert read_extra_vars(good) == {"package_source_mode": "bundle", "node_reboot_timeout": 300}
    bad = tmp_path / "bad.yml"
    bad.write_text("node_reboot_timeout: 300\npodsys_stack: {id: r580}\n")
    with pytest.raises(InputError) as err:
        read_extra_vars(bad)
    [problem] = err.value.problems
    assert (problem.file, problem.line, problem.field) == (str(bad), 2, "podsys_stack") and "manifest" in problem.message
    listed = tmp_path / "list.yml"
    listed.write_text("- a\n")
    with pytest.raises(InputError, match="mapping"):
        read_extra_vars(listed)


def test_cli_refuses_a_bad_extra_vars_file_in_one_line(tmp_path):
    path = write_manifest(tmp_path)
    bad = tmp_path / "extra.yml"
    bad.write_text("podsys_gpu: {replace_driver: true}\n")
    result = invoke("upgrade", str(path), "--stack", "r570-cuda12.8", "--extra-vars", str(bad))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{bad}:1" in result.output and "podsys_gpu" in result.output


def test_stack_override_refused_by_the_matrix_names_the_flag(tmp_path):
    # NVIDIA's debian12 CUDA repository starts at CUDA 12.3: the matrix refuses R535 there.
    path = write_manifest(tmp_path, VALID.replace('{distro: ubuntu, version: "22.04"}', '{distro: debian, version: "12"}'))
    with pytest.raises(InputError) as err:
        load_cluster_with_stack(path, "r535-cuda12.2")
    assert [str(p) for p in err.value.problems if p.file == "--stack"], [str(p) for p in err.value.problems]
    with pytest.raises(InputError, match="--stack: unknown stack 'r999'"):
        load_cluster_with_stack(path, "r999")


# ----------------------------------------------------------------------------- the driver


class FakeSlurmctld:
    """Stands in for slurmctld on the head (no Slurm here): keeps node states and jobs, and
    answers scontrol/squeue in their own output formats (as the fixtures above)."""

    def __init__(self, nodes: dict[str, tuple[str, str]], jobs: dict[str, list[str]]):
        self.nodes = {n: {"state": s, "reason": r} for n, (s, r) in nodes.items()}
        self.jobs = dict(jobs)  # job id -> nodes (running)
        self.polls_left = {j: 2 for j in jobs}  # a job ends after two squeue polls
        self.log: list[str] = []

    def _state(self, name: str) -> str:
        node = self.nodes[name]
        base = "ALLOCATED" if any(name in ns for ns in self.jobs.values()) else "IDLE"
        return base + ("+DRAIN" if node["state"] == "drain" else "")

    def run(self, probe: Probe) -> ProbeResult:
        cmd = probe.command
        self.log.append(cmd)
        out = ""
        if cmd == "scontrol show node":
            out = "\n".join(
                f"NodeName={n} Arch=x86_64 CoresPerSocket=1\n   State={self._state(n)} ThreadsPerCore=1\n"
                + (f"   Reason={v['reason']} [root@2026-11-29T00:00:00]\n" if v["reason"] else "")
                for n, v in self.nodes.items())
        elif cmd.startswith("squeue"):
            for jid in list(self.jobs):
                self.polls_left[jid] -= 1
                if self.polls_left[jid] < 0:
                    del self.jobs[jid]
            out = "".join(f"{j}|RUNNING|{','.join(ns)}\n" for j, ns in self.jobs.items())
        elif cmd.startswith("scontrol update"):
            args = dict(re.findall(r"(\w+)=('[^']*'|\S+)", cmd))
            for n in expand_hostlist(shlex.split(args["nodename"])[0]):
                if args["state"] == "drain":
                    self.nodes[n] = {"state": "drain", "reason": shlex.split(args["reason"])[0]}
                else:
                    assert args["state"] == "resume"
                    self.nodes[n] = {"state": "", "reason": ""}
        elif cmd.startswith("scontrol requeue"):
            del self.jobs[cmd.split()[2]]
            out = "requeued\n"
        return ProbeResult(probe.host, probe.name, cmd, 0, out)


def _run(slurm: FakeSlurmctld, nodes, batch: int, failing: dict[str, str] = {}, deploy_fails: dict[str, str] = {},
         force: bool = False, tmp_path: Path = Path("/nonexistent")):
    deployed: list[list[str]] = []
    checked: list[list[str]] = []

    def deploy(batch_nodes):
        # The drain is in place while the batch installs, and no job holds a batch node.
        assert all(slurm.nodes[n]["state"] == "drain" for n in batch_nodes)
        assert not any(set(batch_nodes) & set(ns) for ns in slurm.jobs.values())
        deployed.append(list(batch_nodes))
        return {n: why for n, why in deploy_fails.items() if n in batch_nodes}

    def check(batch_nodes, out_dir):
        checked.append(list(batch_nodes))
        return [failed(n, "gpu.count", failing[n], "") if n in failing else passed(n, "gpu.count") for n in batch_nodes]

    console = Console(record=True, width=200)
    rollout = Rollout.plan("r580-cuda13.0", nodes, batch)
    options = UpgradeOptions(stack="r580-cuda13.0", batch_size=batch, force=force, check_areas=("gpu",), poll_interval=0)
    Upgrade(rollout, SlurmControl(slurm, "head"), deploy, check, options, console, tmp_path, sleep=lambda s: None).run()
    return rollout, deployed, checked, console.export_text()


def test_rollout_waits_for_jobs_then_resumes_passing_nodes_and_leaves_the_admins_drain():
    slurm = FakeSlurmctld({"n1": ("", ""), "n2": ("", ""), "n3": ("drain", "bad DIMM")}, {"7": ["n1"]})
    rollout, deployed, checked, out = _run(slurm, ["n1", "n2", "n3"], 2)
    assert rollout.succeeded and deployed == [["n1", "n2"], ["n3"]]
    assert rollout.batches[0].jobs == {"7": "waited for"} and "waiting for 1 running job(s): 7" in out
    assert slurm.nodes["n1"] == {"state": "", "reason": ""} and slurm.nodes["n2"]["state"] == ""
    assert slurm.nodes["n3"] == {"state": "drain", "reason": "bad DIMM"}  # upgraded, never resumed
    assert "bad DIMM" in rollout.batches[1].left_drained["n3"]
    assert not any("n3" in c and "drain" in c for c in slurm.log if c.startswith("scontrol update"))
    assert "reason='podsys:upgrade to r580-cuda13.0'" in next(c for c in slurm.log if "state=drain" in c)


def test_force_requeues_the_running_job_instead_of_waiting():
    slurm = FakeSlurmctld({"n1": ("", "")}, {"9": ["n1"]})
    rollout, _, _, out = _run(slurm, ["n1"], 1, force=True)
    assert rollout.batches[0].jobs == {"9": "requeued"} and "--force: job 9 on n1 requeued" in out
    assert any(c.startswith("scontrol requeue 9") for c in slurm.log)


def test_a_failing_batch_stops_the_rollout_names_the_node_and_keeps_it_drained():
    slurm = FakeSlurmctld({f"n{i}": ("", "") for i in range(1, 5)}, {})
    rollout, deployed, checked, out = _run(slurm, ["n1", "n2", "n3", "n4"], 2, failing={"n3": "7 GPUs, profile says 8"})
    assert [b.phase for b in rollout.batches] == [Phase.DONE, Phase.FAILED]
    assert slurm.nodes["n3"] == {"state": "drain", "reason": "podsys:upgrade to r580-cuda13.0"}
    assert slurm.nodes["n4"]["state"] == ""  # passed in the failing batch: resumed
    assert "FAILED n3: gpu.count: 7 GPUs, profile says 8" in out
    three = Rollout.plan("x", ["n1", "n2", "n3"], 1)
    assert len(three.batches) == 3
    slurm = FakeSlurmctld({f"n{i}": ("", "") for i in range(1, 4)}, {})
    rollout, deployed, _, _ = _run(slurm, ["n1", "n2", "n3"], 1, failing={"n2": "bad"})
    assert deployed == [["n1"], ["n2"]] and rollout.batches[2].phase is Phase.NOT_STARTED
    assert slurm.nodes["n3"]["state"] == ""  # never drained


def test_a_node_whose_deploy_fails_is_not_checked_and_stays_drained():
    slurm = FakeSlurmctld({"n1": ("", ""), "n2": ("", "")}, {})
    rollout, _, checked, out = _run(slurm, ["n1", "n2"], 2, deploy_fails={"n1": "nvidia_driver : Install: 404"})
    assert checked == [["n2"]] and rollout.batches[0].phase is Phase.FAILED
    assert slurm.nodes["n1"]["state"] == "drain" and slurm.nodes["n2"]["state"] == ""
    assert rollout.batches[0].failures["n1"] == ["deploy: nvidia_driver : Install: 404"]


# ----------------------------------------------------------------------------- the command line


def test_cli_refuses_bad_input_in_one_line_with_exit_2(tmp_path):
    from tests.conftest import invoke

    path = write_manifest(tmp_path)
    result = invoke("upgrade", str(path), "--stack", "r999")
    assert result.exit_code == 2 and "--stack: unknown stack 'r999'" in result.output and "Traceback" not in result.output
    result = invoke("upgrade", str(path), "--stack", "r580-cuda13.0", "--checks", "gpu,warp")
    assert result.exit_code == 2 and "--checks: unknown area warp" in result.output
    result = invoke("upgrade", str(path), "--stack", "r580-cuda13.0", "--limit", "gpu009")
    assert result.exit_code == 2 and "--limit" in result.output and "gpu009" in result.output


def test_cli_json_stdout_is_json_alone(tmp_path, monkeypatch):
    """The closing line goes to stderr with --json (the lab test found it after the JSON)."""
    from podsys.deploy import upgrade as upgrade_mod
    from tests.conftest import invoke

    path = write_manifest(tmp_path)
    monkeypatch.setattr(upgrade_mod.Upgrade, "run", lambda self: self.rollout)
    monkeypatch.setattr("podsys.render.build.render_cluster", lambda cluster, build_dir: None)
    result = invoke("upgrade", str(path), "--stack", "r580-cuda13.0", "--batch", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stack"] == "r580-cuda13.0" and [b["nodes"] for b in data["batches"]] == [["gpu001", "gpu002", "gpu003", "gpu004"]]


def test_without_slurm_nothing_is_drained_or_resumed_and_checks_still_gate():
    from podsys.deploy.upgrade import NoSlurm

    checked = []
    rollout = Rollout.plan("r580-cuda13.0", ["n1", "n2"], 1)
    options = UpgradeOptions(stack="r580-cuda13.0", check_areas=("gpu",), poll_interval=0)
    Upgrade(rollout, NoSlurm(), lambda nodes: {}, lambda nodes, out: checked.append(nodes) or
            [failed(n, "gpu.count", "7", "") for n in nodes if n == "n1"],
            options, Console(record=True), Path("/nonexistent")).run()
    assert checked == [["n1"]] and [b.phase for b in rollout.batches] == [Phase.FAILED, Phase.NOT_STARTED]
    assert rollout.batches[0].drained == [] and rollout.batches[0].resumed == []
