"""podsys.deploy.installs and install_deploy: the install plan, the per-node phase, the driver
(fake clock, no real waiting) and the deploy around it (ansible runs recorded, not run).

Node records are made by the head's own code (podsys.provision.state.apply_event, the function
the status service calls for every installer callback), fed the ramdisk's callbacks as
podsys/data/ramdisk/init + functions.sh send them; the status JSON comes from a real
StatusServer on loopback."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from podsys.deploy import install_deploy, installs
from podsys.deploy.install_backends import url_records
from podsys.deploy.install_deploy import InstallSettings, InstallSteps, run_install_deploy
from podsys.deploy.installs import (
    InstallDriver,
    InstallPlan,
    NodeRecord,
    Phase,
    Watch,
    install_progress,
    plan_installs,
    written_bytes,
)
from podsys.deploy.rollout import SlurmJob, SlurmNode
from podsys.deploy.runner import DeployOptions, DeployResult, HostResult, load_state
from podsys.errors import PodsysError
from podsys.provision.state import NodeInfo, StateStore, apply_event, new_record
from tests.conftest import REPO_ROOT

RAMDISK = REPO_ROOT / "podsys" / "data" / "ramdisk"


def record(*events: tuple[str, str, str], boot: str = "install") -> NodeRecord:
    """The head's record after these (event, stage, message) callbacks, in order."""
    rec = new_record(boot)
    for i, (event, stage, message) in enumerate(events):
        rec = apply_event(rec, event, stage, message, now=f"2026-11-29T08:00:{i:02d}Z")
    return NodeRecord.from_mapping(rec)


PENDING = record()
# What the ramdisk sends: iPXE's "pxe" stage, then /init's start + run_step stages.
WRITING = record(("stage", "pxe", ""), ("start", "network", ""), ("stage", "fetch", ""), ("stage", "fetch", "bytes=1048576"),
                 ("stage", "write", "bytes=734003200"))
FAILED_PARTITION = record(("start", "network", ""), ("stage", "partition", ""),
                          ("fail", "partition", "disk /dev/vda has 2147483648 bytes, the image needs 4294967296"))
INSTALLED = record(("start", "network", ""), ("stage", "identity", ""), ("finish", "done", "installed n1 on /dev/vda (bios)"))


# ----------------------------------------------------------------------------- records


def test_bytes_format_is_the_ramdisks():
    functions = (RAMDISK / "functions.sh").read_text()
    assert 'report stage fetch "bytes=$(bytes_of "$IMAGE_FILE")"' in functions
    assert 'report stage write "bytes=$written"' in functions
    assert written_bytes("bytes=734003200") == 734003200
    assert written_bytes("disk too small") is None
    assert written_bytes("") is None


