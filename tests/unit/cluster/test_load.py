"""Every validation error of the manifest issue, one bad manifest each; each asserts the
message names the file, the line and the field."""

from __future__ import annotations

import pytest

from podsys.errors import InputError
from podsys.cluster.load import load_cluster
from tests.unit.manifest_samples import MACS, VALID, line_of, problems_for, write_manifest


def assert_problem(problems, file, line, field, *fragments):
    for p in problems:
        if p.file == str(file) and p.line == line and p.field == field and all(f in p.message for f in fragments):
            return p
    pytest.fail(f"no problem at {file}:{line} {field} with {fragments}; got:\n" + "\n".join(map(str, problems)))


def test_valid_manifest_resolves(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path))
    assert [n.name for n in cluster.nodes] == ["gpu001", "gpu002", "gpu003", "gpu004"]
    node = cluster.nodes[1]
    assert (node.provision_ip, node.bmc_ip, node.ipoib_ip) == ("10.10.1.2", "10.20.1.2", "10.30.1.2")
    assert node.mac == "b8:3f:d2:00:00:02"
    assert cluster.stack.id == "r580-cuda13.0"


def test_yaml_syntax_error(tmp_path):
    text = VALID.replace("layers: [base, gpu,", "layers: [base, gpu,\n  oops: [")
    path, problems = problems_for(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].file == str(path) and problems[0].line is not None
    assert "YAML syntax error" in problems[0].message


def test_duplicate_yaml_key(tmp_path):
    text = VALID.replace("stack: auto\n", "stack: auto\nstack: r535-cuda12.2\n")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "stack: r535"), "stack", "duplicate key")


def test_misspelt_key_suggests_closest(tmp_path):
    text = VALID.replace("    hosts: gpu[001-004]", "    hots: gpu[001-004]")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "hots:"), "node_groups[0].hots", "unknown key 'hots'", "did you mean 'hosts'")
    # the now-missing required key is reported too, in the same run
    assert_problem(problems, path, line_of(text, "- name: gpu"), "node_groups[0].hosts", "required field is missing")


def test_unknown_top_level_key(tmp_path):
    text = VALID + "monitorng: {grafana: true}\n"
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "monitorng"), "monitorng", "did you mean 'monitoring'")


def test_wrong_type(tmp_path):
    text = VALID.replace("uid: 2001", "uid: two-thousand")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "uid: two"), "users[0].uid", "valid integer")


def test_bad_ip_and_bad_enum_reported_together(tmp_path):
    text = VALID.replace("gateway: 10.10.0.254", "gateway: 10.10.0.300").replace("distro: ubuntu", "distro: ubunty")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "gateway"), "networks.provision.gateway", "10.10.0.300")
    assert_problem(problems, path, line_of(text, "distro"), "os.distro", "'ubuntu'")


def test_malformed_hostlist(tmp_path):
    text = VALID.replace("hosts: gpu[001-004]", "hosts: gpu[001-004")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "hosts: gpu"), "node_groups[0].hosts", "malformed hostlist")


def test_duplicate_hostnames_across_groups(tmp_path):
    text = VALID.replace(
        "slurm:",
        "  - name: more\n    hosts: gpu[004-005]\n    hardware: hgx-h100-8gpu\n    pxe: false\nslurm:",
    )
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "hosts: gpu[004-005]"), "node_groups[1].hosts", "duplicate hostname gpu004", "'gpu'")


def test_malformed_mac_in_csv_names_csv_line(tmp_path):
    macs = MACS.replace("b8:3f:d2:00:00:03", "b8:3f:d2:00:00:zz")
    path, problems = problems_for(tmp_path, VALID, macs)
    assert_problem(problems, tmp_path / "gpu-macs.csv", 4, "mac", "malformed MAC")


def test_malformed_inline_mac(tmp_path):
    text = VALID.replace("    macs_file: gpu-macs.csv", "    nodes: {gpu001: {mac: '52:54:00:12:34'}}")
    path, problems = problems_for(tmp_path, text, macs=None)
    assert_problem(problems, path, line_of(text, "nodes: {gpu001"), "node_groups[0].nodes.gpu001.mac", "malformed MAC")


