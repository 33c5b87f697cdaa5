"""What every check yields: one Finding per node (or node pair, or cluster) and check.

A Finding carries the measured value next to the threshold and the physical limit that
threshold derives from, so a reader can see how far from healthy a node is, not just a verdict.
Thresholds come only from the hardware profile's `acceptance` entries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Iterable, TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the node-side health runner has no pydantic
    from podsys.cluster.hardware import HardwareProfile, Threshold


AREAS = ("versions", "gpu", "bandwidth", "infiniband", "nccl", "slurm", "monitoring", "network")

CPU_ONLY_REASON = "cpu-only profile"


class Verdict(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"

    @property
    def rank(self) -> int:
        """Sort key: failures first."""
        return {"FAIL": 0, "WARN": 1, "SKIP": 2, "PASS": 3}[self.value]


@dataclass(frozen=True)
class Finding:
    node: str  # node name, "a->b" for a pair, or "cluster" for a cluster-wide check
    check: str  # dotted name, area first: "nccl.all_reduce", "gpu.count"
    area: str
    verdict: Verdict
    value: float | str | None = None
    unit: str = ""
    threshold: float | None = None  # FAIL below this (from the profile)
    limit: float | None = None  # the physical limit the threshold derives from
    source: str = ""  # where the threshold comes from
    detail: str = ""  # what was seen; for SKIP, why
    diagnosis: str = ""  # FAIL/WARN: likely cause and fix, one line
    series: tuple[tuple[float, float], ...] = field(default=(), compare=False)  # plot data (x, y)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["series"] = [list(point) for point in self.series]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Finding":
        data = dict(data)
        data["verdict"] = Verdict(data["verdict"])
        data["series"] = tuple(tuple(p) for p in data.get("series") or ())
        return cls(**data)


def finding(node: str, check: str, verdict: Verdict, **kwargs) -> Finding:
    return Finding(node=node, check=check, area=check.split(".", 1)[0], verdict=verdict, **kwargs)


def skip(node: str, check: str, reason: str) -> Finding:
    return finding(node, check, Verdict.SKIP, detail=reason)


def passed(node: str, check: str, detail: str = "", **kwargs) -> Finding:
    return finding(node, check, Verdict.PASS, detail=detail, **kwargs)


def failed(node: str, check: str, detail: str, diagnosis: str, **kwargs) -> Finding:
    return finding(node, check, Verdict.FAIL, detail=detail, diagnosis=diagnosis, **kwargs)


def warned(node: str, check: str, detail: str, diagnosis: str, **kwargs) -> Finding:
    return finding(node, check, Verdict.WARN, detail=detail, diagnosis=diagnosis, **kwargs)


def profile_threshold(profile: HardwareProfile | None, key: str) -> tuple[Threshold | None, str]:
    """The profile's acceptance entry for `key`, or None and the reason there is none."""
    if profile is None:
        return None, f"no hardware profile to judge against (give --profile) for {key}"
    if profile.gpu is None and profile.hca is None:
        return None, CPU_ONLY_REASON
    threshold = profile.acceptance.get(key)
    if threshold is None:
        return None, f"profile {profile.id} has no acceptance threshold '{key}'"
    return threshold, ""


def judge_metric(
    node: str,
    check: str,
    value: float,
    profile: HardwareProfile | None,
    key: str,
    *,
    diagnosis: str,
    detail: str = "",
    scale: float = 1.0,
    series: Iterable[tuple[float, float]] = (),
) -> Finding:
    """value vs the profile's threshold `key`: FAIL below fail_below, WARN below warn_below.
    `scale` multiplies the threshold (e.g. 2 for a bidirectional measurement)."""
    threshold, reason = profile_threshold(profile, key)
    series = tuple(series)
    if threshold is None:
        return finding(node, check, Verdict.SKIP, value=round(value, 3), detail=f"{detail}; {reason}".lstrip("; "), series=series)
    fail_below = round(threshold.fail_below * scale, 3)
    warn_below = None if threshold.warn_below is None else round(threshold.warn_below * scale, 3)
    common = dict(
        value=round(value, 3),
        unit=threshold.unit,
        threshold=fail_below,
        limit=round(threshold.limit * scale, 3),
        source=threshold.source,
        series=series,
    )
    measured = f"{value:.1f} {threshold.unit}"
    if value < fail_below:
        return finding(
            node, check, Verdict.FAIL,
            detail=f"{measured} < {fail_below:g} {threshold.unit} (limit {threshold.limit * scale:g}){'; ' + detail if detail else ''}",
            diagnosis=diagnosis, **common,
        )
    if warn_below is not None and value < warn_below:
        return finding(
            node, check, Verdict.WARN,
            detail=f"{measured} < {warn_below:g} {threshold.unit} (warn level){'; ' + detail if detail else ''}",
            diagnosis=diagnosis, **common,
        )
    return finding(node, check, Verdict.PASS, detail=f"{measured} >= {fail_below:g}{'; ' + detail if detail else ''}", **common)


def worst(findings: Iterable[Finding]) -> Verdict:
    """The verdict that sums up several findings: FAIL over WARN over PASS; SKIP only when
    nothing at all was judged (a skipped GPU check does not hide a passed OS check)."""
    judged = [f.verdict for f in findings if f.verdict is not Verdict.SKIP]
    if not judged:
        return Verdict.SKIP
    return min(judged, key=lambda v: v.rank)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.verdict.rank, f.area, f.check, f.node))
