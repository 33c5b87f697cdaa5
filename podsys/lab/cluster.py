"""The lab cluster: a head and N compute nodes as systemd-nspawn containers on one machine.

`up` builds (or reuses) a cached Debian 12 root, gives every node a copy-on-write clone, its
own network namespace on a private bridge, boots it with systemd, and writes lab.yaml; `down`
removes exactly what `up` recorded in <dir>/.podsys/lab/state.json, plus anything left over
under the lab's unique name prefix, so it is safe after a crash and safe to run twice.

Nothing depends on the host's systemd: containers run with --keep-unit --register=no as plain
background processes, and the apt proxy is a plain process too."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from podsys.lab import bmc as lab_bmc, net as lab_net, plan as lab_plan, proc as lab_proc, proxy as lab_proxy, rootfs as lab_rootfs
from podsys.lab import vms as lab_vms
from podsys.errors import InputError, PodsysError, Problem
from podsys.layout import Workspace
from podsys.lab.plan import LabPlan

Progress = Callable[[str], None]
STATE_VERSION = 1
REGISTRY = Path("/run/podsys/lab")  # prefix -> owning directory; /run vanishes with the netns
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "apt-cacher-ng": "apt-cacher-ng",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
BOOT_TIMEOUT_S = 120
# Every container's systemd takes several inotify instances from root's shared quota; the
# default 128 runs out at about four labs' worth of nodes ("Failed to allocate manager
# object: Too many open files"). Raised, never lowered: other labs may be running.
HOST_SYSCTL_MINIMUMS = {
    "fs.inotify.max_user_instances": 8192,
    "fs.inotify.max_user_watches": 524288,
}
STOP_TIMEOUT_S = 20


@dataclass(frozen=True)
class LabPaths:
    directory: Path

    @property
    def lab_dir(self) -> Path:
        return Workspace(self.directory).lab_dir

    @property
    def state(self) -> Path:
        return self.lab_dir / "state.json"

    @property
    def ssh_dir(self) -> Path:
        return self.lab_dir / "ssh"

    @property
    def private_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "config"

    @property
    def proxy_dir(self) -> Path:
        return self.lab_dir / "proxy"

    @property
    def shared(self) -> Path:
        """The lab's shared storage: bound into every node at lab_plan.LAB_SHARED_PATH."""
        return self.lab_dir / "shared"

    @property
    def logs(self) -> Path:
        return self.lab_dir / "logs"

    @property
    def manifest(self) -> Path:
        return self.directory / "lab.yaml"

    @property
    def vms_dir(self) -> Path:
        return self.lab_dir / "vms"

    @property
    def bmc_dir(self) -> Path:
        return self.lab_dir / "bmc"

    @property
    def bmc_password(self) -> Path:
        """The VMs' BMC password (0600), named in lab.yaml's bmc.password_file; kept across `up`s."""
        return self.bmc_dir / "password"


def paths_for(directory: Path | str) -> LabPaths:
    return LabPaths(Path(directory).resolve())


# --- preconditions ----------------------------------------------------------------------------


def missing_requirements(vms: int = 0) -> list[str]:
    """Why the lab cannot run here (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces, mounts, systemd-nspawn)")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None}
                     | (set(lab_vms.missing_tools().values()) if vms else set()))
    if missing:
        problems.append(f"missing tools; install: apt-get install {' '.join(missing)}")
    return problems


def _require() -> None:
    problems = missing_requirements()
    if problems:
        raise PodsysError("; ".join(problems))


# --- state ------------------------------------------------------------------------------------


def load_state(paths: LabPaths) -> dict | None:
    try:
        return json.loads(paths.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PodsysError(f"{paths.state}: unreadable lab state ({exc}); remove it and run `podsys lab down`")


def save_state(paths: LabPaths, state: dict) -> None:
    paths.lab_dir.mkdir(parents=True, exist_ok=True)
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(paths.state)


def _registered_prefixes(directory: Path) -> list[str]:
    if not REGISTRY.is_dir():
        return []
    return sorted(f.name for f in REGISTRY.iterdir() if f.is_file() and f.read_text().strip() == str(directory))


def _choose_plan(directory: Path, nodes: int, vms: int = 0) -> LabPlan:
    """The directory's own slot unless another live lab holds it or its uplink subnet meets one
    of the host's networks; then the next free one."""
    slot = lab_plan.lab_slot(directory)
    reasons = []
    for attempt in range(64):
        plan = lab_plan.plan_lab(directory, nodes, slot=(slot + attempt) % lab_plan.LAB_SLOTS, vms=vms)
        owner = REGISTRY / plan.prefix
        if owner.exists() and owner.read_text().strip() != str(directory):
            reasons.append(f"{plan.prefix} belongs to the lab in {owner.read_text().strip()}")
            continue
        if plan.prefix in {ns.split("-", 1)[0] for ns in lab_net.list_netns()} and not owner.exists():
            reasons.append(f"network namespaces named {plan.prefix}-* exist and no lab owns them")
            continue
        conflict = lab_net.uplink_conflict(plan)
        if conflict:
            reasons.append(conflict)
            continue
        if not _claim_slot(plan.prefix, directory):
            reasons.append(f"{plan.prefix} was just taken by another lab")
            continue
        return plan
    raise PodsysError("no free lab slot: " + "; ".join(reasons[:3]))


