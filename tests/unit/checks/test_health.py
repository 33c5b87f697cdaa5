"""podsys health: the passive checks on replayed tool outputs (podsys/data/captures, the same
files `podsys lab fault` replays), the Xid cursor, the Slurm drain decision, the metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podsys.checks import health
from podsys.checks.catalog import CATALOG, fault_code, passive_checks, spec_for
from podsys.checks.findings import Verdict
from podsys.checks.health_main import run as run_main
from tests.unit.checks.helpers import profile
from tests.conftest import MANIFESTS, REPO_ROOT, write_manifest_variant

CAPTURES = REPO_ROOT / "podsys" / "data" / "captures" / "hgx-h100-8gpu"
XID79 = "[ 9001.123456] NVRM: Xid (PCI:0000:5d:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"


def capture(name):
    return (CAPTURES / name).read_text()


class FakeNode:
    """Answers the health runner's commands from the captures, with one thing changed per test."""

    def __init__(self, **override):
        self.outputs = {
            "nvidia-smi --query-gpu": (0, capture("nvidia-smi-query.csv")),
            "nvidia-smi -q -d PCI": (0, capture("nvidia-smi-q-pci.txt")),
            "nvidia-smi nvlink -s": (0, capture("nvidia-smi-nvlink-s.txt")),
            "dmesg": (0, capture("dmesg.txt")),
            "systemctl is-active nvidia-fabricmanager": (0, "active\n"),
            "lsmod": (0, capture("lsmod.txt")),
            "ibstat": (0, capture("ibstat.txt")),
            "scontrol show node": (0, "NodeName=gpu001 Arch=x86_64 CoresPerSocket=56\n   State=IDLE ThreadsPerCore=2\n"),
        }
        self.outputs.update(override)
        self.calls = []

    def __call__(self, command):
        self.calls.append(command)
        for prefix, answer in self.outputs.items():
            if command.startswith(prefix) or (prefix == "ibstat" and "ibstat" in command):
                return answer
        return 127, f"sh: {command.split()[0]}: not found"


def facts(boot="boot-1", free=(50 << 30, 100 << 30), mem=(512 << 20, 256 << 20)):
    return health.NodeFacts(
        boot_id=lambda: boot,
        meminfo=lambda: f"MemTotal:       {mem[0]} kB\nMemFree:        1000 kB\nMemAvailable:   {mem[1]} kB\n",
        disk_usage=lambda path: free,
        ib_sysfs=lambda: "",
    )


def config(profile_id="hgx-h100-8gpu", **thresholds):
    return health.parse_config(health.config_data("gpu001", profile(profile_id), **thresholds))


def verdicts(findings):
    return {f.check: f.verdict for f in findings}


def run_with(tmp_path, node=None, profile_id="hgx-h100-8gpu", **kwargs):
    return health.run_checks(config(profile_id), run=node or FakeNode(), facts=kwargs.pop("node_facts", facts()), state_dir=tmp_path)


def test_healthy_gpu_node_passes_every_passive_check(tmp_path):
    findings = run_with(tmp_path)
    assert all(f.verdict is Verdict.PASS for f in findings), [health.verdict_line(f) for f in findings if f.verdict is not Verdict.PASS]
    expected = {s.name for s in passive_checks()}
    assert set(verdicts(findings)) == expected


def test_cpu_only_node_runs_no_gpu_or_ib_command(tmp_path):
    node = FakeNode()
    findings = run_with(tmp_path, node, "cpu-only")
    assert set(verdicts(findings)) == {"node.disk", "node.memory"} and node.calls == []


