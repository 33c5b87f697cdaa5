"""podsys.provision.render: the head's boot configuration and per-node installer configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from podsys.errors import InputError
from podsys.cluster.load import load_cluster
from podsys.cluster.schema import SUPPORTED_OS_KEYS
from podsys.layout import HeadPaths
from podsys.provision.render import boot_script, render_files

HASH = "$6$podsystestsalt$RLrny3EtmKdqGKHloDVBYqqIoGNgFkNucr0PhTE.pm7uDNfDwflLIVc6nBdRNlfy6wQiinUpFZMm2fDrob4Hm0"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPodsysTestKeyOnlyForTests000000000000000000 admin@head"


def write_manifest(tmp_path: Path, distro="debian", version="12", provisioning="", extra_group="", packages="proxy") -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"""\
apiVersion: podsys/v1
kind: Cluster
metadata: {{name: rt, domain: rt.example}}
head: {{hostname: head, interface: eno1, address: 10.50.0.1}}
networks:
  provision: {{cidr: 10.50.0.0/16, gateway: 10.50.0.254, dns: [10.50.0.1]}}
  bmc: {{cidr: 10.60.0.0/16}}
os: {{distro: {distro}, version: "{version}"}}
packages: {{source: {packages}}}
provisioning:
  root_authorized_keys: ["{KEY}"]
{provisioning}node_groups:
  - name: gpu
    hosts: gpu[01-03]
    hardware: cpu-only
    start_address: 10.50.1.1
    disk: /dev/nvme0n1
    provisioning: {{method: installer}}
    nodes:
      gpu01: {{mac: "b8:3f:d2:00:00:01"}}
      gpu02: {{mac: "b8:3f:d2:00:00:02"}}
      gpu03: {{mac: "b8:3f:d2:00:00:03"}}
{extra_group}""")
    return path


def render(tmp_path, **kw) -> dict[str, str]:
    return render_files(load_cluster(write_manifest(tmp_path, **kw)))


def test_one_reservation_per_node_and_unknown_macs_ignored(tmp_path):
    conf = render(tmp_path)["provision/dnsmasq.conf"]
    hosts = [line for line in conf.splitlines() if line.startswith("dhcp-host=")]
    assert hosts == [
        "dhcp-host=b8:3f:d2:00:00:01,set:podsys-pxe,10.50.1.1,gpu01,infinite",
        "dhcp-host=b8:3f:d2:00:00:02,set:podsys-pxe,10.50.1.2,gpu02,infinite",
        "dhcp-host=b8:3f:d2:00:00:03,set:podsys-pxe,10.50.1.3,gpu03,infinite",
    ]
    assert "dhcp-ignore=tag:!known" in conf.splitlines()
    assert "dhcp-range=set:provision,10.50.0.0,static,255.255.0.0,12h" in conf
    assert "interface=eno1" in conf.splitlines()
    assert "port=0" in conf.splitlines()  # DNS off by default
    assert "dhcp-option=tag:provision,option:router,10.50.0.254" in conf


def test_boot_files_per_client_architecture(tmp_path):
    conf = render(tmp_path)["provision/dnsmasq.conf"].splitlines()
    assert "dhcp-match=set:efi-arm64,option:client-arch,11" in conf
    assert "dhcp-boot=tag:podsys-pxe,tag:!ipxe,tag:!efi-x86_64,tag:!efi-arm64,undionly.kpxe" in conf
    assert "dhcp-boot=tag:podsys-pxe,tag:!ipxe,tag:efi-x86_64,snponly.efi" in conf
    assert "dhcp-boot=tag:podsys-pxe,tag:!ipxe,tag:efi-arm64,ipxe-arm64.efi" in conf
    assert "dhcp-boot=tag:podsys-pxe,tag:ipxe,http://10.50.0.1/boot/ipxe/boot.ipxe" in conf


def test_discovery_pool_replaces_the_ignore_rule_and_dns_can_be_on(tmp_path):
    prov = ("  dns: true\n  discovery: {enabled: true, range_start: 10.50.200.1, range_end: 10.50.200.50}\n")
    conf = render(tmp_path, provisioning=prov)["provision/dnsmasq.conf"].splitlines()
    assert "dhcp-range=set:discovery,10.50.200.1,10.50.200.50,255.255.0.0,10m" in conf
    assert "dhcp-ignore=tag:!known" not in conf
    assert "port=0" not in conf and "domain=rt.example" in conf
    assert "host-record=head.rt.example,head,10.50.0.1" in conf
    assert "host-record=gpu03.rt.example,gpu03,10.50.1.3" in conf
    # Discovered machines never get a boot file: every dhcp-boot needs the podsys-pxe tag.
    assert all("tag:podsys-pxe" in line for line in conf if line.startswith("dhcp-boot="))


def test_discovery_without_a_pool_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="range_start and range_end"):
        render(tmp_path, provisioning="  discovery: {enabled: true}\n")


def test_non_pxe_nodes_get_an_address_but_no_boot_file(tmp_path):
    extra = ('  - name: svc\n    hosts: svc01\n    hardware: cpu-only\n    pxe: false\n    start_address: 10.50.2.1\n'
             '    nodes: {svc01: {mac: "b8:3f:d2:00:01:01"}}\n')
    files = render(tmp_path, extra_group=extra)
    assert "dhcp-host=b8:3f:d2:00:01:01,10.50.2.1,svc01,infinite" in files["provision/dnsmasq.conf"]
    assert not any("svc01" in k or "b8-3f-d2-00-01-01" in k for k in files)
    assert "svc01" not in json.loads(files["provision/nodes.json"])["nodes"]
    assert boot_script(files, "b8:3f:d2:00:01:01", "local") is None  # the status service answers 404


def test_nginx_serves_only_the_boot_tree_and_the_repo(tmp_path):
    conf = render_files(load_cluster(write_manifest(tmp_path, packages="online")),
                        HeadPaths(boot_root="/b", repo_root="/r"))["provision/nginx-site.conf"]
    locations = re.findall(r"location\s+(\S+)\s*\{", conf)
    nodes = [n.name for n in load_cluster(tmp_path / "cluster.yaml").nodes if n.pxe]
    assert nodes and locations == ["/boot/", "/boot/ipxe/nodes/", "/boot/nodes/", *[f"/boot/nodes/{n}/" for n in nodes],
                                   "/repo/", "/"]
    assert "alias /b/;" in conf and "alias /r/;" in conf
    # each node's iPXE script comes from the status service, not from a file
    scripts = conf[conf.index("location /boot/ipxe/nodes/"):conf.index("location /boot/nodes/ ")]
    assert "proxy_pass http://10.50.0.1:8081/api/v1/boot/;" in scripts and "alias" not in scripts
    catch_all = conf[conf.index("location / {"):]
    assert "return 404;" in catch_all and "alias" not in catch_all
    boot_block = conf[conf.index("location /boot/"):conf.index("location /repo/")]
    assert "autoindex on" not in boot_block and "autoindex off;" in conf
    assert "disable_symlinks on;" in conf and "allow 10.50.0.0/16;" in conf and "deny all;" in conf
    assert "listen 10.50.0.1:80" in conf


def test_with_the_bundle_installers_and_nginx_use_the_bundles_repository(tmp_path):
    files = render_files(load_cluster(write_manifest(tmp_path, packages="bundle")))
    conf = files["provision/nginx-site.conf"]
    repo_block = conf[conf.index("location /repo/"):conf.index("location / {")]
    assert "proxy_pass http://10.50.0.1:8080/repo/;" in repo_block and "alias" not in repo_block
    preseed = files["provision/boot/nodes/gpu02/preseed.cfg"]
    assert "d-i mirror/http/hostname string 10.50.0.1" in preseed
    assert "d-i mirror/http/directory string /repo" in preseed


def test_ipxe_scripts_per_state(tmp_path):
    files = render(tmp_path)
    install = boot_script(files, "b8:3f:d2:00:00:02", "install")
    local = boot_script(files, "b8:3f:d2:00:00:02", "local")
    assert install.startswith("#!ipxe\n") and local.startswith("#!ipxe\n")
    assert "kernel http://10.50.0.1/boot/media/debian-12/vmlinuz initrd=initrd" in install
    assert "url=http://10.50.0.1/boot/nodes/gpu02/preseed.cfg" in install
    assert "netcfg/get_ipaddress=10.50.1.2" in install
    assert "sanboot --no-describe --drive 0x80" in local and "kernel" not in local
    entry = files["provision/boot/ipxe/boot.ipxe"]
    assert "chain --autofree http://10.50.0.1/boot/ipxe/nodes/${netX/mac:hexhyp}.ipxe" in entry


def test_debian_preseed_static_address_disk_keys_and_hash(tmp_path):
    text = render(tmp_path, provisioning=f'  root_password_hash: "{HASH}"\n')["provision/boot/nodes/gpu03/preseed.cfg"]
    lines = text.splitlines()
    assert "d-i netcfg/get_ipaddress string 10.50.1.3" in lines
    assert "d-i netcfg/get_netmask string 255.255.0.0" in lines
    assert "d-i netcfg/get_hostname string gpu03" in lines
    assert "d-i partman-auto/disk string /dev/nvme0n1" in lines
    assert "d-i grub-installer/bootdev string /dev/nvme0n1" in lines
    assert f"d-i passwd/root-password-crypted password {HASH}" in lines
    assert "d-i mirror/http/hostname string 10.50.0.1" in lines and "d-i mirror/http/directory string /repo/debian" in lines
    assert "event=start" in text and "stage=partitioning" in text and "event=finish" in text
    import base64

    b64 = re.search(r"echo '([A-Za-z0-9+/=]+)' > /target/root/.ssh/authorized_keys.b64", text).group(1)
    assert base64.b64decode(b64).decode().strip() == KEY


def test_ubuntu_autoinstall_contents(tmp_path):
    files = render(tmp_path, distro="ubuntu", version="24.04", provisioning=f'  root_password_hash: "{HASH}"\n')
    data = yaml.safe_load(files["provision/boot/nodes/gpu01/user-data"])
    assert files["provision/boot/nodes/gpu01/user-data"].startswith("#cloud-config\n")
    ai = data["autoinstall"]
    assert ai["storage"] == {"layout": {"name": "direct", "match": {"path": "/dev/nvme0n1"}}}
    eth = ai["network"]["ethernets"]["provision"]
    assert eth["match"] == {"macaddress": "b8:3f:d2:00:00:01"} and eth["addresses"] == ["10.50.1.1/16"]
    assert ai["apt"]["primary"][0]["uri"] == "http://10.50.0.1/repo/ubuntu"
    assert ai["early-commands"][0].startswith("curl") and "event=start" in ai["early-commands"][0]
    assert "event=finish" in ai["late-commands"][-1]
    assert any(f"usermod -p '{HASH}' root" in c for c in ai["late-commands"])
    assert ai["reporting"]["podsys"] == {"type": "webhook", "endpoint": "http://10.50.0.1:8081/api/v1/webhook"}
    assert ai["user-data"]["disable_root"] is False
    install = boot_script(files, "b8:3f:d2:00:00:01", "install")
    assert "ds=nocloud-net;s=http://10.50.0.1/boot/nodes/gpu01/" in install and " autoinstall " in install


def test_rocky_kickstart_contents(tmp_path):
    files = render(tmp_path, distro="rocky", version="9")
    ks = files["provision/boot/nodes/gpu01/ks.cfg"]
    assert "ignoredisk --only-use=nvme0n1" in ks and "clearpart --all --initlabel --drives=nvme0n1" in ks
    assert "rootpw --lock" in ks  # no hash given: root has no password at all
    assert f'sshkey --username=root "{KEY}"' in ks
    assert "url --url=http://10.50.0.1/repo/rocky/9/BaseOS/x86_64/os/" in ks
    assert "inst.ks=http://10.50.0.1/boot/nodes/gpu01/ks.cfg" in boot_script(files, "b8:3f:d2:00:00:01", "install")


def test_plain_text_password_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(InputError) as exc:
        render(tmp_path, provisioning='  root_password_hash: "hunter2-plain"\n')
    assert "provisioning.root_password_hash" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_access_key_pub_file_is_added_for_root(tmp_path):
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAccessKey0000000000000000000000000000000000 podsys\n")
    path = write_manifest(tmp_path)
    path.write_text(path.read_text() + "access: {private_key_file: id_ed25519}\n")
    ks_keys = render_files(load_cluster(path))["provision/boot/nodes/gpu01/preseed.cfg"]
    import base64

    b64 = re.search(r"echo '([A-Za-z0-9+/=]+)'", ks_keys).group(1)
    assert base64.b64decode(b64).decode().splitlines() == [KEY, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAccessKey0000000000000000000000000000000000 podsys"]


@pytest.mark.parametrize("os_key", SUPPORTED_OS_KEYS)
def test_every_supported_os_has_an_installer_config(tmp_path, os_key):
    # The schema's SUPPORTED_OS is the one list; validation refuses anything else, so every
    # entry must render an unattended installer (render has no second list to consult).
    distro, version = os_key.split("-", 1)
    files = render(tmp_path, distro=distro, version=version)
    assert any(name.startswith("provision/boot/nodes/gpu01/") for name in files), sorted(files)


def test_render_is_deterministic(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path, distro="ubuntu", version="22.04"))
    assert render_files(cluster) == render_files(cluster)


def test_nodes_json_lists_pxe_nodes_for_the_head(tmp_path):
    data = json.loads(render(tmp_path, provisioning="  default_boot_state: local\n")["provision/nodes.json"])
    assert data["default_boot_state"] == "local"
    gpu02 = data["nodes"]["gpu02"]
    assert {k: gpu02[k] for k in ("ip", "mac", "pxe", "disk", "method")} == {
        "ip": "10.50.1.2", "mac": "b8:3f:d2:00:00:02", "pxe": True, "disk": "/dev/nvme0n1", "method": "installer"}
    assert "netcfg/get_ipaddress=10.50.1.2" in gpu02["kernel_args"]
    assert data["boot"]["media_url"] == "http://10.50.0.1/boot/media/debian-12"


def test_repo_follows_the_package_source(tmp_path):
    proxied = render(tmp_path)
    assert "proxy_pass http://10.50.0.1:3142/;" in proxied["provision/nginx-site.conf"]
    assert "alias /srv/podsys/repo/" not in proxied["provision/nginx-site.conf"]
    assert "d-i mirror/http/directory string /repo/debian" in proxied["provision/boot/nodes/gpu01/preseed.cfg"]
    online = render(tmp_path, packages="online")["provision/boot/nodes/gpu01/preseed.cfg"].splitlines()
    assert "d-i mirror/http/hostname string deb.debian.org" in online
    assert "d-i mirror/http/directory string /debian" in online


def test_status_service_runtime_needs_only_the_stdlib(tmp_path):
    """The role copies provision/service/ to the head and runs it with plain python3."""
    import subprocess
    import sys

    files = render(tmp_path)
    runtime = tmp_path / "runtime"
    for rel, content in files.items():
        if rel.startswith("provision/service/") or rel == "provision/nodes.json":
            target = runtime / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    # -S: no site-packages, so neither podsys's dependencies nor the installed podsys are there.
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "podsys.provision.state", "init", "--nodes", str(runtime / "provision/nodes.json"),
         "--state-dir", str(tmp_path / "state"), "--boot-root", str(tmp_path / "no-boot-tree")],
        capture_output=True, text=True, env={"PYTHONPATH": str(runtime / "provision/service")}, cwd=tmp_path)
    assert "No module named" not in proc.stderr
    assert proc.returncode == 0 and proc.stdout == "changed: 3\n", proc.stderr
    # the service makes each node's iPXE script from the rendered table with the stdlib alone
    code = ("import sys, podsys.provision.status as s; from podsys.provision.boot_scripts import load_boot_table; "
            "print(s.__file__); sys.stdout.write(load_boot_table(sys.argv[1]).script('gpu01', 'install'))")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(runtime / "provision/nodes.json")],
                          capture_output=True, text=True, env={"PYTHONPATH": str(runtime / "provision/service")},
                          cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith(str(runtime)), proc.stderr
    assert proc.stdout.split("\n", 1)[1] == boot_script(files, "b8:3f:d2:00:00:01", "install")


def test_domain_that_could_break_a_kernel_command_line_is_refused(tmp_path):
    path = write_manifest(tmp_path)
    path.write_text(path.read_text().replace("domain: rt.example", 'domain: "rt.example\\nd-i foo string bar"'))
    with pytest.raises(InputError, match="metadata.domain"):
        render_files(load_cluster(path))


def test_keys_that_would_break_a_config_line_are_refused(tmp_path):
    path = write_manifest(tmp_path)
    path.write_text(path.read_text().replace(f'["{KEY}"]', '["ssh-ed25519 AAAAC3Nza x\\" --username=evil"]'))
    with pytest.raises(InputError, match=r"root_authorized_keys\[0\]"):
        render_files(load_cluster(path))
