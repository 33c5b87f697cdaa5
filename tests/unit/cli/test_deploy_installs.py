"""`podsys deploy`'s install options and `podsys reinstall` away from the head, as a user runs
them: bad input is one line and exit 2, before anything is rendered or contacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from podsys.layout import HEAD_PATHS
from tests.conftest import podsys
from tests.unit.manifest_samples import VALID, line_of, write_manifest


def test_batch_with_tags_is_refused_in_one_line(tmp_path):
    path = write_manifest(tmp_path)
    res = podsys("deploy", path, "--batch", "2", "--tags", "slurm", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == ("error: command line: --batch: a rolling re-image runs the whole deploy: "
                                  "not with --tags or --check")
    assert not (tmp_path / ".podsys" / "build").exists()  # refused before rendering


def test_bad_status_url_is_refused_naming_the_option(tmp_path):
    path = write_manifest(tmp_path)
    res = podsys("deploy", path, "--status-url", "10.10.0.1:8081", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--status-url" in res.stderr and "http://10.0.0.1:8081" in res.stderr


def test_install_timeout_and_batch_ranges(tmp_path):
    path = write_manifest(tmp_path)
    for args in (("--install-timeout", "0"), ("--batch", "0"), ("--install-timeout", "soon")):
        res = podsys("deploy", path, *args, cwd=tmp_path)
        assert res.returncode == 2, args
        assert args[0] in res.stderr and "Traceback" not in res.stderr


def test_bmc_cipher_suite_out_of_range_names_file_line_field(tmp_path):
    text = VALID + "bmc: {username: admin, password_file: bmc.pw, cipher_suite: 42}\n"
    path = write_manifest(tmp_path, text)
    res = podsys("validate", path)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: {path}:{line_of(text, 'cipher_suite')}: bmc.cipher_suite:")


def test_reinstall_away_from_the_head_goes_through_the_head_and_says_when_it_cannot(tmp_path):
    # No /var/lib/podsys/provision here: the switch is the head's, over SSH, which answers nobody here.
    if Path(HEAD_PATHS.state_dir).is_dir():
        pytest.skip(f"this machine has {HEAD_PATHS.state_dir}: it is a head, where reinstall switches locally")
    path = write_manifest(tmp_path, VALID.replace("head: {hostname: mu01, interface: eno1, address: 10.10.0.1}",
                                                  "head: {hostname: mu01, interface: eno1, address: 10.10.0.1, "
                                                  "ssh_address: 127.0.0.1}")
                          + "access: {port: 9}\n")
    res = podsys("reinstall", "gpu001", "-m", path, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: cannot reach the head mu01 over SSH")
