import shutil

import yaml

from podsys.cluster.address_file import allocation_path
from podsys.cluster.load import load_cluster
from podsys.render.build import diff_render, render_cluster, render_files
from tests.unit.manifest_samples import MACS, VALID, write_manifest
from tests.conftest import REPO_ROOT as REPO


def build(tmp_path, text=VALID, macs=MACS):
    return load_cluster(write_manifest(tmp_path, text, macs))


def test_render_is_deterministic_byte_for_byte(tmp_path):
    a = render_files(build(tmp_path / "a" if (tmp_path / "a").mkdir() is None else None))
    b = render_files(build(tmp_path / "b" if (tmp_path / "b").mkdir() is None else None))
    assert a == b
    for rel in ("inventory/hosts.yml", "inventory/group_vars/all/main.yml", "provision/dnsmasq.conf"):
        assert a[rel] == b[rel]


def test_rendering_twice_writes_nothing_the_second_time(tmp_path):
    cluster = build(tmp_path)
    out = tmp_path / "build"
    first = render_cluster(cluster, out)
    assert first.added and not first.changed
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = render_cluster(load_cluster(cluster.manifest_path), out)
    assert not second.touched
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".rendered.json"} == {
        p: m for p, m in mtimes.items() if p.name != ".rendered.json"
    }


def test_inventory_groups_and_vars(tmp_path):
    files = render_files(build(tmp_path))
    inv = yaml.safe_load(files["inventory/hosts.yml"])["all"]["children"]
    assert list(inv["head"]["hosts"]) == ["mu01"]
    assert inv["nodes"]["hosts"]["gpu003"]["ansible_host"] == "10.10.1.3"
    assert set(inv["group_gpu"]["hosts"]) == {"gpu001", "gpu002", "gpu003", "gpu004"}
    for layer in ("base", "gpu", "infiniband", "slurm", "monitoring"):
        assert set(inv[f"layer_{layer}"]["hosts"]) == {"gpu001", "gpu002", "gpu003", "gpu004"}
    allv = yaml.safe_load(files["inventory/group_vars/all/main.yml"])
    assert allv["podsys_stack"]["driver"] == "580.95.05"
    assert allv["podsys_networks"]["provision"]["netmask"] == "255.255.0.0"
    assert [n["name"] for n in allv["podsys_nodes"]] == ["gpu001", "gpu002", "gpu003", "gpu004"]
    assert allv["podsys_nodes"][0]["gpu_count"] == 8
    host = inv["nodes"]["hosts"]["gpu002"]["podsys_node"]
    assert host["ip"] == "10.10.1.2" and host["bmc_ip"] == "10.20.1.2" and host["ipoib_ip"] == "10.30.1.2"
    hw = yaml.safe_load(files["inventory/group_vars/group_gpu.yml"])["podsys_hardware"]
    assert hw["gpu"]["count"] == 8 and hw["gpu"]["nvswitch"] is True


def test_via_head_adds_proxy_command_for_nodes_only(tmp_path):
    text = VALID.replace("head: {hostname: mu01, interface: eno1, address: 10.10.0.1}",
                         "head: {hostname: mu01, interface: eno1, address: 10.10.0.1, ssh_address: 192.168.77.2}")
    text += "access: {via_head: true, private_key_file: keys/id, known_hosts_file: keys/known}\n"
    files = render_files(build(tmp_path, text))
    inv = yaml.safe_load(files["inventory/hosts.yml"])["all"]
    assert inv["children"]["head"]["hosts"]["mu01"]["ansible_host"] == "192.168.77.2"
    proxy = inv["children"]["nodes"]["vars"]["ansible_ssh_common_args"]
    assert "ProxyCommand" in proxy and "root@192.168.77.2" in proxy and str(tmp_path / "keys/id") in proxy
    assert inv["vars"]["ansible_ssh_private_key_file"] == str(tmp_path / "keys/id")


def test_slurm_and_prometheus_facts_are_decided_in_the_rendered_vars(tmp_path):
    allv = yaml.safe_load(render_files(build(tmp_path))["inventory/group_vars/all/main.yml"])
    node = allv["podsys_nodes"][0]
    assert (node["slurm_gres"], node["slurm_gres_type"], node["slurm_gres_file"]) == ("gpu:h100:8", "h100", "/dev/nvidia[0-7]")
    assert allv["podsys_slurm"]["partitions"] == [
        {"name": "gpu", "nodes": "gpu[001-004]", "default": True, "max_time": "INFINITE"}]
    targets = allv["podsys_monitoring"]["targets"]
    assert [t["targets"][0] for t in targets["node"]] == ["10.10.0.1:9100"] + [f"10.10.1.{i}:9100" for i in range(1, 5)]
    assert targets["dcgm"][0] == {"targets": ["10.10.1.1:9400"],
                                  "labels": {"node": "gpu001", "group": "gpu", "hardware": "hgx-h100-8gpu"}}
    assert "nodes_conf" not in allv["podsys_slurm"] and "gres_conf" not in allv["podsys_slurm"]