def test_records_from_a_real_status_service(tmp_path):
    from podsys.provision.status import StatusServer

    store = StateStore(tmp_path / "state", None, {"n1": NodeInfo("n1", "127.0.0.1", "52:54:00:00:00:01")}, "install")
    server = StatusServer(("127.0.0.1", 0), store, "lab", quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for query in ("event=start&stage=network", "event=stage&stage=write&message=bytes%3D4096"):
            urllib.request.urlopen(f"{base}/api/v1/callback?{query}", timeout=5).read()
        got = url_records(base)
    finally:
        server.shutdown()
        server.server_close()
    assert list(got) == ["n1"]
    assert (got["n1"].state, got["n1"].stage, got["n1"].boot) == ("installing", "write", "install")
    assert written_bytes(got["n1"].message) == 4096


def test_records_from_state_show_and_garbage():
    text = json.dumps({"n1": {**new_record("local"), "state": "installed"}})
    assert installs.records_from_state_show(text)["n1"] == NodeRecord(boot="local", state="installed")
    with pytest.raises(PodsysError, match="not JSON"):
        installs.records_from_state_show("Traceback (most recent call last):")
    with pytest.raises(PodsysError, match="no node list"):
        installs.records_from_status_json('{"cluster": "lab"}')


def test_both_readers_carry_the_host_keys_and_tolerate_records_without_them():
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKey"]
    rec = apply_event(new_record("install"), "stage", "identity", host_keys=keys)
    shown = installs.records_from_state_show(json.dumps({"n1": rec, "n2": {"boot": "local"}, "n3": {"host_keys": None}}))
    assert shown["n1"].host_keys == tuple(keys)
    assert (shown["n2"].boot, shown["n2"].host_keys, shown["n3"].host_keys) == ("local", (), ())
    rows = installs.records_from_status_json(json.dumps({"nodes": [{"node": "n1", **rec}, {"node": "n2", "state": "pending"}]}))
    assert (rows["n1"].host_keys, rows["n2"].host_keys) == (tuple(keys), ())
    # Keys reported since the node was powered are news from this attempt.
    assert installs._fresh(shown["n1"], NodeRecord.from_mapping({**rec, "host_keys": []}))


def test_the_probe_gets_the_nodes_record_with_its_keys():
    clock = Clock()
    keys = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey",)
    events = happy("n1", 20)
    events.insert(3, (70, "n1", "stage", "identity", ""))
    timeline = Timeline(clock, {"n1": PENDING}, events, host_keys={"n1": list(keys)})
    probed = []
    outcome = driver(clock, timeline, ssh=lambda node, record: probed.append((node, record.host_keys)) or "").run(
        InstallPlan(power=("n1",)), lambda names: {}, ["n1"])
    assert outcome.came_up == ["n1"] and probed == [("n1", keys)]


def test_unreachable_status_url_is_one_error():
    with pytest.raises(PodsysError, match="cannot read the status service at http://127.0.0.1:9"):
        url_records("http://127.0.0.1:9", timeout=2)


# ----------------------------------------------------------------------------- the plan


def test_plan_powers_pending_and_failed_follows_installing_skips_local():
    records = {"n1": PENDING, "n2": FAILED_PARTITION, "n3": WRITING, "n4": record(("finish", "done", ""))}
    assert records["n4"].boot == "local"
    plan = plan_installs(records, None)
    assert plan == InstallPlan(power=("n1", "n2"), watch=("n3",), installed=("n4",))
    # --resume: an earlier deploy gave up on n3, so it is power-cycled this time.
    assert plan_installs(records, None, resume=True).power == ("n1", "n2", "n3")


def test_second_deploy_with_every_node_installed_plans_nothing():
    records = {n: record(("start", "network", ""), ("finish", "done", "")) for n in ("n1", "n2")}
    plan = plan_installs(records, None)
    assert not plan and plan.power == () and plan.installed == ("n1", "n2")


def test_plan_keeps_to_the_selection_and_ignores_nodes_without_a_record():
    plan = plan_installs({"n1": PENDING, "n2": PENDING}, ["head", "n2", "svc1"])
    assert plan.power == ("n2",)


def test_batches():
    assert installs.plan_batches(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert installs.plan_batches(["a", "b", "c"], None) == [["a", "b", "c"]]
    assert installs.plan_batches([], 2) == []


# ----------------------------------------------------------------------------- the phase


def watch(baseline=PENDING, power_error=""):
    return Watch("n1", since=100.0, baseline=baseline, power_error=power_error)


def test_phase_walks_from_powering_to_reachable():
    assert install_progress(watch(), PENDING, None, 110, 1000).phase is Phase.POWERING
    p = install_progress(watch(), WRITING, None, 160, 1000)
    assert (p.phase, p.stage, p.bytes, p.elapsed) == (Phase.INSTALLING, "write", 734003200, 60)
    assert "700.0 MiB" in p.line() and "1:00" in p.line()
    assert install_progress(watch(), INSTALLED, None, 200, 1000).phase is Phase.INSTALLED
    assert install_progress(watch(), INSTALLED, "cannot connect: [Errno 111] Connection refused", 210, 1000).phase is Phase.INSTALLED
    assert install_progress(watch(), INSTALLED, "", 220, 1000).phase is Phase.REACHABLE


def test_failed_stage_is_named_with_the_ramdisks_reason():
    p = install_progress(watch(), FAILED_PARTITION, None, 130, 1000)
    assert (p.phase, p.stage) == (Phase.FAILED, "partition")
    assert installs.failure_reason(p) == ("install failed at stage partition: disk /dev/vda has 2147483648 bytes, "
                                          "the image needs 4294967296")


def test_a_stale_failure_from_an_earlier_attempt_is_not_this_attempts_result():
    # Powered while its record still said failed: until the record changes, it is powering.
    assert install_progress(watch(FAILED_PARTITION), FAILED_PARTITION, None, 150, 1000).phase is Phase.POWERING
    p = install_progress(watch(FAILED_PARTITION), FAILED_PARTITION, None, 1000, 1000)
    assert (p.phase, p.stage, p.message) == (Phase.TIMED_OUT, "power-on", "no callback from the node")


def test_timeout_names_the_last_stage_and_bytes():
    p = install_progress(watch(), WRITING, None, 1900, 1900)
    assert (p.phase, p.stage, p.bytes) == (Phase.TIMED_OUT, "write", 734003200)
    assert installs.failure_reason(p) == "install timed out after 30:00 at stage write, 700.0 MiB written"
    q = install_progress(watch(), INSTALLED, "cannot connect: timed out", 1900, 1900)
    assert (q.phase, q.stage, q.message) == (Phase.TIMED_OUT, "installed", "no SSH from its disk: cannot connect: timed out")


def test_power_error_fails_at_stage_power():
    p = install_progress(watch(power_error="ipmitool chassis bootdev pxe: the BMC refused the boot device: x"),
                         PENDING, None, 101, 1000)
    assert (p.phase, p.stage) == (Phase.FAILED, "power")


# ----------------------------------------------------------------------------- the driver


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Timeline:
    """The head's records over time: at clock t, every callback scheduled at or before t applied.
    A node's `identity` stage carries its `host_keys`, as the ramdisk's key report does."""

    def __init__(self, clock: Clock, start: dict[str, NodeRecord], events: list[tuple[float, str, str, str, str]],
                 host_keys: dict[str, list[str]] | None = None):
        self.clock = clock
        self.start = start
        self.events = events
        self.host_keys = host_keys or {}
        self.reads = 0

    def __call__(self) -> dict[str, NodeRecord]:
        self.reads += 1
        out = {}
        for node, rec in self.start.items():
            raw = {**new_record(rec.boot), **{k: v or None for k, v in rec.__dict__.items()}}
            raw["state"] = rec.state
            raw["stage"] = rec.stage
            raw["message"] = rec.message
            for t, n, event, stage, message in self.events:
                if n == node and t <= self.clock.now:
                    keys = self.host_keys.get(n) if stage == "identity" else None
                    raw = apply_event(raw, event, stage, message, now=f"2026-11-29T09:{int(t) // 60:02d}:{int(t) % 60:02d}Z",
                                      host_keys=keys)
            out[node] = NodeRecord.from_mapping(raw)
        return out


def happy(node: str, at: float) -> list[tuple[float, str, str, str, str]]:
    return [(at, node, "stage", "pxe", ""), (at + 10, node, "start", "network", ""),
            (at + 20, node, "stage", "write", "bytes=1000"), (at + 60, node, "finish", "done", "")]


def driver(clock, timeline, ssh=lambda node, record: "", timeout_s=600, shown=None, said=None):
    return InstallDriver(timeline, ssh, clock=clock, sleep=clock.sleep, timeout_s=timeout_s, poll_s=5,
                         show=(shown.append if shown is not None else (lambda p: None)),
                         say=(said.append if said is not None else (lambda line: None)))


def test_driver_powers_waits_and_reports_reachable_without_real_waiting():
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING, "n2": PENDING}, happy("n1", 20) + happy("n2", 40))
    powered: list[list[str]] = []
    shown: list = []
    outcome = driver(clock, timeline, shown=shown).run(InstallPlan(power=("n1", "n2")),
                                                       lambda names: powered.append(names) or {}, ["n1", "n2"])
    assert powered == [["n1", "n2"]]
    assert outcome.came_up == ["n1", "n2"] and outcome.did_not == []
    assert 100 <= clock.now <= 110  # done when n2 finished (t=100) and answered SSH, not at the timeout
    phases = {p.phase for frame in shown for p in frame}
    assert {Phase.POWERING, Phase.INSTALLING, Phase.REACHABLE} <= phases
    # Each node's elapsed is its own power-on to SSH (n1 finished at t=80), not the batch's.
    elapsed = {p.node: p.elapsed for p in outcome.progress}
    assert 80 <= elapsed["n1"] < 90 and 100 <= elapsed["n2"] < 110, elapsed


