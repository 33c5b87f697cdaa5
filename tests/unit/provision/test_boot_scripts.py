"""podsys.provision.boot_scripts: the iPXE scripts the status service makes from the node table
are byte for byte the ones podsys rendered as files per node before. jinja_ipxe/ holds those
Jinja templates as they were (podsys/templates/provision/node-*.ipxe.j2 until the boot service
replaced them), rendered here with the same context render.py gave them."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from podsys.cluster.load import load_cluster
from podsys.provision import image_boot
from podsys.provision import render as provision_render
from podsys.provision.boot_scripts import BootTable, mac_key
from podsys.provision.image import cluster_images
from tests.unit.provision.test_render import write_manifest

JINJA = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "jinja_ipxe"),
                           undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                           lstrip_blocks=True, autoescape=False)

# The lab's VM group installs from an image; one VM boots with SeaBIOS, the other with OVMF.
# The manifest names no firmware: each script branches on iPXE's ${platform} at boot, so one
# script per boot state serves both, and both kinds of client must get it unchanged.
IMAGE_GROUP = """\
  - name: vm
    hosts: vm[1-2]
    hardware: cpu-only
    start_address: 10.50.2.1
    disk: /dev/vda
    provisioning: {method: image}
    nodes:
      vm1: {mac: "52:54:00:00:00:01"}
      vm2: {mac: "52:54:00:00:00:02"}
"""


def jinja_scripts(cluster) -> dict[str, dict[str, str]]:
    """mac -> {install, local}: what render.py wrote to ipxe/{install,local}/<mac>.ipxe."""
    m = cluster.manifest
    urls = provision_render.urls_for(cluster)
    image_of = image_boot.image_nodes(cluster_images(cluster))
    out = {}
    for node in provision_render.boot_nodes(cluster):
        view = provision_render.node_view(cluster, node, urls)
        if not view.pxe:
            continue
        if view.name in image_of:
            key, name = image_of[view.name]
            install = JINJA.get_template("node-image.ipxe.j2").render(
                node=view, image_name=name, ramdisk_url=image_boot.ramdisk_url(urls.boot),
                kernel_args=image_boot.ramdisk_args(cluster, view, key, urls.boot))
        else:
            install = JINJA.get_template("node-install.ipxe.j2").render(
                node=view, os_key=m.os.key, media_url=f"{urls.boot}/media/{m.os.key}",
                kernel_args=provision_render._kernel_args(cluster, view, urls))
        out[view.mac] = {"install": install, "local": JINJA.get_template("node-local.ipxe.j2").render(node=view)}
    return out


@pytest.mark.parametrize("os_key", ["debian-12", "ubuntu-22.04", "ubuntu-24.04", "rocky-9"])
def test_installer_and_image_scripts_match_the_jinja_templates(tmp_path, os_key):
    distro, version = os_key.split("-", 1)
    cluster = load_cluster(write_manifest(tmp_path, distro=distro, version=version, extra_group=IMAGE_GROUP))
    files = provision_render.render_files(cluster)
    expected = jinja_scripts(cluster)
    methods = {json.loads(files["provision/nodes.json"])["nodes"][n]["method"] for n in ("gpu01", "vm1")}
    assert methods == {"installer", "image"} and len(expected) == 5
    for mac, scripts in expected.items():
        for state, script in scripts.items():
            # iPXE asks with ${netX/mac:hexhyp}; any spelling of the MAC finds the node
            for spelling in (mac, mac_key(mac), mac.upper().replace(":", "-")):
                assert provision_render.boot_script(files, spelling, state) == script, (mac, state)


def test_each_state_gets_its_own_script_and_unknown_macs_none(tmp_path):
    files = provision_render.render_files(load_cluster(write_manifest(tmp_path, extra_group=IMAGE_GROUP)))
    image = provision_render.boot_script(files, "52-54-00-00-00-02", "install")
    local = provision_render.boot_script(files, "52-54-00-00-00-02", "local")
    assert "podsys.hostname=vm2 " in image and "/initrd.img" in image and "sanboot" not in image
    assert "iseq ${platform} efi && exit ||" in local and "sanboot --no-describe --drive 0x80" in local
    assert "kernel" not in local
    assert provision_render.boot_script(files, "52-54-00-00-00-09", "install") is None
    table = BootTable.from_data(json.loads(files["provision/nodes.json"]))
    assert set(table.by_mac.values()) == {"gpu01", "gpu02", "gpu03", "vm1", "vm2"}
    with pytest.raises(ValueError, match="unknown boot state 'disk'"):
        table.script("vm1", "disk")


def test_render_writes_no_script_files_per_node(tmp_path):
    files = provision_render.render_files(load_cluster(write_manifest(tmp_path, extra_group=IMAGE_GROUP)))
    ipxe = sorted(rel for rel in files if "/ipxe/" in rel)
    assert ipxe == ["provision/boot/ipxe/boot.ipxe"]
    # image nodes need nothing per node in the boot tree; installer nodes keep their configs
    assert not any(rel.startswith("provision/boot/nodes/vm") for rel in files)
    assert "provision/boot/nodes/gpu01/preseed.cfg" in files
    # nginx: a location for each installer node's config, none for image nodes
    nginx = files["provision/nginx-site.conf"]
    assert "location /boot/nodes/gpu01/ {" in nginx and "location /boot/nodes/vm" not in nginx
