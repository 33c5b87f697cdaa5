"""The `storage` and `training` add-ons on the training lab (head + 2 nodes, shared with
test_addon_models.py: tests/integration/training_lab.py), and the proof that a distributed
training job survives a failed node by resuming from its checkpoint.

* storage: nfs-ganesha on the head answers a user-space NFS client (libnfs's nfs-ls/nfs-cp on a
  node; this kernel has no NFS client); the lab's shared directory (a host directory bound into
  every node, lab.yaml's `lab-bind` mount) holds per-user homes owned by the manifest UID and is
  writable by that user from every node.
* training: each node has its group's environment file; Slurm runs with the layer's
  SlurmdTimeout; the sbatch template trains on 2 nodes with gloo (Debian's python3-torch);
  mid-run one node is stopped with `podsys lab stop`, Slurm requeues the job, it resumes from
  the newest checkpoint (its logged step continues, not from 1) once the node is back, and
  finishes with a final loss below the first. Submitted with a short time limit, the template's
  signal before the limit (USR1) makes the trainer checkpoint on request, the job requeues
  itself and its next run resumes from that checkpoint.
* a second deploy changes nothing in the storage and training roles (the runner's JSON lists
  each host's changed tasks by role).
* images: a file import lands on shared storage; a registry import (enroot on the head) on a
  head without enroot (the lab installs no container layer) stops with that reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from tests.conftest import podsys
from tests.integration.conftest import wait_for
from tests.integration.training_lab import (EXPORT, NODE_TIMEOUT, PREFIX, UID, USER, job_state, newest_checkpoint,
                                            read_log, training_manifest)

pytestmark = [pytest.mark.integration, pytest.mark.lab]


def test_a_second_deploy_changes_nothing_in_storage_and_training(training_lab):
    lab = training_lab
    proc = podsys("deploy", training_manifest(lab), "--json")
    again = json.loads(proc.stdout)
    assert again["succeeded"], proc.stderr[-3000:]
    for host in again["hosts"]:
        assert {"storage", "training"} <= set(host["roles"]), host
        addon_changes = [t for t in host["changed_tasks"] if t.split(":")[0] in ("storage", "training")]
        assert not addon_changes, (host["name"], addon_changes)
    print("changed on the second deploy (all roles):", {h["name"]: h["changed_tasks"] for h in again["hosts"]})


def test_the_head_serves_nfs_to_a_user_space_client(training_lab):
    lab = training_lab
    assert lab.ssh(lab.head, "systemctl is-active nfs-ganesha").stdout.strip() == "active"
    lab.ssh(lab.head, f"echo exported-by-ganesha > {EXPORT}/hello.txt && chmod 0644 {EXPORT}/hello.txt")
    node = lab.nodes[0]
    # libnfs-utils: nfs-ls/nfs-cp speak NFSv3 in user space. Source: packages.debian.org/bookworm/libnfs-utils.
    lab.ssh(node, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libnfs-utils", timeout=900)
    head_ip = lab.addresses[lab.head]
    listing = lab.ssh(node, f"nfs-ls nfs://{head_ip}{EXPORT}").stdout
    assert "hello.txt" in listing, listing
    lab.ssh(node, f"rm -f /tmp/hello.txt && nfs-cp nfs://{head_ip}{EXPORT}/hello.txt /tmp/hello.txt")
    assert lab.ssh(node, "cat /tmp/hello.txt").stdout.strip() == "exported-by-ganesha"
    refused = lab.ssh(node, f"nfs-ls nfs://{head_ip}/etc", check=False)
    assert refused.returncode != 0, "a directory that is not exported must not be served"


def test_shared_home_belongs_to_the_manifest_uid_and_is_writable_from_every_node(training_lab):
    lab = training_lab
    home = "/shared/home/" + USER
    for node in [lab.head, *lab.nodes]:
        assert lab.ssh(node, f"stat -c '%u %a' {home}").stdout.strip() == f"{UID} 700", node
        lab.ssh(node, f"su - {USER} -c 'echo from-{node} > {home}/from-{node}'")
    for node in [lab.head, *lab.nodes]:
        owner = lab.ssh(lab.nodes[-1], f"stat -c '%u' {home}/from-{node}").stdout.strip()
        assert owner == str(UID), (node, owner)
    host_side = lab.directory / ".podsys" / "lab" / "shared" / "home" / USER / f"from-{lab.nodes[0]}"
    assert host_side.stat().st_uid == UID


def test_each_node_has_its_groups_training_environment(training_lab):
    lab = training_lab
    for node in lab.nodes:
        env = dict(line.split("=", 1) for line in lab.ssh(node, "cat /etc/podsys/training.env").stdout.splitlines()
                   if line and not line.startswith("#"))
        assert env["NCCL_SOCKET_IFNAME"] == "=eth0" and env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["PODSYS_DIST_BACKEND"] == "gloo" and env["PODSYS_CHECKPOINT_DIR"] == "/shared/checkpoints"
        assert "NCCL_IB_HCA" not in env  # cpu-only profile: no HCAs
        assert env["PODSYS_TORCHRUN_ARGS"] == '"--redirects 1 --tee 1"'  # Debian's torch 1.13 on Python 3.11
    config = lab.ssh(lab.head, "scontrol show config").stdout
    assert re.search(rf"^SlurmdTimeout\s*=\s*{NODE_TIMEOUT} sec", config, re.M), "SlurmdTimeout not applied"


def test_a_training_job_survives_a_stopped_node_and_resumes_from_its_checkpoint(training_lab):
    lab = training_lab
    victim = lab.nodes[1]
    out = f"/shared/home/{USER}/train-resume.out"
    ckpt = f"/shared/checkpoints/{USER}/resume"
    submit = (f"su - {USER} -c 'sbatch --parsable -N 2 --chdir /shared/home/{USER} -o {out} "
              f"/usr/local/share/podsys/training/train.sbatch /usr/local/share/podsys/training/train_ddp.py "
              f"--checkpoint-dir {ckpt} --steps 240 --checkpoint-every 10 --step-seconds 0.5'")
    started = time.monotonic()
    job = lab.ssh(lab.head, submit).stdout.strip().split(";")[0]
    wait_for("a checkpoint at step 30 or later on shared storage", lambda: newest_checkpoint(lab, ckpt) >= 30,
             timeout=600, every=2)

    stop = podsys("lab", "stop", victim, "--dir", lab.directory, timeout=300)
    assert stop.returncode == 0, stop.stderr
    print(f"stopped {victim} after {time.monotonic() - started:.0f} s")
    try:
        wait_for(f"Slurm to declare {victim} DOWN and requeue job {job}",
                 lambda: int(job_state(lab, job).get("Restarts", "0")) >= 1, timeout=NODE_TIMEOUT * 6, every=5)
        print(f"requeued after {time.monotonic() - started:.0f} s")
    finally:
        start = podsys("lab", "start", victim, "--dir", lab.directory, timeout=600)
        assert start.returncode == 0, start.stderr
    wait_for(f"job {job} to finish after the requeue",
             lambda: job_state(lab, job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             timeout=900, every=5)
    print(f"finished after {time.monotonic() - started:.0f} s")

    log = read_log(lab, out)
    restarts = re.findall(r"start job=\d+ restart=(\d+)", log)
    assert len(restarts) >= 2 and restarts[-1] != "0", log[-3000:]
    resumed = re.findall(PREFIX + r"resumed from step-(\d+)\.pt at step (\d+)", log, re.M)
    assert resumed, log[-3000:]
    resume_step = int(resumed[-1][1])
    assert resume_step >= 30, resumed
    after_resume = log[log.rindex("resumed from"):]
    first_step_after = int(re.search(PREFIX + r"step (\d+) ", after_resume, re.M).group(1))
    assert first_step_after == resume_step + 1, "the resumed run must continue from its checkpoint, not from 1"
    done = re.search(PREFIX + r"done steps=240 first_loss=([\d.]+) final_loss=([\d.]+) resumed_from=(\d+)", log, re.M)
    assert done, log[-3000:]
    first, final = float(done.group(1)), float(done.group(2))
    assert final < first, (first, final)
    final = job_state(lab, job)
    assert final["JobState"] == "COMPLETED" and int(final["Restarts"]) >= 1, final


def test_the_signal_before_the_time_limit_checkpoints_requeues_and_resumes(training_lab):
    """--time=2 with --signal=B:USR1@90: the batch shell gets USR1 30 s into the run (Slurm may
    send it up to a minute early: sbatch(1) --signal). No periodic checkpoint (--checkpoint-every
    beyond --steps), so a checkpoint can only come from the request."""
    lab = training_lab
    out = f"/shared/home/{USER}/train-signal.out"
    ckpt = f"/shared/checkpoints/{USER}/signal"
    submit = (f"su - {USER} -c 'sbatch --parsable -N 2 --time=2 --signal=B:USR1@90 --chdir /shared/home/{USER} "
              f"-o {out} /usr/local/share/podsys/training/train.sbatch /usr/local/share/podsys/training/train_ddp.py "
              f"--checkpoint-dir {ckpt} --steps 100000 --checkpoint-every 100000 --step-seconds 0.2'")
    job = lab.ssh(lab.head, submit).stdout.strip().split(";")[0]
    try:
        asked = wait_for("the trainer to checkpoint on the time-limit signal",
                         lambda: re.search(PREFIX + r"checkpoint on request at step (\d+)", read_log(lab, out), re.M),
                         timeout=240, every=3)
        step = int(asked.group(1))
        log = read_log(lab, out)
        assert "time limit near: asking the trainer to checkpoint" in log, log[-3000:]
        assert newest_checkpoint(lab, ckpt) == step, "the checkpoint is the one written on the request"
        wait_for(f"job {job} to requeue itself", lambda: int(job_state(lab, job).get("Restarts", "0")) >= 1,
                 timeout=120, every=3)
        resumed = wait_for("the next run to resume from that checkpoint",
                           lambda: re.search(PREFIX + r"resumed from step-(\d+)\.pt at step (\d+)", read_log(lab, out), re.M),
                           timeout=420, every=5)
        assert int(resumed.group(1)) == step and int(resumed.group(2)) == step, (resumed.group(0), step)
        wait_for("the resumed run's first step", lambda: re.search(PREFIX + rf"step {step + 1} loss", read_log(lab, out), re.M),
                 timeout=120, every=3)
        log = read_log(lab, out)
        assert re.search(r"requeueing job \d+ after its checkpoint", log), log[-3000:]
        assert re.search(r"start job=\d+ restart=1 ", log), log[-3000:]
        assert not re.search(PREFIX + r"step 1 loss", log[log.index("resumed from"):], re.M), "restarted from 1"
        # The fallback timer (a trainer that ignores the request) must not outlive the first run:
        # the resume came more than PODSYS_STOP_GRACE (90 s) after the signal.
        first_run = log[:log.index("restart=1")]
        assert "no checkpoint after the request" not in first_run, first_run[-2000:]
    finally:
        lab.ssh(lab.head, ["scancel", job], check=False)
        wait_for(f"job {job} to leave the nodes", lambda: job_state(lab, job).get("JobState") not in ("RUNNING", "COMPLETING"),
                 timeout=120, every=3)


def test_a_registry_import_needs_enroot_on_the_head_and_says_so(training_lab):
    lab = training_lab
    manifest = training_manifest(lab)
    assert lab.ssh(lab.head, "command -v enroot", check=False).returncode != 0, "the lab head has enroot now: test the import"
    refused = podsys("images", "import", "docker://localhost:5000#tiny:1", manifest, timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "enroot is not installed on the head" in refused.stderr and "container" in refused.stderr, refused.stderr
    assert lab.ssh(lab.head, "ls -A /shared/images").stdout.split().count(".tiny+1.sqsh.partial") == 0
    bad = podsys("images", "import", "docker://Not/An/Image", manifest, timeout=120)
    assert bad.returncode == 2 and "command line: SOURCE:" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="mksquashfs not installed (Debian package squashfs-tools)")
def test_an_image_imported_from_a_file_is_on_shared_storage_for_every_node(training_lab, tmp_path):
    lab = training_lab
    manifest = training_manifest(lab)
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "image-id").write_text("podsys-test-image\n")
    image = tmp_path / "tiny.sqsh"
    subprocess.run(["mksquashfs", str(rootfs), str(image), "-quiet", "-noappend"], check=True, capture_output=True)
    done = podsys("images", "import", image, manifest, "--name", "tiny", timeout=300)
    assert done.returncode == 0, done.stderr
    size = image.stat().st_size
    for node in lab.nodes:
        assert lab.ssh(node, "stat -c '%s %a' /shared/images/tiny.sqsh").stdout.strip() == f"{size} 644"
    listed = json.loads(podsys("images", "list", manifest, "--json", timeout=120).stdout)
    assert {"name": "tiny", "bytes": size} in listed
    not_an_image = tmp_path / "notes.sqsh"
    not_an_image.write_text("hello")
    refused = podsys("images", "import", not_an_image, manifest, timeout=120)
    assert refused.returncode == 2 and "not a squashfs image" in refused.stderr and "Traceback" not in refused.stderr