def test_driver_times_out_naming_the_last_stage_and_the_other_node_proceeds():
    clock = Clock()
    stuck = [(10, "n2", "start", "network", ""), (20, "n2", "stage", "fetch", "bytes=512")]
    timeline = Timeline(clock, {"n1": PENDING, "n2": PENDING}, happy("n1", 5) + stuck)
    outcome = driver(clock, timeline, timeout_s=300).run(InstallPlan(power=("n1", "n2")), lambda names: {}, ["n1", "n2"])
    assert clock.now == 300
    assert outcome.came_up == ["n1"]
    [late] = outcome.did_not
    assert (late.node, late.phase, late.stage, late.bytes) == ("n2", Phase.TIMED_OUT, "fetch", 512)


def test_driver_failed_node_named_while_the_other_proceeds():
    clock = Clock()
    failing = [(10, "n2", "start", "network", ""), (30, "n2", "fail", "verify", "sha256 mismatch")]
    timeline = Timeline(clock, {"n1": PENDING, "n2": PENDING}, happy("n1", 5) + failing)
    outcome = driver(clock, timeline).run(InstallPlan(power=("n1", "n2")), lambda names: {}, ["n1", "n2"])
    assert outcome.came_up == ["n1"]
    assert [(p.node, p.phase, p.stage, p.message) for p in outcome.did_not] == [("n2", Phase.FAILED, "verify", "sha256 mismatch")]


