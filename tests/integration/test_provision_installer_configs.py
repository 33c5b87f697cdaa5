"""Every rendered installer config, checked by the installer ecosystem's own validator:
`cloud-init schema` + the Subiquity autoinstall JSON schema (Ubuntu), `ksvalidator` from
pykickstart (Rocky), `debconf-set-selections --checkonly` (Debian). Each validator is also
shown a broken variant, so a validator that accepts anything cannot make these pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from podsys.cluster.load import load_cluster
from podsys.provision.render import render_files
from tests.conftest import REPO_ROOT as REPO

pytestmark = pytest.mark.integration

SUBIQUITY_SCHEMA = REPO.parent / "shared" / "schemas" / "subiquity-autoinstall-schema.json"
PASSWORD_HASH = "$6$podsystestsalt$RLrny3EtmKdqGKHloDVBYqqIoGNgFkNucr0PhTE.pm7uDNfDwflLIVc6nBdRNlfy6wQiinUpFZMm2fDrob4Hm0"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPodsysTestKeyOnlyForTests000000000000000000 admin@head"


def manifest(distro: str, version: str) -> str:
    return f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: vt, domain: vt.example}}
head: {{hostname: head, interface: eno1, address: 10.40.0.1}}
networks:
  provision: {{cidr: 10.40.0.0/16, gateway: 10.40.0.254, dns: [10.40.0.1], mtu: 9000}}
os: {{distro: {distro}, version: "{version}"}}
provisioning:
  root_password_hash: "{PASSWORD_HASH}"
  root_authorized_keys: ["{KEY}"]
node_groups:
  - name: gpu
    hosts: gpu[01-02]
    hardware: cpu-only
    start_address: 10.40.1.1
    disk: /dev/nvme0n1
    provisioning: {{method: installer}}
    nodes:
      gpu01: {{mac: "b8:3f:d2:00:00:01"}}
      gpu02: {{mac: "b8:3f:d2:00:00:02"}}
"""


def rendered(tmp_path: Path, distro: str, version: str) -> dict[str, str]:
    path = tmp_path / "cluster.yaml"
    path.write_text(manifest(distro, version))
    return render_files(load_cluster(path))


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} not installed (see .ci/apt-packages.txt / README testing section)")
    return found


def run(*argv: str, tmp: Path | None = None) -> subprocess.CompletedProcess:
    """argv's result; with `tmp`, the tool's temporary files go there (ksvalidator's pykickstart
    writes a preprocessed copy of each file to the temp dir with mkstemp and never removes it)."""
    env = {**os.environ, "TMPDIR": str(tmp)} if tmp is not None else None
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False, env=env)


@pytest.mark.parametrize("version", ["22.04", "24.04"])
def test_ubuntu_user_data_passes_cloud_init_schema(tmp_path, version):
    cloud_init = need("cloud-init")
    files = rendered(tmp_path, "ubuntu", version)
    user_data = tmp_path / "user-data"
    user_data.write_text(files["provision/boot/nodes/gpu01/user-data"])
    proc = run(cloud_init, "schema", "--config-file", str(user_data))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout
    # The same validator refuses a broken cloud-config around the autoinstall section.
    broken = tmp_path / "broken-user-data"
    broken.write_text(files["provision/boot/nodes/gpu01/user-data"] + "runcmd: 5\n")
    assert run(cloud_init, "schema", "--config-file", str(broken)).returncode != 0


@pytest.mark.parametrize("version", ["22.04", "24.04"])
def test_ubuntu_autoinstall_section_passes_the_subiquity_schema(tmp_path, version):
    jsonschema = pytest.importorskip("jsonschema")
    if not SUBIQUITY_SCHEMA.is_file():
        pytest.skip(f"Subiquity autoinstall schema not found at {SUBIQUITY_SCHEMA} (shared/ beside the clone)")
    schema = json.loads(SUBIQUITY_SCHEMA.read_text())
    files = rendered(tmp_path, "ubuntu", version)
    user_data = yaml.safe_load(files["provision/boot/nodes/gpu02/user-data"])
    autoinstall = user_data["autoinstall"]
    jsonschema.validate(autoinstall, schema)
    assert autoinstall["storage"]["layout"]["match"] == {"path": "/dev/nvme0n1"}
    assert autoinstall["network"]["ethernets"]["provision"]["addresses"] == ["10.40.1.2/16"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**autoinstall, "early-commands": "not a list"}, schema)
    meta = yaml.safe_load(files["provision/boot/nodes/gpu02/meta-data"])
    assert meta == {"instance-id": "podsys-gpu02", "local-hostname": "gpu02"}


def test_rocky_kickstart_passes_ksvalidator(tmp_path):
    ksvalidator = need("ksvalidator")
    files = rendered(tmp_path, "rocky", "9")
    ks = tmp_path / "ks.cfg"
    ks.write_text(files["provision/boot/nodes/gpu01/ks.cfg"])
    proc = run(ksvalidator, "-v", "RHEL9", str(ks), tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = ks.read_text()
    assert "--ip=10.40.1.1 --netmask=255.255.0.0" in text and "--hostname=gpu01.vt.example" in text
    assert "ignoredisk --only-use=nvme0n1" in text and f"rootpw --iscrypted {PASSWORD_HASH}" in text
    bad = tmp_path / "bad.cfg"
    bad.write_text(text.replace("autopart --type=plain", "autopart --type=nosuchtype"))
    assert run(ksvalidator, "-v", "RHEL9", str(bad), tmp=tmp_path).returncode != 0


def test_debian_preseed_passes_debconf_checkonly(tmp_path):
    dss = need("debconf-set-selections")
    files = rendered(tmp_path, "debian", "12")
    preseed = tmp_path / "preseed.cfg"
    preseed.write_text(files["provision/boot/nodes/gpu02/preseed.cfg"])
    proc = run(dss, "--checkonly", str(preseed))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = preseed.read_text()
    assert "d-i netcfg/get_ipaddress string 10.40.1.2" in text
    assert "d-i partman-auto/disk string /dev/nvme0n1" in text
    assert f"d-i passwd/root-password-crypted password {PASSWORD_HASH}" in text
    bad = tmp_path / "bad.cfg"
    bad.write_text(text + "d-i this-line-has-no-type\n")
    assert run(dss, "--checkonly", str(bad)).returncode != 0
