"""Inventory and versions: OS, kernel, Slurm, driver, CUDA, NCCL, OFED/DOCA, fabric manager and
DCGM equal the resolved stack; the kernel modules the stack needs are loaded.

Expected values come from the manifest and the pinned stack (podsys.cluster.matrix.Stack); nothing is
guessed here."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip, warned
from podsys.checks.gpudirect import judge_gpudirect
from podsys.checks.live import Context, Probe, Results, sections_script, split_sections
from podsys.cluster.hardware import HardwareProfile
from podsys.cluster.matrix import Stack
from podsys.cluster.stack_packages import PlanError, PlanOptions, gpudirect_path

SECTIONS = {
    "os-release": "cat /etc/os-release",
    "kernel": "uname -r",
    "slurm": "slurmd -V 2>/dev/null || sinfo -V",
    "modules": "cat /proc/modules",
    # "Dual MIT/GPL" for the open kernel modules, "NVIDIA" for the proprietary ones: whether
    # GPUDirect RDMA can go through DMA-BUF (podsys.checks.gpudirect).
    "nvidia-license": "modinfo -F license nvidia",
    "driver": "cat /proc/driver/nvidia/version",
    "cuda": "cat /usr/local/cuda/version.json 2>/dev/null || nvcc --version",
    "nccl": "dpkg-query -W -f '${Version}\\n' libnccl2 2>/dev/null || rpm -q --qf '%{VERSION}-%{RELEASE}\\n' libnccl",
    "ofed": "ofed_info -s",
    "fabric-manager": "nv-fabricmanager --version",
    "fabric-manager-active": "systemctl is-active nvidia-fabricmanager",
    "dcgm": "dcgmi --version",
}


@dataclass(frozen=True)
class Expected:
    os_distro: str
    os_version: str
    slurm: str | None  # None: distro Slurm, judged for consistency only
    driver: str | None = None
    cuda: str | None = None
    nccl: str | None = None
    ofed_version: str | None = None
    ofed_release: str | None = None
    ofed_inbox: bool = False
    fabric_manager: str | None = None
    dcgm: str | None = None
    stack: Stack | None = None  # the resolved stack: which GPUDirect path a node must run
    gpu_flavour: str = "auto"  # manifest gpu.flavour

    def gpudirect_path(self, profile: HardwareProfile, layers: tuple[str, ...]) -> str | None:
        """nvidia_peermem, dmabuf or None, as the node's plan (podsys compat packages) says: the
        modules to require follow from it, never from the hardware alone."""
        if self.stack is None:
            return None
        options = PlanOptions(flavour=self.gpu_flavour, infiniband_stack="inbox" if self.ofed_inbox else "matrix",
                              layers=tuple(layers))
        try:
            return gpudirect_path(self.stack, profile, options)
        except PlanError:  # a flavour the GPU cannot run: the manifest checks report it
            return None


def expected_from_cluster(cluster) -> Expected:
    manifest, stack = cluster.manifest, cluster.stack
    ofed = getattr(stack, "ofed", None)
    return Expected(
        os_distro=manifest.os.distro,
        os_version=str(manifest.os.version),
        slurm=getattr(stack, "slurm", None) if manifest.slurm.source == "stack" else None,
        driver=getattr(stack, "driver", None),
        cuda=getattr(stack, "cuda", None),
        nccl=getattr(stack, "nccl", None),
        ofed_version=ofed.version if ofed else None,
        ofed_release=ofed.release if ofed else None,
        ofed_inbox=manifest.infiniband.stack == "inbox",
        fabric_manager=getattr(stack, "fabric_manager", None),
        dcgm=getattr(stack, "dcgm", None),
        stack=stack if isinstance(stack, Stack) else None,
        gpu_flavour=manifest.gpu.flavour,
    )


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r'^([A-Z_]+)=(.*)$', line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
    return out


def parse_modules(text: str) -> set[str]:
    """/proc/modules or lsmod output -> module names."""
    names = set()
    for line in text.splitlines():
        tokens = line.split()
        if tokens and tokens[0] != "Module" and re.fullmatch(r"[\w-]+", tokens[0]):
            names.add(tokens[0].replace("-", "_"))
    return names


# /proc/modules: "nvidia_peermem 16384 0 - Live 0xffffffffc0a1b000 (POE)"; lsmod: "nvidia_peermem  16384  0"
# (lsmod prints a "Module  Size  Used by" header first)
_PROC_MODULES_LINE = re.compile(r"^[\w-]+ \d+ \d+ \S+ (?:Live|Loading|Unloading)\b")
_LSMOD_LINE = re.compile(r"^[\w-]+\s+\d+\s+\d+(?:\s+\S+)?\s*$")


def parse_module_list(text: str) -> set[str]:
    """A saved /proc/modules or lsmod, strictly: a line that is neither is an error naming the
    line (a hand-saved file may be anything; a live read uses parse_modules)."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^Module\s+Size\s+Used by", line):
            continue
        if not (_PROC_MODULES_LINE.match(line) or _LSMOD_LINE.match(line)):
            raise ValueError(f"line {number}: {line.strip()[:60]!r} is not a /proc/modules or lsmod line")
        seen += 1
    if not seen:
        raise ValueError("no module lines: not /proc/modules or lsmod output")
    return parse_modules(text)


