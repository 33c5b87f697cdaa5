"""`podsys images import` from a registry: enroot's URI, the image's site name, and the
head-side script (run here for real with bash: without enroot it stops with the reason and
leaves nothing behind)."""

from __future__ import annotations

import os
import subprocess

import pytest

from podsys.addons.training_images import (ENROOT_MISSING, is_registry_uri, registry_image_name,
                                           registry_import_command)
from podsys.errors import InputError


@pytest.mark.parametrize("uri, name", [
    ("docker://ubuntu:18.04", "ubuntu+18.04"),  # enroot doc/cmd/create.md: ubuntu+18.04.sqsh
    ("docker://nvidia/pytorch:24.01-py3", "nvidia+pytorch+24.01-py3"),
    ("docker://localhost:5000#tiny", "tiny"),
    ("docker://$oauthtoken@nvcr.io#nvidia/pytorch:24.01-py3", "nvidia+pytorch+24.01-py3"),
])
def test_a_registry_image_is_named_like_enroot_names_it(uri, name):
    assert is_registry_uri(uri)
    assert registry_image_name(uri, None) == name


def test_name_option_wins():
    assert registry_image_name("docker://ubuntu:22.04", "base") == "base"


@pytest.mark.parametrize("uri", ["docker://", "docker://Ubuntu", "docker://ubuntu:bad tag", "docker://a#b#c"])
def test_a_bad_uri_is_an_input_error_naming_the_argument(uri):
    with pytest.raises(InputError) as info:
        registry_image_name(uri, None)
    assert str(info.value).startswith("command line: SOURCE: ") and "docker://[USER@][REGISTRY#]IMAGE[:TAG]" in str(info.value)


def test_a_file_path_is_not_a_registry_uri():
    assert not is_registry_uri("images/tiny.sqsh")


def test_without_enroot_the_script_says_so_and_writes_nothing(tmp_path):
    script = registry_import_command(str(tmp_path), "docker://localhost:5000#tiny:1", "tiny+1")
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    assert subprocess.run(["sh", "-c", "command -v enroot"], env=env).returncode != 0, "this machine has enroot"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 3 and done.stderr.strip() == ENROOT_MISSING
    assert list(tmp_path.iterdir()) == []
