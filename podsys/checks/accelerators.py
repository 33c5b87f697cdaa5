"""Live GPU, bandwidth, InfiniBand and NCCL checks: which commands to run where, and how their
recorded outputs are judged (by the pure parsers in nvsmi, dmesg, dcgm, pcie, nvbandwidth,
ibstat, perftest and nccl). Nodes whose profile has no GPU / no HCA get SKIP with the reason
and are never probed."""

from __future__ import annotations

import re

from podsys.checks import dcgm, dmesg, ibstat, nccl, nvbandwidth, nvsmi, pcie, perftest
from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, skip
from podsys.checks.live import Context, Probe, Results, quote, sections_script, split_sections

KERNEL_LOG = "dmesg 2>/dev/null || journalctl -k -b --no-pager"
NCCL_SIZES = "-b 1G -e 16G -f 2"
IB_WRITE_BW = "ib_write_bw --report_gbits -F -D 5 -q 4"
IB_PORT = 18515


def _gpu_nodes(ctx: Context):
    return [n for n in ctx.nodes if ctx.profile(n).gpu is not None]


def _ib_nodes(ctx: Context):
    return [n for n in ctx.nodes if ctx.profile(n).has_ib]


def _no_gpu_reason(ctx: Context, node) -> str:
    profile = ctx.profile(node)
    return CPU_ONLY_REASON if profile.gpu is None and profile.hca is None else f"profile {profile.id} has no GPU"


def _no_ib_reason(ctx: Context, node) -> str:
    profile = ctx.profile(node)
    return CPU_ONLY_REASON if profile.gpu is None and profile.hca is None else f"profile {profile.id} has no InfiniBand HCA"


def _unreachable(node: str, check: str, result) -> Finding:
    return failed(node, check, detail=result.problem() if result else "not collected",
                  diagnosis="podsys could not collect this node's output: check SSH to the node")


def _collected(ctx: Context, results: Results, probe: str, check: str, out: list[Finding], needs_ib: bool = False):
    """The nodes whose `probe` output can be judged, with their profile and result. Every other
    node gets its finding in `out` as the loop passes it (SKIP: no such hardware; FAIL: the
    output was not collected), so findings keep the node order."""
    for node in ctx.nodes:
        profile = ctx.profile(node)
        if not (profile.has_ib if needs_ib else profile.gpu is not None):
            out.append(skip(node.name, check, (_no_ib_reason if needs_ib else _no_gpu_reason)(ctx, node)))
            continue
        result = results.get((node.name, probe))
        if result is None or not result.ran:
            out.append(_unreachable(node.name, check, result))
            continue
        yield node, profile, result


def _only(findings: list[Finding], area: str) -> list[Finding]:
    return [f for f in findings if f.area == area]


# --- gpu --------------------------------------------------------------------------------------

GPU_SECTIONS = {
    "query": nvsmi.QUERY_COMMAND,
    "topo": "nvidia-smi topo -m",
    "nvlink": "nvidia-smi nvlink -s",
    "dmesg": KERNEL_LOG,
    "virt": "systemd-detect-virt || true",
    "lspci": "lspci -vvv",
}


def gpu_sections(dcgm_level: int) -> dict[str, str]:
    sections = dict(GPU_SECTIONS)
    if dcgm_level > 0:
        sections["dcgm"] = f"command -v dcgmi >/dev/null && dcgmi diag -r {int(dcgm_level)}"
    return sections


def gpu_probes(ctx: Context) -> list[Probe]:
    # level 3 runs ~15 min, level 4 longer: give the probe the time its level needs
    timeout = {0: 300, 1: 300, 2: 900, 3: 2700}.get(ctx.dcgm_level, 7200)
    return [Probe(node.name, "gpu", sections_script(gpu_sections(ctx.dcgm_level)), timeout=timeout) for node in _gpu_nodes(ctx)]