def _version(text: str, pattern: str = r"(\d+\.\d+(?:\.\d+)*)") -> str | None:
    m = re.search(pattern, text or "")
    return m.group(1) if m else None


def parse_driver_version(text: str) -> str | None:
    return _version(text, r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)")


def parse_cuda_version(text: str) -> str | None:
    try:
        return json.loads(text)["cuda"]["version"]
    except (ValueError, KeyError, TypeError):
        return _version(text, r"release (\d+\.\d+)")


def judge_versions(sections: dict[str, str], node: str, profile: HardwareProfile, layers: tuple[str, ...],
                   expected: Expected) -> list[Finding]:
    out: list[Finding] = []
    osr = parse_os_release(sections.get("os-release", ""))
    distro, version = osr.get("ID", "?"), osr.get("VERSION_ID", "?")
    if distro == expected.os_distro and (version == expected.os_version or version.startswith(expected.os_version + ".")):
        out.append(passed(node, "versions.os", value=f"{distro} {version}"))
    else:
        out.append(failed(
            node, "versions.os", value=f"{distro} {version}", detail=f"runs {distro} {version}, manifest says {expected.os_distro} {expected.os_version}",
            diagnosis="the node runs a different OS than the manifest: reinstall it (set its boot state to install) or fix `os` in the manifest",
        ))
    kernel = sections.get("kernel", "").strip()
    if kernel:
        out.append(passed(node, "versions.kernel", value=kernel, detail="running kernel"))
    else:
        out.append(skip(node, "versions.kernel", "uname -r gave no answer"))

    if "slurm" in layers:
        slurm = _version(sections.get("slurm", ""))
        if slurm is None:
            out.append(failed(node, "versions.slurm", detail="no slurmd/sinfo found",
                              diagnosis="Slurm is not installed: rerun podsys deploy --tags slurm for this node"))
        elif expected.slurm and not slurm.startswith(expected.slurm):
            out.append(failed(node, "versions.slurm", value=slurm, detail=f"Slurm {slurm}, stack pins {expected.slurm}",
                              diagnosis="Slurm differs from the stack: redeploy the slurm role (pyxis and slurmdbd must match it)"))
        else:
            out.append(passed(node, "versions.slurm", value=slurm, detail="matches the stack" if expected.slurm else "distribution Slurm"))
    else:
        out.append(skip(node, "versions.slurm", "node has no slurm layer"))

    if profile.gpu is None and profile.hca is None:
        for check in ("versions.driver", "versions.modules"):
            out.append(skip(node, check, CPU_ONLY_REASON))
        return out
    modules = parse_modules(sections.get("modules", ""))
    if profile.gpu is not None:
        out.extend(_gpu_versions(sections, node, profile, expected, modules))
    if profile.has_ib:
        out.append(_ofed_version(sections, node, expected))
    path = expected.gpudirect_path(profile, layers) if profile.gpu is not None and profile.has_ib else None
    out.append(required_modules_finding(modules, node, profile, path))
    if profile.gpu is not None and profile.has_ib:
        if "infiniband" in layers:
            out.append(judge_gpudirect(modules, sections.get("nvidia-license"), kernel, node, profile))
        else:
            out.append(skip(node, "versions.gpudirect", "node has no infiniband layer: GPUDirect RDMA is not set up"))
    return out