def test_no_bmc_prints_which_nodes_to_power_on_and_still_follows_them():
    clock = Clock()
    said: list[str] = []
    timeline = Timeline(clock, {"gpu01": PENDING, "gpu02": PENDING}, happy("gpu01", 5) + happy("gpu02", 5))
    outcome = driver(clock, timeline, said=said).run(InstallPlan(power=("gpu01", "gpu02")), None)
    assert said == ["no BMC for 2 node(s): power on gpu[01-02] now (they boot from the network and install)"]
    assert outcome.manual == ["gpu01", "gpu02"] and outcome.came_up == ["gpu01", "gpu02"]


def test_power_failure_fails_that_node_only():
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING, "n2": PENDING}, happy("n1", 5))
    outcome = driver(clock, timeline).run(InstallPlan(power=("n1", "n2")),
                                          lambda names: {"n1": "", "n2": "ipmitool chassis bootdev pxe: refused"}, ["n1", "n2"])
    assert outcome.came_up == ["n1"]
    assert [(p.node, p.stage) for p in outcome.did_not] == [("n2", "power")]


def test_status_service_down_for_a_while_is_not_fatal_but_named_at_timeout():
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING}, [])

    def flaky():
        if clock.now > 0:
            raise PodsysError("cannot reach the head h over SSH: timed out")
        return timeline()

    outcome = driver(clock, flaky, timeout_s=60).run(InstallPlan(power=("n1",)), lambda names: {}, ["n1"])
    [p] = outcome.did_not
    assert (p.phase, p.message) == (Phase.TIMED_OUT, "status service: cannot reach the head h over SSH: timed out")


def test_installed_but_no_ssh_times_out_as_installed():
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING}, happy("n1", 5))
    outcome = driver(clock, timeline, ssh=lambda node, record: "host key mismatch for 10.0.0.11 (known_hosts)",
                     timeout_s=120).run(InstallPlan(power=("n1",)), lambda names: {}, ["n1"])
    [p] = outcome.did_not
    assert (p.phase, p.stage) == (Phase.TIMED_OUT, "installed") and "host key mismatch" in p.message


