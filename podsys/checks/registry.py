"""The catalogue: live areas in the order they run, and the saved-output kinds that
`podsys check parse` judges."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from podsys.checks import dcgm, dmesg, gpudirect, ibstat, live_bandwidth, live_gpu, live_infiniband, live_nccl, monitoring, nccl, network, nvbandwidth, nvsmi, nvsmi_q, pcie, perftest, slurm, versions
from podsys.checks.findings import AREAS, CPU_ONLY_REASON, Finding, failed, passed, skip
from podsys.checks.live import Context, Probe, Results, split_sections
from podsys.cluster.hardware import HardwareProfile


@dataclass(frozen=True)
class Area:
    name: str
    description: str
    probes: Callable[[Context], list[Probe]]
    judge: Callable[[Context, Results], list[Finding]]


LIVE_AREAS: dict[str, Area] = {
    a.name: a
    for a in (
        Area("versions", "OS, kernel, Slurm, driver, CUDA, NCCL, OFED, FM, DCGM vs the stack; kernel modules", versions.probes, versions.judge),
        Area("gpu", "GPU count/model, persistence, ECC/row remaps, Xid, clocks, NVLink, topology, ACS, dcgmi diag", live_gpu.gpu_probes, live_gpu.gpu_judge),
        Area("bandwidth", "host<->device and P2P copy bandwidth (nvbandwidth)", live_bandwidth.bandwidth_probes, live_bandwidth.bandwidth_judge),
        Area("infiniband", "HCA ports Active at rate, error counters, NIC PCIe link, ib_write_bw between node pairs", live_infiniband.ib_probes, live_infiniband.ib_judge),
        Area("nccl", "nccl-tests single-node on every GPU node and multi-node via Slurm", live_nccl.nccl_probes, live_nccl.nccl_judge),
        Area("slurm", "all nodes idle, srun -N<all> hostname answers, GPU gres visible", slurm.probes, slurm.judge),
        Area("monitoring", "every Prometheus scrape target up, one per node", monitoring.probes, monitoring.judge),
        Area("network", "every host reaches every other on the provision network; MTU consistent", network.probes, network.judge),
    )
}
assert tuple(LIVE_AREAS) == AREAS


def selected(check: str, only: list[str], leave_out: list[str]) -> bool:
    """--only/--skip take areas ("gpu") or check names ("gpu.nvlink"), matched as prefixes."""
    def hit(patterns: list[str]) -> bool:
        return any(check == p or check.startswith(p + ".") for p in patterns)

    return (not only or hit(only)) and not hit(leave_out)


def area_selected(area: str, only: list[str], leave_out: list[str]) -> bool:
    if area in leave_out:
        return False
    return not only or any(p == area or p.startswith(area + ".") for p in only)


def probe_wanted(feeds: tuple[str, ...], only: list[str], leave_out: list[str]) -> bool:
    """Whether a probe feeding these checks is needed: `--only nccl.multinode` must not start
    every node's single-node sweep just to throw its findings away."""
    if not feeds:
        return True

    def wanted(feed: str) -> bool:
        covered = any(feed == p or feed.startswith(p + ".") for p in leave_out)
        chosen = not only or any(feed == p or feed.startswith(p + ".") or p.startswith(feed + ".") for p in only)
        return chosen and not covered

    return any(wanted(feed) for feed in feeds)


def unknown_selectors(patterns: list[str]) -> list[str]:
    return [p for p in patterns if p.split(".", 1)[0] not in AREAS]


# --- saved outputs (`podsys check parse KIND FILE`) ------------------------------------------

Parser = Callable[[str, str, HardwareProfile | None, str], list[Finding]]


def _nccl(text, node, profile, hint):
    run = nccl.parse_nccl_tests(text, hint)
    if run.collective is None and run.rows:
        raise ValueError("cannot tell which collective this is (no '<name>_perf' in the output or file name); pass --collective")
    return nccl.judge_nccl(run, node, profile)


def _dmesg(text, node, profile, hint):
    has_gpu = profile is None or profile.gpu is not None
    has_hca = profile is None or profile.hca is not None
    log = dmesg.parse_dmesg(text)
    if not log.recognised:
        raise ValueError(f"{log.other} of {log.lines + log.other} lines are not kernel log lines: not dmesg or journalctl -k output")
    return dmesg.judge_dmesg(log, node, has_gpu=has_gpu, has_hca=has_hca)


