"""Secrets and the build: a manifest with every kind of secret podsys handles leaves none in a
file its group or others can read, and none on the terminal; installer configs are served to
their own node only; secret files that others can read are refused, as ssh refuses a key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from podsys.cluster.load import load_cluster
from podsys.render.build import SECRETS_FILE, VARS_FILE, render_files
from tests.unit.manifest_samples import VALID, write_manifest
from tests.conftest import REPO_ROOT, invoke

REPO = REPO_ROOT

HASH = "$6$rounds=5000$podsystestsalt$" + "Q" * 86
UPSTREAM_USER, UPSTREAM_PASSWORD = "mirroruser", "Upstream-Pw-4711"
PROXY_USER, PROXY_PASSWORD = "proxyuser", "Proxy-Pw-0815"
EPEL_PASSWORD = "Epel-Pw-1234"
BMC_PASSWORD = "Bmc-Pw-2342"
USER_HASH = "$6$aliceweb$" + "U" * 86
SECRETS = [HASH, "podsystestsalt", UPSTREAM_PASSWORD, PROXY_PASSWORD, EPEL_PASSWORD, BMC_PASSWORD, USER_HASH, "aliceweb"]
ROOT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPodsysTestKeyOnlyForTests000000000000000000 root@admin"

# Installer nodes: their per-node configs carry the root hash and keys (image nodes get neither).
EVERY_SECRET = VALID.replace("    macs_file: gpu-macs.csv\n", "    macs_file: gpu-macs.csv\n    provisioning: {method: installer}\n").replace(
    "users: [{name: alice, uid: 2001,", f'users: [{{name: alice, uid: 2001, password_hash: "{USER_HASH}",') + f"""\
packages:
  source: online
  upstream: "http://{UPSTREAM_USER}:{UPSTREAM_PASSWORD}@mirror.example.com/ubuntu"
  proxy: "http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example.com:3128"
  epel: "http://epeluser:{EPEL_PASSWORD}@mirror.example.com/epel"
provisioning:
  root_password_hash: "{HASH}"
  root_authorized_keys: ["{ROOT_KEY}"]
