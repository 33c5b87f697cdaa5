"""Bare metal from end to end, for real: `podsys lab up --nodes 1 --vms 3`, then `podsys deploy`
of a manifest naming the container node and two of the VMs. deploy builds the node image and
the deploy ramdisk (mmdebstrap through the lab's package proxy), copies them to the head, sets
each VM's next boot to PXE and powers it on through its IPMI BMC (ipmi_sim, lanplus); each VM
PXE-boots the ramdisk over iPXE, writes the image to its blank disk, reports its host keys and
reboots into its own disk (vm01 SeaBIOS, vm02 UEFI with OVMF); deploy trusts the reported keys,
reaches the VMs over SSH with the head's key and runs the layers: `srun -N3` answers from the
container and both VMs and Prometheus scrapes them. Then: a VM whose MAC is not in the manifest
(vm03) gets no boot; a second deploy changes nothing and powers nothing; `podsys reinstall` of
both VMs re-images vm01 (same name, address and Slurm state, new machine-id) while vm02, given
a disk too small for the image, fails at `partition`; and a download corrupted on the head
fails at `verify` until the next deploy of the head copies the image again.

Measured durations are in README (Testing). The VMs run under software emulation (TCG)."""

from __future__ import annotations

import atexit
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from podsys.lab import bmc as lab_bmc, cluster as lab, vms as lab_vms
from tests.conftest import podsys
from tests.integration.conftest import bring_up_lab, lab_skip_reason, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

INSTALL_MINUTES = "25"
# This module is the README test command's long pole: its emulated VMs do many host instructions
# per instruction of their own, and at nice 0 they got a small share of the two cores beside
# three other labs (each Ansible task on a VM took 12-30 s instead of 3-6). The VMs' emulators
# (lab up --vm-nice) and each deploy's process session run niced ahead of the rest.
PRIORITY = -10
UNKNOWN = "vm03"  # in the lab, not in the manifest the tests deploy


