"""The live pipeline without hosts: probes are answered from recorded outputs (the tools'
exact formats), then judged; raw outputs land next to the report."""

import json

import pytest

from podsys.checks.runner import AccessSettings, collect, probe_load, remote_command, run_checks
from podsys.cluster.selection import select_nodes
from podsys.checks.findings import Verdict
from podsys.checks.live import Context, ProbeResult
from podsys.errors import InputError
from podsys.cluster.load import load_cluster
from tests.unit.checks.helpers import fixture
from tests.conftest import REPO_ROOT as ROOT

DEBIAN_OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'


@pytest.fixture(scope="module")
def lab():
    return load_cluster(ROOT / "manifests" / "lab.yaml")


@pytest.fixture(scope="module")
def pod():
    return load_cluster(ROOT / "manifests" / "hgx-h100-32.yaml")


class Replay:
    """An executor that answers each probe with a function of (host, probe name)."""

    def __init__(self, answer):
        self.answer = answer
        self.ran = []

    def run(self, probe):
        self.ran.append((probe.host, probe.name))
        out = self.answer(probe.host, probe.name, probe.command)
        if out is None:
            return ProbeResult(probe.host, probe.name, probe.command, None, error="connection refused")
        return ProbeResult(probe.host, probe.name, probe.command, 0, out)

    def close(self):
        pass


def sections(**kw):
    return "".join(f"### {k.replace('_', '-')}\n{v}\n" for k, v in kw.items())


def lab_answer(cluster, *, stopped=None, target_down=None, mtu=None):
    ips = {n.name: n.provision_ip for n in cluster.nodes}
    ips[cluster.manifest.head.hostname] = str(cluster.manifest.head.address)

    def answer(host, name, command):
        if name == "versions":
            return sections(os_release=DEBIAN_OS_RELEASE, kernel="6.1.0-28-amd64", slurm="slurm-wlm 22.05.8",
                            modules="", driver="", cuda="", nccl="", ofed="", fabric_manager="", fabric_manager_active="", dcgm="")
        if name == "slurm":
            sinfo = "\n".join(f"{n}|{'idle*' if n == stopped else 'idle'}|(null)" for n in ips if n != "head")
            srun = "\n".join(n for n in ips if n not in ("head", stopped))
            srun += f"\nsrun: error: Task launch for StepId=12.0 failed on node {stopped}: Communication connection failure" if stopped else ""
            each = f"== {stopped}\nsrun: error: Unable to allocate resources: Requested node configuration is not available\nrc=1\n" if stopped else ""
            return sections(sinfo=sinfo, srun=srun + f"\nrc={1 if stopped else 0}", srun_each=each)
        if name == "prometheus-targets":
            targets = [{"labels": {"instance": f"{ip}:9100", "job": "node"}, "health": "down" if n == target_down else "up",
                        "lastError": "connection refused" if n == target_down else ""} for n, ip in ips.items()]
            return json.dumps({"status": "success", "data": {"activeTargets": targets}})
        if name == "prometheus-health":  # podsys health results over the last day (query_range)
            result = [{"metric": {"node": n}, "values": [[1764370800, "1"], [1764371100, "1"]]} for n in ips if n != "head"]
            return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})
        if name == "network":
            me = ips[host]
            addr = f"2: eth0    inet {me}/24 brd 10.77.0.255 scope global eth0\\       valid_lft forever preferred_lft forever"
            link = f"2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {mtu if (mtu and host == 'node2') else 1500} qdisc noqueue state UP mode DEFAULT group default qlen 1000"
            reach = "\n".join(f"{ip} {'fail' if (stopped and n == stopped) else 'ok'} tcp/22" for n, ip in ips.items() if n != host)
            return sections(addr=addr, link=link, reach=reach)
        raise AssertionError(f"unexpected probe {name} on {host}")

    return answer


def verdicts(findings, check):
    return {f.node: f.verdict for f in findings if f.check == check}


