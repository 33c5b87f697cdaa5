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
3. A package change and a reboot. On a cpu-only node the stacks differ in nothing (the lab's
   Slurm comes from the distribution, enroot is the same release), so node02 is declared a GPU
   node (hardware hgx-h100-8gpu, layer gpu; a manifest next to lab.yaml) and the GPU roles run
   for real against the signed dummy NVIDIA repository (tests/integration/dummy_nvidia_repo.py,
   R570 and R580 side by side, plus a newer driver of each branch) put on node02 and named with
   `--extra-vars`. `podsys upgrade --stack r570-cuda12.8` installs R570; `--stack r580-cuda13.0`
   then replaces it: drain, nvidia-driver 570.172.08 -> 580.95.05 in dpkg (the old stack's
   driver is replaceable without gpu.replace_driver), node_reboot restarts the nspawn container
   (`--reboot-command`: `podsys lab stop/start`; its boot id changes), the loaded-driver check
   says SKIP (a container with no NVIDIA PCI device loads no nvidia module), the network check
   passes and node02 is resumed. The acceptance areas are `network` only: the versions area
   would rightly FAIL versions.driver on a GPU-profile node that loads no driver."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from podsys.cluster.matrix import load_matrix
from podsys.deploy.rollout import parse_scontrol_show_node
from tests.conftest import REPO_ROOT, podsys
from tests.integration import dummy_nvidia_repo
from tests.integration.conftest import own_lab, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

STACK = "r570-cuda12.8"
REASON = f"podsys:upgrade to {STACK}"
TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    started = time.monotonic()
    try:
        with own_lab(tmp_path_factory, "upgradelab", 2) as lab:
            proc = podsys("deploy", lab.manifest, timeout=TIMEOUT_S, cwd=lab.directory)
            assert proc.returncode == 0, proc.stderr[-4000:]
            print(f"\nlab up + deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
            yield lab
    finally:
        print(f"\nupgrade lab module: {time.monotonic() - started:.0f} s", file=sys.stderr)


def slurm_nodes(lab):
    return parse_scontrol_show_node(lab.ssh(lab.head, "scontrol show node").stdout)


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
    wait_for("both nodes idle", lambda: all(n.state == "idle" and not n.flags for n in slurm_nodes(lab).values()), timeout=180)
    lab.ssh(lab.nodes[0], "rm -f /tmp/upgrade-job-done")
    job = lab.ssh(lab.head, "sbatch --parsable -w node01 -o /dev/null --wrap 'sleep 40; echo finished > /tmp/upgrade-job-done'").stdout.strip()
    wait_for("the job runs", lambda: "RUNNING" in lab.ssh(lab.head, f"squeue -h -j {job} -o %T").stdout, timeout=180)
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
    wait_for("the job runs", lambda: "RUNNING" in lab.ssh(lab.head, f"squeue -h -j {job} -o %T").stdout, timeout=180)
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


# --- 3. a package change and a reboot -------------------------------------------------------

FROM_STACK, TO_STACK = "r570-cuda12.8", "r580-cuda13.0"
GPU_PROFILE = "hgx-h100-8gpu"
REPO_DIR = "/srv/podsys-dummy-nvidia"


def gpu_node_manifest(lab) -> Path:
    """lab.yaml with node02 in a group of its own as an HGX H100 node with the gpu layer, on the
    R570 stack; written next to lab.yaml so it shares the lab's workspace."""
    data = yaml.safe_load(lab.manifest.read_text())
    group = data["node_groups"][0]
    gpu_node = lab.nodes[1]
    entry = group["nodes"].pop(gpu_node)
    group["hosts"] = lab.nodes[0]
    group["layers"] = list(data["layers"])
    data["layers"] = [*data["layers"], "gpu"]
    # No monitoring layer on it (dcgm-exporter would need a real DCGM) and no podsys health run
    # by slurmd: on a GPU-profile node with no GPU it would rightly drain it for gpu-missing.
    data["node_groups"].append({"name": "gpu", "hosts": gpu_node, "hardware": GPU_PROFILE, "start_address": entry["address"],
                                "pxe": False, "layers": [layer for layer in data["layers"] if layer != "monitoring"],
                                "nodes": {gpu_node: entry}})
    data["health"] = {"enabled": False}
    for partition in data["slurm"]["partitions"]:
        partition["node_groups"].append("gpu")
    data["stack"] = FROM_STACK
    path = lab.directory / "gpu-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dummy_repo_on(lab, node: str, work: Path) -> None:
    matrix = load_matrix()
    for stack_id in (FROM_STACK, TO_STACK):  # one pool, both stacks; the index covers both
        dummy_nvidia_repo.build(work, matrix.stack(stack_id), GPU_PROFILE, kernel=platform.release())
    lab.ssh(node, f"rm -rf {REPO_DIR} && mkdir -p {REPO_DIR}")
    tar = subprocess.Popen(["tar", "-C", str(work), "-cf", "-", "repo"], stdout=subprocess.PIPE)
    subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", node, f"tar -C {REPO_DIR} -xf -"],
                   stdin=tar.stdout, check=True, capture_output=True)
    assert tar.wait() == 0


