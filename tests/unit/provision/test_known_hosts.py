"""podsys.provision.known_hosts: a reinstalled node's new host keys replace its old entries in
the admin's known_hosts, and nothing else in the file moves."""

from __future__ import annotations

import os
import stat

from podsys.provision.known_hosts import update_known_hosts, write_known_hosts
from tests.unit.provision.host_key_samples import ECDSA, ED25519, host_key

NAMES = ["gpu001", "gpu001.cluster.local", "10.10.1.1"]
OLD = host_key("ssh-ed25519", seed=99)
OTHER = host_key("ssh-ed25519", seed=7)
HASHED = "|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= " + OTHER

BEFORE = (
    "# the admin's own comment\n"
    f"gpu001,10.10.1.1 {OLD}\n"
    f"mu01,10.10.0.1 {OTHER}\n"
    f"[gpu001.cluster.local]:2222 {OLD}\n"
    f"gpu0011,10.10.1.11 {OTHER}\n"
    f"{HASHED}\n"
    f"@revoked 10.10.1.1 {OLD}\n"
    f"GPU001 {OLD}\n"  # OpenSSH compares host names without case
)


def test_old_entries_are_replaced_and_the_rest_kept_in_order():
    after = update_known_hosts(BEFORE, NAMES, [ED25519, ECDSA])
    assert after == (
        "# the admin's own comment\n"
        f"mu01,10.10.0.1 {OTHER}\n"
        f"gpu0011,10.10.1.11 {OTHER}\n"  # a prefix of the name is another host
        f"{HASHED}\n"
        f"@revoked 10.10.1.1 {OLD}\n"  # a revoked key stays revoked
        f"gpu001,gpu001.cluster.local,10.10.1.1 {ED25519}\n"
        f"gpu001,gpu001.cluster.local,10.10.1.1 {ECDSA}\n"
    )


def test_update_is_idempotent_and_drops_comments_of_reported_keys():
    once = update_known_hosts("", NAMES, [f"{ED25519} root@ramdisk"])
    assert once == f"gpu001,gpu001.cluster.local,10.10.1.1 {ED25519}\n"
    assert update_known_hosts(once, NAMES, [ED25519]) == once


def test_a_file_without_a_final_newline_gets_one_before_the_new_lines():
    assert update_known_hosts(f"mu01 {OTHER}", NAMES, [ED25519]).splitlines() == [
        f"mu01 {OTHER}", f"gpu001,gpu001.cluster.local,10.10.1.1 {ED25519}"]


def test_a_non_standard_port_is_written_the_way_ssh_looks_it_up():
    assert update_known_hosts("", ["gpu001", "10.10.1.1"], [ED25519], port=2222) == (
        f"[gpu001]:2222,[10.10.1.1]:2222 {ED25519}\n")


def test_write_replaces_the_file_atomically_and_keeps_its_mode(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(BEFORE)
    path.chmod(0o600)
    inode = path.stat().st_ino
    assert write_known_hosts(path, NAMES, [ED25519]) is True
    assert path.read_text() == update_known_hosts(BEFORE, NAMES, [ED25519])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # a rename, not a rewrite in place
    assert os.listdir(tmp_path) == ["known_hosts"]  # no temporary file left behind


def test_write_leaves_an_unchanged_file_alone(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"gpu001,gpu001.cluster.local,10.10.1.1 {ED25519}\n")
    inode = path.stat().st_ino
    assert write_known_hosts(path, NAMES, [ED25519]) is False
    assert path.stat().st_ino == inode


def test_write_through_a_symlink_replaces_its_target(tmp_path):
    target = tmp_path / "real_known_hosts"
    target.write_text("")
    link = tmp_path / "known_hosts"
    link.symlink_to(target)
    write_known_hosts(link, NAMES, [ED25519])
    assert link.is_symlink() and ED25519 in target.read_text()


def test_a_line_shared_with_other_hosts_keeps_them_with_the_old_key():
    # The admin's line names the node and a service alias on it: the alias keeps its key, the
    # node's names move to the new one.
    before = f"gpu001,jupyter.example.org,10.10.1.1 {OLD}\n[gpu001]:2222,[web]:2222\t{OLD}\n"
    after = update_known_hosts(before, NAMES, [ED25519])
    assert after == (
        f"jupyter.example.org {OLD}\n"
        f"[web]:2222 {OLD}\n"
        f"gpu001,gpu001.cluster.local,10.10.1.1 {ED25519}\n"
    )
    assert update_known_hosts(after, NAMES, [ED25519]) == after
