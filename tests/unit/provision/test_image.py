"""podsys.provision.image: image specs, keys, which nodes share an image, the build commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from podsys.cluster.load import load_cluster
from podsys.cluster.matrix import load_matrix
from podsys.provision.image import (
    ImageSpec,
    cluster_images,
    dnf_commands,
    image_key,
    mmdebstrap_command,
    node_image_keys,
    pack_command,
    parse_package_list,
    secret_removal_script,
)


def manifest(tmp_path: Path, os_line: str = 'os: {distro: debian, version: "12"}',
             groups: str | None = None, layers: str = "[base, slurm, monitoring]") -> Path:
    groups = groups or """\
  - name: cpu
    hosts: cpu[01-02]
    hardware: cpu-only
    start_address: 10.40.1.1
    nodes:
      cpu01: {mac: "52:54:00:00:00:01"}
      cpu02: {mac: "52:54:00:00:00:02"}
"""
    path = tmp_path / "cluster.yaml"
    path.write_text(f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: im}}
head: {{hostname: head, interface: eno1, address: 10.40.0.1}}
networks:
  provision: {{cidr: 10.40.0.0/16}}
{os_line}
layers: {layers}
node_groups:
{groups}""")
    return path


def spec(**changes) -> ImageSpec:
    base = ImageSpec(distro="debian", version="12", suite="bookworm", stack="r580-cuda13.0", hardware="cpu-only",
                     layers=("base", "slurm"), packages=("linux-image-amd64", "slurmd"), pins=("slurmd=22.05",))
    return dataclasses.replace(base, **changes)


def test_same_inputs_same_key():
    assert image_key(spec()) == image_key(spec())
    assert len(image_key(spec())) == 64


@pytest.mark.parametrize("change", [
    {"pins": ("slurmd=22.06",)},
    {"packages": ("linux-image-amd64", "slurmd=22.05.9-1")},
    {"packages": ("linux-image-amd64", "munge", "slurmd")},
    {"version": "13"},
    {"suite": "trixie"},
    {"stack": "r570-cuda12.8"},
    {"hardware": "hgx-h100-8gpu"},
    {"layers": ("base",)},
    {"recipe": 99},
])
def test_any_input_change_gives_a_new_key(change):
    assert image_key(spec(**change)) != image_key(spec())


def test_nodes_of_one_group_share_one_image_and_adding_nodes_keeps_the_key(tmp_path):
    first = cluster_images(load_cluster(manifest(tmp_path)))
    assert len(first) == 1 and first[0].nodes == ("cpu01", "cpu02")
    more = tmp_path / "more"
    more.mkdir()
    grown = cluster_images(load_cluster(manifest(more, groups="""\
  - name: cpu
    hosts: cpu[01-03]
    hardware: cpu-only
    start_address: 10.40.1.1
    nodes:
      cpu01: {mac: "52:54:00:00:00:01"}
      cpu02: {mac: "52:54:00:00:00:02"}
      cpu03: {mac: "52:54:00:00:00:03"}
""")))
    assert grown[0].spec.key == first[0].spec.key
    assert grown[0].nodes == ("cpu01", "cpu02", "cpu03")


def test_layers_and_method_split_or_skip_groups(tmp_path):
    cluster = load_cluster(manifest(tmp_path, groups="""\
  - name: cpu
    hosts: cpu01
    hardware: cpu-only
    start_address: 10.40.1.1
    nodes: {cpu01: {mac: "52:54:00:00:00:01"}}
  - name: lean
    hosts: lean01
    hardware: cpu-only
    start_address: 10.40.2.1
    layers: [base]
    nodes: {lean01: {mac: "52:54:00:00:00:11"}}
  - name: vendor
    hosts: ven01
    hardware: cpu-only
    start_address: 10.40.3.1
    provisioning: {method: installer}
    nodes: {ven01: {mac: "52:54:00:00:00:21"}}
"""))
    images = cluster_images(cluster)
    assert [img.nodes for img in images] == [("cpu01",), ("lean01",)]
    lean = images[1].spec
    assert "slurmd" not in lean.packages and "prometheus-node-exporter" not in lean.packages
    assert "slurm-client" not in lean.packages
    # What the roles would otherwise install after first boot: Slurm's daemon and client (the
    # health role's scontrol), the exporter, and python3-apt for Ansible's apt module on every image.
    assert {"slurmd", "munge", "slurm-client", "prometheus-node-exporter", "linux-image-amd64",
            "python3-apt"} <= set(images[0].spec.packages)
    assert "python3-apt" in lean.packages
    assert "ven01" not in node_image_keys(cluster)