def judge_gpu_sections(sections: dict[str, str], node: str, profile) -> list[Finding]:
    """Judge one GPU node's collected sections (see GPU_SECTIONS / gpu_sections)."""
    out: list[Finding] = []
    try:
        out += nvsmi.judge_query_gpu(nvsmi.parse_query_gpu(sections.get("query", "")), node, profile)
    except ValueError:
        out.append(failed(node, "gpu.count", detail=f"nvidia-smi failed: {sections.get('query', '')[:160] or 'no output'}",
                          diagnosis="the NVIDIA driver is not working: check nvidia-smi, dkms status and dmesg (Xid 79, module load errors)"))
    for key, parse, judge, check in (
        ("topo", nvsmi.parse_topo, nvsmi.judge_topo, "gpu.topology"),
        ("nvlink", nvsmi.parse_nvlink_status, nvsmi.judge_nvlink_status, "gpu.nvlink"),
    ):
        text = sections.get(key, "")
        try:
            out += judge(parse(text), node, profile)
        except ValueError:
            if key == "nvlink" and (profile.gpu.nvlink is None):
                out.append(skip(node, check, f"profile {profile.id} has no NVLink"))
            else:
                out.append(failed(node, check, detail=f"no usable output: {text[:120] or 'empty'}",
                                  diagnosis="nvidia-smi could not report this: check the driver and fabric manager"))
    out += _only(dmesg.judge_dmesg(dmesg.parse_dmesg(sections.get("dmesg", "")), node, has_gpu=True, has_hca=False), "gpu")
    virt = sections.get("virt", "").strip().splitlines()[-1:] or ["unknown"]
    if virt[0] == "none":
        try:
            out.append(pcie.judge_acs(pcie.parse_lspci_acs(sections.get("lspci", "")), node))
        except ValueError:
            out.append(skip(node, "gpu.pcie_acs", "lspci -vvv gave no device list (pciutils missing?)"))
    else:
        out.append(skip(node, "gpu.pcie_acs", f"virtualised ({virt[0]}): ACS is expected under passthrough"))
    if "dcgm" not in sections:
        out.append(skip(node, "gpu.dcgm_diag", "not requested (--dcgm-level 0)"))
    elif sections.get("dcgm", "").strip():
        try:
            out += dcgm.judge_dcgmi_diag(dcgm.parse_dcgmi_diag(sections["dcgm"]), node, profile)
        except ValueError:
            out.append(failed(node, "gpu.dcgm_diag", detail=sections["dcgm"][:160],
                              diagnosis="dcgmi diag did not produce a result: systemctl status nvidia-dcgm"))
    else:
        out.append(skip(node, "gpu.dcgm_diag", "dcgmi not installed"))
    return out


def gpu_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    for node, profile, result in _collected(ctx, results, "gpu", "gpu.count", out):
        out += judge_gpu_sections(split_sections(result.stdout), node.name, profile)
    return out


# --- bandwidth --------------------------------------------------------------------------------

NVBANDWIDTH = ("command -v nvbandwidth >/dev/null || { echo 'nvbandwidth not installed'; exit 0; }; "
               "nvbandwidth -t host_to_device_memcpy_ce device_to_host_memcpy_ce device_to_device_memcpy_write_ce")


def bandwidth_probes(ctx: Context) -> list[Probe]:
    return [Probe(node.name, "nvbandwidth", NVBANDWIDTH, timeout=600) for node in _gpu_nodes(ctx)]


def bandwidth_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    for node, profile, result in _collected(ctx, results, "nvbandwidth", "bandwidth.nvbandwidth", out):
        if "nvbandwidth not installed" in result.stdout:
            out.append(skip(node.name, "bandwidth.nvbandwidth", "nvbandwidth not installed on the node"))
        else:
            try:
                out += nvbandwidth.judge_nvbandwidth(nvbandwidth.parse_nvbandwidth(result.stdout), node.name, profile)
            except ValueError:
                out.append(failed(node.name, "bandwidth.nvbandwidth", detail=result.problem(),
                                  diagnosis="nvbandwidth did not run: check CUDA (error 802 means fabric manager is down)"))
    return out


# --- infiniband -------------------------------------------------------------------------------

