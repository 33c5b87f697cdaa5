"""`dcgmi diag -r N` table output (DCGM 3.x: one row per test; DCGM 4.x: per-GPU sub-rows)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from podsys.checks.findings import CPU_ONLY_REASON, Finding, failed, passed, skip, warned
from podsys.cluster.hardware import HardwareProfile

_ROW = re.compile(r"^\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$")
_RESULTS = {"pass": "Pass", "fail": "Fail", "warn": "Warn", "skip": "Skip"}
_CUDA_802 = re.compile(r"system not yet initialized|error 802|cudaErrorSystemNotReady", re.I)


@dataclass
class DiagTest:
    name: str
    section: str
    result: str  # Pass | Fail | Warn | Skip | other text
    messages: list[str] = field(default_factory=list)

    @property
    def squeezed(self) -> str:
        """The messages with all whitespace removed: DCGM 3.x wraps them at the column edge,
        mid-word ("'system not yet i" / "nitialized'"), so a phrase is only findable this way."""
        return re.sub(r"\s+", "", "".join(self.messages))


@dataclass
class DiagRun:
    tests: list[DiagTest]
    metadata: dict[str, str]
    error: str | None = None


def parse_dcgmi_diag(text: str) -> DiagRun:
    tests: list[DiagTest] = []
    metadata: dict[str, str] = {}
    section = ""
    current: DiagTest | None = None
    error = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Error:") or _CUDA_802.search(stripped):
            error = error or stripped
        sec = re.match(r"^[|+]-+\s+([A-Za-z][\w ]*?)\s+-+\+", stripped)
        if sec:
            section = sec.group(1)
            current = None
            continue
        m = _ROW.match(stripped)
        if not m:
            continue
        name, value = m.groups()
        if name in ("Diagnostic",) or (name and set(name) <= {"=", "-"}):
            continue
        if section == "Metadata" and name:
            metadata[name] = value
            continue
        if name in ("Warning", "Info") or name.startswith("Warning:"):
            # DCGM 3.x prints a test's messages as their own rows under it
            if current is not None and value:
                current.messages.append(f"{name}: {value}" if not name.startswith("Warning:") else f"{name} {value}")
            continue
        if name:
            result = _RESULTS.get(value.split()[0].lower(), value) if value else value
            current = DiagTest(name=name, section=section, result=result)
            tests.append(current)
        elif current is not None and value:
            # continuation: "GPU0: Fail", "Warning: GPU 0 ...", or a wrapped message
            per_gpu = re.match(r"^GPU(\d+):\s*(\w+)", value)
            if per_gpu and per_gpu.group(2).lower() == "fail":
                current.result = "Fail"
            elif value.lower().startswith("fail - gpu"):  # DCGM 3.x: "Pass - GPU: 1" then "Fail - GPU: 0"
                current.result = "Fail"
            current.messages.append(value)
    if not tests and error is None:
        raise ValueError("no diagnostic table rows found: not `dcgmi diag` output")
    return DiagRun(tests=tests, metadata=metadata, error=error)


def judge_dcgmi_diag(run: DiagRun, node: str, profile: HardwareProfile | None) -> list[Finding]:
    check = "gpu.dcgm_diag"
    if profile is not None and profile.gpu is None:
        return [skip(node, check, CPU_ONLY_REASON)]
    if run.error and not run.tests:
        fm = bool(_CUDA_802.search(run.error))
        return [failed(
            node, check, detail=run.error[:160],
            diagnosis="fabric manager not running (CUDA error 802): systemctl enable --now nvidia-fabricmanager" if fm
            else "dcgmi diag could not run: check nv-hostengine (systemctl status nvidia-dcgm) and that no job holds the GPUs",
        )]
    failures = [t for t in run.tests if t.result == "Fail"]
    warnings = [t for t in run.tests if t.result == "Warn"]
    ran = [t for t in run.tests if t.result != "Skip"]
    not_ready = [t for t in failures if "systemnotyetinitialized" in t.squeezed.lower() or _CUDA_802.search(" ".join(t.messages))]
    if not_ready:
        return [failed(
            node, check, value=len(failures),
            detail=f"{', '.join(t.name for t in not_ready)}: CUDA 'system not yet initialized' (error 802)",
            diagnosis="fabric manager is not running: the GPUs never finished registering with the NVLink fabric, so CUDA cannot start; "
            "systemctl enable --now nvidia-fabricmanager (its version must equal the driver's), then rerun dcgmi diag",
        )]
    if failures:
        detail = "; ".join(
            f"{t.name}: " + (next((m for m in t.messages if not re.match(r'^GPU\d+:', m)), "") or "Fail") for t in failures
        )
        return [failed(
            node, check, value=len(failures), detail=detail[:300],
            diagnosis="DCGM diagnostic failed: act on the test's message (memory/ECC -> RMA after a reset retest; PCIe -> reseat, check "
            "link width; Deployment -> fix the software stack), then rerun dcgmi diag -r 3",
        )]
    if warnings:
        return [warned(
            node, check, value=len(warnings), detail="; ".join(f"{t.name}: {' '.join(t.messages)[:80] or 'Warn'}" for t in warnings),
            diagnosis="DCGM diagnostic warnings: read each message (often persistence mode off or a clock/power setting)",
        )]
    version = run.metadata.get("DCGM Version")
    return [passed(node, check, value=len(ran), detail=f"{len(ran)} tests passed" + (f" (DCGM {version})" if version else ""))]
