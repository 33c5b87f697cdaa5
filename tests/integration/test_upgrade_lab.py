"""`podsys upgrade` for real on a lab of its own (head + 2 cpu-only container nodes), Slurm
deployed by `podsys deploy`:

1. node01 runs a job; `podsys upgrade --limit node01` drains it with the podsys reason while the
   job runs (watched from the head with `scontrol show node`), waits for the job to finish (it
   writes its marker: it was not killed), deploys the new stack on node01 only, runs the
   acceptance checks (versions, network) and resumes node01.
2. An admin drains node01 with their own reason, node02's provision MTU is broken (the network
   check fails on it; deploy does not manage the MTU), a requeueable job runs on node02:
   `podsys upgrade --batch 1 --force` upgrades node01 but leaves the admin's drain, requeues
   node02's job, stops at batch 2 naming node02 and its finding (exit 1); node02 stays drained
   with the podsys reason.

Not covered here (cpu-only container nodes): a package change and a reboot. The stack's
packages differ only on GPU/InfiniBand nodes (the lab's Slurm comes from the distribution), and
node_reboot runs in the GPU play; tests/integration/test_stack_dummy_repo.py exercises those
roles on a lab node against the dummy NVIDIA repository."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
import yaml

from podsys.deploy.rollout import parse_scontrol_show_node
from podsys.lab import cluster as lab_cluster_mod
from tests.conftest import podsys

pytestmark = [pytest.mark.integration, pytest.mark.lab]

STACK = "r570-cuda12.8"
REASON = f"podsys:upgrade to {STACK}"
TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import atexit

    from tests.integration.conftest import bring_up_lab, lab_skip_reason

    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("upgradelab")
    atexit.register(lab_cluster_mod.down, directory)
    started = time.monotonic()
    try:
        lab = bring_up_lab(directory, 2)
        proc = podsys("deploy", lab.manifest, timeout=TIMEOUT_S, cwd=lab.directory)
        assert proc.returncode == 0, proc.stderr[-4000:]
        print(f"\nlab up + deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield lab
    finally:
        lab_cluster_mod.down(directory)
        print(f"\nupgrade lab module: {time.monotonic() - started:.0f} s", file=sys.stderr)


def slurm_nodes(lab):
    return parse_scontrol_show_node(lab.ssh(lab.head, "scontrol show node").stdout)


def wait_for(what, check, timeout=180, every=2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r})")


class Watcher(threading.Thread):
    """Records node01/node02's Slurm state from the head every 2 s while an upgrade runs."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.seen: list[tuple[float, dict]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            proc = self.lab.ssh(self.lab.head, "scontrol show node", check=False, timeout=30)
            if proc.returncode == 0:
                self.seen.append((time.monotonic(), parse_scontrol_show_node(proc.stdout)))
            self.stop.wait(2)


def upgrade(lab, *args):
    return podsys("upgrade", lab.manifest, "--stack", STACK, "--checks", "versions,network", *args,
                  timeout=TIMEOUT_S, cwd=lab.directory)


def test_a_batch_drains_waits_for_its_job_upgrades_checks_and_resumes(lab):
    wait_for("both nodes idle", lambda: all(n.state == "idle" and not n.flags for n in slurm_nodes(lab).values()))
    lab.ssh(lab.nodes[0], "rm -f /tmp/upgrade-job-done")
    job = lab.ssh(lab.head, "sbatch --parsable -w node01 -o /dev/null --wrap 'sleep 40; echo finished > /tmp/upgrade-job-done'").stdout.strip()
    wait_for("the job runs", lambda: "RUNNING" in lab.ssh(lab.head, f"squeue -h -j {job} -o %T").stdout)
    watcher = Watcher(lab)
    watcher.start()
    started = time.monotonic()
    try:
        proc = upgrade(lab, "--limit", "node01", "--json")
    finally:
        watcher.stop.set()
        watcher.join()
    print(f"\nupgrade of node01: {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    [batch] = result["batches"]
    assert batch["phase"] == "done" and batch["drained"] == ["node01"] and batch["resumed"] == ["node01"]
    assert batch["jobs"] == {job: "waited for"}
    assert f"waiting for 1 running job(s): {job}" in proc.stderr
    # Drained with the podsys reason while the job still ran, and node02 never touched.
    draining = [s["node01"] for _, s in watcher.seen if s["node01"].drain_set]
    assert draining and all(n.reason == REASON for n in draining)
    assert any(n.busy for n in draining), [(n.state, sorted(n.flags)) for n in draining]
    assert not any(s["node02"].drain_set for _, s in watcher.seen)
    # The job finished on its own (its marker is there), then the node came back into service.
    assert lab.ssh(lab.nodes[0], "cat /tmp/upgrade-job-done").stdout.strip() == "finished"
    assert f"installing stack {STACK}" in proc.stderr and "checking node01 (versions, network)" in proc.stderr
    node01 = slurm_nodes(lab)["node01"]
    assert not node01.drain_set and node01.state == "idle"
    assert list((lab.directory / ".podsys" / "check").glob("upgrade-*/batch-1/raw/node01/versions.txt"))
    # The deploy ran with the new stack, on node01 alone; the manifest itself was not edited.
    build = lab.directory / ".podsys" / "build"
    all_vars = yaml.safe_load((build / "inventory" / "group_vars" / "all" / "main.yml").read_text())
    assert all_vars["podsys_stack"]["id"] == STACK
    assert STACK not in lab.manifest.read_text()
    last_log = sorted((build / "logs").glob("deploy-*.log"))[-1].read_text()
    summary = last_log.split("# podsys deploy summary", 1)[1]
    assert summary.split() and summary.strip().startswith("node01: ok") and "node02" not in summary


def test_a_failing_batch_stops_the_rollout_and_an_admins_drain_is_never_resumed(lab):
    lab.ssh(lab.head, "scontrol update nodename=node01 state=drain reason='admin: disk check'")
    iface = lab.ssh(lab.nodes[1], "ip -o -4 addr show | awk '$4 ~ /^10\\./ {print $2; exit}'").stdout.strip()
    assert iface
    lab.ssh(lab.nodes[1], f"ip link set dev {iface} mtu 1400")
    job = lab.ssh(lab.head, "sbatch --parsable --requeue -w node02 -o /dev/null --wrap 'sleep 600'").stdout.strip()
    wait_for("the job runs", lambda: "RUNNING" in lab.ssh(lab.head, f"squeue -h -j {job} -o %T").stdout)
    started = time.monotonic()
    try:
        proc = upgrade(lab, "--batch", "1", "--force", "--json")
    finally:
        lab.ssh(lab.nodes[1], f"ip link set dev {iface} mtu 1500", check=False)
        lab.ssh(lab.head, f"scancel {job}", check=False)
    print(f"\nupgrade stopped at batch 2: {time.monotonic() - started:.0f} s", file=sys.stderr)
    assert proc.returncode == 1, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    first, second = result["batches"]
    assert first["phase"] == "done" and first["drained"] == [] and first["resumed"] == []
    assert "admin: disk check" in first["left_drained"]["node01"]
    assert second["phase"] == "failed" and second["jobs"] == {job: "requeued"}
    assert any("network.mtu" in line and "MTU 1400" in line for line in second["failures"]["node02"])
    assert result["stopped_at_batch"] == 2
    assert "upgrade stopped at batch 2: node02 failed" in proc.stderr and "node02: network.mtu" in proc.stderr
    nodes = slurm_nodes(lab)
    assert nodes["node01"].drain_set and nodes["node01"].reason == "admin: disk check"
    assert nodes["node02"].drain_set and nodes["node02"].reason == REASON
