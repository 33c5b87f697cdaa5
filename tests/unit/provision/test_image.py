"""podsys.provision.image: image specs, keys, which nodes share an image, the build commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from podsys.cluster.load import load_cluster
from podsys.cluster.matrix import load_matrix
from podsys.cluster.stack_packages import CUDA_APT_KEY, repositories
from podsys.provision.image import (
    ImageSpec,
    cluster_images,
    dnf_commands,
    dnf_finish_script,
    image_key,
    mmdebstrap_command,
    node_image_keys,
    pack_command,
    parse_package_list,
    dkms_hook,
    secret_removal_script,
    vendor_apt_files,
)
from podsys.provision.image_source import ImageSource, image_source


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


GPU_GROUP = """\
  - name: gpu
    hosts: gpu01
    hardware: hgx-h100-8gpu
    start_address: 10.40.1.1
    nodes: {gpu01: {mac: "52:54:00:00:00:01"}}
"""
UBUNTU = 'os: {distro: ubuntu, version: "22.04"}'


def gpu_cluster(tmp_path: Path, packages: str = "", layers: str = "[base, gpu, infiniband, slurm]"):
    path = manifest(tmp_path, os_line=UBUNTU, layers=layers, groups=GPU_GROUP)
    if packages:
        path.write_text(path.read_text() + packages + "\n")
    return load_cluster(path)


def hooks(cmd: list[str], kind: str) -> list[str]:
    return [c.split("=", 1)[1] for c in cmd if c.startswith(f"--{kind}-hook=")]


def test_gpu_image_carries_the_matrix_pins_and_a_pin_change_changes_the_key(tmp_path):
    cluster = gpu_cluster(tmp_path)
    (image,) = cluster_images(cluster)
    stack = cluster.stack
    assert f"libnccl2={stack.nccl}" in image.spec.pins
    assert image.spec.vendor_packages, "the driver and CUDA come from NVIDIA's repositories"
    vendor = image_source(cluster).build_repositories(image.spec)
    include = next(c for c in mmdebstrap_command(image.spec, "http://m", "/r", "/p", vendor=vendor) if c.startswith("--include="))
    names = include.split("=", 1)[1].split(",")
    # Vendor packages are in the image now, pinned as the plan pins them.
    assert "openmpi-bin" in names and f"libnccl2={stack.nccl}" in names
    assert f"nvidia-driver-{stack.branch[1:]}-open={stack.driver}-*" in names
    # The DKMS builds get the headers of the image's kernel (its meta package), never `uname -r`.
    assert "linux-headers-generic" in names and not any("uname" in n for n in names)
    for change in ({"nccl": stack.nccl + ".1"}, {"driver": stack.driver + ".1"}, {"dcgm": "4.4.2"}):
        bumped = dataclasses.replace(cluster, stack=stack.model_copy(update=change))
        (rebuilt,) = cluster_images(bumped)
        assert rebuilt.spec.key != image.spec.key, change


def test_gpu_image_build_takes_the_vendor_repositories_through_the_proxy_with_their_keys(tmp_path):
    cluster = gpu_cluster(tmp_path, "packages: {source: proxy, upstream: 'http://mirror.site/ubuntu', proxy: 'http://squid.site:3128'}")
    (image,) = cluster_images(cluster)
    spec = image.spec
    source = image_source(cluster)
    vendor = source.build_repositories(spec)
    # The plan's own repositories (stack_packages.repositories): URL, suite, key, fingerprint.
    planned = {r.name: r for r in repositories(cluster.stack, "ubuntu-22.04", ["driver", "infiniband"])}
    assert [r.name for r in vendor] == ["ofed", "cuda"]
    for repo in vendor:
        assert (repo.url, repo.suite, repo.key_url, repo.fingerprint) == (
            planned[repo.name].url, planned[repo.name].suite, planned[repo.name].key_url, planned[repo.name].fingerprint)
    assert vendor[1].fingerprint == CUDA_APT_KEY[1]
    # https vendor repositories go through the site's proxy as the Debian mirror does.
    options = source.vendor_apt_options(spec)
    assert options == ('Acquire::https::Proxy::linux.mellanox.com "http://squid.site:3128/"',
                       'Acquire::https::Proxy::developer.download.nvidia.com "http://squid.site:3128/"')
    cmd = mmdebstrap_command(spec, source.mirror, "/r", "/p", (*source.apt_options, *options), vendor, "/s/apt")
    assert f"--aptopt={options[1]}" in cmd and cmd[-1] == "http://mirror.site/ubuntu"
    (setup,) = hooks(cmd, "setup")
    assert 'cp /s/apt/podsys-cuda.asc "$1"/usr/share/keyrings/podsys-cuda.asc' in setup
    assert 'cp /s/apt/build-podsys-cuda.sources "$1"/etc/apt/sources.list.d/podsys-cuda.sources' in setup
    assert 'cp /s/apt/preferences "$1"/etc/apt/preferences.d/podsys-image-build' in setup
    files = vendor_apt_files(spec, vendor, source.mirror, "/s/apt")
    # During the build apt reads the key from the build's folder (it resolves Signed-By outside
    # the image root); the image keeps its copy under /usr/share/keyrings, as the role names it.
    assert "URIs: https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/" in files["build-podsys-cuda.sources"]
    assert "Suites: /\n" in files["build-podsys-cuda.sources"] and "Components" not in files["build-podsys-cuda.sources"]
    assert files["build-podsys-cuda.sources"].endswith("Signed-By: /s/apt/podsys-cuda.asc\n")
    assert f"Package: libnccl2\nPin: version {cluster.stack.nccl}\nPin-Priority: 1001" in files["preferences"]
    assert f"Pin: version {cluster.stack.driver}-*" in files["preferences"], "the driver's dependencies are pinned too"
    customize = hooks(cmd, "customize")
    assert customize[0] == dkms_hook(), "modules are built before anything is listed or cleaned"
    # The keys stay; the build's sources and pins go: the roles write the node's, with its way
    # to the repositories (the head's cache in proxy mode) and its own pins.
    final = next(h for h in customize if "podsys-cuda.sources" in h)
    assert final == ('rm -f "$1"/etc/apt/sources.list.d/podsys-ofed.sources && rm -f "$1"/etc/apt/sources.list.d/podsys-cuda.sources'
                     ' && rm -f "$1"/etc/apt/preferences.d/podsys-image-build')
    assert not any("keyrings" in h for h in customize)
    assert customize[-1] == 'rm -f "$1"/etc/apt/apt.conf.d/99mmdebstrap'


def test_gpu_image_from_a_bundle_uses_the_bundles_repository_and_site_key(tmp_path):
    cluster = gpu_cluster(tmp_path, "packages: {source: bundle}")
    (image,) = cluster_images(cluster)
    source = image_source(cluster)
    (repo,) = vendor = source.build_repositories(image.spec)
    assert (repo.name, repo.url, repo.suite, repo.components, repo.key_url) == (
        "bundle", "http://10.40.0.1/repo", "jammy", "main", "http://10.40.0.1/repo/podsys-site.asc")
    assert source.vendor_apt_options(image.spec) == ()
    cmd = mmdebstrap_command(image.spec, source.mirror, "/r", "/p", source.apt_options, vendor, "/s/apt")
    # One repository for both: the mirror line, trusted by the site key only.
    assert cmd[-1] == "deb [signed-by=/s/apt/podsys-bundle.asc] http://10.40.0.1/repo jammy main"
    files = vendor_apt_files(image.spec, vendor, source.mirror, "/s/apt")
    assert "build-podsys-bundle.sources" not in files
    assert 'cp /s/apt/podsys-bundle.asc "$1"/usr/share/keyrings/podsys-bundle.asc' in hooks(cmd, "setup")[0]
    assert files["sources.list"].startswith("# Managed by podsys")
    assert 'cp /s/apt/sources.list "$1"/etc/apt/sources.list' in " ".join(hooks(cmd, "customize"))


def test_a_cpu_only_image_gets_no_vendor_repository_key_or_dkms(tmp_path):
    cluster = load_cluster(manifest(tmp_path))
    (image,) = cluster_images(cluster)
    source = image_source(cluster)
    assert image.spec.vendor_packages == () and image.spec.repositories == () and image.spec.apt_pins == ()
    assert source.build_repositories(image.spec) == () and source.vendor_apt_options(image.spec) == ()
    cmd = mmdebstrap_command(image.spec, "http://m", "/r", "/p")
    assert not hooks(cmd, "setup") and dkms_hook() not in hooks(cmd, "customize")
    assert not any("keyrings" in c or "headers" in c for c in cmd)


def test_vendor_packages_without_their_repositories_are_refused(tmp_path):
    (image,) = cluster_images(gpu_cluster(tmp_path))
    with pytest.raises(ValueError, match="need their repositories"):
        mmdebstrap_command(image.spec, "http://m", "/r", "/p")


FAKE_CHROOT = """#!/bin/sh
# chroot ROOT CMD...: logs the command; dkms status prints $FAKE_DKMS_STATUS.
shift
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "dkms status"*) printf '%s\\n' "$FAKE_DKMS_STATUS" ;;
esac
exit 0
"""


@pytest.mark.parametrize("status, ok", [
    ("nvidia/580.95.05, 6.1.0-99-amd64, x86_64: installed", True),
    ("nvidia/580.95.05: added", False),
])
def test_dkms_hook_builds_for_the_image_kernel_and_fails_on_a_missing_module(tmp_path, status, ok):
    import os
    import subprocess

    root = tmp_path / "root"
    (root / "lib/modules/6.1.0-99-amd64").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chroot").write_text(FAKE_CHROOT)
    (bin_dir / "chroot").chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "FAKE_DKMS_STATUS": status}
    proc = subprocess.run(["sh", "-c", dkms_hook(), "hook", str(root)], env=env, capture_output=True, text=True)
    assert (proc.returncode == 0) is ok, proc.stderr
    assert "dkms autoinstall -k 6.1.0-99-amd64" in log.read_text()  # the image's kernel, not uname -r
    if not ok:
        assert "DKMS modules not built for the image kernel 6.1.0-99-amd64: nvidia/580.95.05: added" in proc.stderr


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


def test_dnf_commands_install_from_the_distribution_repositories_each_with_its_key(tmp_path):
    cluster = load_cluster(manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}'))
    (image,) = cluster_images(cluster)
    with pytest.raises(ValueError, match="not built with mmdebstrap"):
        mmdebstrap_command(image.spec, "http://x", "/r", "/p")
    repos = ImageSource("http://10.40.0.1/repo/").build_repositories(image.spec)
    assert [r.name for r in repos] == ["baseos", "appstream", "crb", "epel"]
    assert (repos[0].url, repos[0].key_url, repos[0].fingerprint) == (
        "http://10.40.0.1/repo/9/BaseOS/x86_64/os/", "http://10.40.0.1/repo/RPM-GPG-KEY-Rocky-9",
        "21CB256AE16FC54C6E652949702D426D350D275D")
    assert (repos[3].url, repos[3].key_url, repos[3].fingerprint) == (
        "http://dl.fedoraproject.org/pub/epel/9/Everything/x86_64/", "http://dl.fedoraproject.org/pub/epel/RPM-GPG-KEY-EPEL-9",
        "FF8AD1344597106ECE813B918A3872BF3228467C")
    (install,) = dnf_commands(image.spec, repos, "/r", "/k")
    assert install[:4] == ["dnf", "-y", "--installroot=/r", "--releasever=9"]
    assert install[install.index("install") + 1:] == list(image.spec.packages)
    assert {"slurm-slurmd", "kernel", "rocky-release", "python3-libselinux"} <= set(image.spec.packages)
    assert "--repofrompath=baseos,http://10.40.0.1/repo/9/BaseOS/x86_64/os/" in install
    assert {"--setopt=baseos.gpgcheck=1", "--setopt=baseos.gpgkey=file:///k/podsys-baseos.asc",
            "--setopt=epel.gpgkey=file:///k/podsys-epel.asc", "--disablerepo=*",
            "--enablerepo=baseos,appstream,crb,epel", "--setopt=module_platform_id=platform:el9"} <= set(install)
    assert not any(o.startswith("--setopt=proxy=") for o in install)
    (proxied,) = dnf_commands(image.spec, repos, "/r", "/k", "http://proxy.site:3128/")
    assert "--setopt=proxy=http://proxy.site:3128/" in proxied
    finish = dnf_finish_script(with_dkms=False)
    assert dkms_hook() not in finish and finish.rstrip().endswith(secret_removal_script())
    assert 'systemctl --root="$1" enable systemd-networkd.service sshd.service' in finish


def test_dnf_commands_for_a_rocky_gpu_image_enable_the_driver_stream_and_add_the_vendor_repositories(tmp_path):
    cluster = load_cluster(manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}', layers="[base, gpu]",
                                    groups=GPU_GROUP))
    (image,) = cluster_images(cluster)
    repos = ImageSource("http://10.40.0.1/repo").build_repositories(image.spec)
    enable, install = dnf_commands(image.spec, repos, "/r", "/k")
    cuda = "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/"
    assert f"--repofrompath=cuda,{cuda}" in install and "--setopt=cuda.gpgkey=file:///k/podsys-cuda.asc" in install
    assert next(r for r in repos if r.name == "cuda").key_url == f"{cuda}D42D0685.pub"
    assert "--enablerepo=baseos,appstream,crb,epel,cuda" in install
    assert enable[-3:] == ["module", "enable", f"nvidia-driver:{cluster.stack.branch[1:]}-open"]
    assert "kernel-devel" in install and "dkms" in install  # the image kernel's headers, dkms from EPEL
    assert dkms_hook() in dnf_finish_script(with_dkms=True)


def test_rocky_images_are_not_built_from_a_bundle_and_their_ramdisk_comes_from_debian(tmp_path):
    from podsys.provision.image_build import ImageError

    cluster = load_cluster(manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}'))
    (image,) = cluster_images(cluster)
    with pytest.raises(ImageError, match="bundles carry apt repositories only"):
        ImageSource("http://10.40.0.1:8080/repo", source="bundle").build_repositories(image.spec)
    source = image_source(cluster)
    assert (source.mirror, source.ramdisk_source) == ("http://dl.rockylinux.org/pub/rocky", "http://deb.debian.org/debian")
    debian = image_source(load_cluster(manifest(tmp_path)))
    assert debian.ramdisk_source == debian.mirror == "http://deb.debian.org/debian"


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


def test_vendor_package_names_from_apt_and_dnf_specs(tmp_path):
    from podsys.provision.image import vendor_package_names

    rocky = load_cluster(manifest(tmp_path, os_line='os: {distro: rocky, version: "9"}', layers="[base, gpu]",
                                  groups=GPU_GROUP))
    (image,) = cluster_images(rocky)
    names = vendor_package_names(image.spec)
    driver = next(p for p in image.spec.pins if p.startswith("nvidia-driver=")).split("=", 1)[1]
    assert f"nvidia-driver-{driver}" in image.spec.vendor_packages and "nvidia-driver" in names
    # Names and versions both hold dashes (libcudnn9-cuda-13-9.13.0.50-1): the name is the pin's.
    assert {"libnccl", "libcudnn9-cuda-13", "cuda-toolkit-13-0", "datacenter-gpu-manager-4-proprietary-cuda13"} <= set(names)
    assert sorted(names) == sorted(pin.split("=", 1)[0] for pin in image.spec.pins)
    assert vendor_package_names(spec(vendor_packages=("libnccl2=2.27.7-1+cuda13.0",))) == ["libnccl2"]