@pytest.mark.parametrize("fault, override, check, code", [
    ("gpu missing", {"nvidia-smi --query-gpu": (0, "".join(capture("nvidia-smi-query.csv").splitlines(True)[:-1]))}, "gpu.count", "gpu-missing"),
    ("driver gone", {"nvidia-smi --query-gpu": (9, "Unable to determine the device handle for GPU0000:5D:00.0: Unknown Error\n")}, "gpu.count", "gpu-missing"),
    ("fm stopped", {"systemctl is-active nvidia-fabricmanager": (3, "inactive\n")}, "gpu.fabric_manager", "fm-stopped"),
    ("peermem missing", {"lsmod": (0, capture("lsmod.txt").replace("nvidia_peermem         16384  0\n", ""))}, "gpu.gpudirect", "peermem-missing"),
    ("ib port down", {"ibstat": (0, capture("ibstat.txt").replace("State: Active", "State: Down", 1).replace("Physical state: LinkUp", "Physical state: Polling", 1))}, "infiniband.ports", "ib-port-down"),
    ("ib rate degraded", {"ibstat": (0, capture("ibstat.txt").replace("Rate: 400", "Rate: 200", 1))}, "infiniband.ports", "ib-rate-degraded"),
    ("nvlink inactive", {"nvidia-smi nvlink -s": (0, capture("nvidia-smi-nvlink-s.txt").replace("Link 5: 26.562 GB/s", "Link 5: <inactive>", 1))}, "gpu.nvlink", "nvlink-inactive"),
    ("row remap pending", {"nvidia-smi --query-gpu": (0, capture("nvidia-smi-query.csv").replace(", No, No, 0,", ", Yes, No, 0,", 1))}, "gpu.ecc_errors", "row-remap-pending"),
    ("xid 79", {"dmesg": (0, capture("dmesg.txt") + XID79)}, "gpu.xid", "xid79"),
    ("pcie x8", {"nvidia-smi -q -d PCI": (0, capture("nvidia-smi-q-pci.txt").replace("Current                   : 16x", "Current                   : 8x", 1))}, "gpu.pcie_link", "pcie-degraded"),
])
def test_each_fault_fails_its_check_with_its_fault_code(tmp_path, fault, override, check, code):
    findings = run_with(tmp_path, FakeNode(**override))
    bad = [f for f in findings if f.verdict is Verdict.FAIL]
    assert [f.check for f in bad] == [check], [health.verdict_line(f) for f in bad]
    assert [c for c, _ in health.failures(findings)] == [code]
    assert f"[{code}]" in health.verdict_line(bad[0])


def test_row_remap_fixture_edit_hits_one_gpu():
    assert capture("nvidia-smi-query.csv").count(", No, No, 0,") >= 8


def test_disk_and_memory_thresholds(tmp_path):
    findings = run_with(tmp_path, node_facts=facts(free=(1 << 30, 100 << 30), mem=(512 << 20, 10 << 20)))
    assert verdicts(findings)["node.disk"] is Verdict.FAIL and verdicts(findings)["node.memory"] is Verdict.FAIL
    assert {c for c, _ in health.failures(findings)} == {"disk-full", "memory-low"}


# --- the Xid cursor ---------------------------------------------------------------------------

def test_an_xid_stays_failed_this_boot_until_cleared_then_never_fails_again(tmp_path):
    with_xid = FakeNode(dmesg=(0, capture("dmesg.txt") + XID79))
    first = verdicts(run_with(tmp_path, with_xid))["gpu.xid"]
    second = [f for f in run_with(tmp_path, with_xid) if f.check == "gpu.xid"][0]
    assert first is Verdict.FAIL and second.verdict is Verdict.FAIL and "earlier this boot" in second.detail
    health.clear_xid(tmp_path)  # the admin repaired the GPU
    assert verdicts(run_with(tmp_path, with_xid))["gpu.xid"] is Verdict.PASS  # the old line is behind the cursor
    newer = XID79.replace("9001.123456", "9500.000001").replace("5d:00", "18:00")
    again = [f for f in run_with(tmp_path, FakeNode(dmesg=(0, capture("dmesg.txt") + XID79 + newer))) if f.check == "gpu.xid"][0]
    assert again.verdict is Verdict.FAIL and "0000:18:00" in again.detail and "0000:5d:00" not in again.detail