def test_gpu_image_carries_the_matrix_pins_and_a_pin_change_changes_the_key(tmp_path, monkeypatch):
    path = manifest(tmp_path, os_line='os: {distro: ubuntu, version: "22.04"}', layers="[base, gpu, slurm]", groups="""\
  - name: gpu
    hosts: gpu01
    hardware: hgx-h100-8gpu
    start_address: 10.40.1.1
    nodes: {gpu01: {mac: "52:54:00:00:00:01"}}
""")
    cluster = load_cluster(path)
    (image,) = cluster_images(cluster)
    stack = cluster.stack
    assert f"libnccl2={stack.nccl}" in image.spec.pins
    assert image.spec.vendor_packages, "the driver and CUDA come from NVIDIA's repositories"
    include = next(c for c in mmdebstrap_command(image.spec, "http://m", "/r", "/p") if c.startswith("--include="))
    assert "openmpi-bin" in include and "nvidia-driver" not in include, "vendor packages wait for the GPU roles"
    bumped = dataclasses.replace(cluster, stack=stack.model_copy(update={"nccl": stack.nccl + ".1"}))
    (rebuilt,) = cluster_images(bumped)
    assert rebuilt.spec.key != image.spec.key


def test_mmdebstrap_command_builds_from_the_given_mirror_and_strips_secrets():
    cmd = mmdebstrap_command(spec(), "http://10.40.0.1/repo/debian", "/tmp/root", "/tmp/p.tsv",
                             ('Acquire::Check-Valid-Until "false"',))
    assert cmd[0] == "mmdebstrap" and cmd[-3:] == ["bookworm", "/tmp/root", "http://10.40.0.1/repo/debian"]
    assert "--include=linux-image-amd64,slurmd" in cmd
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in cmd
    hooks = [c for c in cmd if c.startswith("--customize-hook=")]
    assert f"--customize-hook={secret_removal_script()}" in hooks
    assert any("dpkg-query" in h and "/tmp/p.tsv" in h for h in hooks)
    assert "etc/munge/munge.key" in secret_removal_script() and "ssh_host_*" in secret_removal_script()
    # The build's apt options (its proxy) must not stay in the image: they would override the node's.
    assert hooks[-1] == '--customize-hook=rm -f "$1"/etc/apt/apt.conf.d/99mmdebstrap'
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata" in cmd


def test_dnf_plan_for_rocky_uses_the_head_repository(tmp_path):
    cluster = load_cluster(manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}'))
    (image,) = cluster_images(cluster)
    with pytest.raises(ValueError, match="not built with mmdebstrap"):
        mmdebstrap_command(image.spec, "http://x", "/r", "/p")
    install, strip = dnf_commands(image.spec, "http://10.40.0.1/repo", "/r")
    assert "--installroot=/r" in install and "slurm-slurmd" in install and "kernel" in install
    assert "--repofrompath=baseos,http://10.40.0.1/repo/9/BaseOS/x86_64/os/" in install
    assert "munge.key" in strip[-1]


def test_pack_keeps_owners_and_xattrs():
    cmd = pack_command("/r", "/o/image.tar.zst")
    assert {"--numeric-owner", "--xattrs", "--acls"} <= set(cmd)
    assert cmd[cmd.index("-I") + 1].startswith("zstd")


def test_package_list_parsing():
    text = "bash\t5.2.15-2+b7\nslurmd\t22.05.8-4+deb12u3\n\n"
    assert parse_package_list(text) == {"bash": "5.2.15-2+b7", "slurmd": "22.05.8-4+deb12u3"}


def test_a_bad_method_is_an_input_error_naming_its_line_and_field(tmp_path):
    from podsys.errors import InputError

    path = manifest(tmp_path, groups="""\
  - name: cpu
    hosts: cpu01
    hardware: cpu-only
    start_address: 10.40.1.1
    provisioning: {method: kickstart}
    nodes: {cpu01: {mac: "52:54:00:00:00:01"}}
""")
    with pytest.raises(InputError) as err:
        load_cluster(path)
    text = str(err.value.problems[0])
    line = path.read_text().splitlines().index("    provisioning: {method: kickstart}") + 1
    assert f"cluster.yaml:{line}" in text and "node_groups[0].provisioning.method" in text, text