def test_cpu_only_cluster_has_no_gres_or_dcgm(tmp_path):
    shutil.copy(REPO / "manifests/lab.yaml", tmp_path / "lab.yaml")
    files = render_files(load_cluster(tmp_path / "lab.yaml"))
    allv = yaml.safe_load(files["inventory/group_vars/all/main.yml"])
    assert all(n["slurm_gres"] is None and n["slurm_gres_file"] is None for n in allv["podsys_nodes"])
    assert allv["podsys_monitoring"]["targets"]["dcgm"] == []
    assert not [rel for rel in files if rel.startswith("files/")]


def test_allocation_file_keeps_addresses_when_group_grows(tmp_path):
    path = write_manifest(tmp_path)
    render_cluster(load_cluster(path), tmp_path / "build")
    recorded = yaml.safe_load(allocation_path(path).read_text())["provision"]
    assert recorded["gpu001"] == "10.10.1.1"
    # The admin inserts gpu000 before the others and pins nothing: without the allocation file
    # every node would shift by one address.
    grown = VALID.replace("hosts: gpu[001-004]", "hosts: gpu[000-005]")
    macs = MACS + "gpu000,b8:3f:d2:00:00:10\ngpu005,b8:3f:d2:00:00:15\n"
    cluster = load_cluster(write_manifest(tmp_path, grown, macs))
    got = {n.name: n.provision_ip for n in cluster.nodes}
    for name, addr in recorded.items():
        assert got[name] == addr
    assert got["gpu000"] == "10.10.1.5" and got["gpu005"] == "10.10.1.6"
    assert cluster.node("gpu000").bmc_ip == "10.20.1.5"


def test_diff_shows_changes_without_writing(tmp_path):
    path = write_manifest(tmp_path)
    out = tmp_path / "build"
    render_cluster(load_cluster(path), out)
    before = (out / "inventory/group_vars/all/main.yml").read_text()
    write_manifest(tmp_path, VALID.replace("default: true}", "default: true, max_time: '2-00:00:00'}"))
    text, result = diff_render(load_cluster(path), out)
    assert "-    max_time: INFINITE" in text
    assert "+    max_time: 2-00:00:00" in text
    assert "inventory/group_vars/all/main.yml" in result.changed
    assert (out / "inventory/group_vars/all/main.yml").read_text() == before


def test_removed_node_file_is_deleted(tmp_path):
    path = write_manifest(tmp_path)
    out = tmp_path / "build"
    render_cluster(load_cluster(path), out)
    stale = out / "inventory/group_vars/group_extra.yml"
    two_groups = VALID.replace("slurm:", "  - {name: extra, hosts: x1, hardware: cpu-only, pxe: false}\nslurm:")
    write_manifest(tmp_path, two_groups)
    render_cluster(load_cluster(path), out)
    assert stale.exists()
    write_manifest(tmp_path, VALID)
    result = render_cluster(load_cluster(path), out)
    assert result.removed == ["inventory/group_vars/group_extra.yml"]
    assert "health/nodes.json" in result.changed  # x1 left the cluster's one health table
    assert not stale.exists()


def test_a_removed_node_leaves_no_directory_behind(tmp_path):
    # Installer nodes get a directory of their own (image nodes are answered without one).
    installer = VALID.replace("    macs_file: gpu-macs.csv\n", "    macs_file: gpu-macs.csv\n    provisioning: {method: installer}\n")
    path = write_manifest(tmp_path, installer)
    out = tmp_path / "build"
    render_cluster(load_cluster(path), out)
    assert (out / "provision/boot/nodes/gpu004").is_dir()
    write_manifest(tmp_path, installer.replace("hosts: gpu[001-004]", "hosts: gpu[001-003]"))
    result = render_cluster(load_cluster(path), out)
    assert any(rel.startswith("provision/boot/nodes/gpu004/") for rel in result.removed)
    assert not (out / "provision/boot/nodes/gpu004").exists()
    assert (out / "provision/boot/nodes/gpu003").is_dir()


def test_example_manifests_validate(tmp_path):
    for name in ("lab.yaml", "hgx-h100-32.yaml", "large-4096.yaml"):
        for f in (REPO / "manifests").glob("*"):
            shutil.copy(f, tmp_path / f.name)
        cluster = load_cluster(tmp_path / name)
        assert cluster.nodes
    big = load_cluster(tmp_path / "large-4096.yaml")
    assert len(big.nodes) == 4096
    assert big.node("b200-0001").bmc_ip == "10.129.64.1"