def test_a_reboot_starts_a_new_cursor(tmp_path):
    run_with(tmp_path, FakeNode(dmesg=(0, capture("dmesg.txt") + XID79)))
    after_reboot = run_with(tmp_path, FakeNode(), node_facts=facts(boot="boot-2"))
    assert verdicts(after_reboot)["gpu.xid"] is Verdict.PASS


def test_application_xid_does_not_fail(tmp_path):
    app = "[ 9001.1] NVRM: Xid (PCI:0000:18:00): 13, pid=4242, name=python3, Graphics SM Warp Exception\n"
    assert verdicts(run_with(tmp_path, FakeNode(dmesg=(0, capture("dmesg.txt") + app))))["gpu.xid"] is Verdict.WARN


# --- Slurm ------------------------------------------------------------------------------------

@pytest.mark.parametrize("state, reason, faults, action, drain_reason", [
    ("IDLE", "", [("xid79", "gpu.xid: Xid 79 on 0000:5d:00")], "drain", "podsys:xid79 gpu.xid: Xid 79 on 0000:5d:00"),
    ("MIXED", "", [("fm-stopped", "a"), ("gpu-missing", "b"), ("fm-stopped", "c")], "drain", "podsys:fm-stopped,gpu-missing a"),
    ("IDLE+DRAIN", "podsys:xid79 gpu.xid: Xid 79", [("xid79", "gpu.xid: Xid 79 again")], "none", ""),
    ("IDLE+DRAIN", "podsys:xid79 gpu.xid: Xid 79", [("ib-port-down", "infiniband.ports: mlx5_0/1 Down")], "drain", "podsys:ib-port-down infiniband.ports: mlx5_0/1 Down"),
    ("IDLE+DRAIN", "podsys:xid79 gpu.xid: Xid 79", [], "resume", ""),
    ("DOWN+DRAIN", "podsys:fm-stopped x", [], "resume", ""),
    ("IDLE+DRAIN", "RMA GPU3 ticket 4711", [], "none", ""),
    ("IDLE+DRAIN", "RMA GPU3 ticket 4711", [("xid79", "x")], "none", ""),
    ("ALLOCATED+DRAIN", "maintenance", [("fm-stopped", "x")], "none", ""),
    ("IDLE", "", [], "none", ""),
    ("MIXED", "", [], "none", ""),
    # An upgrade's or a re-image's drain is that operation's to lift, healthy node or not.
    ("IDLE+DRAIN", "podsys:upgrade to r580-cuda13.0", [], "none", ""),
    ("IDLE+DRAIN", "podsys:reinstall", [], "none", ""),
    ("IDLE+DRAIN", "podsys:upgrade to r580-cuda13.0", [("xid79", "x")], "none", ""),
])
def test_slurm_decision(state, reason, faults, action, drain_reason):
    decision = health.slurm_decision(state, reason, faults)
    assert decision.action == action and decision.reason == drain_reason


def test_the_operations_whose_drains_health_leaves_alone_are_the_ones_podsys_runs():
    from podsys.deploy.install_deploy import REINSTALL_REASON
    from podsys.deploy.rollout import UPGRADE_REASON_PREFIX, upgrade_reason

    assert set(health.OPERATION_DRAIN_PREFIXES) == {UPGRADE_REASON_PREFIX, REINSTALL_REASON}
    assert health.slurm_decision("IDLE+DRAIN", upgrade_reason("r570-cuda12.8"), []).action == "none"


def test_drain_reason_is_bounded():
    decision = health.slurm_decision("IDLE", "", [("gpu-xid", "x" * 1000)])
    assert decision.action == "drain" and len(decision.reason) == health.MAX_REASON


