"""The GPU / InfiniBand stack roles against a real lab node (the head: Debian 12, reachable over
SSH, apt through the lab's proxy).

* ansible-lint is clean for every stack role and playbooks/gpu.yml.
* A signed stand-in for NVIDIA's repository (one empty package per planned name and version, for
  every stack in the matrix) is set up with the package_source role for real (`bundle` mode),
  then the GPU roles run in check mode for each stack on a node whose profile is HGX H100 (and
  HGX B200 where the stack supports it): what apt would install must be exactly the matrix's
  packages and versions.
* A different driver installed beforehand makes nvidia_driver stop with the clear message;
  the exact driver installed makes it skip with the logged reason.
* infiniband + perftest with the inbox stack install for real, and a second run changes nothing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from podsys.cluster.matrix import load_matrix
from podsys.cluster.hardware import builtin_profiles
from podsys.cluster.stack_packages import package_plan
from tests.conftest import REPO_ROOT as ROOT

ROLES = ROOT / "playbooks" / "roles"
STACK_ROLES = ["package_source", "nvidia_driver", "fabric_manager", "cuda", "nccl", "dcgm",
               "nvidia_container_toolkit", "infiniband", "perftest", "nccl_tests", "gpudirect", "node_reboot"]
MATRIX = load_matrix()
PROFILES = builtin_profiles()
OS_KEY = "debian-12"
FAKE_DIR = "/srv/podsys-stack-test"

pytestmark = pytest.mark.integration


def _lint_env() -> dict:
    # Debian's ansible-lint runs with Debian's python and ansible-core: keep /usr/bin first so a
    # pip-installed ansible elsewhere on PATH does not shadow it.
    return {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}


@pytest.mark.skipif(shutil.which("ansible-lint", path="/usr/bin:/bin") is None, reason="ansible-lint not installed (Debian package ansible-lint)")
def test_ansible_lint_is_clean_for_the_stack_roles():
    paths = ["playbooks/gpu.yml", *[f"playbooks/roles/{r}" for r in STACK_ROLES]]
    proc = subprocess.run(["ansible-lint", "--nocolor", *paths], cwd=ROOT, capture_output=True, text=True,
                          env=_lint_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_every_stack_role_has_the_required_parts():
    for role in STACK_ROLES:
        base = ROLES / role
        for part in ("defaults/main.yml", "tasks/main.yml", "handlers/main.yml", "meta/main.yml",
                     "meta/argument_specs.yml", "README.md"):
            assert (base / part).is_file(), f"{role}: {part} missing"
        assert (base / "templates").is_dir()
        defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
        readme = (base / "README.md").read_text()
        entry_points = yaml.safe_load((base / "meta/argument_specs.yml").read_text())["argument_specs"].values()
        specs = {name for entry in entry_points for name in entry.get("options", {})}
        for var in defaults:
            assert var.startswith(f"{role}_"), f"{role}: {var} lacks the role prefix"
            assert var in specs, f"{role}: {var} has no argument spec"
            assert f"`{var}`" in readme, f"{role}: {var} not in README"


def test_no_vendor_url_is_hard_coded_in_tasks():
    for task in ROLES.glob("*/tasks/*.yml"):
        if task.parts[-3] in STACK_ROLES:
            assert "http://" not in task.read_text() and "https://" not in task.read_text(), task


# ------------------------------------------------------------------ lab node fixtures


def _deb_version(spec: str) -> str:
    """The Debian version our stand-in package carries for an apt spec (name=ver-* -> ver-1);
    a bare name (kernel headers, NVIDIA's pinning package) gets 1.0-1."""
    if "=" not in spec:
        return "1.0-1"
    version = spec.split("=", 1)[1]
    return version[:-1] + "1" if version.endswith("-*") else version


def _stand_in_plans() -> dict[tuple[str, str], list]:
    out = {}
    for sid, stack in MATRIX.stacks.items():
        for pid in ("hgx-h100-8gpu", "hgx-b200-8gpu"):
            try:
                out[(sid, pid)] = package_plan(stack, OS_KEY, PROFILES[pid], {"layers": ["gpu", "container"], "kernel": platform.release()})
            except Exception:  # B200 needs nvlsm: older stacks have no plan for it
                continue
    return out


def _build_deb(workdir: Path, name: str, version: str) -> Path:
    root = workdir / "src" / f"{name}_{version}".replace(":", "_")
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: podsys tests <tests@podsys.invalid>\n"
        f"Description: stand-in for {name} (podsys role tests)\n"
    )
    out = workdir / "repo/pool/main" / f"{name}_{version.replace(':', '%3a')}_amd64.deb"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def stand_in_repo(tmp_path_factory) -> Path:
    """A signed apt repository holding every planned vendor package of every stack."""
    from podsys.bundle.repo import SiteKey, build_repository

    for tool in ("dpkg-deb", "apt-ftparchive", "gpg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    work = tmp_path_factory.mktemp("stand-in")
    for plan in _stand_in_plans().values():
        for pkg in plan:
            if pkg.origin == "vendor" or pkg.component == "kernel_headers":
                _build_deb(work, pkg.name, _deb_version(pkg.spec))
    # A different driver of the same branch, for the refusal test.
    _build_deb(work, "nvidia-driver", "535.216.01-1")
    key = SiteKey(work / "keys")
    key.ensure("podsys role tests <tests@podsys.invalid>")
    key.export_public(work / "repo")
    build_repository(work / "repo", "bookworm", key, label="podsys-role-tests")
    key.stop_agent()
    return work


def _inventory(lab, path: Path, aliases: dict[str, dict] | None = None) -> Path:
    """One inventory host per alias, all of them the lab's head, each with its own vars."""
    connection = {
        "ansible_host": lab.head, "ansible_user": "root",
        "ansible_ssh_common_args": f"-F {lab.ssh_config} -o BatchMode=yes",
        "ansible_ssh_private_key_file": str(lab.private_key),
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    hosts = {alias: {**connection, **variables} for alias, variables in (aliases or {lab.head: {}}).items()}
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def _vars(stack_id: str, profile: str | None, **extra) -> dict:
    data = {
        "podsys_os": {"distro": "debian", "version": "12"},
        "podsys_stack": MATRIX.stack(stack_id).as_vars(),
        "podsys_hardware": PROFILES[profile].model_dump(mode="json") if profile else None,
        "podsys_gpu": {"replace_driver": False, "flavour": "auto"},
        "podsys_infiniband": {"stack": "matrix", "opensm": False},
        "podsys_packages": {"source": "bundle"},
        "podsys_head": {"address": "127.0.0.1", "hostname": "head"},
        "podsys_node": {"name": "head", "ipoib_ip": None},
        "package_source_bundle_repo_url": f"file://{FAKE_DIR}/repo",
        "package_source_bundle_key_url": f"file://{FAKE_DIR}/repo/podsys-site.asc",
        "package_source_bundle_suite": "bookworm",
    }
    data.update(extra)
    return data


def run_roles(tmp_path: Path, lab, roles: list[str], variables: dict, check: bool,
              aliases: dict[str, dict] | None = None) -> tuple[int, list[dict]]:
    """ansible-playbook (through ansible-runner) -> (rc, events). `aliases`: several inventory
    hosts (all the head) with their own vars, run in parallel."""
    import ansible_runner

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "runner").mkdir(exist_ok=True)
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"name": "stack roles", "hosts": "all", "gather_facts": True,
                                     "roles": [{"role": r} for r in roles]}]))
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(variables))
    bindir = str(Path(sys.executable).parent)
    control_dir = tempfile.mkdtemp(prefix="podsys-cp-")  # short: unix socket paths are limited
    try:
        result = ansible_runner.run(
            private_data_dir=str(tmp_path / "runner"), playbook=str(play),
            inventory=str(_inventory(lab, tmp_path / "hosts.yml", aliases)),
            cmdline=f"{'--check ' if check else ''}-e @{vars_file}", quiet=True, forks=8,
            # Own SSH control sockets: with the default ~/.ansible/cp, a concurrent lab whose head is
            # also called "head" would share the master connection and get our tasks.
            envvars={"ANSIBLE_ROLES_PATH": str(ROLES), "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_PIPELINING": "True",
                     "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
                     "PATH": bindir + ":" + os.environ.get("PATH", "")},
        )
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
    events = list(result.events)
    # A play that matched no host "succeeds" too: make that an error with ansible's own words.
    hosts = {e["event_data"].get("host") for e in events if e.get("event", "").startswith("runner_on_")}
    assert hosts - {None, "localhost"}, f"no inventory host ran: {result.stdout.read()[-2000:]}"
    return result.rc, events


