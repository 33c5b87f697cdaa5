"""One SSH access model: the Ansible inventory, `podsys check`'s connections and the installers'
authorized keys name the same files for the same manifest, `~` included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from podsys.checks.runner import AccessSettings
from podsys.cluster.access import SSHAccess, resolve_path
from podsys.cluster.load import load_cluster
from podsys.provision.render import root_authorized_keys
from podsys.render.build import render_files
from tests.unit.manifest_samples import VALID, write_manifest

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOvAk6VDc8ZRc5mIqH7t1WQ0YwzfbqBRb7M8kJcv9Ggz podsys@test"


def manifest_with_access(tmp_path: Path, access: str) -> Path:
    text = VALID.replace("head: {hostname: mu01, interface: eno1, address: 10.10.0.1}",
                         "head: {hostname: mu01, interface: eno1, address: 10.10.0.1, ssh_address: 192.0.2.10}")
    return write_manifest(tmp_path, text + f"access: {access}\n")


def inventory(cluster) -> dict:
    return yaml.safe_load(render_files(cluster)["inventory/hosts.yml"])["all"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_relative_paths_are_relative_to_the_manifest_and_absolute(tmp_path):
    (tmp_path / "site").mkdir()
    cluster = load_cluster(manifest_with_access(
        tmp_path / "site", "{private_key_file: keys/id_ed25519, known_hosts_file: ../known}"))
    access = cluster.access
    assert access.private_key_file == tmp_path / "site" / "keys" / "id_ed25519"
    assert access.known_hosts_file == tmp_path / "known"  # `..` resolved, not kept
    assert access.public_key_file == tmp_path / "site" / "keys" / "id_ed25519.pub"


def test_tilde_is_the_users_home_in_the_inventory_the_checks_and_the_installers(tmp_path, home):
    (home / ".ssh" / "id_ed25519.pub").write_text(PUBLIC_KEY + "\n")
    (home / ".ssh" / "id_ed25519").write_text("private\n")
    cluster = load_cluster(manifest_with_access(
        tmp_path, "{private_key_file: ~/.ssh/id_ed25519, known_hosts_file: ~/.ssh/known_hosts}"))
    key, known = home / ".ssh" / "id_ed25519", home / ".ssh" / "known_hosts"
    assert cluster.access.private_key_file == key and cluster.access.known_hosts_file == known

    common = inventory(cluster)["vars"]
    assert common["ansible_ssh_private_key_file"] == str(key)
    assert f"-o UserKnownHostsFile={known}" in common["ansible_ssh_common_args"]
    settings = AccessSettings.from_cluster(cluster)
    assert settings.access.private_key_file == key and settings.access.known_hosts_file == known
    # the installers authorize the public half of the very key podsys logs in with
    assert PUBLIC_KEY in root_authorized_keys(cluster)
    assert "~" not in yaml.safe_dump(inventory(cluster))


def test_via_head_jumps_through_the_heads_ssh_address_with_the_same_key(tmp_path):
    cluster = load_cluster(manifest_with_access(
        tmp_path, "{user: admin, port: 2222, via_head: true, private_key_file: id, known_hosts_file: kh}"))
    access = cluster.access
    assert access.jump_host("gpu001") == "192.0.2.10" and access.jump_host("mu01") is None
    inv = inventory(cluster)
    assert inv["children"]["head"]["hosts"]["mu01"]["ansible_host"] == access.head_address == "192.0.2.10"
    node_args = inv["children"]["nodes"]["vars"]["ansible_ssh_common_args"]
    assert (f'-o ProxyCommand="ssh -W %h:%p -p 2222 -i {tmp_path / "id"} -o UserKnownHostsFile={tmp_path / "kh"} '
            f'-o StrictHostKeyChecking=yes admin@192.0.2.10"') in node_args
    assert inv["vars"]["ansible_user"] == "admin" and inv["vars"]["ansible_port"] == 2222
    settings = AccessSettings.from_cluster(cluster)
    assert settings.access == access
    assert settings.addresses["mu01"] == "192.0.2.10" and settings.addresses["gpu001"] == "10.10.1.1"


def test_without_via_head_nodes_are_reached_directly_and_no_key_means_none(tmp_path):
    cluster = load_cluster(manifest_with_access(tmp_path, "{user: root}"))
    access = cluster.access
    assert access.jump_host("gpu001") is None and access.proxy_command().endswith("root@192.0.2.10")
    assert access.private_key_file is None and access.public_key_file is None and access.ssh_options() == []
    inv = inventory(cluster)
    assert "vars" not in inv["children"]["nodes"]
    assert "ansible_ssh_private_key_file" not in inv["vars"] and "ansible_ssh_common_args" not in inv["vars"]


def test_resolve_path_expands_tilde_before_joining(tmp_path, home):
    assert resolve_path("~/k", tmp_path / "m") == home / "k"
    assert resolve_path("/abs/k", tmp_path) == Path("/abs/k")
    assert resolve_path(None, tmp_path) is None
    assert SSHAccess("u", 22, None, None, "h", "10.0.0.1", True).jump_host("n") == "10.0.0.1"
