"""`podsys health`: the passive checks of the catalogue, run on the node itself in seconds.

Runs from Slurm's HealthCheckProgram (and by hand): reads the node's profile and thresholds
from the small health.json deploy installs (never the manifest), runs the few read-only tool
commands the node's profile calls for in parallel, judges them with the same functions as
`podsys check`, prints one verdict line per check and exits 1 on FAIL.

Imports only the standard library and podsys.checks parsers, so deploy can copy these modules
onto nodes that have no podsys package (and no pydantic)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from podsys.checks import dmesg, ibstat, nvsmi, nvsmi_q
from podsys.checks.catalog import checks_for_tier, fault_code, spec_for
from podsys.checks.findings import Finding, Verdict, failed, passed, skip

DEFAULT_CONFIG = Path("/etc/podsys/health.json")
DEFAULT_STATE_DIR = Path("/var/lib/podsys-health")
COMMAND_TIMEOUT = 20
KERNEL_LOG = "dmesg 2>/dev/null || journalctl -k -b -o short-monotonic --no-pager"

# --- the node's profile, as health.json carries it --------------------------------------------


@dataclass(frozen=True)
class NVLinkSpec:
    links_per_gpu: int


@dataclass(frozen=True)
class GPUSpec:
    count: int
    product_name: str
    pci_bus_ids: tuple[str, ...] = ()
    nvswitch: bool = False
    nvlink: NVLinkSpec | None = None


@dataclass(frozen=True)
class HCASpec:
    count: int
    rate_gbps: int
    link_layer: str = "InfiniBand"


@dataclass(frozen=True)
class HealthProfile:
    """The part of a hardware profile the passive checks read; attribute-compatible with
    podsys.cluster.hardware.HardwareProfile so the shared judges take either."""

    id: str
    gpu: GPUSpec | None = None
    hca: HCASpec | None = None
    acceptance: dict = field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def has_ib(self) -> bool:
        return self.hca is not None and self.hca.link_layer == "InfiniBand"


@dataclass(frozen=True)
class HealthConfig:
    node: str
    profile: HealthProfile
    disk_paths: tuple[str, ...] = ("/", "/var", "/tmp")
    disk_min_free_percent: float = 5.0
    memory_min_available_percent: float = 5.0
    # The GPUDirect RDMA path the node's plan runs (stack_packages.gpudirect_path): nvidia_peermem
    # with MLNX/DOCA OFED, dmabuf with the open modules on the inbox stack; None: not planned.
    gpudirect: str | None = "nvidia_peermem"


def config_data(node: str, profile, disk_min_free_percent: float = 5.0, memory_min_available_percent: float = 5.0,
                gpudirect: str | None = "nvidia_peermem") -> dict:
    """health.json for a node, from its resolved HardwareProfile (deploy renders this on the head)."""
    gpu = profile.gpu
    hca = profile.hca
    return {
        "node": node,
        "gpudirect": gpudirect,
        "profile": {
            "id": profile.id,
            "gpu": None if gpu is None else {
                "count": gpu.count, "product_name": gpu.product_name, "pci_bus_ids": list(gpu.pci_bus_ids),
                "nvswitch": gpu.nvswitch, "nvlink": None if gpu.nvlink is None else {"links_per_gpu": gpu.nvlink.links_per_gpu},
            },
            "hca": None if hca is None else {"count": hca.count, "rate_gbps": hca.rate_gbps, "link_layer": hca.link_layer},
        },
        "thresholds": {"disk_min_free_percent": disk_min_free_percent, "memory_min_available_percent": memory_min_available_percent},
    }


def parse_config(data: object, source: str = "health.json") -> HealthConfig:
    """ValueError naming the field for anything that is not what config_data writes."""
    def need(mapping: object, key: str, kind: type | tuple, where: str):
        if not isinstance(mapping, dict) or key not in mapping:
            raise ValueError(f"{source}: {where}{key}: missing")
        value = mapping[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ValueError(f"{source}: {where}{key}: {value!r} is not {getattr(kind, '__name__', 'a number')}")
        return value

    profile = need(data, "profile", dict, "")
    gpu_data, hca_data = profile.get("gpu"), profile.get("hca")
    gpu = hca = None
    if gpu_data is not None:
        nvlink = gpu_data.get("nvlink")
        gpu = GPUSpec(
            count=need(gpu_data, "count", int, "profile.gpu."), product_name=need(gpu_data, "product_name", str, "profile.gpu."),
            pci_bus_ids=tuple(gpu_data.get("pci_bus_ids") or ()), nvswitch=bool(gpu_data.get("nvswitch")),
            nvlink=None if nvlink is None else NVLinkSpec(need(nvlink, "links_per_gpu", int, "profile.gpu.nvlink.")),
        )
    if hca_data is not None:
        hca = HCASpec(count=need(hca_data, "count", int, "profile.hca."), rate_gbps=need(hca_data, "rate_gbps", int, "profile.hca."),
                      link_layer=str(hca_data.get("link_layer", "InfiniBand")))
    thresholds = data.get("thresholds") or {}
    numbers = {k: float(need(thresholds, k, (int, float), "thresholds.")) for k in thresholds}
    return HealthConfig(
        node=need(data, "node", str, ""), profile=HealthProfile(id=need(profile, "id", str, "profile."), gpu=gpu, hca=hca),
        disk_min_free_percent=numbers.get("disk_min_free_percent", 5.0),
        memory_min_available_percent=numbers.get("memory_min_available_percent", 5.0),
        gpudirect=_gpudirect_path(data),
    )


def _gpudirect_path(data: dict) -> str | None:
    # A health.json from before the key existed meant peermem, the only path podsys knew then.
    path = data.get("gpudirect", "nvidia_peermem")
    if path not in (None, "nvidia_peermem", "dmabuf"):
        raise ValueError(f"health.json: gpudirect: {path!r} is not nvidia_peermem, dmabuf or null")
    return path


def this_node() -> str:
    """The name this node has in the manifest: the base role sets the hostname to it."""
    return socket.gethostname().split(".")[0]


def node_entry(data: object, node: str | None, source: str = "health.json") -> object:
    """The cluster's table (render writes one file for every node: {"configs": {key: config},
    "nodes": {name: key}}, as thousands of nodes share a few profiles) -> this node's config.
    A file that holds one node's config (what deploy installed before) is returned as it is."""
    if not (isinstance(data, dict) and "nodes" in data and "configs" in data):
        return data
    name = node or this_node()
    nodes, configs = data["nodes"], data["configs"]
    if not isinstance(nodes, dict) or not isinstance(configs, dict):
        raise ValueError(f"{source}: nodes, configs: not mappings")
    key = nodes.get(name)
    if key is None:
        raise ValueError(f"{source}: nodes: {name!r} is not a node of this cluster (pass --node NAME)")
    if key not in configs:
        raise ValueError(f"{source}: nodes.{name}: config {key!r} missing from configs")
    return {**configs[key], "node": name}