def _results(events: list[dict], task_prefix: str, host: str | None = None) -> list[dict]:
    return [e["event_data"] for e in events
            if e.get("event") in ("runner_on_ok", "runner_on_failed")
            and e["event_data"].get("task", "").startswith(task_prefix)
            and (host is None or e["event_data"].get("host") == host)]


def _failures(events: list[dict], host: str | None = None) -> list[str]:
    out = []
    for e in events:
        data = e.get("event_data", {})
        if e.get("event") != "runner_on_failed" or data.get("ignore_errors") or (host and data.get("host") != host):
            continue
        res = data.get("res", {})
        items = [r.get("msg") for r in res.get("results", []) if r.get("failed")]  # a loop's failed items
        out.append(f"{data.get('task')}: {res.get('msg')}" + (f" {items}" if items else ""))
    return out


def _would_install(events: list[dict], host: str | None = None) -> set[tuple[str, str]]:
    """(name, version) of every `Inst` line apt printed for the install tasks in check mode."""
    out = set()
    for data in _results(events, "Install the planned versions", host):
        for line in data.get("res", {}).get("stdout_lines", []) or data.get("res", {}).get("stdout", "").splitlines():
            m = re.match(r"^Inst (\S+) (?:\[\S+\] )?\((\S+)", line)
            if m:
                out.add((m[1], m[2]))
    return out