def _claim_slot(prefix: str, directory: Path) -> bool:
    """Take the slot's registry entry for `directory`, unless another lab holds it. Created with
    O_EXCL: two `lab up`s choosing at the same moment (a test session's workers, two of whose
    directories hash to one slot) cannot both take it; seen in CI, the loser's namespaces
    collided with the winner's."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    entry = REGISTRY / prefix
    try:
        fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            return entry.read_text().strip() == str(directory)
        except FileNotFoundError:  # its lab went down meanwhile: try again
            return _claim_slot(prefix, directory)
    with os.fdopen(fd, "w") as out:
        out.write(f"{directory}\n")
    return True


# --- up ---------------------------------------------------------------------------------------


def _ensure_keypair(paths: LabPaths) -> str:
    paths.ssh_dir.mkdir(parents=True, exist_ok=True)
    paths.ssh_dir.chmod(0o700)
    key = paths.private_key
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "podsys-lab", "-f", str(key)],
                       check=True, capture_output=True)
    key.chmod(0o600)
    return key.with_suffix(".pub").read_text().strip()


def _check_manifest_is_ours(paths: LabPaths) -> None:
    if paths.manifest.exists():
        head = paths.manifest.read_text(errors="replace")[:200]
        if not head.startswith(lab_plan.MANIFEST_HEADER):
            raise InputError(Problem(str(paths.manifest), None, "",
                                     "exists and was not written by `podsys lab up`; move it or use --dir"))


def lab_is_up(state: dict | None) -> bool:
    if not state or state.get("phase") != "up":
        return False
    procs = [n.get("pid") for n in state.get("nodes", {}).values()] + [state.get("proxy", {}).get("pid")]
    if state["plan"].get("vms"):
        procs.append(state.get("bmc", {}).get("pid"))
    return all(lab_proc.proc_alive(p) for p in procs)


@contextlib.contextmanager
def _exclusive(paths: LabPaths):
    """One lab command at a time per directory (two `up`s would fight over the same names)."""
    paths.lab_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.lab_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PodsysError(f"another `podsys lab` command is working in {paths.directory}") from None
        yield


def up(directory: Path | str, nodes: int = 3, mirror: str | None = None,
       progress: Progress = lambda msg: None, vms: int = 0,
       vm_disk_size: str = lab_vms.DEFAULT_DISK_SIZE, vm_nice: int = 0) -> dict:
    """Bring the lab up (or report the one already running there) and return its state."""
    if not 1 <= nodes <= lab_plan.MAX_NODES:
        raise InputError(Problem("command line", None, "--nodes",
                                 f"must be between 1 and {lab_plan.MAX_NODES} (got {nodes})"))
    if not 0 <= vms <= lab_plan.MAX_VMS:
        raise InputError(Problem("command line", None, "--vms",
                                 f"must be between 0 and {lab_plan.MAX_VMS} (got {vms})"))
    if not lab_vms.valid_disk_size(vm_disk_size):
        raise InputError(Problem("command line", None, "--vm-disk-size",
                                 f"{vm_disk_size!r} is not a size like 8G or 20480M (1M to 2T)"))
    if vm_nice not in lab_vms.NICE_RANGE:
        raise InputError(Problem("command line", None, "--vm-nice",
                                 f"must be a nice value between -20 and 19 (got {vm_nice})"))
    _require()
    if vms:
        missing = sorted(set(lab_vms.missing_tools().values()))
        if missing:
            raise PodsysError(f"--vms needs tools this host lacks; install: apt-get install {' '.join(missing)}")
    paths = paths_for(directory)
    with _exclusive(paths):
        return _up(paths, nodes, mirror, progress, vms, lab_vms.VMSettings(vm_disk_size, vm_nice))


def _up(paths: LabPaths, nodes: int, mirror: str | None, progress: Progress, vms: int = 0,
        vm_settings: lab_vms.VMSettings = lab_vms.VMSettings()) -> dict:
    state = load_state(paths)
    if lab_is_up(state):
        running_vms = len(state["plan"].get("vms", []))
        if len(state["plan"]["nodes"]) - 1 != nodes or running_vms != vms:
            raise PodsysError(f"a lab with {len(state['plan']['nodes']) - 1} compute nodes and {running_vms} VMs "
                              f"is already up in {paths.directory}; run `podsys lab down` first to change its size")
        progress("lab already up")
        if not paths.manifest.exists():
            _write_manifest(paths, LabPlan.from_dict(state["plan"]), state["mirror"])
        return state
    _check_manifest_is_ours(paths)
    if state or _registered_prefixes(paths.directory):
        progress("removing the remains of an earlier lab in this directory")
        _down(paths, progress)
    mirror = mirror or lab_plan.host_debian_mirror()
    if not mirror:
        raise InputError(Problem("/etc/apt/sources.list", None, "",
                                 "no Debian mirror configured here (nor in sources.list.d); pass --mirror URL"))

    plan = _choose_plan(paths.directory, nodes, vms)  # registers the lab under its prefix
    state = {
        "version": STATE_VERSION, "directory": str(paths.directory), "phase": "creating",
        "prefix": plan.prefix, "mirror": mirror, "plan": plan.to_dict(),
        "netns": [], "host_links": [], "nodes": {}, "proxy": {}, "vms": {}, "bmc": {},
        "manifest": str(paths.manifest), "ssh_config": str(paths.ssh_config),
    }
    save_state(paths, state)

    def record(kind: str, name: str) -> None:
        key = {"netns": "netns", "host_link": "host_links"}[kind]
        if name not in state[key]:
            state[key].append(name)
            save_state(paths, state)

    try:
        _bring_up(paths, plan, mirror, state, record, progress, vm_settings)
    except BaseException:
        progress("bring-up failed; removing what was created (logs stay in " f"{paths.logs})")
        try:
            _down(paths, lambda msg: None)
        except Exception:
            pass
        raise
    return state


def _raise_host_limits(progress: Progress) -> dict[str, list[int]]:
    """Raise the host limits containers need; returns {sysctl: [old, new]} for what changed."""
    changed = {}
    for name, minimum in HOST_SYSCTL_MINIMUMS.items():
        path = Path("/proc/sys") / name.replace(".", "/")
        try:
            current = int(path.read_text().split()[0])
            if current < minimum:
                path.write_text(f"{minimum}\n")
                changed[name] = [current, minimum]
                progress(f"host: raised {name} from {current} to {minimum} (containers need more)")
        except (OSError, ValueError) as exc:
            progress(f"host: cannot raise {name} ({exc}); many nodes may fail to boot")
    return changed


def _bring_up(paths: LabPaths, plan: LabPlan, mirror: str, state: dict, record, progress: Progress,
              vm_settings: lab_vms.VMSettings = lab_vms.VMSettings()) -> None:
    lab_key = _ensure_keypair(paths)
    state["host_sysctls_raised"] = _raise_host_limits(progress)
    progress(f"base root: Debian 12 from {mirror} (built once, cached in {lab_rootfs.cache_root()})")
    base = lab_rootfs.ensure_base_rootfs(mirror, progress)

    progress(f"network: namespaces {plan.prefix}-*, bridge, uplink {plan.host_uplink_link} "
             f"{plan.host_uplink_address} <-> head {plan.head.uplink_address}")
    lab_net.build_network(plan, record)
    plan = dataclasses.replace(plan, proxy_port=lab_proxy.free_port(plan.host_uplink_address))
    state["plan"] = plan.to_dict()

    progress(f"apt proxy: apt-cacher-ng on {plan.proxy_url} (upstream {mirror})")
    state["proxy"] = {"pid": None, "conf": str(paths.proxy_dir / "conf"), "url": plan.proxy_url}
    save_state(paths, state)
    state["proxy"]["pid"] = lab_proxy.start_proxy(plan, paths.proxy_dir, mirror)
    save_state(paths, state)

    if plan.vms:
        _prepare_vms(paths, plan, state, progress, vm_settings)

    apt_settings = lab_rootfs.host_apt_settings()
    host_keys = {}
    for node in plan.nodes:
        dest = lab_rootfs.node_dir(paths.lab_dir, node)
        progress(f"root filesystem: {node.hostname}")
        state["nodes"][node.hostname] = {"rootfs": str(dest / "root"), "dir": str(dest), "pid": None,
                                         "machine": node.machine}
        save_state(paths, state)
        state["nodes"][node.hostname]["clone"] = lab_rootfs.clone_rootfs(base, dest)
        host_keys[node.hostname] = lab_rootfs.customise_node(dest / "root", plan, node, lab_key, apt_settings)
        save_state(paths, state)

    paths.known_hosts.write_text(lab_plan.known_hosts(plan, host_keys))
    paths.ssh_config.write_text(
        lab_plan.ssh_config(plan, paths.private_key, paths.known_hosts, paths.ssh_config))

    paths.shared.mkdir(mode=0o755, exist_ok=True)
    for node in plan.nodes:
        progress(f"booting {node.hostname} ({node.address})")
        rec = state["nodes"][node.hostname]
        rec["pid"] = lab_proc.boot_container(paths.logs, node, Path(rec["rootfs"]), _binds(paths))
        save_state(paths, state)

    _wait_for_ssh(paths, plan, state, progress)

    _write_manifest(paths, plan, mirror)
    state["phase"] = "up"
    save_state(paths, state)


def _prepare_vms(paths: LabPaths, plan: LabPlan, state: dict, progress: Progress,
                 settings: lab_vms.VMSettings) -> None:
    """Disks, taps and BMCs; the VMs stay off until something powers them on through a BMC."""
    vm_dirs = {}
    for vm in plan.vms:
        progress(f"VM {vm.hostname}: {vm.firmware.upper()}, {settings.disk_size} blank disk, MAC {vm.mac}, "
                 f"tap {vm.tap}{f', nice {settings.nice}' if settings.nice else ''}; powered off")
        state["vms"][vm.hostname] = {"dir": str(lab_vms.vm_dir(paths.lab_dir, vm))}
        save_state(paths, state)
        lab_vms.add_tap(plan, vm)
        vm_dirs[vm.hostname] = lab_vms.prepare_vm(plan, vm, paths.lab_dir, settings)
    progress(f"BMCs: ipmi_sim (IPMI lanplus, cipher suite {lab_bmc.CIPHER_SUITE}) on "
             + ", ".join(f"{vm.bmc_address}:{vm.bmc_port}" for vm in plan.vms)
             + f"; password in {paths.bmc_password}")
    lab_bmc.write_config(plan, paths.bmc_dir, vm_dirs, paths.bmc_password)
    lab_bmc.add_addresses(plan)
    state["bmc"] = {"pid": None, "dir": str(paths.bmc_dir)}
    save_state(paths, state)
    state["bmc"]["pid"] = lab_bmc.start(plan, paths.bmc_dir, paths.bmc_password)
    save_state(paths, state)


def _binds(paths: LabPaths) -> tuple[tuple[Path, str], ...]:
    return ((paths.shared, lab_plan.LAB_SHARED_PATH),) if paths.shared.is_dir() else ()


def _write_manifest(paths: LabPaths, plan: LabPlan, mirror: str) -> None:
    paths.manifest.write_text(lab_plan.lab_manifest_text(
        plan, mirror,
        str(paths.private_key.relative_to(paths.directory)),
        str(paths.known_hosts.relative_to(paths.directory)),
        str(paths.bmc_password.relative_to(paths.directory)) if plan.vms else None,
    ))


def _wait_for_ssh(paths: LabPaths, plan: LabPlan, state: dict, progress: Progress) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    pending = list(plan.nodes)
    while pending:
        for node in list(pending):
            if not lab_proc.proc_alive(state["nodes"][node.hostname]["pid"]):
                log = paths.logs / f"{node.hostname}.log"
                raise PodsysError(f"{node.hostname}: container exited during boot "
                                  f"({lab_proc.boot_failure(log)}); see {log}")
            if lab_proc.sshd_answers(node):
                pending.remove(node)
                progress(f"sshd up on {node.hostname}")
        if pending and time.monotonic() > deadline:
            raise PodsysError(f"sshd did not answer within {BOOT_TIMEOUT_S} s on "
                              f"{', '.join(n.hostname for n in pending)}; see {paths.logs}")
        if pending:
            time.sleep(0.5)
    # The real path podsys will use: key auth, pinned host keys, compute nodes via the head.
    for node in plan.nodes:
        last = ""
        while True:
            proc = run_ssh(paths.directory, node.hostname, ["true"], timeout=30)
            if proc.returncode == 0:
                break
            last = (proc.stderr or "").strip()
            if time.monotonic() > deadline:
                raise PodsysError(f"ssh to {node.hostname} failed: {last or 'exit ' + str(proc.returncode)}")
            time.sleep(1)
    progress("ssh works to every node")


# --- ssh --------------------------------------------------------------------------------------


def _plan_from_state(paths: LabPaths) -> tuple[dict, LabPlan]:
    state = load_state(paths)
    if not state or "plan" not in state:
        raise PodsysError(f"no lab in {paths.directory} (run `podsys lab up` there)")
    return state, LabPlan.from_dict(state["plan"])


def ssh_argv(directory: Path | str, node: str, command: list[str] | tuple[str, ...] = (),
             tty: bool = False, vms: bool = True) -> list[str]:
    """The ssh command line reaching a lab node (`head`, a compute hostname, or a VM that a
    deploy installed, unless vms=False)."""
    paths = paths_for(directory)
    _, plan = _plan_from_state(paths)
    names = [n.hostname for n in plan.nodes] + ([v.hostname for v in plan.vms] if vms else [])
    if node not in names:
        raise InputError(Problem("command line", None, "NODE",
                                 f"no lab node {node!r} (nodes: {', '.join(names)})"))
    return ["ssh", "-F", str(paths.ssh_config), *(["-t"] if tty else []), node, *command]


def run_ssh(directory: Path | str, node: str, command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    argv = ssh_argv(directory, node, command)
    argv.insert(3, "-o")
    argv.insert(4, "BatchMode=yes")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout} s")


# --- status -----------------------------------------------------------------------------------


def status(directory: Path | str) -> dict:
    paths = paths_for(directory)
    state = load_state(paths)
    if not state or "plan" not in state:
        return {"directory": str(paths.directory), "state": "down", "nodes": [], "proxy": None, "vms": [], "bmc": None}
    plan = LabPlan.from_dict(state["plan"])
    nodes = []
    for node in plan.nodes:
        rec = state.get("nodes", {}).get(node.hostname, {})
        running = lab_proc.proc_alive(rec.get("pid")) and lab_proc.is_nspawn_of(rec["pid"], node.machine)
        nodes.append({
            "name": node.hostname, "role": node.role, "address": node.address, "mac": node.mac,
            "ssh_address": node.uplink_address or node.address, "machine": node.machine,
            "pid": rec.get("pid"), "running": running,
            "sshd": bool(running and node.netns in lab_net.list_netns() and lab_proc.sshd_answers(node)),
        })
    proxy_pid = state.get("proxy", {}).get("pid")
    proxy = {"url": plan.proxy_url, "pid": proxy_pid, "running": lab_proc.proc_alive(proxy_pid),
             "upstream": state.get("mirror")}
    bmc_pid = state.get("bmc", {}).get("pid")
    bmc = {"pid": bmc_pid, "running": bool(bmc_pid and bmc_pid in lab_bmc.ipmi_sim_pids_for(paths.bmc_dir)),
           "user": lab_plan.BMC_USER, "password_file": str(paths.bmc_password),
           "cipher_suite": lab_bmc.CIPHER_SUITE} if plan.vms else None
    vms = [{
        "name": vm.hostname, "address": vm.address, "mac": vm.mac, "firmware": vm.firmware,
        "bmc_address": vm.bmc_address, "bmc_port": vm.bmc_port,
        # From the process state, as the BMC reports it; "on" means QEMU runs, not that it booted.
        "power": "on" if lab_vms.is_running(plan, vm, paths.lab_dir) else "off",
    } for vm in plan.vms]
    healthy = (state.get("phase") == "up" and proxy["running"] and all(n["sshd"] for n in nodes)
               and (bmc is None or bmc["running"]))
    return {
        "directory": str(paths.directory), "prefix": plan.prefix,
        "state": "up" if healthy else "degraded",
        "manifest": state.get("manifest"), "ssh_config": str(paths.ssh_config),
        "provision_cidr": plan.provision_cidr, "uplink_cidr": plan.uplink_cidr,
        "proxy": proxy, "nodes": nodes, "vms": vms, "bmc": bmc, "bmc_cidr": plan.bmc_cidr,
    }


# --- stop / start one node --------------------------------------------------------------------


def stop_node(directory: Path | str, name: str) -> None:
    """Shut one node's container down (its network and root stay), e.g. to test a node failure."""
    paths = paths_for(directory)
    state, plan = _plan_from_state(paths)
    node = plan.node(name)
    pid = state["nodes"][name].get("pid")
    if pid and lab_proc.is_nspawn_of(pid, node.machine):
        lab_proc.terminate([pid], STOP_TIMEOUT_S)
    lab_proc.terminate(lab_net.netns_pids(node.netns), 2)


