"""vagrant/: the rehearsal manifest loads and renders, and it lists the MACs the Vagrantfile
gives its compute VMs (the two files must change together)."""

from __future__ import annotations

import re

from podsys.cluster.load import load_cluster
from podsys.provision.render import render_files
from tests.conftest import REPO_ROOT

VAGRANT = REPO_ROOT / "vagrant"


def test_vagrant_manifest_matches_the_vagrantfile():
    vagrantfile = (VAGRANT / "Vagrantfile").read_text()
    pattern = re.search(r'NODE_MAC = "([0-9a-f:%x0-9]+)"', vagrantfile).group(1)
    head = re.search(r'HEAD_ADDRESS = "([0-9.]+)"', vagrantfile).group(1)
    network = re.search(r'PROVISION_NETWORK = "([^"]+)"', vagrantfile).group(1)
    cluster = load_cluster(VAGRANT / "cluster.yaml")
    assert str(cluster.manifest.head.address) == head
    assert [n.mac for n in cluster.nodes] == [pattern % i for i in range(1, len(cluster.nodes) + 1)]
    assert "1..4" in vagrantfile and len(cluster.nodes) == 4
    assert vagrantfile.count("libvirt__network_name: PROVISION_NETWORK") == 2 and network == "podsys-provision"
    files = render_files(cluster)
    assert "interface=eth1" in files["provision/dnsmasq.conf"].splitlines()
    assert "d-i partman-auto/disk string /dev/vda" in files["provision/boot/nodes/node02/preseed.cfg"]