IB_SECTIONS = {
    "ibstat": "ibstat",
    "counters": "grep -H . /sys/class/infiniband/*/ports/*/counters/{symbol_error,link_downed,link_error_recovery,"
                "port_rcv_errors,local_link_integrity_errors,excessive_buffer_overrun_errors}",
    "dmesg": KERNEL_LOG,
}


def ib_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Each node tested once as client against the next one (a ring), so every port of every
    node carries traffic while the number of runs stays linear in the node count."""
    if len(names) < 2:
        return []
    if len(names) == 2:
        return [(names[0], names[1])]
    return [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]


def ib_pair_command(server: str, client: str, server_address: str, devices: list[str]) -> str:
    """One srun step on the two nodes; each task decides its role by hostname (Slurm orders
    ranks by its node list, not ours); the server's output is dropped, the client's printed.
    Every HCA in turn, each on its own port."""
    body = " ".join(
        f'if [ "$(hostname -s)" = {quote(server)} ]; then {IB_WRITE_BW} -d {dev} -p {IB_PORT + i} >/dev/null 2>&1; '
        f'else sleep 2; {IB_WRITE_BW} -d {dev} -p {IB_PORT + i} {server_address}; fi;'
        for i, dev in enumerate(devices)
    )
    return f"timeout 600 srun -N2 -n2 --ntasks-per-node=1 -w {quote(server + ',' + client)} bash -c {quote(body)} 2>&1"


def ib_probes(ctx: Context) -> list[Probe]:
    nodes = _ib_nodes(ctx)
    probes = [Probe(node.name, "infiniband", sections_script(IB_SECTIONS), timeout=120,
                    feeds=("infiniband.ports", "infiniband.errors", "infiniband.pcie_link")) for node in nodes]
    for server, client in ib_pairs([n.name for n in nodes]):
        profile = ctx.profile(ctx.cluster.node(server))
        devices = [f"mlx5_{i}" for i in range(profile.hca.count)]
        probes.append(Probe(ctx.head, f"ib_write_bw-{server}-{client}",
                            ib_pair_command(server, client, ctx.cluster.node(server).provision_ip, devices), timeout=900,
                            feeds=("infiniband.ib_write_bw",)))
    return probes


def split_perftest_runs(text: str) -> list[str]:
    """Several ib_write_bw runs printed one after another -> one text per run."""
    runs, current = [], []
    for line in text.splitlines():
        if re.match(r"^\s*(RDMA_Write|RDMA_Read|Send)\b.*Test\s*$", line) and any("#bytes" in l for l in current):
            runs.append("\n".join(current))
            current = []
        current.append(line)
    if current:
        runs.append("\n".join(current))
    return runs


def ib_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    for node, profile, result in _collected(ctx, results, "infiniband", "infiniband.ports", out, needs_ib=True):
        sections = split_sections(result.stdout)
        try:
            out += ibstat.judge_ibstat(ibstat.parse_ibstat(sections.get("ibstat", "")), node.name, profile)
        except ValueError:
            out.append(failed(node.name, "infiniband.ports", detail=f"ibstat: {sections.get('ibstat', '')[:120] or 'no output'}",
                              diagnosis="no HCA visible: check lspci for the ConnectX cards, the mlx5_core/ib_umad modules and OFED"))
        out.append(ibstat.judge_ib_counters(ibstat.parse_ib_counters(sections.get("counters", "")), node.name, profile))
        out += _only(dmesg.judge_dmesg(dmesg.parse_dmesg(sections.get("dmesg", "")), node.name, has_gpu=False, has_hca=True), "infiniband")
    ib_nodes = [n.name for n in _ib_nodes(ctx)]
    if len(ib_nodes) == 1:
        out.append(skip(ib_nodes[0], "infiniband.ib_write_bw", "ib_write_bw needs two InfiniBand nodes"))
    for server, client in ib_pairs(ib_nodes):
        pair = f"{client}->{server}"
        result = results.get((ctx.head, f"ib_write_bw-{server}-{client}"))
        if result is None or not result.ran:
            out.append(_unreachable(pair, "infiniband.ib_write_bw", result))
            continue
        runs = split_perftest_runs(result.stdout)
        parsed = []
        for text in runs:
            try:
                parsed.append(perftest.parse_perftest(text))
            except ValueError:
                continue
        if not parsed:
            out.append(failed(pair, "infiniband.ib_write_bw", detail=result.problem(),
                              diagnosis="ib_write_bw did not complete: check both nodes' ports (ibstat), perftest installed, and Slurm"))
            continue
        profile = ctx.profile(ctx.cluster.node(server))
        for run in parsed:
            label = f"{pair} {run.device}" if run.device else pair
            out += perftest.judge_perftest(run, label, profile)
    return out


# --- nccl -------------------------------------------------------------------------------------

def nccl_single_command(gpus: int) -> str:
    runs = []
    for coll in nccl.COLLECTIVES:
        runs.append(
            f"echo '### {coll}'; if command -v {coll}_perf >/dev/null; then NCCL_DEBUG=INFO {coll}_perf {NCCL_SIZES} -g {gpus} 2>&1; "
            f"else echo 'nccl-tests not installed ({coll}_perf not on PATH)'; fi"
        )
    return "; ".join(runs)


def nccl_multinode_command(nodes: list[str], gpus: int) -> str:
    return (
        f"NCCL_DEBUG=INFO NCCL_ALGO=Ring timeout 900 srun -N{len(nodes)} -w {quote(','.join(nodes))} "
        f"--ntasks-per-node={gpus} --gpus-per-node={gpus} --mpi=pmix all_reduce_perf {NCCL_SIZES} -g 1 2>&1"
    )


def nccl_probes(ctx: Context) -> list[Probe]:
    nodes = _gpu_nodes(ctx)
    single = tuple(f"nccl.{c}" for c in (*nccl.COLLECTIVES, "correctness", "transport", "test"))
    probes = [Probe(n.name, "nccl", nccl_single_command(ctx.profile(n).gpu.count), timeout=1800, feeds=single) for n in nodes]
    if len(nodes) > 1:
        gpus = min(ctx.profile(n).gpu.count for n in nodes)
        probes.append(Probe(ctx.head, "nccl-multinode", nccl_multinode_command([n.name for n in nodes], gpus), timeout=1800,
                            feeds=("nccl.multinode",)))
    return probes


def nccl_judge(ctx: Context, results: Results) -> list[Finding]:
    out: list[Finding] = []
    nodes = _gpu_nodes(ctx)
    for node, profile, result in _collected(ctx, results, "nccl", "nccl.all_reduce", out):
        for coll, text in split_sections(result.stdout).items():
            if "nccl-tests not installed" in text:
                out.append(skip(node.name, f"nccl.{coll}", text.strip()))
                continue
            try:
                out += nccl.judge_nccl(nccl.parse_nccl_tests(text, coll), node.name, profile)
            except ValueError:
                out.append(failed(node.name, f"nccl.{coll}", detail=(text.strip().splitlines() or ['no output'])[-1][:160],
                                  diagnosis="the NCCL test did not complete: read the raw output (CUDA error 802 = fabric manager down)"))
    if len(nodes) > 1:
        label = ",".join(n.name for n in nodes) if len(nodes) <= 4 else f"{len(nodes)} nodes"
        result = results.get((ctx.head, "nccl-multinode"))
        if result is None or not result.ran:
            out.append(_unreachable(label, "nccl.multinode.all_reduce", result))
        else:
            try:
                out += nccl.judge_nccl(nccl.parse_nccl_tests(result.stdout, "all_reduce"), label, ctx.profile(nodes[0]))
            except ValueError:
                out.append(failed(label, "nccl.multinode.all_reduce", detail=result.problem(),
                                  diagnosis="the multi-node NCCL test did not run: check srun --mpi=pmix, nccl-tests built with MPI, and IB"))
    elif len(nodes) == 1:
        out.append(skip(nodes[0].name, "nccl.multinode.all_reduce", "multi-node NCCL needs two GPU nodes"))
    return out