@pytest.fixture(scope="module")
def head_with_stand_in_repo(fresh_lab_cluster, stand_in_repo, tmp_path_factory):
    """The head, with python3-apt (Ansible's apt module) and the stand-in repository configured
    for real by the package_source role in bundle mode."""
    lab = fresh_lab_cluster
    lab.ssh(lab.head, "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-apt", timeout=900)
    lab.ssh(lab.head, f"rm -rf {FAKE_DIR} && mkdir -p {FAKE_DIR}")
    tar = subprocess.Popen(["tar", "-C", str(stand_in_repo), "-cf", "-", "repo"], stdout=subprocess.PIPE)
    subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", lab.head, f"tar -C {FAKE_DIR} -xf -"],
                   stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    tmp = tmp_path_factory.mktemp("package-source")
    rc, events = run_roles(tmp, lab, ["package_source"], _vars("r535-cuda12.2", None), check=False)
    assert rc == 0, _failures(events)
    sources = lab.ssh(lab.head, "cat /etc/apt/sources.list.d/podsys-bundle.sources").stdout
    assert f"URIs: file://{FAKE_DIR}/repo" in sources and "Signed-By: /usr/share/keyrings/podsys-bundle.asc" in sources
    yield lab
    lab.ssh(lab.head, f"rm -rf {FAKE_DIR} /etc/apt/sources.list.d/podsys-bundle.sources /usr/share/keyrings/podsys-bundle.asc"
                      " /etc/apt/preferences.d/podsys-*; apt-get update -q", check=False)


GPU_ROLES = ["nvidia_driver", "fabric_manager", "cuda", "nccl", "dcgm", "nvidia_container_toolkit"]
CASES = sorted(_stand_in_plans())