def load_config(path: Path, node: str | None = None) -> HealthConfig:
    """The config of `node` (default: this host's name) from the health.json deploy installed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    return parse_config(node_entry(data, node, str(path)), str(path))


# --- running the tools ------------------------------------------------------------------------

Run = Callable[[str], tuple[int, str]]  # shell command -> (exit status, stdout+stderr)


# Fixed, not inherited: slurmd runs HealthCheckProgram with a bare environment
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_shell(command: str, path: str = TOOL_PATH) -> tuple[int, str]:
    env = dict(os.environ, LC_ALL="C", PATH=path)
    try:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env, errors="replace")
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {COMMAND_TIMEOUT}s"
    return done.returncode, done.stdout + done.stderr


@dataclass
class NodeFacts:
    """What the checks read besides tool output; a seam for the tests."""

    boot_id: Callable[[], str] = lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    meminfo: Callable[[], str] = lambda: Path("/proc/meminfo").read_text()
    disk_usage: Callable[[str], tuple[int, int]] = lambda p: (shutil.disk_usage(p).free, shutil.disk_usage(p).total)
    ib_sysfs: Callable[[], str] = lambda: _ib_sysfs()


def _ib_sysfs() -> str:
    """An ibstat-shaped text from /sys/class/infiniband, for nodes without infiniband-diags."""
    root = Path("/sys/class/infiniband")
    out = []
    for ca in sorted(root.glob("*")) if root.is_dir() else []:
        out.append(f"CA '{ca.name}'")
        for port in sorted((ca / "ports").glob("*")):
            read = lambda name: (port / name).read_text().strip() if (port / name).exists() else "?"  # noqa: E731
            state = read("state").split(":")[-1].strip().capitalize()
            physical = read("phys_state").split(":")[-1].strip()
            rate = read("rate").split()[0] if read("rate") != "?" else "?"
            layer = read("link_layer")
            out += [f"\tPort {port.name}:", f"\t\tState: {state}", f"\t\tPhysical state: {physical}", f"\t\tRate: {rate}", f"\t\tLink layer: {layer}"]
    return "\n".join(out) + "\n"


# --- the checks -------------------------------------------------------------------------------

# what the one `nvidia-smi --query-gpu` answers
_QUERY_CHECKS = frozenset({"gpu.count", "gpu.model", "gpu.ecc_errors", "gpu.ecc_mode", "gpu.persistence", "gpu.clocks"})


def commands_for(profile: HealthProfile, checks: frozenset[str] | None = None,
                 gpudirect: str | None = "nvidia_peermem") -> dict[str, str]:
    """The tool commands these checks (default: the whole passive set) need for this profile;
    they run in parallel. The prolog set needs only the quick ones (no kernel log, no -q)."""
    want = checks_for_tier("passive") if checks is None else checks
    commands: dict[str, str] = {}
    if profile.gpu is not None:
        if want & _QUERY_CHECKS:
            commands["query"] = nvsmi.QUERY_COMMAND
        if "gpu.pcie_link" in want:
            commands["pci"] = "nvidia-smi -q -d PCI"
        if "gpu.xid" in want:
            commands["dmesg"] = KERNEL_LOG
        if profile.gpu.nvlink is not None and "gpu.nvlink" in want:
            commands["nvlink"] = "nvidia-smi nvlink -s"
        if profile.gpu.nvswitch and "gpu.fabric_manager" in want:
            commands["fabricmanager"] = "systemctl is-active nvidia-fabricmanager"
        if profile.has_ib and "gpu.gpudirect" in want:
            commands["modules"] = "lsmod"
            if gpudirect == "dmabuf":  # DMA-BUF needs the open kernel modules (MIT/GPL licence)
                commands["nvidia-license"] = "modinfo -F license nvidia"
    if profile.hca is not None and "infiniband.ports" in want:
        commands["ibstat"] = "command -v ibstat >/dev/null 2>&1 && ibstat || echo 'podsys: no ibstat'"
    return commands


def run_checks(config: HealthConfig, run: Run = run_shell, facts: NodeFacts | None = None,
               state_dir: Path = DEFAULT_STATE_DIR, tier: str = "passive") -> list[Finding]:
    """The tier's checks (catalog.checks_for_tier): "passive" for the periodic run, "prolog" for
    the gate before each job, which must not read the kernel log or move the Xid cursor."""
    facts = facts or NodeFacts()
    profile, node = config.profile, config.node
    want = checks_for_tier(tier)
    commands = commands_for(profile, want, config.gpudirect)
    with ThreadPoolExecutor(max_workers=max(1, len(commands))) as pool:
        outputs = dict(zip(commands, pool.map(run, commands.values())))
    out: list[Finding] = []
    if profile.gpu is not None:
        out += _gpu(outputs, node, profile)
        if "dmesg" in outputs:
            out.append(_xid(outputs["dmesg"][1], node, facts, state_dir))
        if "fabricmanager" in outputs:
            out.append(_fabric_manager(outputs["fabricmanager"], node))
        if "modules" in outputs:
            out.append(_gpudirect(outputs["modules"], node, config.gpudirect, outputs.get("nvidia-license")))
    if "ibstat" in outputs:
        out += _infiniband(outputs["ibstat"][1], node, profile, facts)
    if "node.disk" in want:
        out.append(_disk(config, facts))
    if "node.memory" in want:
        out.append(_memory(config, facts))
    return [f for f in out if f.check in want]


def _gpu(outputs: dict[str, tuple[int, str]], node: str, profile: HealthProfile) -> list[Finding]:
    out: list[Finding] = []
    if "query" in outputs:
        rc, text = outputs["query"]
        try:
            gpus = nvsmi.parse_query_gpu(text) if rc == 0 else None
        except ValueError:
            gpus = None
        if gpus is None:
            out.append(failed(node, "gpu.count", value=0, detail=f"nvidia-smi failed: {_first_line(text)}",
                              diagnosis="the NVIDIA driver does not answer: a GPU fell off the bus or the driver is not loaded; "
                              "check dmesg (Xid 79), then power-cycle the node"))
        else:
            out += [f for f in nvsmi.judge_query_gpu(gpus, node, profile) if f.check in _QUERY_CHECKS]
    if "nvlink" in outputs:
        rc, text = outputs["nvlink"]
        try:
            out += nvsmi.judge_nvlink_status(nvsmi.parse_nvlink_status(text), node, profile)
        except ValueError:
            out.append(failed(node, "gpu.nvlink", detail=f"nvidia-smi nvlink -s gave no link list: {_first_line(text)}",
                              diagnosis="nvidia-smi cannot report NVLink: check the driver and fabric manager"))
    if "pci" not in outputs:
        return out
    rc, text = outputs["pci"]
    try:
        out.append(nvsmi_q.judge_pcie_width(nvsmi_q.parse_nvsmi_q(text), node))
    except ValueError:
        out.append(skip(node, "gpu.pcie_link", f"nvidia-smi -q -d PCI gave no GPU blocks: {_first_line(text)}"))
    return out


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")[:160]


# A hardware Xid stays FAILed until the node reboots (a new boot id) or an admin clears it after
# the repair (`podsys health --clear-xid`): a GPU that threw a double-bit error must not be
# resumed five minutes later just because no *new* Xid came. Lines older than the cursor were
# already judged, so an Xid from before a repair never fails again.
_SECONDS = re.compile(r"^\s*(?:<\d+>)?\[\s*(\d+\.\d+)\]")


def _xid(log_text: str, node: str, facts: NodeFacts, state_dir: Path) -> Finding:
    state_file = state_dir / "xid-state.json"
    boot = facts.boot_id()
    state = _read_state(state_file)
    if state.get("boot_id") != boot:
        state = {"boot_id": boot, "cursor": -1.0, "open": []}
    cursor = float(state.get("cursor", -1.0))
    new_lines, newest = [], cursor
    for line in log_text.splitlines():
        m = _SECONDS.match(line)
        seconds = float(m.group(1)) if m else None
        if seconds is None or seconds > cursor:
            new_lines.append(line)
        if seconds is not None:
            newest = max(newest, seconds)
    log = dmesg.parse_dmesg("\n".join(new_lines))
    readable = log.recognised or newest >= 0  # every line already judged still means the log was read
    if not readable and not state["open"]:
        return skip(node, "gpu.xid", "kernel log empty or not readable (dmesg needs root or kernel.dmesg_restrict=0)")
    judged = [f for f in dmesg.judge_dmesg(log, node, has_gpu=True, has_hca=False) if f.check == "gpu.xid" and log.lines]
    finding = judged[0] if judged else passed(node, "gpu.xid", detail="no new Xid events")
    if finding.verdict is Verdict.FAIL:
        state["open"] = sorted(set(state["open"]) | {finding.detail})[-8:]
    state["cursor"] = newest
    _write_state(state_file, state)
    if finding.verdict is not Verdict.FAIL and state["open"]:
        return failed(node, "gpu.xid", value=len(state["open"]), detail="; ".join(state["open"]) + " (earlier this boot)",
                      diagnosis="a hardware Xid this boot: repair (GPU reset or power cycle), then `podsys health --clear-xid` or reboot")
    if finding.verdict is Verdict.PASS:
        return passed(node, "gpu.xid", detail="no new hardware Xid since the last run" if cursor >= 0 else "no hardware Xid this boot")
    return finding


def clear_xid(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    state_file = state_dir / "xid-state.json"
    state = _read_state(state_file)
    if state:
        state["open"] = []
        _write_state(state_file, state)


def _read_state(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # first run, or a torn file: start over (at worst an old Xid is judged again)


def _write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _fabric_manager(result: tuple[int, str], node: str) -> Finding:
    rc, text = result
    state = _first_line(text)
    if rc == 0 and state == "active":
        return passed(node, "gpu.fabric_manager", detail="nvidia-fabricmanager active")
    return failed(node, "gpu.fabric_manager", value=state, detail=f"nvidia-fabricmanager is {state}",
                  diagnosis="fabric manager is not running on this NVSwitch board: CUDA fails with error 802; "
                  "systemctl enable --now nvidia-fabricmanager (its version must equal the driver's)")


def _gpudirect(result: tuple[int, str], node: str, path: str | None = "nvidia_peermem",
               license_result: tuple[int, str] | None = None) -> Finding:
    rc, text = result
    loaded = {line.split()[0] for line in text.splitlines() if line.strip()}
    if rc != 0 or "Module" not in loaded:
        return skip(node, "gpu.gpudirect", f"lsmod failed: {_first_line(text)}")
    if path is None:
        return skip(node, "gpu.gpudirect", "the node's plan has no GPUDirect RDMA path (no MLNX/DOCA OFED for nvidia_peermem, "
                                           "no open kernel modules for DMA-BUF)")
    if "nvidia_peermem" in loaded:
        return passed(node, "gpu.gpudirect", value="nvidia_peermem", detail="nvidia_peermem loaded")
    if path == "dmabuf":
        # Same rule as podsys check's versions.gpudirect (checks/gpudirect.py), on what a node can see cheaply.
        licence = (license_result or (1, ""))[1].strip()
        release = os.uname().release
        kernel = re.match(r"(\d+)\.(\d+)", release)
        if "nvidia" in loaded and "MIT" in licence and kernel and (int(kernel[1]), int(kernel[2])) >= (5, 12):
            return passed(node, "gpu.gpudirect", value="dmabuf", detail=f"DMA-BUF: open kernel modules, kernel {release}")
        why = "the nvidia module is not loaded" if "nvidia" not in loaded else \
            f"the nvidia module is not the open one (license {licence or 'unknown'})" if "MIT" not in licence else \
            f"kernel {release} is older than 5.12"
        return failed(node, "gpu.gpudirect", value="dmabuf", detail=f"DMA-BUF planned but not possible: {why}",
                      diagnosis="the plan uses DMA-BUF with the open kernel modules: podsys deploy --tags gpu reinstalls "
                                "them; NCCL falls back to staging through host memory meanwhile")
    return failed(node, "gpu.gpudirect", value="nvidia_peermem", detail="nvidia_peermem not loaded: GPUDirect RDMA is off",
                  diagnosis="modprobe nvidia_peermem and list it in /etc/modules-load.d (needs MLNX/DOCA OFED); NCCL falls back to staging through host memory")


def _infiniband(text: str, node: str, profile: HealthProfile, facts: NodeFacts) -> list[Finding]:
    if "podsys: no ibstat" in text:
        text = facts.ib_sysfs()
    try:
        cas = ibstat.parse_ibstat(text)
    except ValueError:
        return [failed(node, "infiniband.ports", value=0, detail=f"no HCA found: {_first_line(text)}",
                       diagnosis="no InfiniBand device: check lspci for the ConnectX cards and that mlx5_core/ib_umad are loaded")]
    return ibstat.judge_ibstat(cas, node, profile)


def _disk(config: HealthConfig, facts: NodeFacts) -> Finding:
    low, seen = [], []
    for path in config.disk_paths:
        try:
            free, total = facts.disk_usage(path)
        except OSError:
            continue
        percent = 100.0 * free / total if total else 100.0
        seen.append(f"{path} {percent:.0f}% free")
        if percent < config.disk_min_free_percent:
            low.append(f"{path} {percent:.1f}% free ({free >> 20} MiB)")
    if low:
        return failed(config.node, "node.disk", value=len(low), threshold=config.disk_min_free_percent, unit="% free",
                      detail="; ".join(low), diagnosis="a filesystem is nearly full: jobs and logging fail; clean up (journal, /tmp, core files)")
    return passed(config.node, "node.disk", detail=", ".join(seen) or "no filesystem to check")


def _memory(config: HealthConfig, facts: NodeFacts) -> Finding:
    info = {}
    for line in facts.meminfo().splitlines():
        key, _, value = line.partition(":")
        if value.split():
            info[key] = int(value.split()[0])
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if not total or available is None:
        return skip(config.node, "node.memory", "no MemTotal/MemAvailable in /proc/meminfo")
    percent = 100.0 * available / total
    if percent < config.memory_min_available_percent:
        return failed(config.node, "node.memory", value=round(percent, 1), threshold=config.memory_min_available_percent, unit="%",
                      detail=f"{available >> 10} MiB of {total >> 10} MiB available",
                      diagnosis="memory nearly exhausted outside jobs: look for leaked processes or a full tmpfs")
    return passed(config.node, "node.memory", detail=f"{percent:.0f}% available ({available >> 10} MiB)")


# --- verdict lines and Slurm ------------------------------------------------------------------


def verdict_line(f: Finding) -> str:
    code = f" [{fault_code(f.check, f.value, f.detail + ' ' + f.diagnosis)}]" if f.verdict is Verdict.FAIL else ""
    return f"{f.verdict.value:4} {f.check}{code}: {f.detail}".rstrip(": ")


def failures(findings: list[Finding]) -> list[tuple[str, str]]:
    """(fault code, detail) of each FAIL, in catalogue order."""
    return [(fault_code(f.check, f.value, f.detail + " " + f.diagnosis), f"{f.check}: {f.detail}")
            for f in findings if f.verdict is Verdict.FAIL]


DRAIN_PREFIX = "podsys:"
# Drains podsys's own operations make (podsys/deploy/rollout.py UPGRADE_REASON_PREFIX,
# install_deploy.py REINSTALL_REASON): theirs to lift when their batch ends. A node that is
# healthy in the middle of an upgrade or a re-image must stay drained, so health never resumes them.
OPERATION_DRAIN_PREFIXES = ("podsys:upgrade", "podsys:reinstall")
MAX_REASON = 200  # scontrol keeps longer reasons, but sinfo -R and squeue columns do not


@dataclass(frozen=True)
class SlurmAction:
    action: str  # "drain" | "resume" | "none"
    reason: str = ""
    why: str = ""


def slurm_decision(state: str, reason: str, faults: list[tuple[str, str]]) -> SlurmAction:
    """What to do with this node in Slurm. podsys drains with `podsys:<fault> <detail>` and
    resumes only nodes whose reason starts with `podsys:` and is not an upgrade's or a
    re-image's; a drain anyone else made is never touched (nor re-labelled), and a node already
    drained for the same faults is left alone."""
    flags = set(state.upper().replace("*", "").replace("+", " ").split())
    drained = bool(flags & {"DRAIN", "DRAINED", "DRAINING", "DOWN", "FAIL", "FAILING"})
    ours = reason.startswith(DRAIN_PREFIX) and not reason.startswith(OPERATION_DRAIN_PREFIXES)
    if faults:
        codes = ",".join(dict.fromkeys(code for code, _ in faults))
        wanted = f"{DRAIN_PREFIX}{codes} {faults[0][1]}"[:MAX_REASON]
        if drained and not ours and reason:
            return SlurmAction("none", why=f"drained by someone else ({reason!r}): left alone")
        if drained and ours and reason.split(" ", 1)[0] == wanted.split(" ", 1)[0]:
            return SlurmAction("none", why="already drained for these faults")
        return SlurmAction("drain", wanted)
    if drained and ours:
        return SlurmAction("resume", why=f"healthy again; was {reason!r}")
    return SlurmAction("none", why="healthy" if not drained else f"drained by someone else ({reason!r}): left alone")


def parse_scontrol_node(text: str) -> tuple[str, str]:
    """(State, Reason) from `scontrol show node NAME` (Reason without its '[user@time]' tail)."""
    state = re.search(r"\bState=(\S+)", text)
    reason = re.search(r"^\s*Reason=(.*?)(?:\s+\[[^\]]*@[^\]]*\])?\s*$", text, re.M)
    return (state.group(1) if state else "", reason.group(1).strip() if reason else "")


def apply_slurm(node: str, findings: list[Finding], run: Run = run_shell, tier: str = "passive") -> SlurmAction:
    """Drain or resume after a run of `tier`. The prolog gate's reason says "prolog" (which run
    caught it), and the prolog never resumes: it saw only its subset, so a node drained for a
    passive fault it did not look at is not its to release."""
    rc, text = run(f"scontrol show node {node}")
    if rc != 0:
        return SlurmAction("none", why=f"scontrol show node failed: {_first_line(text)}")
    state, reason = parse_scontrol_node(text)
    faults = failures(findings)
    if tier != "passive":
        faults = [(code, f"{tier} {detail}") for code, detail in faults]
    decision = slurm_decision(state, reason, faults)
    if decision.action == "resume" and tier != "passive":
        return SlurmAction("none", why=f"the {tier} run passed, but only the periodic run resumes a podsys drain")
    if decision.action == "drain":
        quoted = decision.reason.replace("'", "")
        run(f"scontrol update nodename={node} state=drain reason='{quoted}'")
        # A drain lets running jobs finish, which on a faulty GPU means hang or crash: send the
        # node's running jobs back to the queue (Slurm refuses the ones submitted --no-requeue),
        # so they restart from their checkpoint on a healthy node.
        rc, jobs = run(f"squeue -h -w {node} -t RUNNING,CONFIGURING -o %i")
        ids = [j for j in jobs.split() if j.isdigit()]
        if rc == 0 and ids:
            run(f"scontrol requeue {','.join(ids)}")
    elif decision.action == "resume":
        run(f"scontrol update nodename={node} state=resume")
    return decision


# --- metrics for node_exporter's textfile collector --------------------------------------------


def metrics_text(findings: list[Finding], node: str, now: float | None = None) -> str:
    """podsys_health_check_ok{check,fault} 1/0 per check, and the run's timestamp."""
    lines = [
        "# HELP podsys_health_check_ok 1 when the passive health check passes (or is skipped), 0 when it fails.",
        "# TYPE podsys_health_check_ok gauge",
    ]
    for f in findings:
        code = fault_code(f.check, f.value, f.detail + " " + f.diagnosis) if f.verdict is Verdict.FAIL else (spec_for(f.check).fault if spec_for(f.check) else "")
        ok = 0 if f.verdict is Verdict.FAIL else 1
        lines.append(f'podsys_health_check_ok{{node="{node}",check="{f.check}",fault="{code}"}} {ok}')
    lines += ["# HELP podsys_health_last_run_timestamp_seconds When podsys health last ran.",
              "# TYPE podsys_health_last_run_timestamp_seconds gauge",
              f'podsys_health_last_run_timestamp_seconds{{node="{node}"}} {int(now if now is not None else time.time())}']
    return "\n".join(lines) + "\n"


def write_metrics(directory: Path, text: str) -> Path:
    """Atomically, as the textfile collector requires (it may read at any moment)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "podsys_health.prom"
    tmp = directory / f".podsys_health.prom.{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(target)
    return target
