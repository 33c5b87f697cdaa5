"""The notebooks layer's wheel set downloaded for real by the bundle's code (pip download from the
package index pip is configured with, PyPI by default): batchspawner only, one small
pure-Python wheel (--no-deps); MLflow's ~200 MB sets are left to the unit tests' local index."""

from __future__ import annotations

import zipfile

import pytest

from podsys.bundle.addon_wheels import build_wheel_sets, missing_wheels, wheel_sets
from podsys.errors import PodsysError

pytestmark = pytest.mark.integration


def test_batchspawner_really_downloads_for_debian_12(tmp_path):
    """The notebooks set from the real package index (pip's configured index, PyPI by default):
    small (one pure-Python wheel, --no-deps)."""
    from podsys.bundle.apt import target_for

    target = target_for("debian-12")
    (batchspawner,) = wheel_sets(["notebooks"])
    try:
        (result,) = build_wheel_sets([batchspawner], tmp_path, tmp_path / ".work", target.python, target.glibc)
    except PodsysError as exc:  # no index reachable is a SKIP with the reason, not a failure
        if "pip download" in str(exc) and ("connection" in str(exc).lower() or "resolve" in str(exc).lower()):
            pytest.skip(f"no package index reachable: {exc}")
        raise
    assert result.downloaded and result.files == 1
    assert missing_wheels(tmp_path / "wheels/addons/batchspawner", batchspawner.requirements) == []
    assert zipfile.is_zipfile(tmp_path / "wheels/addons/batchspawner/batchspawner-1.3.0-py3-none-any.whl")