def test_scontrol_show_node_state_and_reason():
    # `scontrol show node` layout (Slurm 22.05/23.02): Reason with its [user@time] tail on its own line
    text = ("NodeName=gpu001 Arch=x86_64 CoresPerSocket=56\n   CPUAlloc=0 CPUEfctv=224 CPUTot=224 CPULoad=0.31\n"
            "   State=IDLE+DRAIN ThreadsPerCore=2 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A\n"
            "   Partitions=gpu\n   Reason=podsys:xid79 gpu.xid: Xid 79 on 0000:5d:00 [root@2026-11-29T00:41:07]\n")
    assert health.parse_scontrol_node(text) == ("IDLE+DRAIN", "podsys:xid79 gpu.xid: Xid 79 on 0000:5d:00")


def test_apply_slurm_drains_with_the_fault_reason_and_requeues_running_jobs(tmp_path):
    node = FakeNode(dmesg=(0, capture("dmesg.txt") + XID79), **{"squeue -h -w gpu001": (0, "4711\n4712\n")})
    findings = run_with(tmp_path, node)
    decision = health.apply_slurm("gpu001", findings, run=node)
    assert decision.action == "drain"
    assert node.calls[-3].startswith("scontrol update nodename=gpu001 state=drain reason='podsys:xid79 gpu.xid: ")
    assert node.calls[-1] == "scontrol requeue 4711,4712"


def test_apply_slurm_resume_requeues_nothing(tmp_path):
    scontrol = "NodeName=gpu001\n   State=IDLE+DRAIN ThreadsPerCore=2\n   Reason=podsys:xid79 gpu.xid: old [root@2026-11-29T00:41:07]\n"
    node = FakeNode(**{"scontrol show node": (0, scontrol)})
    decision = health.apply_slurm("gpu001", run_with(tmp_path, node), run=node)
    assert decision.action == "resume" and node.calls[-1] == "scontrol update nodename=gpu001 state=resume"