bmc: {{protocol: ipmi, username: admin, password_file: bmc.pw}}
access: {{private_key_file: keys/id_ed25519}}
"""


def cluster_dir(tmp_path: Path) -> Path:
    path = write_manifest(tmp_path, EVERY_SECRET)
    (tmp_path / "bmc.pw").write_text(BMC_PASSWORD + "\n")
    os.chmod(tmp_path / "bmc.pw", 0o600)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n")
    os.chmod(tmp_path / "keys/id_ed25519", 0o600)
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podsys.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}, timeout=120)


def test_no_secret_in_a_readable_build_file_nor_on_the_terminal(tmp_path):
    path = cluster_dir(tmp_path)
    out = tmp_path / "build"
    outputs = []
    first_diff = cli("render", str(path), "--output", str(out), "--diff", cwd=tmp_path)
    assert first_diff.returncode == 0, first_diff.stderr
    assert "+++ b/" + VARS_FILE in first_diff.stdout
    outputs.append(first_diff)
    outputs.append(cli("render", str(path), "--output", str(out), cwd=tmp_path))
    # A changed hash and mirror password: the diff must show neither the old nor the new ones.
    changed = EVERY_SECRET.replace("Q" * 86, "R" * 86).replace(UPSTREAM_PASSWORD, "Other-Pw-1")
    path.write_text(changed)
    outputs.append(cli("render", str(path), "--output", str(out), "--diff", cwd=tmp_path))
    assert "@@ contents not shown: the file holds secrets @@" in outputs[-1].stdout
    every_secret = SECRETS + ["R" * 86, "Other-Pw-1"]
    for res in outputs:
        assert res.returncode == 0, res.stderr
        for secret in every_secret:
            assert secret not in res.stdout + res.stderr

    readable, private = [], []
    for file in [*out.rglob("*"), *tmp_path.glob("*.addresses.yaml")]:
        if file.is_file():
            (private if file.stat().st_mode & 0o077 == 0 else readable).append(file)
    assert any(f.name == "main.yml" for f in readable) and any(f.name == "secrets.yml" for f in private)
    for file in readable:
        text = file.read_text()
        for secret in every_secret:
            assert secret not in text, f"{secret} in {file} (mode {file.stat().st_mode & 0o777:o})"
    assert (tmp_path / "cluster.addresses.yaml").stat().st_mode & 0o777 == 0o644
    # The secrets do reach Ansible: through the 0600 file the readable variables refer to.
    secrets = yaml.safe_load((out / SECRETS_FILE).read_text())["podsys_secrets"]
    # (`render --diff` shows the changes and then renders them.)
    assert secrets["root_password_hash"] == HASH.replace("Q" * 86, "R" * 86)
    assert secrets["packages_upstream"] == f"http://{UPSTREAM_USER}:Other-Pw-1@mirror.example.com/ubuntu"
    assert secrets["user_password_hashes"] == {"alice": USER_HASH}
    variables = yaml.safe_load((out / VARS_FILE).read_text())
    assert variables["podsys_provisioning"]["root_password_hash"] == "{{ podsys_secrets.root_password_hash }}"
    assert variables["podsys_packages"]["proxy"] == "{{ podsys_secrets.packages_proxy }}"
    assert variables["podsys_packages"]["epel"] == "{{ podsys_secrets.packages_epel }}"
    assert secrets["packages_epel"] == f"http://epeluser:{EPEL_PASSWORD}@mirror.example.com/epel"
    # The installer configs carry the hash, so they are private to the build's owner.
    user_data = out / "provision/boot/nodes/gpu001/user-data"
    assert "R" * 86 in user_data.read_text() and user_data.stat().st_mode & 0o777 == 0o600


def test_installer_configs_are_served_to_their_own_node_only(tmp_path):
    files = render_files(load_cluster(cluster_dir(tmp_path)))
    site = files["provision/nginx-site.conf"]
    assert "    location /boot/nodes/ {\n        deny all;\n    }" in site
    block = site[site.index("location /boot/nodes/gpu003/ {"):]
    block = block[:block.index("}")]
    assert "alias /srv/podsys/boot/nodes/gpu003/;" in block
    assert block.splitlines()[-3:-1] == ["        allow 10.10.1.3;", "        deny all;"]
    # One such location per installed node, each with its own address.
    assert site.count("location /boot/nodes/gpu") == 4
    assert "allow 10.10.1.1;" in site and "allow 10.10.1.4;" in site


def test_secrets_file_modes_are_refused_when_others_can_read_them(tmp_path):
    path = cluster_dir(tmp_path)
    os.chmod(tmp_path / "bmc.pw", 0o644)
    res = invoke("power", "status", "gpu001", "-m", path)
    assert res.exit_code == 2, res.output
    assert "bmc.pw: bmc.password_file: mode 0644 lets group or others read it" in res.output
    assert BMC_PASSWORD not in res.output and "Traceback" not in res.output

    os.chmod(tmp_path / "keys/id_ed25519", 0o640)
    res = invoke("deploy", path, "--check")
    assert res.exit_code == 2, res.output
    assert "id_ed25519: access.private_key_file: mode 0640 lets group or others read it" in res.output


def test_check_refuses_a_private_key_others_can_read(tmp_path):
    from podsys.checks.runner import AccessSettings, SSHExecutor
    from podsys.cluster.access import SSHAccess
    from podsys.errors import InputError

    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.chmod(key, 0o604)
    access = SSHAccess(user="root", port=22, private_key_file=key, known_hosts_file=None, head_name="head",
                       head_address="10.0.0.1", via_head=False)
    settings = AccessSettings(access=access, addresses={})
    with pytest.raises(InputError, match="mode 0604 lets group or others read it"):
        SSHExecutor(settings)
    os.chmod(key, 0o600)
    SSHExecutor(settings)  # private: accepted


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_secret_files_are_accepted(tmp_path, mode):
    from podsys.cluster.secret_files import refuse_open_permissions

    secret = tmp_path / "pw"
    secret.write_text("x")
    os.chmod(secret, mode)
    refuse_open_permissions(secret, "bmc.password_file")
    refuse_open_permissions(tmp_path / "missing", "bmc.password_file")  # reported by its reader


def test_diff_is_not_wrapped_when_piped(tmp_path):
    path = cluster_dir(tmp_path)
    res = cli("render", str(path), "--output", str(tmp_path / "build"), "--diff", cwd=tmp_path)
    long_lines = [line for line in res.stdout.splitlines() if len(line) > 80]
    assert long_lines, "the inventory has lines longer than 80 columns"
    assert any(line.startswith('+        "gpu001": {"ansible_host": "10.10.1.1", "podsys_node": {') for line in long_lines)


def test_ansible_resolves_the_secret_references(tmp_path):
    """What the roles get: Ansible itself reads group_vars/all/ and resolves the references."""
    import shutil

    if not shutil.which("ansible"):
        pytest.skip("ansible not installed")
    path = cluster_dir(tmp_path)
    assert cli("render", str(path), "--output", str(tmp_path / "build"), cwd=tmp_path).returncode == 0
    for var, expected in (("podsys_packages.proxy", f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example.com:3128"),
                          ("podsys_provisioning.root_password_hash", HASH)):
        res = subprocess.run(["ansible", "gpu001", "-i", str(tmp_path / "build/inventory/hosts.yml"), "-m", "debug",
                              "-a", f"var={var}"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f'"{var}": "{expected}"' in res.stdout
