"""Shared by the checks tests: fixtures and profiles."""

from __future__ import annotations

from podsys.cluster.hardware import builtin_profiles
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "checks"


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