def start_node(directory: Path | str, name: str, progress: Progress = lambda msg: None) -> None:
    paths = paths_for(directory)
    state, plan = _plan_from_state(paths)
    node = plan.node(name)
    rec = state["nodes"][name]
    if lab_proc.proc_alive(rec.get("pid")) and lab_proc.is_nspawn_of(rec["pid"], node.machine):
        return
    rec["pid"] = lab_proc.boot_container(paths.logs, node, Path(rec["rootfs"]), _binds(paths))
    save_state(paths, state)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while not lab_proc.sshd_answers(node):
        if not lab_proc.proc_alive(rec["pid"]) or time.monotonic() > deadline:
            raise PodsysError(f"{name} did not come back; see {paths.logs / (name + '.log')}")
        time.sleep(0.5)
    progress(f"{name} is up")


# --- down -------------------------------------------------------------------------------------


def down(directory: Path | str, progress: Progress = lambda msg: None, purge: bool = False) -> list[str]:
    """Remove the lab recorded for this directory, and any leftovers under its prefix.
    Returns what was removed (empty when there was nothing). `purge` also deletes what `up`
    keeps for next time: the lab key, apt cache, logs, and lab.yaml if `up` wrote it."""
    _require()
    paths = paths_for(directory)
    if not paths.lab_dir.exists() and not _registered_prefixes(paths.directory):
        return []
    with _exclusive(paths):
        removed = _down(paths, progress)
    if purge:
        try:
            _check_manifest_is_ours(paths)
            if paths.manifest.exists():
                paths.manifest.unlink()
                removed.append(f"file {paths.manifest}")
        except InputError:
            progress(f"keeping {paths.manifest}: not written by `podsys lab up`")
        lab_rootfs.remove_tree(paths.lab_dir)
        removed.append(f"directory {paths.lab_dir}")
    return removed