def test_duplicate_mac(tmp_path):
    macs = MACS.replace("b8:3f:d2:00:00:04", "B8-3F-D2-00-00-01")
    path, problems = problems_for(tmp_path, VALID, macs)
    # Issue 11 "errors point at the item": the CSV row that repeats the MAC, not the group.
    assert_problem(problems, tmp_path / "gpu-macs.csv", 5, "mac", "duplicate MAC b8:3f:d2:00:00:01", "gpu004", "gpu001")


def test_missing_mac_for_pxe_node(tmp_path):
    macs = "\n".join(MACS.splitlines()[:3]) + "\n"  # gpu003, gpu004 missing
    path, problems = problems_for(tmp_path, VALID, macs)
    assert_problem(problems, path, line_of(VALID, "macs_file"), "node_groups[0].macs_file", "2 node(s) must PXE-boot", "gpu[003-004]")


def test_head_outside_provision_network(tmp_path):
    text = VALID.replace("address: 10.10.0.1}", "address: 10.99.0.1}")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "head:"), "head.address", "outside the provision network")


def test_start_address_outside_network(tmp_path):
    text = VALID.replace("start_address: 10.10.1.1", "start_address: 10.11.1.1")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "start_address"), "node_groups[0].start_address", "outside 10.10.0.0/16")


def test_pinned_address_collides_with_head_and_gateway(tmp_path):
    text = VALID.replace(
        "    macs_file: gpu-macs.csv",
        "    macs_file: gpu-macs.csv\n    nodes:\n      gpu001: {address: 10.10.0.1}\n      gpu002: {address: 10.10.0.254}",
    )
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "gpu001: {address"), "node_groups[0].nodes.gpu001.address", "collides with the head (mu01)")
    assert_problem(problems, path, line_of(text, "gpu002: {address"), "node_groups[0].nodes.gpu002.address", "collides with the provision gateway")


def test_duplicate_ip_between_nodes(tmp_path):
    text = VALID.replace(
        "    macs_file: gpu-macs.csv",
        "    macs_file: gpu-macs.csv\n    nodes:\n      gpu001: {address: 10.10.5.5}\n      gpu002: {address: 10.10.5.5}",
    )
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "gpu002: {address"), "node_groups[0].nodes.gpu002.address", "10.10.5.5 collides with gpu001")


def test_gateway_colliding_with_head(tmp_path):
    text = VALID.replace("gateway: 10.10.0.254", "gateway: 10.10.0.1")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "gateway"), "networks.provision.gateway", "collides with the head")


def test_group_does_not_fit_in_network(tmp_path):
    text = VALID.replace("10.10.0.0/16", "10.10.0.0/24").replace("start_address: 10.10.1.1", "start_address: 10.10.0.252")
    text = text.replace("gateway: 10.10.0.254", "gateway: 10.10.0.253")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "hosts: gpu"), "node_groups[0].hosts", "4 hosts from 10.10.0.252 do not fit in 10.10.0.0/24")


def test_bmc_network_too_small_for_offset(tmp_path):
    text = VALID.replace("bmc: {cidr: 10.20.0.0/16}", "bmc: {cidr: 10.20.0.0/24}")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "bmc: {cidr"), "networks.bmc.cidr", "does not fit in 10.20.0.0/24")


def test_overlapping_networks(tmp_path):
    text = VALID.replace("bmc: {cidr: 10.20.0.0/16}", "bmc: {cidr: 10.10.128.0/17}")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "bmc: {cidr"), "networks.bmc.cidr", "overlaps the provision network")


def test_unknown_hardware_profile(tmp_path):
    text = VALID.replace("hardware: hgx-h100-8gpu", "hardware: hgx-h100-8gpus")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "hardware:"), "node_groups[0].hardware", "unknown hardware profile", "did you mean 'hgx-h100-8gpu'")


def test_unknown_stack(tmp_path):
    text = VALID.replace("stack: auto", "stack: r999-cuda99")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "stack: r999"), "stack", "unknown stack 'r999-cuda99'")


def test_stack_refused_for_gpu_names_rule_and_source(tmp_path):
    text = VALID.replace("hardware: hgx-h100-8gpu", "hardware: hgx-h200-8gpu").replace("stack: auto", "stack: r535-cuda12.2")
    path, problems = problems_for(tmp_path, text)
    p = assert_problem(problems, path, line_of(text, "stack: r535"), "stack", "refuses stack r535-cuda12.2", "H200 needs driver >= 550.90.07")
    assert "source:" in p.message and "rule gpu_minimum" in p.message


