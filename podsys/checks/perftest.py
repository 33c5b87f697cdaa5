"""perftest bandwidth output (ib_write_bw, ib_read_bw, ib_send_bw), client or server side.

Units as printed: `MB/sec` (old builds), `MiB/sec` (new builds; both are 2^20 bytes, the old
label was simply wrong) and `Gb/sec` with --report_gbits. Everything is converted to Gb/s,
the unit the profile's `ib_write_bw` threshold uses."""

from __future__ import annotations

import re
from dataclasses import dataclass

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, judge_metric, skip
from podsys.cluster.hardware import HardwareProfile

_HEADER = re.compile(r"#bytes\s+#iterations\s+BW peak\[([^\]]+)\]\s+BW average\[([^\]]+)\]")
_TEST = re.compile(r"^\s*(RDMA_Write|RDMA_Read|Send)\b(.*?)\s*(?:BW )?Test\s*$")
_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z .*]*?)\s*:\s*(\S.*?)\s*$")
_MR_FAIL = re.compile(r"Couldn't allocate MR|Failed to register MR|ibv_reg_mr failed|Couldn't register MR", re.I)
_CUDA_USED = re.compile(r"Picking device No\.|using CUDA|cuMemAlloc|initializing CUDA", re.I)

TO_GBITS = {"Gb/sec": 1.0, "MB/sec": 8 * 2**20 / 1e9, "MiB/sec": 8 * 2**20 / 1e9}


@dataclass(frozen=True)
class PerftestRow:
    size: int
    iterations: int
    bw_peak: float
    bw_average: float
    msg_rate_mpps: float | None


@dataclass
class PerftestRun:
    test: str  # "RDMA_Write BW Test", ...
    unit: str  # as printed
    rows: list[PerftestRow]
    device: str | None = None
    link_type: str | None = None
    bidirectional: bool = False
    gpudirect: bool = False
    mr_failure: bool = False

    def gbits(self, value: float) -> float:
        return value * TO_GBITS[self.unit]

    @property
    def largest(self) -> PerftestRow | None:
        return max(self.rows, key=lambda r: r.size) if self.rows else None


def parse_perftest(text: str) -> PerftestRun:
    unit: str | None = None
    test = ""
    rows: list[PerftestRow] = []
    fields: dict[str, str] = {}
    bidirectional = False
    gpudirect = bool(_CUDA_USED.search(text))
    mr_failure = bool(_MR_FAIL.search(text))
    for line in text.splitlines():
        header = _HEADER.search(line)
        if header:
            unit = header.group(2).strip()
            if unit not in TO_GBITS:
                raise ValueError(f"unknown perftest bandwidth unit {unit!r}")
            continue
        name = _TEST.match(line)
        if name and not test:
            test = line.strip()
            bidirectional = "Bidirectional" in line
            continue
        for part in re.split(r"\t+|\s{3,}(?=[A-Z])", line):
            m = _FIELD.match(part)
            if m and m.group(1) in ("Device", "Link type", "Transport type", "Connection type"):
                fields[m.group(1)] = m.group(2)
        if unit is not None:
            tokens = line.split()
            if len(tokens) >= 4 and tokens[0].isdigit() and tokens[1].isdigit():
                try:
                    rows.append(PerftestRow(
                        size=int(tokens[0]), iterations=int(tokens[1]), bw_peak=float(tokens[2]),
                        bw_average=float(tokens[3]), msg_rate_mpps=float(tokens[4]) if len(tokens) > 4 else None,
                    ))
                except ValueError:
                    pass
    if unit is None:
        if mr_failure:
            return PerftestRun(test=test, unit="Gb/sec", rows=[], device=fields.get("Device"), mr_failure=True, gpudirect=gpudirect)
        raise ValueError("no perftest result header found (expected '#bytes #iterations BW peak[...] BW average[...]')")
    if not rows and not mr_failure:
        raise ValueError("perftest header found but no result rows")
    return PerftestRun(
        test=test, unit=unit, rows=rows, device=fields.get("Device"), link_type=fields.get("Link type"),
        bidirectional=bidirectional, gpudirect=gpudirect, mr_failure=mr_failure,
    )


def judge_perftest(run: PerftestRun, pair: str, profile: HardwareProfile | None) -> list[Finding]:
    check = "infiniband.ib_write_bw"
    if profile is not None and profile.hca is None:
        return [skip(pair, check, CPU_ONLY_REASON if profile.gpu is None else "profile has no HCA")]
    if run.mr_failure:
        return [failed(
            pair, check, detail="memory registration failed" + (" for a GPU buffer (GPUDirect)" if run.gpudirect else ""),
            diagnosis="GPUDirect RDMA cannot register GPU memory: load nvidia_peermem (needs MLNX/DOCA OFED) or use DMA-BUF; "
            "check ulimit -l (memlock unlimited)",
        )]
    largest = run.largest
    assert largest is not None
    value = run.gbits(largest.bw_average)
    mode = "GPUDirect, " if run.gpudirect else ""
    detail = (
        f"{mode}{run.device or 'device ?'}, {largest.size} B messages, BW average {largest.bw_average:g} {run.unit}"
        + (", bidirectional (threshold doubled)" if run.bidirectional else "")
    )
    return [judge_metric(
        pair, check, value, profile, "ib_write_bw", scale=2.0 if run.bidirectional else 1.0,
        diagnosis="RDMA bandwidth low: check both ports are Active at full rate (ibstat), the NIC's PCIe link "
        "(dmesg 'limited by'), cable/transceiver errors (perfquery), and pin the test to the NIC's NUMA node",
        detail=detail,
    )]