def test_lab_healthy_cluster_passes_and_gpu_ib_nccl_skip_with_profile_reason(lab, tmp_path):
    executor = Replay(lab_answer(lab))
    findings = run_checks(lab, only=[], skip=[], limit=None, output_dir=tmp_path, executor=executor)
    names = [n.name for n in lab.nodes]
    assert verdicts(findings, "slurm.state") == {n: Verdict.PASS for n in names}
    assert verdicts(findings, "slurm.srun") == {n: Verdict.PASS for n in names}
    assert set(verdicts(findings, "monitoring.targets").values()) == {Verdict.PASS}
    assert verdicts(findings, "network.reach") == {n: Verdict.PASS for n in ["head", *names]}
    assert verdicts(findings, "versions.os") == {n: Verdict.PASS for n in names}
    for check in ("gpu.count", "infiniband.ports", "nccl.all_reduce", "bandwidth.nvbandwidth", "slurm.gres"):
        skipped = [f for f in findings if f.check == check]
        assert len(skipped) == len(names) and all(f.verdict is Verdict.SKIP and f.detail == "cpu-only profile" for f in skipped)
    # no GPU/IB probe was ever sent to a cpu-only node
    assert {name for _, name in executor.ran} == {"versions", "slurm", "prometheus-targets", "prometheus-health", "network"}
    assert not any(f.verdict is Verdict.FAIL for f in findings)
    index = json.loads((tmp_path / "raw" / "index.json").read_text())
    assert {(e["host"], e["probe"]) for e in index} == set(executor.ran)
    assert "### sinfo" in (tmp_path / "raw" / "head" / "slurm.txt").read_text()


def test_stopped_slurmd_fails_naming_that_node(lab, tmp_path):
    findings = run_checks(lab, only=["slurm"], skip=[], limit=None, output_dir=tmp_path, executor=Replay(lab_answer(lab, stopped="node2")))
    assert {f.node for f in findings if f.verdict is Verdict.FAIL} == {"node2"}
    srun = next(f for f in findings if f.check == "slurm.srun" and f.node == "node2")
    assert "Requested node configuration" in srun.detail and "slurmd" in srun.diagnosis
    assert all(f.area == "slurm" for f in findings)


def test_target_down_and_mtu_mismatch(lab, tmp_path):
    findings = run_checks(lab, only=["monitoring", "network.mtu"], skip=[], limit=None, output_dir=tmp_path,
                          executor=Replay(lab_answer(lab, target_down="node3", mtu=9000)))
    assert verdicts(findings, "monitoring.targets")["node3"] is Verdict.FAIL
    mtu = [f for f in findings if f.check == "network.mtu" and f.verdict is Verdict.FAIL]
    assert [f.node for f in mtu] == ["node2"] and "9000" in mtu[0].detail
    assert not [f for f in findings if f.check == "network.reach"]  # --only network.mtu filters its sibling


def test_unreachable_node_fails_not_skips(lab, tmp_path):
    answer = lab_answer(lab)
    findings = run_checks(lab, only=["versions"], skip=[], limit=None, output_dir=tmp_path,
                          executor=Replay(lambda h, n, c: None if h == "node1" else answer(h, n, c)))
    node1 = [f for f in findings if f.node == "node1"]
    assert node1 and node1[0].verdict is Verdict.FAIL and "connection refused" in node1[0].detail


def test_selection_errors(lab, tmp_path):
    with pytest.raises(InputError, match="unknown area"):
        run_checks(lab, only=["gpus"], skip=[], limit=None, output_dir=tmp_path, executor=Replay(lambda *a: ""))
    with pytest.raises(InputError, match="not hosts of this cluster: node\\[4-9\\]"):
        select_nodes(lab, "node[1-9]")
    assert [n.name for n in select_nodes(lab, "node[2-3]")] == ["node2", "node3"]


def gpu_answer(host, name, command):
    if name == "gpu":
        return sections(query=fixture("nvidia_smi_query_7of8_faults.csv") if host == "gpu002" else fixture("nvidia_smi_query_8xh100_healthy.csv"),
                        topo=fixture("nvidia_smi_topo_8xh100_healthy.txt"),
                        nvlink=fixture("nvidia_smi_nvlink_s_inactive.txt").replace("<inactive>", "26.562 GB/s"),
                        dmesg=fixture("dmesg_clean.txt"), virt="none", lspci=fixture("lspci_acs_enabled.txt").replace("SrcValid+ TransBlk-", "SrcValid- TransBlk-"), dcgm=fixture("dcgmi_diag_r2_pass_dcgm3.txt"))
    if name == "infiniband":
        return sections(ibstat=fixture("ibstat_8x_ndr_healthy.txt"), counters="", dmesg=fixture("dmesg_xid79_and_downtrained_nic.txt"))
    if name.startswith("ib_write_bw-"):
        return "\n".join([fixture("ib_write_bw_ndr_gbits.txt")] * 8)
    if name == "nvbandwidth":
        return fixture("nvbandwidth_8xh100_healthy.txt")
    if name == "nccl":
        return "".join(f"### {c}\n{fixture('nccl_all_reduce_8xh100_single_node.txt') if c == 'all_reduce' else 'nccl-tests not installed (x_perf not on PATH)'}\n"
                       for c in ("all_reduce", "all_gather", "reduce_scatter", "alltoall"))
    if name == "nccl-multinode":
        return fixture("nccl_all_reduce_2x8xh100_multinode.txt")
    raise AssertionError(name)