def test_stack_refused_for_os(tmp_path):
    text = VALID.replace('version: "22.04"', 'version: "24.04"').replace("stack: auto", "stack: r535-cuda12.2")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "stack: r535"), "stack", "not pinned for ubuntu-24.04", "rule stack_supports_os")


def test_auto_stack_on_debian_keeps_the_matrix_ofed(tmp_path):
    # DOCA >= 2.5.2 publishes debian12.5 repositories, so IB nodes on Debian 12 keep the
    # stack's OFED instead of being forced onto the inbox stack (issue 13, finding 5).
    text = VALID.replace('{distro: ubuntu, version: "22.04"}', '{distro: debian, version: "12"}')
    cluster = load_cluster(write_manifest(tmp_path, text))
    assert cluster.stack.id == "r580-cuda13.0" and cluster.manifest.infiniband.stack == "matrix"


def test_partition_names_unknown_group(tmp_path):
    text = VALID.replace("node_groups: [gpu], default", "node_groups: [gpus], default")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "partitions"), "slurm.partitions[0].node_groups[0]", "unknown node group 'gpus'")


def test_all_errors_reported_not_just_first(tmp_path):
    text = (
        VALID.replace("hardware: hgx-h100-8gpu", "hardware: nope")
        .replace("stack: auto", "stack: nope")
        .replace("start_address: 10.10.1.1", "start_address: 10.99.1.1")
    )
    macs = MACS.replace("b8:3f:d2:00:00:03", "xx")
    path, problems = problems_for(tmp_path, text, macs)
    fields = {p.field for p in problems}
    assert {"node_groups[0].hardware", "stack", "node_groups[0].start_address", "mac"} <= fields
    # sorted: manifest problems by line first, then the csv's
    manifest_lines = [p.line for p in problems if p.file == str(path)]
    assert manifest_lines == sorted(manifest_lines)


def test_user_duplicates(tmp_path):
    text = VALID.replace(
        'users: [{name: alice, uid: 2001, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceTestKey0000000000000000000000000000000 alice"]}]',
        "users:\n  - {name: alice, uid: 2001}\n  - {name: bob, uid: 2001}\n  - {name: alice, uid: 2003}",
    )
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "name: bob"), "users[1].uid", "uid 2001 is already used by 'alice'")
    assert_problem(problems, path, line_of(text, "uid: 2003"), "users[2].name", "duplicate user 'alice'")


def test_missing_manifest_file(tmp_path):
    with pytest.raises(InputError) as info:
        load_cluster(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value)


def test_empty_and_non_mapping(tmp_path):
    for text in ("", "- just\n- a list\n"):
        with pytest.raises(InputError):
            load_cluster(write_manifest(tmp_path, text))


def test_unsupported_os_version(tmp_path):
    text = VALID.replace('version: "22.04"', 'version: "20.04"')
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "os:"), "os", "ubuntu 20.04 is not supported", "22.04, 24.04")


def test_domain_must_be_a_dns_name(tmp_path):
    text = VALID.replace("domain: cluster.local", "domain: 'bad domain;reboot'")
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "metadata"), "metadata.domain", "must be a DNS name", "bad domain;reboot")


def test_bundle_port_taken_by_another_head_service(tmp_path):
    text = VALID + "packages:\n  source: bundle\n  bundle_port: 9090\n"
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "bundle_port: 9090"), "packages.bundle_port",
                   "port 9090 for the bundle's web server is already used on the head by Prometheus")


def test_bundle_path_must_be_absolute(tmp_path):
    text = VALID + "packages:\n  source: bundle\n  bundle_path: srv/bundle\n"
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "bundle_path:"), "packages.bundle_path",
                   "must be an absolute path on the head")


def test_bundle_defaults_resolve(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path, VALID + "packages: {source: bundle}\n"))
    assert (cluster.manifest.packages.bundle_path, cluster.manifest.packages.bundle_port) == ("/srv/podsys/bundle", 8080)


def test_bundle_fingerprint_must_be_40_hex_digits(tmp_path):
    text = VALID + "packages:\n  source: bundle\n  bundle_fingerprint: 'ABCD 1234'\n"
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, "bundle_fingerprint:"), "packages.bundle_fingerprint", "should match pattern")