def missing() -> str | None:
    reason = lab_skip_reason()
    if reason:
        return reason
    problems = lab.missing_requirements(vms=3)
    if problems:
        return "lab VMs cannot run here: " + "; ".join(problems)
    for tool in ("mmdebstrap", "zstd"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (.ci/apt-packages.txt)"
    return None


def manifest_without(lab_yaml: Path, target: Path, vm: str) -> Path:
    """lab.yaml without one VM: the lab still has it (its QEMU, its BMC), the cluster does not."""
    data = yaml.safe_load(lab_yaml.read_text())
    group = next(g for g in data["node_groups"] if g["name"] == "vms")
    group["nodes"].pop(vm)
    names = sorted(group["nodes"])
    group["hosts"] = ",".join(names)
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def vm_lab(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("vmdeploy")
    atexit.register(lab.down, directory)
    started = time.monotonic()
    try:
        cluster = bring_up_lab(directory, nodes=1, vms=3, vm_nice=PRIORITY)
        print(f"lab up --nodes 1 --vms 3 took {time.monotonic() - started:.0f} s")
        plan = lab.LabPlan.from_dict(lab.load_state(lab.paths_for(directory))["plan"])
        manifest = manifest_without(cluster.manifest, directory / "cluster.yaml", UNKNOWN)
        yield {"cluster": cluster, "plan": plan, "manifest": manifest, "directory": directory}
    finally:
        lab.down(directory)


def deploy(manifest: Path, *args: str, on_line=None, timeout: float = 3000) -> tuple[int, dict, str]:
    """`podsys deploy MANIFEST --json ARGS` -> (rc, summary, output); on_line(line) sees each
    progress line as it comes (stderr)."""
    argv = ["python3", "-m", "podsys.cli.main", "deploy", str(manifest), "--json",
            "--install-timeout", INSTALL_MINUTES, *args]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    autogroup = Path(f"/proc/{proc.pid}/autogroup")  # the new session's; its children share it
    if autogroup.exists():
        autogroup.write_text(f"{PRIORITY}\n")
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    out = proc.communicate(timeout=timeout)[0]
    print(f"deploy {' '.join(args)} took {time.monotonic() - started:.0f} s")
    output = out + "".join(lines)
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON summary (rc {proc.returncode}):\n{output[-4000:]}") from None
    return proc.returncode, summary, output


def head_state(cluster) -> dict:
    from podsys.deploy.install_backends import state_command

    return json.loads(cluster.ssh(cluster.head, state_command("show")).stdout)


def qemu_pid(directory: Path, vm) -> int | None:
    pid = lab_vms.read_pid(lab_vms.vm_dir(lab.paths_for(directory).lab_dir, vm) / "qemu.pid")
    return pid if pid in lab_vms.qemu_pids_with_prefix(vm.machine.rsplit("-", 1)[0]) else None


def console(directory: Path, vm) -> str:
    """The VM's serial console, its whitespace folded: the firmware wraps long lines at 80 columns."""
    text = (lab_vms.vm_dir(lab.paths_for(directory).lab_dir, vm) / "console.log").read_text(errors="replace")
    return " ".join(text.split())


def ipmi(directory: Path, vm, *args: str) -> str:
    proc = lab_bmc.ipmitool(vm, lab.paths_for(directory).bmc_password, *args)
    assert proc.returncode == 0, f"ipmitool {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def on_vm(cluster, vm: str, command: str) -> str:
    return cluster.ssh(vm, command, timeout=120).stdout.strip()


@pytest.fixture(scope="module")
def first_deploy(vm_lab):
    rc, summary, output = deploy(vm_lab["manifest"])
    return {"rc": rc, "summary": summary, "output": output}


def test_first_deploy_installs_both_vms_through_their_bmcs(vm_lab, first_deploy):
    summary, output = first_deploy["summary"], first_deploy["output"]
    assert first_deploy["rc"] == 0, output[-4000:]
    installs = summary["installs"]
    assert installs["came_up"] == ["vm01", "vm02"], installs
    assert installs["did_not"] == [] and installs["powered_by_hand"] == []
    # deploy built the image and the ramdisk itself, then powered the VMs through their BMCs.
    assert re.search(r"image debian-12-cpu-only-\w+ \(2 nodes\): (built in [\d.]+ s from http://\S+ via http://\S+|up to date)", output)
    assert "next boot from the network, then power cycle: vm[01-02]" in output
    for host in summary["hosts"]:
        assert host["status"] == "ok", host
    state = head_state(vm_lab["cluster"])
    for vm in ("vm01", "vm02"):
        assert (state[vm]["boot"], state[vm]["state"]) == ("local", "installed"), state[vm]
        chassis = (lab_vms.vm_dir(lab.paths_for(vm_lab["directory"]).lab_dir, vm_lab["plan"].vm(vm))
                   / "chassis.log").read_text()
        assert "power on, boot pxe" in chassis, chassis[-500:]
        assert f"priority: nice {PRIORITY} for pid" in chassis, chassis[-500:]
    # The ramdisk wrote each stage to the serial console: the image went onto the disk, then a reboot.
    for vm in ("vm01", "vm02"):
        text = console(vm_lab["directory"], vm_lab["plan"].vm(vm))
        for stage in ("fetch", "verify", "partition", "write", "bootloader", "identity"):
            assert f"podsys: stage {stage}" in text, f"{vm}: no stage {stage}"
        assert "podsys: installed; rebooting" in text


def test_each_vm_runs_from_its_own_disk_with_its_firmware_and_its_own_identity(vm_lab, first_deploy):
    cluster = vm_lab["cluster"]
    seen = {}
    for vm, firmware in (("vm01", "bios"), ("vm02", "uefi")):
        out = on_vm(cluster, vm, "hostname; cat /etc/machine-id; "
                                 "if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi; "
                                 "findmnt -n -o SOURCE /; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
        name, machine_id, fw, root, fingerprint = out.splitlines()
        assert (name, fw, root) == (vm, firmware, "/dev/sda2")
        seen[vm] = machine_id
        # The key deploy wrote into known_hosts is the one the VM has.
        known = subprocess.run(["ssh-keygen", "-l", "-F", vm, "-f", str(cluster.known_hosts)],
                               capture_output=True, text=True).stdout
        assert fingerprint.split()[1] in known, known
    assert seen["vm01"] != seen["vm02"] and all(len(v) == 32 for v in seen.values())
    # The cluster's munge key came from the slurm role, not from the image.
    keys = {n: on_vm(cluster, n, "sha256sum /etc/munge/munge.key").split()[0] for n in ("vm01", "vm02", "node01")}
    assert len(set(keys.values())) == 1


def test_srun_answers_from_the_container_node_and_both_vms(vm_lab, first_deploy):
    cluster = vm_lab["cluster"]
    wait_for("node01, vm01 and vm02 idle in Slurm", lambda: sorted(cluster.ssh(
        cluster.head, "sinfo -h -N -o '%N %T'").stdout.split()) == sorted(
        ["node01", "idle", "vm01", "idle", "vm02", "idle"]), timeout=180, every=5)
    out = cluster.ssh(cluster.head, "timeout 300 srun -N3 hostname", timeout=330).stdout.split()
    assert sorted(out) == ["node01", "vm01", "vm02"]


def test_prometheus_scrapes_both_vms(vm_lab, first_deploy):
    cluster = vm_lab["cluster"]
    url = f"http://{cluster.addresses['head']}:9090/api/v1/targets"
    script = f"import json,urllib.request; print(json.dumps(json.load(urllib.request.urlopen({url!r}, timeout=10))))"
    seen = {}

    def vms_up():
        targets = json.loads(cluster.ssh(cluster.head, ["python3", "-c", script]).stdout)["data"]["activeTargets"]
        seen.clear()
        seen.update({t["labels"].get("node", t["labels"]["instance"]): t["health"]
                     for t in targets if t["labels"]["job"] == "node"})
        return all(any(i.startswith(vm) and h == "up" for i, h in seen.items()) for vm in ("vm01", "vm02"))

    wait_for("vm01's and vm02's node_exporter scraped", vms_up, timeout=240, every=5)


def test_a_vm_whose_mac_is_not_in_the_manifest_gets_no_boot(vm_lab, first_deploy):
    directory, plan, cluster = vm_lab["directory"], vm_lab["plan"], vm_lab["cluster"]
    vm = plan.vm(UNKNOWN)
    mac_file = vm.mac.lower().replace(":", "-")
    head = cluster.addresses["head"]
    # The boot service has no script for it ...
    fetch = ("import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen(%r, timeout=10)\n    print(200)\n"
             "except urllib.error.HTTPError as e:\n    print(e.code)" % f"http://{head}/boot/ipxe/nodes/{mac_file}.ipxe")
    assert cluster.ssh(cluster.head, ["python3", "-c", fetch]).stdout.strip() == "404"
    # ... and its firmware, told by its BMC to boot from the network, gets no DHCP answer.
    ipmi(directory, vm, "chassis", "bootdev", "pxe")
    ipmi(directory, vm, "chassis", "power", "on")
    try:
        wait_for(f"{UNKNOWN}'s iPXE gives up", lambda: "No configuration methods succeeded" in console(directory, vm),
                 timeout=300, every=5)
        text = console(directory, vm)
        assert "podsys:" not in text and "boot.ipxe" not in text, text[-1500:]
        journal = cluster.ssh(cluster.head, f"journalctl -u dnsmasq --no-pager | grep -i '{vm.mac}' || true").stdout
        assert "DHCPOFFER" not in journal, journal
        assert head_state(cluster).get(UNKNOWN) is None
    finally:
        ipmi(directory, vm, "chassis", "power", "off")


def test_a_second_deploy_changes_nothing_and_powers_nothing(vm_lab, first_deploy):
    directory, plan = vm_lab["directory"], vm_lab["plan"]
    pids = {vm: qemu_pid(directory, plan.vm(vm)) for vm in ("vm01", "vm02")}
    assert all(pids.values()), pids
    rc, summary, output = deploy(vm_lab["manifest"])
    assert rc == 0, output[-4000:]
    assert summary.get("installs") in (None, {}) or summary["installs"]["nodes"] == [], summary.get("installs")
    assert "power cycle" not in output
    changed = {h["name"]: h["changed"] for h in summary["hosts"] if h["changed"]}
    assert changed == {}, f"a repeat deploy changed tasks on {changed}; see {summary['log']}"
    assert {vm: qemu_pid(directory, plan.vm(vm)) for vm in pids} == pids


def test_reinstall_reimages_one_vm_while_a_disk_too_small_fails_at_partition(vm_lab, first_deploy):
    directory, plan, cluster, manifest = vm_lab["directory"], vm_lab["plan"], vm_lab["cluster"], vm_lab["manifest"]
    before = on_vm(cluster, "vm01", "cat /etc/machine-id")
    # vm02 gets a blank 1 GiB disk: its next QEMU (started by the power cycle) opens the new file.
    disk = lab_vms.vm_dir(lab.paths_for(directory).lab_dir, plan.vm("vm02")) / "disk.qcow2"
    disk.rename(disk.with_name("disk-installed.qcow2"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    out = podsys("reinstall", "vm[01-02]", "-m", manifest, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rc, summary, output = deploy(manifest)
    assert rc == 1, output[-4000:]
    installs = summary["installs"]
    assert installs["came_up"] == ["vm01"]
    (failed,) = installs["did_not"]
    assert (failed["node"], failed["phase"], failed["stage"]) == ("vm02", "failed", "partition")
    assert re.search(r"disk /dev/sda has 1024 MiB, the image needs \d+ MiB", failed["why"]), failed
    # vm01 is the same node (name, address, Slurm) on a fresh install.
    assert on_vm(cluster, "vm01", "hostname") == "vm01"
    assert f"inet {plan.vm('vm01').address}/" in on_vm(cluster, "vm01", "ip -4 -o addr show")
    assert on_vm(cluster, "vm01", "cat /etc/machine-id") != before
    wait_for("vm01 idle in Slurm again", lambda: cluster.ssh(
        cluster.head, "sinfo -h -n vm01 -o '%T'").stdout.strip() == "idle", timeout=180, every=5)
    assert cluster.ssh(cluster.head, "timeout 300 srun -w vm01 hostname", timeout=330).stdout.strip() == "vm01"
    state = head_state(cluster)
    assert (state["vm02"]["boot"], state["vm02"]["state"], state["vm02"]["stage"]) == ("install", "failed", "partition")


# Follows the reinstall test: vm02 is still in `install` state, with its blank 1 GiB disk.
def test_a_corrupted_download_fails_at_verify_and_the_next_deploy_heals_the_head(vm_lab, first_deploy):
    directory, plan, cluster, manifest = vm_lab["directory"], vm_lab["plan"], vm_lab["cluster"], vm_lab["manifest"]
    from podsys.provision.image import cluster_images
    from podsys.cluster.load import load_cluster

    (image,) = cluster_images(load_cluster(manifest))
    archive = f"/srv/podsys/boot/images/{image.spec.key}/image.tar.zst"
    # Flip bytes in the middle of the head's copy, same size, once the head's boot services are
    # refreshed (deploy copies the image first) and the VM is being powered.
    corrupt = ("python3 -c \"import os; f=open('%s','r+b'); f.seek(os.path.getsize('%s')//2); "
               "b=f.read(16); f.seek(-16,1); f.write(bytes(x ^ 0xFF for x in b))\"" % (archive, archive))
    done = []

    def on_line(line: str) -> None:
        if line.startswith("next boot from the network") and not done:
            cluster.ssh(cluster.head, corrupt)
            done.append(line)

    rc, summary, output = deploy(manifest, "--resume", on_line=on_line)
    assert done, output[-3000:]
    assert rc == 1, output[-4000:]
    (failed,) = summary["installs"]["did_not"]
    assert (failed["node"], failed["stage"]) == ("vm02", "verify"), failed
    assert "sha256 mismatch" in failed["why"]
    # The ramdisk stopped before touching the disk: the blank disk has no partition table.
    text = console(directory, plan.vm("vm02"))
    assert "FAILED at verify" in text and text.rfind("stage partition") < text.rfind("stage verify")
    # The next deploy of the head's boot services copies the image again.
    heal = podsys("deploy", manifest, "--tags", "provision", "--limit", "head", timeout=900)
    assert heal.returncode == 0, heal.stdout[-3000:] + heal.stderr[-3000:]
    want = (Path(lab.paths_for(directory).directory) / ".podsys" / "images" / image.spec.key / "image.sha256").read_text().split()[0]
    got = cluster.ssh(cluster.head, f"sha256sum {archive}").stdout.split()[0]
    assert got == want
