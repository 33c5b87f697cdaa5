"""The live `infiniband` area: ibstat, port error counters and the kernel log on every node with
an HCA, and ib_write_bw between node pairs through Slurm, judged by the parsers in ibstat, dmesg
and perftest. Nodes whose profile has no HCA get SKIP with the reason and are never probed."""

from __future__ import annotations

import re

from podsys.checks import dmesg, ibstat, perftest
from podsys.checks.findings import Finding, failed, skip
from podsys.checks.live import Context, Probe, Results, quote, sections_script, split_sections
from podsys.checks.live_nodes import KERNEL_LOG, collected, ib_nodes, only_area, unreachable

IB_WRITE_BW = "ib_write_bw --report_gbits -F -D 5 -q 4"
IB_PORT = 18515


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
    nodes = ib_nodes(ctx)
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
    for node, profile, result in collected(ctx, results, "infiniband", "infiniband.ports", out, needs_ib=True):
        sections = split_sections(result.stdout)
        try:
            out += ibstat.judge_ibstat(ibstat.parse_ibstat(sections.get("ibstat", "")), node.name, profile)
        except ValueError:
            out.append(failed(node.name, "infiniband.ports", detail=f"ibstat: {sections.get('ibstat', '')[:120] or 'no output'}",
                              diagnosis="no HCA visible: check lspci for the ConnectX cards, the mlx5_core/ib_umad modules and OFED"))
        out.append(ibstat.judge_ib_counters(ibstat.parse_ib_counters(sections.get("counters", "")), node.name, profile))
        out += only_area(dmesg.judge_dmesg(dmesg.parse_dmesg(sections.get("dmesg", "")), node.name, has_gpu=False, has_hca=True), "infiniband")
    ib_names = [n.name for n in ib_nodes(ctx)]
    if len(ib_names) == 1:
        out.append(skip(ib_names[0], "infiniband.ib_write_bw", "ib_write_bw needs two InfiniBand nodes"))
    for server, client in ib_pairs(ib_names):
        pair = f"{client}->{server}"
        result = results.get((ctx.head, f"ib_write_bw-{server}-{client}"))
        if result is None or not result.ran:
            out.append(unreachable(pair, "infiniband.ib_write_bw", result))
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