def test_empty_plan_reads_and_powers_nothing():
    clock = Clock()
    timeline = Timeline(clock, {"n1": INSTALLED}, [])
    outcome = driver(clock, timeline).run(InstallPlan(installed=("n1",)), lambda names: pytest.fail("powered"), ["n1"])
    assert outcome.progress == [] and timeline.reads == 0 and clock.slept == []


# ----------------------------------------------------------------------------- the deploy around it


def build_dir(tmp_path: Path, nodes: list[str]) -> Path:
    build = tmp_path / "build"
    (build / "inventory").mkdir(parents=True)
    hosts = {"head": {"hosts": {"head": {}}}, "nodes": {"hosts": {n: {} for n in nodes}}}
    (build / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": hosts}}))
    return build


class Runs:
    """Stands in for ansible-runner: records each run's options and answers ok for every host."""

    def __init__(self, build: Path, known: list[str], fail: tuple[str, ...] = ()):
        self.build = build
        self.known = known
        self.fail = fail
        self.calls: list[DeployOptions] = []

    def __call__(self, options: DeployOptions) -> DeployResult:
        self.calls.append(options)
        hosts = options.limit.split(",") if options.limit else self.known
        results = [HostResult(h, "failed" if h in self.fail else "ok", 1, 0, int(h in self.fail), 0, 0) for h in hosts]
        return DeployResult(results, 2 if self.fail else 0, "successful", self.build / "logs" / "x.log", None)


def steps_for(clock, timeline, runs, power=lambda names: {}, bmc=("n1", "n2"), slurm=None, said=None):
    return InstallSteps(read_status=timeline, probe_ssh=lambda node, record: "", power=power, bmc_nodes=list(bmc),
                        run_deploy=runs, clock=clock, sleep=clock.sleep,
                        say=(said.append if said is not None else (lambda line: None)), slurm=slurm)


def test_deploy_installs_then_runs_the_layers_only_where_nodes_came_up_and_resume_picks_up_the_rest(tmp_path):
    build = build_dir(tmp_path, ["n1", "n2"])
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING, "n2": PENDING},
                        happy("n1", 5) + [(10, "n2", "start", "network", ""), (20, "n2", "fail", "write", "No space left on device")])
    runs = Runs(build, ["head", "n1", "n2"])
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600), steps_for(clock, timeline, runs))
    # The head's boot services first (its images and node table are this manifest's), then the layers.
    assert [(c.limit, c.tags) for c in runs.calls] == [("head", "packages,provision"), ("head,n1", None)]
    assert {h.name: h.status for h in out.result.results} == {"head": "ok", "n1": "ok", "n2": "failed"}
    assert not out.result.succeeded
    summary = out.as_dict()
    assert summary["came_up"] == ["n1"]
    assert summary["did_not"] == [{"node": "n2", "phase": "failed", "stage": "write",
                                   "why": "install failed at stage write: No space left on device"}]
    assert load_state(build)["hosts"]["n2"]["reason"] == "install failed at stage write: No space left on device"

    # deploy --resume: only n2 is selected; it is power-cycled again and, this time, comes up.
    clock2 = Clock()
    retry = Timeline(clock2, {"n1": INSTALLED, "n2": FAILED_PARTITION}, happy("n2", 5))
    powered: list[list[str]] = []
    runs2 = Runs(build, ["head", "n1", "n2"])
    out2 = run_install_deploy(build, DeployOptions(resume=True), InstallSettings(head="head", timeout_s=600),
                              steps_for(clock2, retry, runs2, power=lambda names: powered.append(names) or {}))
    assert powered == [["n2"]]
    assert [c.limit for c in runs2.calls] == ["head", "head,n2"]
    assert out2.result.succeeded


def test_second_deploy_powers_nothing_and_runs_the_plain_deploy(tmp_path):
    build = build_dir(tmp_path, ["n1", "n2"])
    clock = Clock()
    timeline = Timeline(clock, {"n1": INSTALLED, "n2": INSTALLED}, [])
    runs = Runs(build, ["head", "n1", "n2"])
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600),
                             steps_for(clock, timeline, runs, power=lambda names: pytest.fail(f"powered {names}")))
    assert [(c.limit, c.tags) for c in runs.calls] == [(None, None)]
    assert out.installs == [] and out.result.succeeded and clock.slept == []