def _expected_from_matrix(stack_id: str, profile_id: str) -> set[tuple[str, str]]:
    """Written out from the matrix row for Debian 12 (NVIDIA's debian12 repository names)."""
    s = MATRIX.stack(stack_id)
    branch = s.driver.split(".")[0]
    gpu = PROFILES[profile_id].gpu
    open_modules = gpu.architecture == "blackwell" or int(branch) >= 560
    # R580 on: fabric manager and NSCQ without the branch, NVIDIA's pinning package first.
    fm, nscq = ("nvidia-fabricmanager", "libnvidia-nscq") if int(branch) >= 580 else (f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}")
    out = {(f"linux-headers-{platform.release()}", "1.0-1"),
           ("nvidia-driver", f"{s.driver}-1"), ("nvidia-persistenced", f"{s.driver}-1"),
           ("nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms", f"{s.driver}-1"),
           (fm, f"{s.fabric_manager}-1"), (nscq, f"{s.fabric_manager}-1"),
           (f"cuda-toolkit-{s.cuda.replace('.', '-')}", f"{s.cuda_full}-1"),
           ("libnccl2", s.nccl), ("libnccl-dev", s.nccl)}
    if int(branch) >= 580:
        out.add((f"nvidia-driver-pinning-{s.driver}", "1.0-1"))
    if s.cudnn.startswith("9."):
        major = s.cuda.split(".")[0]
        out |= {(f"libcudnn9-cuda-{major}", s.cudnn), (f"libcudnn9-dev-cuda-{major}", s.cudnn)}
    else:
        out |= {("libcudnn8", s.cudnn), ("libcudnn8-dev", s.cudnn)}
    if gpu.architecture == "blackwell":
        out.add(("nvlsm", f"{s.nvlsm}-1"))
    if s.dcgm.startswith("3."):
        out.add(("datacenter-gpu-manager", f"1:{s.dcgm}"))
    else:
        major = s.cuda.split(".")[0]
        out |= {(n, f"1:{s.dcgm}-1") for n in ("datacenter-gpu-manager-4-core", f"datacenter-gpu-manager-4-cuda{major}",
                                                 "datacenter-gpu-manager-4-proprietary", f"datacenter-gpu-manager-4-proprietary-cuda{major}")}
    ctk = s.container_toolkit
    out |= {(n, f"{ctk}-1") for n in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                                      "libnvidia-container-tools", "libnvidia-container1")}
    out |= {("enroot", f"{s.enroot}-1"), ("enroot+caps", f"{s.enroot}-1")}
    return out


def _alias(stack_id: str, profile_id: str) -> str:
    return f"{stack_id}-{profile_id}".replace(".", "_")


@pytest.fixture(scope="module")
def check_mode_runs(head_with_stand_in_repo, tmp_path_factory):
    """The GPU roles in check mode for every (stack, GPU profile) case at once, one inventory
    alias of the head per case."""
    lab = head_with_stand_in_repo
    aliases = {}
    for stack_id, profile_id in CASES:
        case = _vars(stack_id, profile_id)
        aliases[_alias(stack_id, profile_id)] = {k: case[k] for k in ("podsys_stack", "podsys_hardware")}
    base = _vars("r535-cuda12.2", None)
    base = {k: v for k, v in base.items() if k not in ("podsys_stack", "podsys_hardware")}
    rc, events = run_roles(tmp_path_factory.mktemp("check-mode"), lab, GPU_ROLES, base, check=True, aliases=aliases)
    return rc, events


