"""The GPU and InfiniBand roles run FOR REAL (not check mode) on a lab node against a signed
dummy repository that looks like NVIDIA's (tests/integration/dummy_nvidia_repo.py), for one
stack per package naming scheme: R570 (fabric manager and NSCQ named with the branch) and R580
(without it, plus NVIDIA's driver pinning package).

* The planned packages install, in plan order: kernel headers, OFED, the driver, then (after the
  reboot step) fabric manager, CUDA, cuDNN, NCCL, DCGM.
* The pins hold: the repository also carries a newer driver of the branch, and neither the
  install nor a later dist-upgrade takes it.
* The reboot step is reached and handled (R580 run): the node is restarted (a lab node is an
  nspawn container, so the controller restarts it with `podsys lab stop/start`), comes back,
  and the loaded-driver check says SKIP with the reason: a container with no NVIDIA PCI device
  loads no nvidia module (bare metal is always checked). (The R570 run skips the reboot and peermem steps, which do not depend on the names.)
* nvidia_peermem is never attempted before the driver's module exists: the gpudirect role asks
  `modinfo nvidia_peermem` first and stops with the reason, without running modprobe.

The lab runs the head and one compute node; the roles run on the head (Debian 12), whose apt
reaches the lab's proxy for python3-apt."""

from __future__ import annotations

import atexit
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podsys.cluster.matrix import load_matrix
from podsys.lab import cluster as lab_cluster
from tests.integration import dummy_nvidia_repo
from tests.integration.test_stack_roles import _failures, _results, _vars, run_roles