def test_first_deploy_sets_up_the_head_boot_services_before_reading_state(tmp_path):
    build = build_dir(tmp_path, ["n1"])
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING}, happy("n1", 5))
    runs = Runs(build, ["head", "n1"])
    calls = {"n": 0}

    def read():
        calls["n"] += 1
        if not runs.calls:
            raise PodsysError("the command on the head failed (rc 1): No such file or directory")
        return timeline()

    said: list[str] = []
    steps = steps_for(clock, read, runs, said=said)
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600), steps)
    assert [(c.limit, c.tags) for c in runs.calls] == [("head", "packages,provision"), ("head,n1", None)]
    assert said[0].startswith("no install state on the head yet")
    assert out.result.succeeded


class FakeSlurm:
    def __init__(self, nodes: list[str]):
        self.state = {n: SlurmNode(n, "idle") for n in nodes}
        self.log: list[str] = []
        self.running: list[SlurmJob] = []

    def nodes(self):
        return dict(self.state)

    def jobs(self):
        return list(self.running)

    def drain(self, nodes, reason):
        self.log.append(f"drain {','.join(nodes)}")
        for n in nodes:
            self.state[n] = SlurmNode(n, "idle", frozenset({"drain"}), reason)

    def resume(self, nodes):
        self.log.append(f"resume {','.join(nodes)}")
        for n in nodes:
            self.state[n] = SlurmNode(n, "idle")


def test_rolling_reimage_drains_installs_configures_and_resumes_one_batch_at_a_time(tmp_path):
    build = build_dir(tmp_path, ["n1", "n2", "n3"])
    clock = Clock()
    timeline = Timeline(clock, {n: PENDING for n in ("n1", "n2", "n3")},
                        happy("n1", 5) + happy("n2", 5) + happy("n3", 120))
    runs = Runs(build, ["head", "n1", "n2", "n3"])
    slurm = FakeSlurm(["n1", "n2", "n3"])
    powered: list[list[str]] = []
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600, batch=2),
                             steps_for(clock, timeline, runs, power=lambda names: powered.append(names) or {},
                                       bmc=("n1", "n2", "n3"), slurm=slurm))
    assert powered == [["n1", "n2"], ["n3"]]
    assert slurm.log == ["drain n1,n2", "resume n1,n2", "drain n3", "resume n3"]
    assert [c.limit for c in runs.calls] == ["head", "head,n1,n2", "head,n3"]
    assert [b["result"] for b in out.batches] == ["ok", "ok"]
    assert all(not s.drain_set for s in slurm.state.values())


def test_rolling_reimage_stops_after_a_batch_that_did_not_come_back(tmp_path):
    build = build_dir(tmp_path, ["n1", "n2"])
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING, "n2": PENDING},
                        [(5, "n1", "start", "network", ""), (9, "n1", "fail", "bootloader", "grub-install failed")])
    runs = Runs(build, ["head", "n1", "n2"])
    slurm = FakeSlurm(["n1", "n2"])
    powered: list[list[str]] = []
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600, batch=1),
                             steps_for(clock, timeline, runs, power=lambda names: powered.append(names) or {}, slurm=slurm))
    assert powered == [["n1"]]
    assert slurm.log == ["drain n1"]  # n1 stays drained: it did not come back
    assert slurm.state["n1"].drain_set and slurm.state["n1"].reason == "podsys:reinstall"
    assert [b["result"] for b in out.batches] == ["failed"]
    assert not out.result.succeeded
    # Nothing came up; n2 was never touched and is not configured either (only the head's boot services ran).
    assert [(c.limit, c.tags) for c in runs.calls] == [("head", "packages,provision")]
    reasons = {h.name: h.reason for h in out.result.results}
    assert reasons == {"head": "", "n1": "install failed at stage bootloader: grub-install failed",
                       "n2": "not reinstalled: the rolling re-image stopped at batch 1 (failed)"}
    assert set(load_state(build)["hosts"]) == {"n1", "n2"}  # both for --resume


