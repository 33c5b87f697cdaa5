"""Shared by the checks tests: fixtures and profiles."""

from __future__ import annotations

from pathlib import Path

from podsys.cluster.hardware import builtin_profiles

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checks"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def profile(profile_id: str):
    return builtin_profiles()[profile_id]


def by_check(findings, check):
    return [f for f in findings if f.check == check]


def one(findings, check):
    hits = by_check(findings, check)
    assert len(hits) == 1, f"expected one {check} finding, got {hits}"
    return hits[0]