def _stop_proxy(paths: LabPaths, state: dict, progress: Progress) -> list[int]:
    conf = Path(state.get("proxy", {}).get("conf") or paths.proxy_dir / "conf")
    pids = lab_proc.proxy_pids_for(conf)
    if pids:
        progress("stopping the apt proxy")
        lab_proc.terminate(pids, 10)
    return pids


def _remove_vms(paths: LabPaths, state: dict, prefixes: set[str], progress: Progress) -> list[str]:
    removed = []
    pids = []
    for rec in state.get("vms", {}).values():
        pid = lab_vms.read_pid(Path(rec.get("dir", "")) / "qemu.pid")
        if pid and lab_proc.proc_alive(pid) and pid in lab_vms.qemu_pids_with_prefix(state.get("prefix", "")):
            pids.append(pid)
    for prefix in prefixes:
        pids += [p for p in lab_vms.qemu_pids_with_prefix(prefix) if p not in pids]
    if pids:
        progress(f"powering off {len(pids)} VM(s)")
        lab_proc.terminate(pids, 10)
        removed += [f"qemu pid {p}" for p in pids]
    bmc_pids = lab_bmc.ipmi_sim_pids_for(paths.bmc_dir)
    if bmc_pids:
        progress("stopping the BMCs (ipmi_sim)")
        lab_proc.terminate(bmc_pids, 5)
        removed += [f"ipmi_sim pid {p}" for p in bmc_pids]
    if paths.vms_dir.exists():
        progress("removing VM disks")
        lab_rootfs.remove_tree(paths.vms_dir)
        removed.append(f"directory {paths.vms_dir}")
    if paths.bmc_dir.exists():
        for entry in paths.bmc_dir.iterdir():  # the password stays, like the lab key
            if entry != paths.bmc_password:
                lab_rootfs.remove_tree(entry) if entry.is_dir() else entry.unlink()
    for prefix in prefixes:
        for sock in lab_vms.SOCKET_DIR.glob(f"{prefix}-*.qmp"):
            sock.unlink(missing_ok=True)
    return removed


