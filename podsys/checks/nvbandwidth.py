"""nvbandwidth output: host<->device copy and GPU<->GPU (P2P) bandwidth matrices.

Each testcase prints "Running <name>.", a title with the unit, a matrix (row/column device
indices, N/A on the diagonal) and "SUM <name> <value>". Judged per testcase by its worst cell."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, judge_metric, skip
from podsys.cluster.hardware import HardwareProfile

# testcase -> (profile threshold key, what it measures)
TESTCASE_KEYS = {
    "host_to_device_memcpy_ce": ("h2d_bw", "host to device"),
    "device_to_host_memcpy_ce": ("d2h_bw", "device to host"),
    "host_to_device_memcpy_sm": ("h2d_bw", "host to device (SM copy)"),
    "device_to_host_memcpy_sm": ("d2h_bw", "device to host (SM copy)"),
    "device_to_device_memcpy_write_ce": ("p2p_bw", "GPU to GPU write"),
    "device_to_device_memcpy_read_ce": ("p2p_bw", "GPU to GPU read"),
}
_CUDA_802 = re.compile(r"system not yet initialized|error 802|cudaErrorSystemNotReady", re.I)
# what nvbandwidth prints when a testcase dies: its CU_ASSERT/ASSERT macros ("[CUDA_ERROR_X] ... in expression ...",
# "ASSERT in expression ..."), the pattern check ("Invalid value when checking the pattern"), the C++ runtime
# ("terminate called ...") and the shell ("Aborted (core dumped)"); seen in NVIDIA/nvbandwidth#15, #19, #34, #47
_ABORT = re.compile(r"ASSERT|\[CUDA_ERROR_\w+\]|Invalid value when checking|terminate called|what\(\):|Aborted|Segmentation fault|\berror\b", re.I)


@dataclass(frozen=True)
class BandwidthMatrix:
    testcase: str
    title: str
    cells: dict[tuple[int, int], float]  # (row, column) -> GB/s; N/A cells left out
    total: float | None

    def worst(self) -> tuple[tuple[int, int], float] | None:
        return min(self.cells.items(), key=lambda kv: kv[1]) if self.cells else None


@dataclass
class NvbandwidthRun:
    matrices: list[BandwidthMatrix]
    cuda_not_ready: bool = False
    error: str | None = None
    aborted: dict[str, str] = field(default_factory=dict)  # testcase -> the error it died with
    waived: list[str] = field(default_factory=list)  # testcases nvbandwidth skipped ("Waiving X.": no P2P mapping)


def parse_nvbandwidth(text: str) -> NvbandwidthRun:
    matrices: list[BandwidthMatrix] = []
    lines = text.splitlines()
    run = NvbandwidthRun(matrices=matrices)
    i = 0
    testcase = None
    errors: list[str] = []  # lines after "Running X." that say why X died

    def close_aborted() -> None:
        if testcase is not None:
            run.aborted[testcase] = "; ".join(errors[:2]) or "output ends before the testcase's result"

    while i < len(lines):
        line = lines[i].strip()
        if _CUDA_802.search(line):
            run.cuda_not_ready = True
            run.error = run.error or line
        m = re.match(r"^Running (\w+)\.", line)
        if m:
            close_aborted()
            testcase, errors = m.group(1), []
            i += 1
            continue
        waived = re.match(r"^Waiving (\w+)\.", line)
        if waived:
            run.waived.append(waived.group(1))
        if testcase and _ABORT.search(line):
            errors.append(line[:200])
        if testcase and "bandwidth (GB/s)" in line:
            title = line
            columns: list[int] = []
            cells: dict[tuple[int, int], float] = {}
            i += 1
            while i < len(lines) and lines[i].strip():
                tokens = lines[i].split()
                if not columns:
                    columns = [int(t) for t in tokens if t.isdigit()]
                elif tokens[0].isdigit():
                    row = int(tokens[0])
                    for column, value in zip(columns, tokens[1:]):
                        if re.fullmatch(r"\d+(?:\.\d+)?", value):
                            cells[(row, column)] = float(value)
                i += 1
            total = None
            while i < len(lines) and not lines[i].strip():
                i += 1
            if i < len(lines) and (s := re.match(rf"^SUM {testcase}\s+([\d.]+)", lines[i].strip())):
                total = float(s.group(1))
                i += 1
            matrices.append(BandwidthMatrix(testcase=testcase, title=title, cells=cells, total=total))
            testcase = None
            continue
        i += 1
    close_aborted()
    if not matrices and not run.cuda_not_ready and not run.aborted and not run.waived:
        raise ValueError("no 'Running <testcase>.' bandwidth matrix found: not nvbandwidth output")
    return run


def per_gpu(matrix: BandwidthMatrix) -> tuple[tuple[float, float], ...]:
    """(GPU index, GB/s) for the report's per-GPU bars: a host<->device matrix has one row (the
    CPU), each column a GPU; a GPU<->GPU matrix gives each GPU its slowest peer."""
    by_gpu: dict[int, float] = {}
    host = "CPU(row)" in matrix.title
    for (row, column), value in matrix.cells.items():
        gpu = column if host else row
        by_gpu[gpu] = min(value, by_gpu.get(gpu, value))
    return tuple((float(gpu), value) for gpu, value in sorted(by_gpu.items()))


def judge_nvbandwidth(run: NvbandwidthRun, node: str, profile: HardwareProfile | None) -> list[Finding]:
    if profile is not None and profile.gpu is None:
        return [skip(node, "bandwidth.nvbandwidth", CPU_ONLY_REASON)]
    if run.cuda_not_ready:
        return [failed(
            node, "bandwidth.nvbandwidth", detail=run.error or "CUDA error 802",
            diagnosis="CUDA cannot initialise (error 802, system not yet initialized): fabric manager is not running on this "
            "NVSwitch board; systemctl enable --now nvidia-fabricmanager",
        )]
    out: list[Finding] = []
    for testcase, error in run.aborted.items():
        out.append(failed(
            node, f"bandwidth.{testcase}", detail=f"aborted: {error}",
            diagnosis="nvbandwidth died in this testcase: a pattern-check failure means copies returned wrong data (suspect GPU "
            "memory or NVLink: run dcgmi diag -r 3, check Xid/ECC); a CUDA error points at the driver, fabric manager or P2P setup",
        ))
    for testcase in run.waived:
        out.append(skip(node, f"bandwidth.{testcase}", "waived by nvbandwidth: peer-to-peer mapping not supported between these GPUs"))
    for matrix in run.matrices:
        key, what = TESTCASE_KEYS.get(matrix.testcase, (None, matrix.testcase))
        check = f"bandwidth.{matrix.testcase}"
        worst = matrix.worst()
        if key is None or worst is None:
            out.append(skip(node, check, f"no threshold for nvbandwidth testcase {matrix.testcase}"))
            continue
        (row, column), value = worst
        where = f"GPU {column}" if "CPU(row)" in matrix.title else f"GPU {row} -> GPU {column}"
        diagnosis = (
            "P2P bandwidth far below NVLink: P2P is probably off (PCIe ACS on bare metal, NVLink down, fabric manager); "
            "check nvidia-smi topo -m and nvlink -s"
            if key == "p2p_bw"
            else "host<->device copy slow: check the GPU's PCIe link (nvidia-smi -q -d PCIE: gen/width), NUMA placement and IOMMU settings"
        )
        out.append(judge_metric(node, check, value, profile, key, diagnosis=diagnosis,
                                detail=f"{what}, worst {where} of {len(matrix.cells)} measurements", series=per_gpu(matrix)))
    return out