def required_modules(profile: HardwareProfile, gpudirect: str | None) -> list[str]:
    """The modules a node must have loaded: nvidia on a GPU node, nvidia_peermem only where the
    node's GPUDirect path is peermem (MLNX/DOCA OFED); DMA-BUF needs no module of its own."""
    need = ["nvidia"] if profile.gpu is not None else []
    if profile.gpu is not None and profile.has_ib and gpudirect == "nvidia_peermem":
        need.append("nvidia_peermem")
    return need


def required_modules_finding(modules: set[str], node: str, profile: HardwareProfile, gpudirect: str | None) -> Finding:
    need = required_modules(profile, gpudirect)
    missing = [m for m in need if m not in modules]
    if missing:
        diag = ("nvidia_peermem not loaded, so GPUDirect RDMA is off: modprobe nvidia_peermem and add it to /etc/modules-load.d "
                "(needs MLNX/DOCA OFED)") if missing == ["nvidia_peermem"] else \
            "the NVIDIA kernel module is not loaded: check the driver install (dkms status) and dmesg for load errors"
        return failed(node, "versions.modules", value=", ".join(missing), detail=f"not loaded: {', '.join(missing)}", diagnosis=diag)
    why = {"dmabuf": " (GPUDirect through DMA-BUF: nvidia_peermem not needed)"}.get(gpudirect or "", "")
    return passed(node, "versions.modules", detail=f"loaded: {', '.join(need) or 'none needed'}{why}")


def _compare(node: str, check: str, found: str | None, want: str | None, what: str, fix: str, match=None) -> Finding:
    if want is None:
        return skip(node, check, f"the stack pins no {what}")
    if found is None:
        return failed(node, check, detail=f"{what} not found", diagnosis=fix)
    ok = match(found, want) if match else found == want
    if not ok:
        return failed(node, check, value=found, detail=f"{what} {found}, stack pins {want}", diagnosis=fix)
    return passed(node, check, value=found, detail=f"{what} matches the stack")