@pytest.mark.lab
@pytest.mark.parametrize("stack_id,profile_id", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_gpu_roles_in_check_mode_would_install_exactly_the_matrix_stack(check_mode_runs, head_with_stand_in_repo, stack_id, profile_id):
    rc, events = check_mode_runs
    host = _alias(stack_id, profile_id)
    assert _failures(events, host) == []
    assert _would_install(events, host) == _expected_from_matrix(stack_id, profile_id)
    # Nothing was really installed: check mode.
    lab = head_with_stand_in_repo
    assert lab.ssh(lab.head, "dpkg-query -W nvidia-driver", check=False).returncode != 0


@pytest.mark.lab
def test_a_different_driver_stops_nvidia_driver_with_the_clear_message(head_with_stand_in_repo, tmp_path):
    lab = head_with_stand_in_repo
    lab.ssh(lab.head, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades nvidia-driver=535.216.01-1")
    try:
        rc, events = run_roles(tmp_path / "refuse", lab, ["nvidia_driver"], _vars("r535-cuda12.2", "hgx-h100-8gpu"), check=True)
        assert rc != 0
        messages = _failures(events)
        assert len(messages) == 1, messages
        assert "already has NVIDIA driver 535.216.01 (packages nvidia-driver)" in messages[0]
        assert "stack r535-cuda12.2 pins 535.230.02" in messages[0]
        assert "set gpu.replace_driver: true" in messages[0]
        # With replace_driver the same run goes ahead (check mode: it would remove and install).
        variables = _vars("r535-cuda12.2", "hgx-h100-8gpu", podsys_gpu={"replace_driver": True, "flavour": "auto"})
        rc, events = run_roles(tmp_path / "replace", lab, ["nvidia_driver"], variables, check=True)
        assert rc == 0, _failures(events)
        assert ("nvidia-driver", "535.230.02-1") in _would_install(events)
    finally:
        lab.ssh(lab.head, "dpkg --purge nvidia-driver", check=False)


@pytest.mark.lab
def test_the_exact_driver_already_installed_is_skipped_with_the_reason(head_with_stand_in_repo, tmp_path):
    lab = head_with_stand_in_repo
    lab.ssh(lab.head, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nvidia-driver=535.230.02-1 "
                      "nvidia-kernel-dkms=535.230.02-1 nvidia-persistenced=535.230.02-1")
    try:
        rc, events = run_roles(tmp_path, lab, ["nvidia_driver"], _vars("r535-cuda12.2", "hgx-h100-8gpu"), check=True)
        assert rc == 0, _failures(events)
        [skip] = _results(events, "Say why the install is skipped")
        assert "driver 535.230.02 already installed" in skip["res"]["msg"]
        assert _would_install(events) == set()
    finally:
        lab.ssh(lab.head, "dpkg --purge nvidia-driver nvidia-kernel-dkms nvidia-persistenced", check=False)


@pytest.mark.lab
def test_infiniband_inbox_stack_installs_for_real_and_is_idempotent(fresh_lab_cluster, tmp_path):
    lab = fresh_lab_cluster
    lab.ssh(lab.head, "dpkg-query -W python3-apt || (apt-get update -q && apt-get install -y -q python3-apt)", timeout=900)
    variables = _vars("r535-cuda12.2", "cpu-only", podsys_infiniband={"stack": "inbox", "opensm": False},
                      podsys_packages={"source": "proxy"})
    rc, events = run_roles(tmp_path / "first", lab, ["infiniband", "perftest"], variables, check=False)
    assert rc == 0, _failures(events)
    installed = lab.ssh(lab.head, "dpkg-query -W -f='${Package} ${Status}\\n' rdma-core infiniband-diags ibverbs-utils perftest").stdout
    for name in ("rdma-core", "infiniband-diags", "ibverbs-utils", "perftest"):
        assert f"{name} install ok installed" in installed
    assert lab.ssh(lab.head, "command -v ib_write_bw && command -v ibstat").returncode == 0
    [skip] = _results(events, "Say why IPoIB is skipped")
    assert "no ipoib address" in skip["res"]["msg"]
    rc, events = run_roles(tmp_path / "second", lab, ["infiniband", "perftest"], variables, check=False)
    assert rc == 0, _failures(events)
    changed = [e["event_data"]["task"] for e in events if e.get("event") == "runner_on_ok" and e["event_data"].get("res", {}).get("changed")]
    assert changed == []