def extra_vars_file(lab) -> Path:
    path = lab.directory / "dummy-nvidia-vars.yml"
    path.write_text(yaml.safe_dump({
        # The GPU roles' repositories: the dummy one on the node, not NVIDIA's (unreachable here).
        "package_source_mode": "bundle",
        "package_source_bundle_repo_url": f"file://{REPO_DIR}/repo",
        "package_source_bundle_key_url": f"file://{REPO_DIR}/repo/podsys-site.asc",
        "package_source_bundle_suite": dummy_nvidia_repo.SUITE,
        # A container shares the host's kernel: no initramfs to rebuild for nouveau.
        "nvidia_driver_blacklist_nouveau": False,
        # The dummy CUDA has no nvcc to build nccl-tests with.
        "nccl_tests_build": False,
        "node_reboot_timeout": 300,
    }))
    return path


def reboot_command(lab) -> str:
    cli = f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} -m podsys.cli.main lab"
    where = shlex.quote(str(lab.directory))
    return f"{cli} stop {{node}} --dir {where} && {cli} start {{node}} --dir {where}"


def installed(lab, node: str, names) -> dict[str, str]:
    out = lab.ssh(node, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' " + " ".join(names), check=False).stdout
    return {p: v for p, v, status in (line.split(None, 2) for line in out.splitlines()) if status[1:2] == "i"}


def test_a_gpu_stack_upgrade_changes_packages_reboots_the_container_checks_and_resumes(lab, tmp_path):
    node = lab.nodes[1]
    matrix = load_matrix()
    old, new = matrix.stack(FROM_STACK), matrix.stack(TO_STACK)
    started = time.monotonic()
    dummy_repo_on(lab, node, tmp_path / "dummy")
    manifest, extra = gpu_node_manifest(lab), extra_vars_file(lab)
    print(f"\ndummy repository on {node}: {time.monotonic() - started:.0f} s", file=sys.stderr)

    def upgrade_to(stack_id):
        return podsys("upgrade", manifest, "--stack", stack_id, "--limit", node, "--checks", "network", "--json",
                      "--extra-vars", extra, "--reboot-command", reboot_command(lab), timeout=TIMEOUT_S, cwd=lab.directory)

    # R570 first (the node had no GPU stack).
    step = time.monotonic()
    proc = upgrade_to(FROM_STACK)
    print(f"\nupgrade of {node} to {FROM_STACK}: {time.monotonic() - step:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-6000:]
    fm_old = f"nvidia-fabricmanager-{old.branch[1:]}"
    before = installed(lab, node, ["nvidia-driver", "libcuda1", fm_old])
    assert before == {"nvidia-driver": f"{old.driver}-1", "libcuda1": f"{old.driver}-1", fm_old: f"{old.driver}-1"}, before
    boot_before = lab.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()

    # Then the upgrade under test: R570 -> R580.
    step = time.monotonic()
    proc = upgrade_to(TO_STACK)
    print(f"\nupgrade of {node} to {TO_STACK}: {time.monotonic() - step:.0f} s", file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-6000:]
    [batch] = json.loads(proc.stdout)["batches"]
    assert batch["phase"] == "done" and batch["resumed"] == [node], batch
    assert node in batch["drained"] or batch["drained"] == [], batch

    # dpkg: the driver moved to the new stack's exact version, not the newer one in the repository.
    after = installed(lab, node, ["nvidia-driver", "libcuda1", "nvidia-fabricmanager"])
    assert after == {"nvidia-driver": f"{new.driver}-1", "libcuda1": f"{new.driver}-1", "nvidia-fabricmanager": f"{new.driver}-1"}, after
    assert dummy_nvidia_repo.NEWER_DRIVER[new.branch] not in lab.ssh(node, "dpkg -l 'nvidia-*' 'libcuda1'").stdout

    # The container really restarted, from the controller, and the driver check said SKIP.
    boot_after = lab.ssh(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    assert boot_before and boot_after and boot_after != boot_before
    log = sorted((lab.directory / ".podsys" / "build" / "logs").glob("deploy-*.log"))[-1].read_text()
    assert f"node_reboot: rebooting {node}: nvidia module not loaded, driver {new.driver} installed" in log, log[-3000:]
    assert f"SKIP loaded-driver check on {node}: it is a systemd-nspawn container" in log, log[-3000:]

    # Checked and back in service.
    assert f"checking {node} (network)" in proc.stderr
    state = slurm_nodes(lab)[node]
    assert not state.drain_set and state.state == "idle", state
    print(f"\npackage change + reboot test: {time.monotonic() - started:.0f} s", file=sys.stderr)