def _gpu_versions(sections, node, profile, expected: Expected, modules) -> list[Finding]:
    out = [
        _compare(node, "versions.driver", parse_driver_version(sections.get("driver", "")), expected.driver, "NVIDIA driver",
                 "install the stack's driver (podsys deploy --tags gpu); reboot if an old module is still loaded"),
        _compare(node, "versions.cuda", parse_cuda_version(sections.get("cuda", "")), expected.cuda, "CUDA toolkit",
                 "install the stack's CUDA toolkit (podsys deploy --tags gpu)",
                 match=lambda found, want: found == want or found.startswith(want + ".")),
        _compare(node, "versions.nccl", (sections.get("nccl", "").split() or [None])[0], expected.nccl, "NCCL",
                 "install the stack's libnccl2 build (podsys deploy --tags gpu)",
                 match=lambda found, want: found == want or found.split("+")[0] == want.split("+")[0]),
        _compare(node, "versions.dcgm", _version(sections.get("dcgm", ""), r"version:\s*(\d+\.\d+\.\d+)"), expected.dcgm, "DCGM",
                 "install the stack's DCGM (datacenter-gpu-manager) with podsys deploy --tags gpu"),
    ]
    if profile.gpu.nvswitch:
        fm = _version(sections.get("fabric-manager", ""), r"version is\s*:\s*(\d+\.\d+(?:\.\d+)?)")
        out.append(_compare(node, "versions.fabric_manager", fm, expected.fabric_manager or expected.driver, "fabric manager",
                            "install nvidia-fabricmanager of exactly the driver's version; it refuses to start otherwise"))
        state = sections.get("fabric-manager-active", "").strip().splitlines()[-1:] or ["unknown"]
        if state[0] != "active":
            out.append(failed(
                node, "versions.fabric_manager_active", value=state[0], detail=f"nvidia-fabricmanager is {state[0]}",
                diagnosis="fabric manager not running: CUDA fails with error 802 on NVSwitch boards; systemctl enable --now "
                "nvidia-fabricmanager and read journalctl -u nvidia-fabricmanager (version must equal the driver)",
            ))
        else:
            out.append(passed(node, "versions.fabric_manager_active", value="active"))
    else:
        out.append(skip(node, "versions.fabric_manager", f"profile {profile.id} has no NVSwitch"))
    return out


def _ofed_version(sections, node, expected: Expected) -> Finding:
    if expected.ofed_inbox:
        return skip(node, "versions.ofed", "infiniband.stack: inbox (the distribution's RDMA stack)")
    text = sections.get("ofed", "")
    found = _version(text, r"(\d+\.\d+-[\d.]+)") or _version(text)
    want = expected.ofed_version
    if want is None:
        return skip(node, "versions.ofed", "the stack pins no OFED/DOCA")
    if not text.strip() or "not found" in text:
        return failed(node, "versions.ofed", detail="ofed_info not found",
                      diagnosis="MLNX/DOCA OFED is not installed: podsys deploy --tags infiniband")
    if want in text or (expected.ofed_release and expected.ofed_release in text):
        return passed(node, "versions.ofed", value=found, detail="OFED/DOCA matches the stack")
    return failed(node, "versions.ofed", value=found, detail=f"OFED {found}, stack pins {want}",
                  diagnosis="install the stack's OFED/DOCA release (podsys deploy --tags infiniband), then reboot")


def judge_consistency(findings: list[Finding], check: str) -> list[Finding]:
    """Nodes whose value differs from the majority (e.g. kernels after a partial upgrade)."""
    values = Counter(str(f.value) for f in findings if f.check == check and f.verdict.value == "PASS")
    if len(values) <= 1:
        return findings
    common = values.most_common(1)[0][0]
    out = []
    for f in findings:
        if f.check == check and f.verdict.value == "PASS" and str(f.value) != common:
            out.append(warned(f.node, check, value=f.value, detail=f"{f.value}, most nodes run {common}",
                              diagnosis="nodes run different versions: upgrade/reboot the odd ones so modules and packages match"))
        else:
            out.append(f)
    return out


# --- live -------------------------------------------------------------------------------------

def probes(ctx: Context) -> list[Probe]:
    script = sections_script(SECTIONS)
    return [Probe(host=node.name, name="versions", command=script, timeout=60) for node in ctx.nodes]


def judge(ctx: Context, results: Results) -> list[Finding]:
    expected = expected_from_cluster(ctx.cluster)
    out: list[Finding] = []
    for node in ctx.nodes:
        result = results.get((node.name, "versions"))
        if result is None or not result.ran:
            out.append(failed(node.name, "versions.os", detail=result.problem() if result else "not collected",
                              diagnosis="the node is unreachable over SSH: check it is up, its address and the access settings"))
            continue
        out.extend(judge_versions(split_sections(result.stdout), node.name, ctx.profile(node), node.layers, expected))
    out = judge_consistency(out, "versions.kernel")
    return judge_consistency(out, "versions.slurm") if expected.slurm is None else out