pytestmark = [pytest.mark.integration, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
MATRIX = load_matrix()
REPO_DIR = "/srv/podsys-dummy-nvidia"
PROFILE = "hgx-h100-8gpu"
STACKS = ("r570-cuda12.8", "r580-cuda13.0")


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    """A lab of the module's own with one compute node (the roles use the head)."""
    from tests.integration.conftest import bring_up_lab, lab_skip_reason

    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    for tool in ("dpkg-deb", "apt-ftparchive", "gpg"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} not installed")
    directory = tmp_path_factory.mktemp("dummyrepo")
    atexit.register(lab_cluster.down, directory)
    try:
        lab = bring_up_lab(directory, 1)
        lab.ssh(lab.head, "dpkg-query -W python3-apt || (apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                          "apt-get install -y -q python3-apt)", timeout=900)
        yield lab
    finally:
        lab_cluster.down(directory)


def _restart_command(lab) -> str:
    """What node_reboot runs on the controller to restart a lab node ({node} is filled in)."""
    cli = f"PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m podsys.cli.main lab"
    return f"{cli} stop {{node}} --dir {shlex.quote(str(lab.directory))} && {cli} start {{node}} --dir {shlex.quote(str(lab.directory))}"


def _stack_vars(lab, stack_id: str) -> dict:
    return _vars(
        stack_id, PROFILE,
        package_source_bundle_repo_url=f"file://{REPO_DIR}/repo",
        package_source_bundle_key_url=f"file://{REPO_DIR}/repo/podsys-site.asc",
        podsys_gpu={"replace_driver": False, "flavour": "auto", "reboot": "auto"},
        podsys_infiniband={"stack": "matrix", "opensm": False},
        node_reboot_controller_command=_restart_command(lab),
        node_reboot_timeout=300,
        # A container shares the host's kernel: there is no initramfs to rebuild for nouveau.
        nvidia_driver_blacklist_nouveau=False,
    )


def _install_order(lab, names: list[str]) -> list[str]:
    log = lab.ssh(lab.head, "grep ' install ' /var/log/dpkg.log").stdout.splitlines()
    seen = [line.split()[3].split(":")[0] for line in log]
    return [n for n in seen if n in names]


def _installed(lab, names) -> dict[str, str]:
    out = lab.ssh(lab.head, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' " + " ".join(names), check=False).stdout
    # Status-Abbrev: desired (i, or h when held), then the current state (i = installed).
    return {p: v for p, v, status in (line.split(None, 2) for line in out.splitlines()) if status[1:2] == "i"}


def _reset(lab) -> None:
    lab.ssh(lab.head, "dpkg -l | awk '/^[hi]i/ {print $2}' | grep -E '^(nvidia|libnvidia|libcuda|cuda-|libcudnn|libnccl|datacenter-gpu|doca|perftest|linux-headers)'"
                      " | xargs -r apt-mark unhold >/dev/null; dpkg -l | awk '/^[hi]i/ {print $2}' | grep -E "
                      "'^(nvidia|libnvidia|libcuda|cuda-|libcudnn|libnccl|datacenter-gpu|doca|perftest|linux-headers)' | xargs -r dpkg --purge;"
                      f" rm -rf {REPO_DIR} /etc/apt/sources.list.d/podsys-bundle.sources /usr/share/keyrings/podsys-bundle.asc"
                      " /etc/apt/preferences.d/podsys-* /etc/modules-load.d/podsys-*; : > /var/log/dpkg.log", check=False)


def _check_driver_installed(lab, stack) -> None:
    """Headers, OFED, (pinning package,) driver: installed in that order at the planned versions."""
    headers = f"linux-headers-{platform.release()}"
    names = [headers, "doca-ofed", "nvidia-driver", "nvidia-kernel-open-dkms", "nvidia-persistenced"]
    pinning = f"nvidia-driver-pinning-{stack.driver}" if int(stack.branch[1:]) >= 580 else None
    if pinning:
        names.insert(2, pinning)
    order = _install_order(lab, names + ["libcuda1"])
    assert order.index(headers) < order.index("doca-ofed") < order.index("nvidia-driver"), order
    if pinning:
        assert order.index(pinning) < order.index("nvidia-driver"), order
    installed = _installed(lab, names + ["libcuda1"])
    assert installed["nvidia-driver"] == f"{stack.driver}-1" and installed["libcuda1"] == f"{stack.driver}-1"


def _check_rest_of_the_stack(lab, stack, versions: dict, tmp_path: Path, variables: dict) -> None:
    """Fabric manager, CUDA, cuDNN, NCCL and DCGM install at the planned versions after the
    driver; the daemons run; the newer driver in the repository is never taken."""
    branch = stack.branch[1:]
    rc, events = run_roles(tmp_path / "gpu", lab, ["fabric_manager", "cuda", "nccl", "dcgm"], variables, check=False)
    assert rc == 0, _failures(events)
    fm = ["nvidia-fabricmanager", "libnvidia-nscq"] if int(branch) >= 580 else [f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"]
    cuda_major = stack.cuda.split(".")[0]
    toolkit = f"cuda-toolkit-{stack.cuda.replace('.', '-')}"
    rest = fm + [toolkit, f"libcudnn9-cuda-{cuda_major}", f"libcudnn9-dev-cuda-{cuda_major}",
                 "libnccl2", "libnccl-dev", "datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-proprietary"]
    assert _installed(lab, rest) == {name: versions[name] for name in rest}
    order = _install_order(lab, ["nvidia-driver", *rest])
    assert order[0] == "nvidia-driver" and order.index(fm[0]) < order.index(toolkit), order
    assert lab.ssh(lab.head, "systemctl is-active nvidia-fabricmanager nvidia-dcgm nvidia-persistenced").returncode == 0

    newer = dummy_nvidia_repo.NEWER_DRIVER[stack.branch]
    policy = lab.ssh(lab.head, "apt-cache policy nvidia-driver libcuda1").stdout
    assert f"Candidate: {stack.driver}-1" in policy and f"{newer}-1" in policy, policy
    upgrade = lab.ssh(lab.head, "apt-get -s -o Debug::NoLocking=1 dist-upgrade").stdout
    assert newer not in upgrade, upgrade
    held = lab.ssh(lab.head, "apt-mark showhold").stdout.split()
    assert {"nvidia-driver", fm[0], "libnccl2"} <= set(held)


@pytest.mark.parametrize("stack_id", STACKS)
def test_stack_roles_install_for_real_against_a_dummy_nvidia_repository(small_lab, stack_id, tmp_path):
    lab = small_lab
    stack = MATRIX.stack(stack_id)
    started = time.monotonic()
    _reset(lab)
    versions = dummy_nvidia_repo.build(tmp_path / "dummy", stack, PROFILE, kernel=platform.release())
    lab.ssh(lab.head, f"mkdir -p {REPO_DIR}")
    tar = subprocess.Popen(["tar", "-C", str(tmp_path / "dummy"), "-cf", "-", "repo"], stdout=subprocess.PIPE)
    subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", lab.head, f"tar -C {REPO_DIR} -xf -"],
                   stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    variables = _stack_vars(lab, stack_id)
    # The reboot and peermem steps do not depend on the naming scheme: R580 runs them, R570 (to
    # keep the module short) installs the same way without them.
    full = stack_id == "r580-cuda13.0"
    try:
        # 1. OFED, the driver and the reboot step.
        roles = ["infiniband", "perftest", "nvidia_driver"] + (["node_reboot"] if full else [])
        rc, events = run_roles(tmp_path / "driver", lab, roles, variables, check=False)
        failures = _failures(events)
        if not full:
            assert rc == 0, failures
            _check_driver_installed(lab, stack)
            _check_rest_of_the_stack(lab, stack, versions, tmp_path, variables)
            return
        assert rc == 0, failures
        # A container with no NVIDIA PCI device: the loaded-driver check says SKIP, never PASS.
        [skipped] = _results(events, "Say that the loaded driver cannot be checked (SKIP)")
        assert f"SKIP loaded-driver check on {lab.head}: it is a systemd-nspawn container" in skipped["res"]["msg"]
        assert f"stack {stack_id} pins {stack.driver}" in skipped["res"]["msg"]
        assert _results(events, "The loaded driver must be the pinned one") == []  # not run: neither ok nor failed
        [why] = _results(events, "Say why the node reboots")
        assert f"driver {stack.driver} installed" in why["res"]["msg"] and "OFED" in why["res"]["msg"]
        [restart] = _results(events, "Restart the node from the controller")
        assert restart["res"]["changed"] and restart["res"]["rc"] == 0
        assert _results(events, "Wait for the node to come back")[0]["res"].get("failed") is not True
        assert {n["name"]: n["sshd"] for n in lab.status()["nodes"]}[lab.head]  # the head came back
        _check_driver_installed(lab, stack)

        # 2. peermem: asked for with modinfo, not loaded, reason given.
        rc, events = run_roles(tmp_path / "gpudirect", lab, ["gpudirect"], variables, check=False)
        [failure] = _failures(events)
        assert f"{lab.head} has no nvidia_peermem module" in failure and "install OFED, then the driver, then reboot" in failure
        assert _results(events, "Load nvidia_peermem") == []

        _check_rest_of_the_stack(lab, stack, versions, tmp_path, variables)
    finally:
        _reset(lab)
        print(f"\n{stack_id}: {time.monotonic() - started:.0f} s", file=sys.stderr)