def test_plain_progress_lines_only_on_change(capsys):
    from rich.console import Console

    console = Console(force_terminal=False, width=200)
    show, close = install_deploy.make_display(console)
    p = installs.Progress("n1", Phase.INSTALLING, "write", 2048, 65.0)
    show([p])
    show([p])
    show([installs.Progress("n1", Phase.REACHABLE, "ssh", None, 90.0)])
    close()
    assert capsys.readouterr().out.splitlines() == ["n1: installing write 2.0 KiB 1:05", "n1: reachable ssh 1:30"]


def test_rolling_reimage_waits_for_jobs_and_reinstalls_nothing_while_they_still_run(tmp_path):
    build = build_dir(tmp_path, ["n1"])
    clock = Clock()
    timeline = Timeline(clock, {"n1": PENDING}, happy("n1", 5))
    runs = Runs(build, ["head", "n1"])
    slurm = FakeSlurm(["n1"])
    slurm.running = [SlurmJob("41", "RUNNING", ("n1",))]
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=60, batch=1),
                             steps_for(clock, timeline, runs, power=lambda names: pytest.fail("powered"), slurm=slurm))
    assert slurm.log == ["drain n1", "resume n1"]
    assert out.batches == [{"nodes": ["n1"], "result": "jobs still running"}]
    assert clock.now > 60
    assert not out.result.succeeded
    reasons = {r.name: r.reason for r in out.result.results}
    assert reasons["n1"] == "not reinstalled: the rolling re-image stopped at batch 1 (jobs still running)"


def test_live_table_on_a_terminal_stops_once_every_node_is_final():
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    show, close = install_deploy.make_display(console)
    show([installs.Progress("n1", Phase.INSTALLING, "write", 2048, 65.0)])
    show([installs.Progress("n1", Phase.FAILED, "verify", None, 70.0, "sha256 mismatch")])
    # A second live display (the Ansible run after the installs) may start now: rich allows one.
    from rich.live import Live

    with Live(console=console):
        pass
    close()
    text = buffer.getvalue()
    assert "installing" in text and "sha256 mismatch" in text and "2.0 KiB" in text


def test_rolling_reimage_without_a_running_slurmctld_drains_nothing_and_proceeds(tmp_path):
    class Silent(FakeSlurm):
        def nodes(self):
            raise PodsysError("mu01: `scontrol show node` failed: slurm_load_node error: Unable to contact slurm controller")

    build = build_dir(tmp_path, ["n1"])
    clock = Clock()
    said: list[str] = []
    slurm = Silent(["n1"])
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600, batch=1),
                             steps_for(clock, Timeline(clock, {"n1": PENDING}, happy("n1", 5)), Runs(build, ["head", "n1"]),
                                       slurm=slurm, said=said))
    assert slurm.log == []
    assert any(line.startswith("Slurm does not answer (mu01: `scontrol show node` failed") for line in said)
    assert out.result.succeeded and out.batches == [{"nodes": ["n1"], "came_up": ["n1"], "result": "ok"}]


def test_rolling_reimage_leaves_an_admins_drain_alone(tmp_path):
    build = build_dir(tmp_path, ["n1", "n2"])
    clock = Clock()
    slurm = FakeSlurm(["n1", "n2"])
    slurm.state["n2"] = SlurmNode("n2", "idle", frozenset({"drain"}), "bad DIMM, ticket 4711")
    out = run_install_deploy(build, DeployOptions(), InstallSettings(head="head", timeout_s=600, batch=2),
                             steps_for(clock, Timeline(clock, {"n1": PENDING, "n2": PENDING}, happy("n1", 5) + happy("n2", 5)),
                                       Runs(build, ["head", "n1", "n2"]), slurm=slurm))
    assert slurm.log == ["drain n1", "resume n1"]
    assert slurm.state["n2"].reason == "bad DIMM, ticket 4711"
    assert out.result.succeeded