def test_gpu_ib_nccl_areas_judge_recorded_outputs(pod, tmp_path):
    executor = Replay(gpu_answer)
    findings = run_checks(pod, only=["gpu", "infiniband", "nccl", "bandwidth"], skip=[], limit="gpu[001-002],login01",
                          output_dir=tmp_path, executor=executor)
    count = verdicts(findings, "gpu.count")
    assert count == {"gpu001": Verdict.PASS, "gpu002": Verdict.FAIL, "login01": Verdict.SKIP}
    assert verdicts(findings, "infiniband.pcie_link") == {"gpu001": Verdict.FAIL, "gpu002": Verdict.FAIL}
    assert not [f for f in findings if f.check == "gpu.xid" and f.verdict is Verdict.FAIL]  # IB area does not report GPU Xids twice
    ib = [f for f in findings if f.check == "infiniband.ib_write_bw"]
    assert len(ib) == 8 and all(f.verdict is Verdict.PASS for f in ib) and ib[0].node.startswith("gpu002->gpu001")
    assert verdicts(findings, "nccl.all_reduce") == {"gpu001": Verdict.PASS, "gpu002": Verdict.PASS, "login01": Verdict.SKIP}
    assert verdicts(findings, "nccl.all_gather")["gpu001"] is Verdict.SKIP
    assert verdicts(findings, "nccl.multinode.all_reduce") == {"gpu001,gpu002": Verdict.PASS}
    assert verdicts(findings, "gpu.pcie_acs") == {"gpu001": Verdict.PASS, "gpu002": Verdict.PASS}
    assert (pod.manifest.head.hostname, "nccl-multinode") in executor.ran
    assert not any(host == "login01" for host, _ in executor.ran)


def test_heavy_probes_on_one_node_never_overlap(pod):
    import threading
    import time

    ctx = Context(cluster=pod, nodes=tuple(pod.nodes[:3]), head=pod.manifest.head.hostname)
    from podsys.checks.registry import LIVE_AREAS

    probes = [p for a in ("nccl", "bandwidth", "infiniband") for p in LIVE_AREAS[a].probes(ctx)]
    busy: dict[str, int] = {}
    overlaps = []
    lock = threading.Lock()

    class Slow:
        def run(self, probe):
            load = probe_load(probe, ctx)
            with lock:
                for n in load:
                    busy[n] = busy.get(n, 0) + 1
                    if busy[n] > 1:
                        overlaps.append((n, probe.name))
            time.sleep(0.01)
            with lock:
                for n in load:
                    busy[n] -= 1
            return ProbeResult(probe.host, probe.name, probe.command, 0, "")

    results = collect(probes, Slow(), ctx, workers=8)
    assert len(results) == len(probes) and overlaps == []
    assert probe_load(next(p for p in probes if p.name == "nccl-multinode"), ctx) == ("gpu001", "gpu002", "gpu003")


def test_access_settings_resolve_relative_to_manifest_and_sudo_for_non_root(tmp_path, lab):
    settings = AccessSettings.from_cluster(lab)
    assert settings.access.head_address == str(lab.manifest.head.ssh_address or lab.manifest.head.address)
    assert settings.addresses["node1"] == "10.77.0.11"
    assert remote_command("dmesg", "root") == "dmesg"
    assert remote_command("dmesg | tail", "admin") == "sudo -n bash -c 'dmesg | tail'"


@pytest.mark.parametrize("only, skip, expected", [
    (["nccl.multinode"], [], {"nccl-multinode"}),
    (["nccl"], ["nccl.multinode"], {"nccl"}),
    (["nccl.all_reduce"], [], {"nccl"}),
    (["infiniband.ib_write_bw"], [], {"ib_write_bw-gpu001-gpu002"}),
    (["infiniband"], ["infiniband.ib_write_bw"], {"infiniband"}),
])
def test_only_the_probes_the_selection_needs_run(pod, tmp_path, only, skip, expected):
    executor = Replay(lambda h, n, c: "")
    findings = run_checks(pod, only=only, skip=skip, limit="gpu[001-002]", output_dir=tmp_path, executor=executor)
    assert {name for _, name in executor.ran} == expected
    assert all(any(f.check == p or f.check.startswith(p + ".") for p in only) for f in findings)