# --- health.json, metrics, the catalogue ------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({}, "profile: missing"),
    ({"node": "n", "profile": {"id": "x", "gpu": {"count": "eight", "product_name": "H100"}}}, "profile.gpu.count: 'eight' is not int"),
    ({"node": "n", "profile": {"id": "x", "gpu": None, "hca": None}, "thresholds": {"disk_min_free_percent": "5%"}}, "thresholds.disk_min_free_percent"),
])
def test_bad_health_json_names_the_field(data, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        health.parse_config(data, "health.json")


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "health.json"
    path.write_text("{not json")
    assert run_main(path, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: not JSON")


def test_metrics_one_series_per_check_with_fault_label(tmp_path):
    findings = run_with(tmp_path, FakeNode(**{"systemctl is-active nvidia-fabricmanager": (3, "inactive\n")}))
    text = health.metrics_text(findings, "gpu001", now=1700000000)
    assert 'podsys_health_check_ok{node="gpu001",check="gpu.fabric_manager",fault="fm-stopped"} 0' in text
    assert 'podsys_health_check_ok{node="gpu001",check="gpu.count",fault="gpu-missing"} 1' in text
    assert 'podsys_health_last_run_timestamp_seconds{node="gpu001"} 1700000000' in text
    written = health.write_metrics(tmp_path / "textfile", text)
    assert written.read_text() == text and not list((tmp_path / "textfile").glob(".*"))


def test_every_check_the_judges_name_is_in_the_catalogue():
    from podsys.checks.registry import PARSE_KINDS
    from tests.unit.cli.test_check_parse_input import SAMPLES
    from tests.unit.checks.helpers import FIXTURES

    names = set()
    for kind, sample in SAMPLES.items():
        _, judge = PARSE_KINDS[kind]
        names |= {f.check for f in judge((FIXTURES / sample).read_text(), "n", profile("hgx-h100-8gpu"), sample)}
    missing = sorted(n for n in names if spec_for(n) is None)
    assert not missing, missing
    assert {s.tier for s in CATALOG} == {"prolog", "passive", "active"}


def test_fault_codes_the_lab_injects_are_in_the_catalogue():
    codes = {s.fault for s in CATALOG} | {fault_code("infiniband.ports", 200.0, "degraded"), fault_code("gpu.xid", 1, "Xid 79")}
    assert {"xid79", "gpu-missing", "ib-port-down", "ib-rate-degraded", "nvlink-inactive", "fm-stopped", "peermem-missing",
            "row-remap-pending"} <= codes


def test_the_node_side_modules_need_neither_pydantic_nor_typer(tmp_path):
    # nodes get podsys/checks copied, not the package and its dependencies
    code = ("import builtins, sys\nreal = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('pydantic', 'typer', 'rich', 'jinja2', 'yaml') or name.startswith('podsys.cluster'):\n"
            "        raise ImportError('node has no ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import podsys.checks.health_main\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.stdout.strip() == "ok", done.stderr


def test_health_json_round_trips_from_every_builtin_profile():
    from podsys.cluster.hardware import builtin_profiles

    for profile_id, spec in builtin_profiles().items():
        data = json.loads(json.dumps(health.config_data("n1", spec)))
        parsed = health.parse_config(data)
        assert parsed.profile.id == profile_id and parsed.profile.has_ib == spec.has_ib
        assert (parsed.profile.gpu is None) == (spec.gpu is None)


# GPUDirect RDMA either way: the node's health.json names the path its plan runs.
LSMOD_NO_PEERMEM = capture("lsmod.txt").replace("nvidia_peermem         16384  0\n", "")


def dmabuf_run(tmp_path, monkeypatch, licence, release="6.8.0-45-generic"):
    monkeypatch.setattr(health.os, "uname", lambda: os.uname_result(("Linux", "gpu001", release, "#1", "x86_64")))
    cfg = health.parse_config(health.config_data("gpu001", profile("hgx-h100-8gpu"), gpudirect="dmabuf"))
    node = FakeNode(lsmod=(0, LSMOD_NO_PEERMEM), **{"modinfo -F license nvidia": (0, licence)})
    findings = health.run_checks(cfg, run=node, facts=facts(), state_dir=tmp_path)
    return next(f for f in findings if f.check == "gpu.gpudirect"), node


def test_a_dmabuf_node_passes_without_nvidia_peermem(tmp_path, monkeypatch):
    finding, node = dmabuf_run(tmp_path, monkeypatch, "Dual MIT/GPL\n")
    assert finding.verdict is Verdict.PASS and finding.value == "dmabuf", health.verdict_line(finding)
    assert "modinfo -F license nvidia" in node.calls


@pytest.mark.parametrize("licence, release, why", [
    ("NVIDIA\n", "6.8.0-45-generic", "not the open one"),
    ("Dual MIT/GPL\n", "5.4.0-200-generic", "older than 5.12"),
])
def test_a_dmabuf_node_that_cannot_do_dmabuf_fails(tmp_path, monkeypatch, licence, release, why):
    finding, _ = dmabuf_run(tmp_path, monkeypatch, licence, release)
    assert finding.verdict is Verdict.FAIL and why in finding.detail, health.verdict_line(finding)


def test_a_peermem_node_runs_no_modinfo(tmp_path):
    node = FakeNode()
    run_with(tmp_path, node)
    assert not any(c.startswith("modinfo") for c in node.calls)


def test_the_rendered_health_config_names_the_plans_gpudirect_path(tmp_path):
    from podsys.checks.health_files import node_configs
    from podsys.cluster.load import load_cluster

    matrix_ofed = json.loads(node_configs(load_cluster(MANIFESTS / "hgx-h100-32.yaml"))["health/nodes.json"])
    assert health.node_entry(matrix_ofed, "gpu001")["gpudirect"] == "nvidia_peermem"
    inbox = write_manifest_variant(tmp_path, "hgx-h100-32", infiniband={"stack": "inbox"}, gpu={"flavour": "open"})
    configs = json.loads(node_configs(load_cluster(inbox))["health/nodes.json"])
    assert health.node_entry(configs, "gpu001")["gpudirect"] == "dmabuf"
    assert health.parse_config(health.node_entry(configs, "gpu001")).gpudirect == "dmabuf"
