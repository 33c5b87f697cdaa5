"""nccl-tests output (all_reduce_perf, all_gather_perf, reduce_scatter_perf, alltoall_perf).

Accepts the variants seen in the wild: the old `error` column and the new `#wrong` column,
with or without a `root` column, `[rank]` prefixes from `mpirun --tag-output`, and NCCL INFO /
WARN lines or any other noise between rows. Busbw is judged at the largest message size, never
from "Avg bus bandwidth" (which averages the whole sweep, latency-bound small sizes included).
With NCCL_DEBUG=INFO in the output, the transport is checked too: socket fallback, missing
GPUDirect RDMA, shared-memory instead of P2P inside a node, CUDA error 802."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, judge_metric, passed, skip, warned
from podsys.cluster.hardware import HardwareProfile

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")

_TAG = re.compile(r"\[\d+(?:,\d+)*\](?:<std(?:out|err)>:)?")
_RANK = re.compile(r"^#?\s*Rank\s+(\d+)\s+(?:Group\s+\d+\s+)?Pid\s+\d+\s+on\s+(\S+)\s+device\s+(\d+)\s+\[([^\]]*)\]\s+(.*)$")
_NUM = re.compile(r"^-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\*?$", re.I)
_CONCLUDED = re.compile(r"Collective test concluded:\s*(\w+?)_perf")
_BINARY = re.compile(r"\b(all_reduce|all_gather|reduce_scatter|alltoall)_perf\b")
_OUT_OF_BOUNDS = re.compile(r"Out of bounds values\s*:\s*(\d+)\s+(\w+)")
_AVG = re.compile(r"Avg bus bandwidth\s*:\s*([\d.]+)")
_CHANNEL = re.compile(r"NCCL INFO (?:Channel|Ring) \S+ : .* via (\S+)")
# "gpu001:12345:12399 [3] NCCL INFO ..." (host:pid:tid [cudaDev]); NCCL's debug prefix
# (the [cudaDev] is gone by then: the mpirun tag pattern strips it along with "[1,0]<stdout>:")
_INFO_PREFIX = re.compile(r"^(\S+?):\d+:\d+\s+(?:\[\d+\]\s+)?NCCL (?:INFO|WARN)")
# "comm 0x55.. rank 36 nranks 64 cudaDev 4 ..." (Init START/COMPLETE; NCCL 2.4-2.2x spell nRanks too)
_INIT_RANK = re.compile(r"\brank (\d+) nranks (\d+)", re.I)
_NNODES = re.compile(r"\bnNodes (\d+)")
_CUDA_802 = re.compile(r"system not yet initialized|cudaErrorSystemNotReady|\berror 802\b|CUDA error 802", re.I)


@dataclass(frozen=True)
class NcclRow:
    size: int
    count: int
    dtype: str
    oop_time_us: float
    oop_algbw: float
    oop_busbw: float
    oop_wrong: str
    ip_time_us: float | None
    ip_algbw: float | None
    ip_busbw: float | None
    ip_wrong: str | None

    @property
    def busbw(self) -> float:
        return max(self.oop_busbw, self.ip_busbw or 0.0)

    @property
    def has_errors(self) -> bool:
        return _is_wrong(self.oop_wrong) or (self.ip_wrong is not None and _is_wrong(self.ip_wrong))


def _is_wrong(token: str) -> bool:
    """New format: #wrong is an integer count. Old format: `error` is a float magnitude where
    small rounding errors are normal; nccl-tests marks the ones over its limit with '*'."""
    if token in ("N/A", "-"):
        return False
    if token.endswith("*"):
        return True
    try:
        return float(token) != 0 and float(token).is_integer() and float(token) >= 1
    except ValueError:
        return False


@dataclass
class NcclRun:
    collective: str | None
    rows: list[NcclRow]
    hosts: list[str] = field(default_factory=list)  # in rank order, one entry per rank
    gpus: list[str] = field(default_factory=list)
    avg_busbw: float | None = None
    out_of_bounds: int | None = None
    wrong_column: str = "#wrong"  # or "error" (old nccl-tests)
    channels: list[str] = field(default_factory=list)  # transports from NCCL INFO Channel lines
    debug_info: bool = False  # output carries NCCL_DEBUG=INFO lines
    no_ib_device: bool = False
    socket_network: bool = False
    cuda_not_ready: bool = False
    nccl_version: str | None = None
    info_nranks: int | None = None  # "nranks N" of the INFO Init lines
    info_nodes: int | None = None  # "nNodes N" where NCCL prints it
    info_hosts: set[str] = field(default_factory=set)  # every host that printed an INFO line
    socket_hosts: set[str] = field(default_factory=set)  # hosts whose channels or network are NET/Socket
    ib_hosts: set[str] = field(default_factory=set)  # hosts whose inter-node channels are NET/IB

    @property
    def nranks(self) -> int:
        return max(len(self.hosts), self.info_nranks or 0)

    @property
    def multinode(self) -> bool:
        return len(set(self.hosts) | self.info_hosts) > 1 or (self.info_nodes or 0) > 1

    @property
    def largest(self) -> NcclRow | None:
        return max(self.rows, key=lambda r: r.size) if self.rows else None


def parse_nccl_tests(text: str, collective_hint: str | None = None) -> NcclRun:
    """Every result row, the ranks and the NCCL INFO transport facts. Raises ValueError when the
    text holds no result row at all."""
    rows: list[NcclRow] = []
    run = NcclRun(collective=None, rows=rows)
    rank_hosts: dict[int, str] = {}
    for raw in text.splitlines():
        line = _TAG.sub(" ", raw).strip()
        if not line:
            continue
        if "NCCL INFO" in line or "NCCL WARN" in line:
            run.debug_info = run.debug_info or "NCCL INFO" in line
            prefix = _INFO_PREFIX.match(line)
            host = prefix.group(1) if prefix else None
            if host:
                run.info_hosts.add(host)
            channel = _CHANNEL.search(line)
            if channel:
                run.channels.append(channel.group(1))
                if host and channel.group(1).startswith("NET/Socket"):
                    run.socket_hosts.add(host)
                elif host and channel.group(1).startswith("NET/IB"):
                    run.ib_hosts.add(host)
            if "NET/IB : No device found" in line:
                run.no_ib_device = True
            if "Using network Socket" in line:
                run.socket_network = True
                if host:
                    run.socket_hosts.add(host)
            if (init := _INIT_RANK.search(line)) is not None:
                run.info_nranks = int(init.group(2))
                if host:
                    rank_hosts[int(init.group(1))] = host
            if (nodes := _NNODES.search(line)) is not None:
                run.info_nodes = max(run.info_nodes or 0, int(nodes.group(1)))
            version = re.search(r"NCCL version (\S+)", line)
            if version:
                run.nccl_version = version.group(1)
        if _CUDA_802.search(line):
            run.cuda_not_ready = True
        if line.startswith("NCCL version"):
            run.nccl_version = line.split()[2]
        if line.startswith("#"):
            body = line.lstrip("#").strip()
            rank = _RANK.match(body)
            if rank:
                run.hosts.append(rank.group(2))
                run.gpus.append(rank.group(5).strip())
            elif re.match(r"size\s+count\s+type", body):
                run.wrong_column = "error" if re.search(r"\berror\b", body) else "#wrong"
            elif (m := _OUT_OF_BOUNDS.search(body)) is not None:
                run.out_of_bounds = int(m.group(1))
            elif (m := _AVG.search(body)) is not None:
                run.avg_busbw = float(m.group(1))
            elif (m := _CONCLUDED.search(body)) is not None:
                run.collective = m.group(1)
            continue
        row = _parse_row(line)
        if row is not None:
            rows.append(row)
        elif run.collective is None and (m := _BINARY.search(line)) is not None:
            run.collective = m.group(1)
    if not run.hosts and rank_hosts:  # no "# Rank ..." header: the ranks as NCCL's Init lines name them
        run.hosts = [rank_hosts[r] for r in sorted(rank_hosts)]
    if not rows and not run.cuda_not_ready and not run.info_hosts:
        raise ValueError("no nccl-tests result rows and no NCCL_DEBUG=INFO lines found: not nccl-tests or NCCL output")
    if run.collective is None and collective_hint:
        m = _BINARY.search(collective_hint) or re.search(r"(all_reduce|all_gather|reduce_scatter|alltoall)", collective_hint)
        run.collective = m.group(1) if m else None
    return run


def _parse_row(line: str) -> NcclRow | None:
    tokens = line.split()
    if len(tokens) < 7 or not tokens[0].isdigit() or not tokens[1].isdigit():
        return None
    # The last 8 tokens are always time, algbw, busbw, wrong for out-of-place then in-place;
    # what sits between count and them (type, redop, root) varies by test and version.
    if len(tokens) >= 11 and all(_NUM.match(t) or t == "N/A" for t in tokens[-8:]):
        oop, ip = tokens[-8:-4], tokens[-4:]
        try:
            return NcclRow(
                size=int(tokens[0]), count=int(tokens[1]), dtype=tokens[2],
                oop_time_us=float(oop[0]), oop_algbw=float(oop[1]), oop_busbw=float(oop[2]), oop_wrong=oop[3],
                ip_time_us=float(ip[0]), ip_algbw=float(ip[1]), ip_busbw=float(ip[2]), ip_wrong=ip[3],
            )
        except ValueError:
            return None
    if all(_NUM.match(t) or t == "N/A" for t in tokens[-4:]):
        oop = tokens[-4:]
        try:
            return NcclRow(
                size=int(tokens[0]), count=int(tokens[1]), dtype=tokens[2],
                oop_time_us=float(oop[0]), oop_algbw=float(oop[1]), oop_busbw=float(oop[2]), oop_wrong=oop[3],
                ip_time_us=None, ip_algbw=None, ip_busbw=None, ip_wrong=None,
            )
        except ValueError:
            return None
    return None


def _human_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"


def judge_nccl(run: NcclRun, node: str, profile: HardwareProfile | None) -> list[Finding]:
    """Busbw at the largest size vs the profile; data errors; transport (when NCCL_DEBUG=INFO)."""
    collective = run.collective or ("all_reduce" if run.rows else "test")
    scope = "nccl.multinode" if run.multinode else "nccl"
    check = f"{scope}.{collective}"
    if profile is not None and profile.gpu is None:
        return [skip(node, check, CPU_ONLY_REASON)]
    out: list[Finding] = []
    largest = run.largest
    if largest is None and run.cuda_not_ready:  # the test died before its first size: CUDA could not start
        return [replace(_judge_transport(run, node, profile, scope), check=check)]
    if largest is None:  # an NCCL_DEBUG=INFO log without a result table (a training job's log): judged by its transport
        ranks = f"{run.nranks} ranks" if run.nranks else "ranks unknown"
        busbw = check if run.collective else f"{scope}.busbw"
        return [skip(node, busbw, f"no result table in the output ({ranks}): bus bandwidth not measured"),
                _judge_transport(run, node, profile, scope)]
    key = f"nccl_multinode_{collective}_busbw" if run.multinode else f"nccl_{collective}_busbw"
    where = f"{len(set(run.hosts))} nodes, {run.nranks} ranks" if run.multinode else f"{run.nranks or '?'} GPUs"
    detail = f"busbw at {_human_size(largest.size)} ({where}); sweep average {run.avg_busbw if run.avg_busbw is not None else 'n/a'}"
    if largest.size < (256 << 20):
        detail += f"; sweep ends at {_human_size(largest.size)}, too small to reach peak: run with -e 8G or more"
    diagnosis = (
        "multi-node busbw low: check every HCA is Active at full rate (ibstat), GPUDirect RDMA (nvidia_peermem), "
        "NCCL_IB_HCA, and run with NCCL_ALGO=Ring to measure the network"
        if run.multinode
        else "single-node busbw low: check NVLink (nvidia-smi nvlink -s, topo -m), fabric manager, "
        "GPU clocks/throttling, and that NCCL uses P2P/NVLS (NCCL_DEBUG=INFO)"
    )
    series = tuple((float(r.size), r.busbw) for r in sorted(run.rows, key=lambda r: r.size))
    out.append(judge_metric(node, check, largest.busbw, profile, key, diagnosis=diagnosis, detail=detail, series=series))

    bad_rows = [r for r in run.rows if r.has_errors]
    if bad_rows or (run.out_of_bounds or 0) > 0:
        sizes = ", ".join(_human_size(r.size) for r in bad_rows[:4])
        out.append(failed(
            node, f"{scope}.correctness",
            detail=f"wrong results ({run.wrong_column} column) at {sizes or 'some sizes'}; out of bounds values: {run.out_of_bounds}",
            diagnosis="data corruption in a collective: suspect a GPU or NVLink/IB link with errors; run dcgmi diag -r 3 and check Xid/ECC in dmesg",
        ))
    else:
        out.append(passed(node, f"{scope}.correctness", detail=f"no wrong values ({run.wrong_column} column, {len(run.rows)} sizes)"))

    out.append(_judge_transport(run, node, profile, scope))
    return out


def _judge_transport(run: NcclRun, node: str, profile: HardwareProfile | None, scope: str) -> Finding:
    check = f"{scope}.transport"
    if run.cuda_not_ready:
        return failed(
            node, check, detail="CUDA error 802 'system not yet initialized'",
            diagnosis="fabric manager is not running on this NVSwitch board: systemctl enable --now nvidia-fabricmanager (its version must equal the driver's)",
        )
    has_ib = profile.has_ib if profile is not None else None
    net = [c for c in run.channels if c.startswith("NET/")]
    socket = run.socket_network or any(c.startswith("NET/Socket") for c in net)
    if socket and has_ib is False:
        return passed(node, check, detail="inter-node traffic via NET/Socket (TCP): the profile has no InfiniBand")
    if socket or (run.multinode and run.no_ib_device):
        evidence = "NET/IB : No device found" if run.no_ib_device else "channels via NET/Socket"
        where = f" on {', '.join(sorted(run.socket_hosts)[:8])}" if run.socket_hosts else ""
        return failed(
            node, check, detail=f"NCCL fell back to TCP sockets{where} ({evidence})",
            diagnosis="NCCL cannot use InfiniBand: check ibstat (ports Active), that rdma-core/OFED and libibverbs are installed, "
            "and that NCCL_IB_HCA / NCCL_IB_DISABLE are not excluding the HCAs",
        )
    if run.no_ib_device and has_ib:
        return failed(
            node, check, detail="NET/IB : No device found",
            diagnosis="NCCL sees no InfiniBand device on a node whose profile has HCAs: check ibstat, OFED/rdma-core and the ib_uverbs module",
        )
    if not run.debug_info:
        return skip(node, check, "no NCCL_DEBUG=INFO lines in the output: rerun with NCCL_DEBUG=INFO to check the transport")
    if run.multinode:
        if not net:
            return skip(node, check, "no inter-node channel lines in the NCCL_DEBUG=INFO output")
        if not any("GDRDMA" in c for c in net):
            verdict = failed if has_ib is not False else warned
            return verdict(
                node, check, detail=f"inter-node channels via {sorted(set(net))[0]} without GDRDMA",
                diagnosis="GPUDirect RDMA is off: load nvidia_peermem (modprobe nvidia_peermem; needs MLNX/DOCA OFED) or enable DMA-BUF, then rerun",
            )
        return passed(node, check, detail=f"inter-node channels via {', '.join(sorted(set(net)))}")
    intra = [c for c in run.channels if not c.startswith("NET/")]
    nvswitch = profile is not None and profile.gpu is not None and profile.gpu.nvswitch
    if nvswitch and intra and all(c.startswith("SHM") for c in intra):
        return failed(
            node, check, detail="GPU-to-GPU channels via SHM, not P2P",
            diagnosis="P2P is disabled between GPUs on an NVLink board: check NVLink (nvidia-smi nvlink -s), fabric manager, "
            "NCCL_P2P_DISABLE, and PCIe ACS on bare metal",
        )
    shown = ", ".join(sorted(set(intra))) if intra else "no channel lines"
    return passed(node, check, detail=f"intra-node transport: {shown}")