PARSE_KINDS: dict[str, tuple[str, Parser]] = {
    "nccl": ("nccl-tests output (all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf)", _nccl),
    "perftest": ("ib_write_bw / ib_read_bw / ib_send_bw client output", lambda t, n, p, h: perftest.judge_perftest(perftest.parse_perftest(t), n, p)),
    "ibstat": ("ibstat", lambda t, n, p, h: ibstat.judge_ibstat(ibstat.parse_ibstat(t), n, p)),
    "ib-counters": ("grep -H . /sys/class/infiniband/*/ports/*/counters/*", lambda t, n, p, h: [ibstat.judge_ib_counters(ibstat.parse_ib_counter_file(t), n, p)]),
    "nvidia-smi-topo": ("nvidia-smi topo -m", lambda t, n, p, h: nvsmi.judge_topo(nvsmi.parse_topo(t), n, p)),
    "nvidia-smi-query": ("nvidia-smi --query-gpu=" + ",".join(nvsmi.QUERY_FIELDS) + " --format=csv", lambda t, n, p, h: nvsmi.judge_query_gpu(nvsmi.parse_query_gpu(t), n, p)),
    "nvidia-smi-q": ("nvidia-smi -q (ECC, row remaps, clocks, PCIe link width, NVLink fabric state)",
                     lambda t, n, p, h: nvsmi_q.judge_nvsmi_q(nvsmi_q.parse_nvsmi_q(t), n, p)),
    "nvidia-smi-nvlink": ("nvidia-smi nvlink -s", lambda t, n, p, h: nvsmi.judge_nvlink_status(nvsmi.parse_nvlink_status(t), n, p)),
    "dcgmi-diag": ("dcgmi diag -r N", lambda t, n, p, h: dcgm.judge_dcgmi_diag(dcgm.parse_dcgmi_diag(t), n, p)),
    "nvbandwidth": ("nvbandwidth", lambda t, n, p, h: nvbandwidth.judge_nvbandwidth(nvbandwidth.parse_nvbandwidth(t), n, p)),
    "dmesg": ("dmesg / journalctl -k", _dmesg),
    "lspci": ("lspci -vvv (PCIe ACS)", lambda t, n, p, h: [pcie.judge_acs(pcie.parse_lspci_acs(t), n)]),
    "modules": ("/proc/modules or lsmod (nvidia, nvidia_peermem)", lambda t, n, p, h: _modules(t, n, p)),
    "gpudirect": ("the versions probe's output, raw/NODE/versions.txt of a `podsys check` run (modules, nvidia-license, kernel)",
                  lambda t, n, p, h: _gpudirect(t, n, p)),
    "prometheus-targets": ("Prometheus GET /api/v1/targets JSON", lambda t, n, p, h: monitoring.judge_targets(monitoring.parse_targets(t), {})),
}


def _modules(text: str, node: str, profile: HardwareProfile | None) -> list[Finding]:
    """A module list alone: the driver must be loaded; peermem is reported as the active
    GPUDirect path when it is, and is not required (DMA-BUF needs no module)."""
    loaded = versions.parse_module_list(text)  # junk is bad input, with or without a profile
    if profile is None:
        return [skip(node, "versions.modules", "give --profile: which modules are needed depends on the hardware")]
    if profile.gpu is None:
        return [skip(node, "versions.modules", CPU_ONLY_REASON)]
    out = [versions.required_modules_finding(loaded, node, profile, None)]
    if profile.has_ib:
        out.append(gpudirect.judge_gpudirect(loaded, None, None, node, profile))
    return out


def _gpudirect(text: str, node: str, profile: HardwareProfile | None) -> list[Finding]:
    sections = split_sections(text)
    missing = [name for name in ("modules", "nvidia-license", "kernel") if name not in sections]
    if missing:
        raise ValueError(f"no '### {missing[0]}' section: not the versions probe's output (raw/NODE/versions.txt)")
    try:
        loaded = versions.parse_module_list(sections["modules"])
    except ValueError as exc:  # its line numbers count from the section, not the file
        raise ValueError(f"section modules: {exc}") from None
    kernel = sections["kernel"].strip()
    if not re.fullmatch(r"\d+\.\d+\S*", kernel):
        raise ValueError(f"section kernel: {kernel[:60]!r} is not a `uname -r` release")
    return [gpudirect.judge_gpudirect(loaded, sections["nvidia-license"], sections["kernel"], node, profile)]
