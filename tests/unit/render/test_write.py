"""Writing the build directory: all or nothing, nothing when the manifest is invalid, nothing
when nothing changed, and one clear line (exit 2, no traceback) for a place that cannot hold it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podsys.cluster.address_file import allocation_path
from podsys.cluster.load import load_cluster
from podsys.render import build
from podsys.render.build import INDEX_FILE, render_cluster
from tests.unit.manifest_samples import VALID, write_manifest
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "podsys.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def test_invalid_manifest_writes_nothing(tmp_path):
    path = write_manifest(tmp_path, VALID + "provisioning: {root_password_hash: '12345'}\n")
    res = cli("render", str(path), "--output", str(tmp_path / "build"), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "12345" not in res.stderr + res.stdout
    assert not (tmp_path / "build").exists()
    assert not allocation_path(path).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failure_mid_write_leaves_the_previous_build_whole(tmp_path, monkeypatch):
    path = write_manifest(tmp_path)
    out = tmp_path / "build"
    render_cluster(load_cluster(path), out)
    (out / "logs").mkdir()
    (out / "logs" / "deploy.log").write_text("kept\n")
    before = {rel: (out / rel).read_bytes() for rel in snapshot(out)}

    write_manifest(tmp_path, VALID.replace("default: true}", "default: true, max_time: '1:00:00'}"))
    calls = {"n": 0}
    real_write = build._write

    def failing_write(target, content, mode):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device", str(target))
        real_write(target, content, mode)

    monkeypatch.setattr(build, "_write", failing_write)
    with pytest.raises(build.PodsysError, match="No space left on device"):
        render_cluster(load_cluster(path), out)
    assert {rel: (out / rel).read_bytes() for rel in snapshot(out)} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".build")] == []  # staging removed


def test_a_changed_render_swaps_in_a_whole_tree_and_keeps_what_render_does_not_own(tmp_path):
    path = write_manifest(tmp_path)
    out = tmp_path / "build"
    render_cluster(load_cluster(path), out)
    (out / "secrets").mkdir(mode=0o700)
    (out / "secrets" / "munge.key").write_bytes(b"\x01key")
    os.chmod(out / "secrets" / "munge.key", 0o600)
    first = snapshot(out)
    write_manifest(tmp_path, VALID.replace("default: true}", "default: true, max_time: '1:00:00'}"))
    result = render_cluster(load_cluster(path), out)
    assert result.changed == ["inventory/group_vars/all/main.yml"]
    second = snapshot(out)
    assert set(first) == set(second)
    # Unchanged files are the same files (hard links: same inode, same mtime), the changed one is new.
    assert all(second[rel] == first[rel] for rel in first if rel not in (INDEX_FILE, *result.changed))
    assert second["inventory/group_vars/all/main.yml"] != first["inventory/group_vars/all/main.yml"]
    assert (out / "secrets" / "munge.key").read_bytes() == b"\x01key"
    assert (out / "secrets").stat().st_mode & 0o777 == 0o700
    assert (out / "secrets" / "munge.key").stat().st_mode & 0o777 == 0o600


def test_warm_render_that_changes_nothing_writes_nothing(tmp_path):
    path = write_manifest(tmp_path)
    out = tmp_path / "build"
    render_cluster(load_cluster(path), out)
    before = snapshot(out)
    dir_inode = out.stat().st_ino
    result = render_cluster(load_cluster(path), out)
    assert not result.touched
    assert snapshot(out) == before  # index included
    assert out.stat().st_ino == dir_inode  # no swap either


def test_output_places_that_cannot_hold_a_build(tmp_path):
    path = write_manifest(tmp_path)
    (tmp_path / "a-file").write_text("x")
    cases = {
        "a-file": "is not a directory",
        "/dev/null": "is not a directory",
        "a-file/under": "a parent of the build directory",
        "/proc/podsys-build": "cannot write the build directory here",
    }
    for (output, message), flags in zip(cases.items(), ([], ["--check"], ["--diff"], [])):
        res = cli("render", str(path), "--output", output, *flags, cwd=tmp_path)
        assert res.returncode == 2, (output, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, (output, res.stderr)
    assert (tmp_path / "a-file").read_text() == "x"


def _in_read_only_mount(directory: Path, command: str) -> subprocess.CompletedProcess:
    """Run `command` with `directory` bind-mounted read-only in a private mount namespace (root
    ignores permission bits, a read-only mount stops it too)."""
    script = f"mount --bind {directory} {directory} && mount -o remount,ro,bind {directory} && {command}"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def _can_mount_read_only(tmp_path: Path) -> str | None:
    if not shutil.which("unshare"):
        return "unshare not installed"
    probe = tmp_path / "probe"
    probe.mkdir()
    res = _in_read_only_mount(probe, f"touch {probe}/x; test ! -e {probe}/x")
    return None if res.returncode == 0 else f"cannot make a read-only bind mount here: {res.stderr.strip()}"


def test_read_only_output_and_read_only_manifest_directory(tmp_path):
    reason = _can_mount_read_only(tmp_path)
    if reason:
        pytest.skip(reason)
    manifest_dir = tmp_path / "site"
    manifest_dir.mkdir()
    path = write_manifest(manifest_dir)
    ro = tmp_path / "ro"
    ro.mkdir()
    render = f"{sys.executable} -m podsys.cli.main render {path} --output"
    res = _in_read_only_mount(ro, f"{render} {ro}/build")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "Read-only file system" in res.stderr and "Traceback" not in res.stderr
    assert list(ro.iterdir()) == []
    # The manifest's directory is read-only: the address file cannot be written, so no build either.
    res = _in_read_only_mount(manifest_dir, f"{render} {tmp_path}/build2")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "addresses.yaml" in res.stderr and "cannot write the address file" in res.stderr
    assert not (tmp_path / "build2").exists()
    assert not allocation_path(path).exists()


def test_address_file_is_0644_and_holds_only_addresses(tmp_path):
    path = write_manifest(tmp_path, VALID + "provisioning: {root_password_hash: '$6$saltsalt$" + "a" * 86 + "'}\n")
    render_cluster(load_cluster(path), tmp_path / "build")
    addresses = allocation_path(path)
    assert addresses.stat().st_mode & 0o777 == 0o644
    assert "$6$" not in addresses.read_text() and "saltsalt" not in addresses.read_text()


def test_a_build_directory_behind_a_symlink_stays_behind_it(tmp_path):
    path = write_manifest(tmp_path)
    real = tmp_path / "elsewhere" / "build"
    real.mkdir(parents=True)
    link = tmp_path / "build"
    link.symlink_to(real)
    render_cluster(load_cluster(path), link)
    write_manifest(tmp_path, VALID.replace("default: true}", "default: true, max_time: '1:00:00'}"))
    render_cluster(load_cluster(path), link)
    assert link.is_symlink() and link.resolve() == real
    assert "max_time: '1:00:00'" in (real / "inventory/group_vars/all/main.yml").read_text()


def test_a_build_directory_that_is_a_mount_point_is_updated_in_place(tmp_path):
    reason = _can_mount_read_only(tmp_path)
    if reason:
        pytest.skip(reason)
    path = write_manifest(tmp_path)
    mount = tmp_path / "volume"
    mount.mkdir()
    changed = tmp_path / "changed.yaml"
    changed.write_text(VALID.replace("default: true}", "default: true, max_time: '1:00:00'}"))
    render = f"{sys.executable} -m podsys.cli.main render {path} --output {mount}"
    script = (f"mount -t tmpfs tmpfs {mount} && {render} && cp {changed} {path} && {render} && "
              f"grep -q \"max_time: '1:00:00'\" {mount}/inventory/group_vars/all/main.yml && "
              f"test -z \"$(ls -A {mount} | grep render-new)\" && stat -c %a {mount}/inventory/group_vars/all/secrets.yml")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == "600"
    assert "1 changed" in res.stdout