def stop_proxy(directory: Path | str, progress: Progress = lambda msg: None) -> list[int]:
    """Cut the lab off: stop the host's apt proxy, the head's only way out (an air-gapped site).
    The lab keeps running; `lab down` still removes everything. Returns the stopped pids."""
    paths = paths_for(directory)
    return _stop_proxy(paths, load_state(paths) or {}, progress)


def _down(paths: LabPaths, progress: Progress) -> list[str]:
    state = load_state(paths) or {}
    prefixes = set(_registered_prefixes(paths.directory))
    if state.get("prefix"):
        prefixes.add(state["prefix"])
    removed: list[str] = []
    plan = LabPlan.from_dict(state["plan"]) if "plan" in state else None

    # 0. VMs (as a pulled plug would: they have nothing to save) and their BMCs
    removed += _remove_vms(paths, state, prefixes, progress)

    # 1. containers: recorded pids (checked to still be our nspawn), then any nspawn by prefix
    pids = []
    for name, rec in state.get("nodes", {}).items():
        machine = rec.get("machine", "")
        if rec.get("pid") and lab_proc.proc_alive(rec["pid"]) and lab_proc.is_nspawn_of(rec["pid"], machine):
            pids.append(rec["pid"])
    for prefix in prefixes:
        pids += [p for p in lab_proc.nspawn_pids_with_prefix(prefix) if p not in pids]
    if pids:
        progress(f"stopping {len(pids)} container(s)")
        lab_proc.terminate(pids, STOP_TIMEOUT_S)
        removed += [f"container pid {p}" for p in pids]

    # 2. the namespaces: whatever still runs inside them belongs to the lab's containers
    namespaces = set(state.get("netns", []))
    for ns in lab_net.list_netns():
        if any(ns.startswith(p + "-") for p in prefixes):
            namespaces.add(ns)
    stragglers = [p for ns in namespaces for p in lab_net.netns_pids(ns)]
    if stragglers:
        lab_proc.terminate(stragglers, 5)
        removed += [f"process {p}" for p in stragglers]

    # 3. the proxy
    proxy_pids = _stop_proxy(paths, state, progress)
    removed += [f"apt-cacher-ng pid {p}" for p in proxy_pids]

    # 4. root filesystems (unmount overlays first)
    nodes_dir = paths.lab_dir / "nodes"
    if nodes_dir.exists():
        progress("removing node root filesystems")
        for mount in lab_rootfs.mounts_under(nodes_dir):
            removed.append(f"mount {mount}")
        lab_rootfs.remove_node_root(nodes_dir)

    # 5. kernel objects
    for ns in sorted(namespaces):
        if lab_net.delete_netns(ns):
            removed.append(f"netns {ns}")
    links = set(state.get("host_links", []))
    for prefix in prefixes:
        links.update(lab_net.host_links_with_prefix(prefix))
    for link in sorted(links):
        if lab_net.delete_host_link(link):
            removed.append(f"link {link}")
    for prefix in prefixes:
        for leftover in Path("/run/systemd/nspawn/propagate").glob(f"{prefix}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        (REGISTRY / prefix).unlink(missing_ok=True)
        (lab_proxy.SOCKET_DIR / f"{prefix}-acng.sock").unlink(missing_ok=True)

    for f in (paths.state, paths.ssh_config, paths.known_hosts):
        f.unlink(missing_ok=True)
    if plan is not None or removed:
        progress(f"lab in {paths.directory} is down" if removed else "nothing was running")
    return removed
