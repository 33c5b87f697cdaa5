"""podsys.cluster.checks: `podsys validate` on bad manifests written for these tests, one
defect each (issue 11's hostile tester, kept as data). Each case must exit 2 with one line
naming the file, the line and the field, show the bad value (never a secret) and no
traceback; the table of checks runs every check in one pass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from podsys.cluster.checks import CHECKS, ssh_key_problem
from podsys.cluster.load import load_cluster
from podsys.errors import InputError
from tests.conftest import PeakMemory, invoke
from tests.unit.manifest_samples import MACS, VALID, line_of, problems_for, write_manifest

ALICE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceTestKey0000000000000000000000000000000 alice"
GROUP = "    macs_file: gpu-macs.csv\n"


@dataclass(frozen=True)
class Bad:
    """One defect: the manifest text after `mutate`, the line it must point at (the first
    line containing `needle`, in `where`: the manifest or the MAC CSV), the field and a
    fragment of the message that shows the bad value. `secret` must never be printed."""

    name: str
    old: str
    new: str
    needle: str
    field: str
    shows: str
    secret: str | None = None
    where: str = "manifest"  # or "csv": the mutation applies to the MAC CSV
    also: tuple[str, str] | None = None  # a second (old, new) replacement in the manifest

    def texts(self) -> tuple[str, str]:
        if self.where == "csv":
            assert self.old in MACS, self.name
            return VALID, MACS.replace(self.old, self.new, 1)
        if self.old == "":
            return VALID + self.new, MACS
        assert self.old in VALID, self.name
        text = VALID.replace(self.old, self.new, 1)
        if self.also:
            assert self.also[0] in text, self.name
            text = text.replace(*self.also, 1)
        return text, MACS


def group_extra(extra: str) -> tuple[str, str]:
    """(old, new) adding lines to the node group."""
    return GROUP, GROUP + extra


CASES = [
    # schema: keys, types, enums, patterns
    Bad("misspelt top-level key", "", "monitorng: {grafana: true}\n", "monitorng", "monitorng", "did you mean 'monitoring'"),
    Bad("wrong apiVersion", "apiVersion: podsys/v1", "apiVersion: podsys/v2", "apiVersion", "apiVersion", "podsys/v2"),
    Bad("wrong kind", "kind: Cluster", "kind: Clustr", "kind:", "kind", "Clustr"),
    Bad("cluster name not a DNS label", "name: pod01", "name: Pod_01", "metadata:", "metadata.name", "Pod_01"),
    Bad("domain with a space", "domain: cluster.local", "domain: 'bad domain'", "metadata:", "metadata.domain", "bad domain"),
    Bad("head hostname invalid", "hostname: mu01", "hostname: MU_01", "head:", "head.hostname", "MU_01"),
    Bad("interface name too long for Linux", "interface: eno1", "interface: enp129s0f1np1xyz0", "head:", "head.interface",
        "enp129s0f1np1xyz0"),
    Bad("interface name empty", "interface: eno1", "interface: ''", "head:", "head.interface", "''"),
    Bad("interface name with a slash", "interface: eno1", "interface: eth/0", "head:", "head.interface", "eth/0"),
    # addresses
    Bad("head is the network address", "address: 10.10.0.1}", "address: 10.10.0.0}", "head:", "head.address",
        "10.10.0.0 is the network address"),
    Bad("head is the broadcast address", "address: 10.10.0.1}", "address: 10.10.255.255}", "head:", "head.address",
        "10.10.255.255 is the broadcast address"),
    Bad("head outside the network", "address: 10.10.0.1}", "address: 10.99.0.1}", "head:", "head.address", "10.99.0.1"),
    Bad("gateway is the broadcast address", "gateway: 10.10.0.254", "gateway: 10.10.255.255", "gateway",
        "networks.provision.gateway", "10.10.255.255 is the broadcast address"),
    Bad("gateway is the head", "gateway: 10.10.0.254", "gateway: 10.10.0.1", "gateway", "networks.provision.gateway",
        "10.10.0.1 collides with the head"),
    Bad("gateway not an address", "gateway: 10.10.0.254", "gateway: 10.10.0.300", "gateway", "networks.provision.gateway",
        "10.10.0.300"),
    Bad("network with host bits", "cidr: 10.10.0.0/16", "cidr: 10.10.0.5/16", "provision:", "networks.provision.cidr",
        "10.10.0.5/16"),
    Bad("bmc network overlaps provision", "bmc: {cidr: 10.20.0.0/16}", "bmc: {cidr: 10.10.128.0/17}", "bmc:",
        "networks.bmc.cidr", "10.10.128.0/17"),
    Bad("ipoib network overlaps provision", "ipoib: {cidr: 10.30.0.0/16}", "ipoib: {cidr: 10.10.0.0/16}", "ipoib:",
        "networks.ipoib.cidr", "overlaps the provision network 10.10.0.0/16"),
    Bad("mtu too small", "dns: [10.10.0.1]}", "dns: [10.10.0.1], mtu: 100}", "provision:", "networks.provision.mtu", "100"),
    Bad("start address is the network address", "start_address: 10.10.1.1", "start_address: 10.10.0.0", "start_address",
        "node_groups[0].start_address", "10.10.0.0 is the network address"),
    Bad("start address outside the network", "start_address: 10.10.1.1", "start_address: 10.11.1.1", "start_address",
        "node_groups[0].start_address", "10.11.1.1 is outside"),
    Bad("start address on the head", "start_address: 10.10.1.1", "start_address: 10.10.0.1", "start_address",
        "node_groups[0].start_address", "the head (mu01) at 10.10.0.1"),
    Bad("group range runs into the gateway", "start_address: 10.10.1.1", "start_address: 10.10.0.252", "start_address",
        "node_groups[0].start_address", "the provision gateway at 10.10.0.254"),
    Bad("pinned node address is the broadcast address", *group_extra("    nodes: {gpu001: {address: 10.10.255.255}}\n"),
        "nodes: {gpu001", "node_groups[0].nodes.gpu001.address", "10.10.255.255 is the broadcast address"),
    Bad("pinned BMC address outside the BMC network", *group_extra("    nodes: {gpu001: {bmc_address: 10.99.0.9}}\n"),
        "nodes: {gpu001", "node_groups[0].nodes.gpu001.bmc_address", "10.99.0.9 is outside 10.20.0.0/16"),
    Bad("pinned BMC address without a BMC network", *group_extra("    nodes: {gpu001: {bmc_address: 10.20.0.9}}\n"),
        "nodes: {gpu001", "node_groups[0].nodes.gpu001.bmc_address", "10.20.0.9 is set but networks.bmc is not defined",
        also=("  bmc: {cidr: 10.20.0.0/16}\n", "")),
    # hostlists and names
    Bad("malformed hostlist", "hosts: gpu[001-004]", "hosts: gpu[001-004", "hosts:", "node_groups[0].hosts", "gpu[001-004"),
    Bad("hostlist of ten million nodes", "hosts: gpu[001-004]", "hosts: gpu[0000001-9999999]", "hosts:",
        "node_groups[0].hosts", "9999999 nodes"),
    Bad("hostlist yields an invalid hostname", "hosts: gpu[001-004]", "hosts: GPU[001-004]", "hosts:",
        "node_groups[0].hosts", "GPU001"),
    Bad("node entry for a host not in the group", *group_extra("    nodes: {gpu999: {}}\n"), "nodes: {gpu999",
        "node_groups[0].nodes.gpu999", "gpu999 is not in hosts"),
    Bad("group layer the cluster does not enable", *group_extra("    layers: [base, container]\n"), "layers: [base, container]",
        "node_groups[0].layers[1]", "'container'"),
    Bad("unknown layer", "layers: [base, gpu, infiniband, slurm, monitoring]",
        "layers: [base, gpu, infiniband, slurm, monitorin]", "layers:", "layers[4]", "monitorin"),
    Bad("unknown hardware profile", "hardware: hgx-h100-8gpu", "hardware: hgx-h100", "hardware:", "node_groups[0].hardware",
        "'hgx-h100'"),
    Bad("unsupported OS release", 'version: "22.04"', 'version: "20.04"', "os:", "os", "20.04"),
    Bad("unknown stack", "stack: auto", "stack: r999-cuda99", "stack:", "stack", "r999-cuda99"),
    Bad("install disk not a /dev path", "disk: /dev/nvme0n1", "disk: nvme0n1", "disk:", "node_groups[0].disk", "nvme0n1"),
    Bad("install disk escaping /dev", "disk: /dev/nvme0n1", "disk: /dev/../etc/passwd", "disk:", "node_groups[0].disk",
        "/dev/../etc/passwd"),
    # MACs
    Bad("inline MAC all zeros", *group_extra('    nodes: {gpu001: {mac: "00:00:00:00:00:00"}}\n'), "nodes: {gpu001",
        "node_groups[0].nodes.gpu001.mac", "00:00:00:00:00:00 is all zeros"),
    Bad("inline MAC broadcast", *group_extra('    nodes: {gpu001: {mac: "ff:ff:ff:ff:ff:ff"}}\n'), "nodes: {gpu001",
        "node_groups[0].nodes.gpu001.mac", "ff:ff:ff:ff:ff:ff is the broadcast address"),
    Bad("inline MAC multicast", *group_extra('    nodes: {gpu001: {mac: "01:00:5e:00:00:01"}}\n'), "nodes: {gpu001",
        "node_groups[0].nodes.gpu001.mac", "01:00:5e:00:00:01 is a multicast address"),
    Bad("inline MAC read by YAML as a base-60 number", *group_extra("    nodes: {gpu001: {mac: 52:54:00:20:31:47}}\n"),
        "nodes: {gpu001", "node_groups[0].nodes.gpu001.mac", 'quote it: "52:54:00:20:31:47"'),
    Bad("CSV MAC multicast", "b8:3f:d2:00:00:03", "03:3f:d2:00:00:03", "gpu003", "mac", "03:3f:d2:00:00:03", where="csv"),
    Bad("CSV MAC twice", "b8:3f:d2:00:00:04", "b8:3f:d2:00:00:01", "gpu004", "mac", "duplicate MAC b8:3f:d2:00:00:01",
        where="csv"),
    Bad("CSV row without a MAC", "gpu002,b8:3f:d2:00:00:02", "gpu002", "gpu002", "", "'gpu002'", where="csv"),
    Bad("macs_file that does not exist", "macs_file: gpu-macs.csv", "macs_file: gpu-macz.csv", "macs_file",
        "node_groups[0].macs_file", "gpu-macz.csv"),
    # Slurm
    Bad("second default partition", "default: true}]}",
        "default: true}, {name: more, node_groups: [gpu],\n  default: true}]}", "  default: true}]}",
        "slurm.partitions[1].default", "'more' is marked default"),
    Bad("partition name with a space", "{name: gpu, node_groups", "{name: 'gpu part', node_groups", "partitions",
        "slurm.partitions[0].name", "gpu part"),
    Bad("partition time limit Slurm cannot read", "default: true}]}", "default: true, max_time: forever}]}", "partitions",
        "slurm.partitions[0].max_time", "forever"),
    Bad("partition names an unknown group", "node_groups: [gpu], default", "node_groups: [gpus], default", "partitions",
        "slurm.partitions[0].node_groups[0]", "'gpus'"),
    Bad("select type parameters smuggling a line", "slurm: {", 'slurm: {select_type_parameters: "CR_Core\\nNodeName=evil", ',
        "select_type_parameters", "slurm.select_type_parameters", "NodeName=evil"),
    # users and keys
    Bad("user name with capitals", "name: alice, uid", "name: Alice, uid", "users:", "users[0].name", "Alice"),
    Bad("uid 0", "uid: 2001", "uid: 0", "users:", "users[0].uid", "(got 0)"),
    Bad("uid used twice", "alice\"]}]", "alice\"]}, {name: bob, uid: 2001}]", "users:", "users[1].uid",
        "uid 2001 is already used by 'alice'"),
    Bad("user shell not an absolute path", "uid: 2001,", "uid: 2001, shell: bash,", "users:", "users[0].shell", "bash"),
    Bad("user key that is not base64", ALICE_KEY, "ssh-ed25519 AAAA!!!!C3Nz alice", "users:",
        "users[0].ssh_authorized_keys[0]", "not valid base64"),
    Bad("user key smuggling a second key", ALICE_KEY, ALICE_KEY + "\\nssh-rsa AAAAB3Nza evil", "users:",
        "users[0].ssh_authorized_keys[0]", "more than one line"),
    Bad("user key of an unknown type", ALICE_KEY, ALICE_KEY.replace("ssh-ed25519", "ssh-foo"), "users:",
        "users[0].ssh_authorized_keys[0]", "'ssh-foo'"),
    Bad("root key that is not a key", "", 'provisioning: {root_authorized_keys: ["not a key"]}\n', "root_authorized_keys",
        "provisioning.root_authorized_keys[0]", "'not a key'"),
    Bad("root password in plain text", "", "provisioning: {root_password_hash: hunter2plain}\n", "root_password_hash",
        "provisioning.root_password_hash", "crypt(3)", secret="hunter2plain"),
    Bad("user web password in plain text", "uid: 2001,", "uid: 2001, password_hash: letmein99,", "users:",
        "users[0].password_hash", "crypt(3)", secret="letmein99"),
    Bad("root password hash that is a number", "", "provisioning: {root_password_hash: 31415926}\n", "root_password_hash",
        "provisioning.root_password_hash", "crypt(3)", secret="31415926"),
    Bad("proxy URL with credentials that is not a URL", "", "packages: {proxy: 'admin:s3cretpw@proxy'}\n", "proxy:",
        "packages.proxy", "http:// or https:// URL", secret="s3cretpw"),
    Bad("user group with a space", "uid: 2001,", "uid: 2001, groups: [wheel, 'sudo users'],", "users:",
        "users[0].groups[1]", "sudo users"),
    Bad("BMC user name with a space", "", "bmc: {username: 'ad min', password_file: bmc.pw}\n", "username:", "bmc.username",
        "ad min"),
    Bad("access key path smuggling a line", "", 'access: {private_key_file: "id_ed25519\\n-o ProxyCommand=x"}\n',
        "access:", "access.private_key_file", "ProxyCommand=x"),
    Bad("own hardware profile with a GPU model that would break gres.conf", "",
        "hardware_profiles:\n  my-gpu:\n    gpu: {model: 'H100 x', product_name: X, count: 8, architecture: hopper,\n"
        "      compute_capability: '9.0'}\n", "gpu: {model", "hardware_profiles.my-gpu.gpu.model", "H100 x"),
    Bad("own hardware profile id that is not a name", "", "hardware_profiles:\n  'My GPU': {}\n", "My GPU",
        "hardware_profiles.My GPU", "My GPU"),
    # provisioning and ports
    Bad("port 0", "", "provisioning: {http_port: 0}\n", "http_port", "provisioning.http_port", "(got 0)"),
    Bad("port above 65535", "", "provisioning: {status_port: 70000}\n", "status_port", "provisioning.status_port", "70000"),
    Bad("ssh port 0", "", "access: {port: 0}\n", "access:", "access.port", "(got 0)"),
    Bad("boot web server on Prometheus' port", "", "provisioning: {http_port: 9090}\n", "http_port",
        "provisioning.http_port", "port 9090"),
    Bad("discovery without a pool", "", "provisioning: {discovery: {enabled: true}}\n", "provisioning:",
        "provisioning.discovery", "needs range_start and range_end"),
    Bad("discovery pool ends before it starts", "",
        "provisioning:\n  discovery: {enabled: true, range_start: 10.10.9.9,\n    range_end: 10.10.9.1}\n", "range_end:",
        "provisioning.discovery.range_end", "ends at 10.10.9.1, before its start 10.10.9.9"),
    Bad("discovery pool outside the network", "",
        "provisioning:\n  discovery:\n    enabled: true\n    range_start: 10.99.0.1\n    range_end: 10.99.0.9\n",
        "range_start:", "provisioning.discovery.range_start", "10.99.0.1 is outside"),
    Bad("discovery pool over the nodes", "",
        "provisioning:\n  discovery:\n    enabled: true\n    range_start: 10.10.1.1\n    range_end: 10.10.1.50\n",
        "range_start:", "provisioning.discovery.range_start", "10.10.1.1, the address of gpu001"),
    Bad("monitoring retention Prometheus cannot read", "", "monitoring: {retention: 15 days}\n", "monitoring:",
        "monitoring.retention", "15 days"),
    # YAML itself
    Bad("mapping key that is a number", "", "1234: x\n", "1234: x", "", "'1234'"),
    Bad("duplicate key", "stack: auto\n", "stack: auto\nstack: r535-cuda12.2\n", "stack: r535", "stack", "duplicate key"),
    Bad("tab indentation", "    hosts: gpu[001-004]", "\thosts: gpu[001-004]", "\thosts", "", "tabs"),
]


def test_the_table_has_forty_defects_and_unique_names():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validate_refuses_each_defect_with_file_line_field_and_value(tmp_path, case):
    text, macs = case.texts()
    path = write_manifest(tmp_path, text, macs)
    result = invoke("validate", path)
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output and result.exception is None or isinstance(result.exception, SystemExit), output
    file = tmp_path / "gpu-macs.csv" if case.where == "csv" else path
    line = line_of(macs if case.where == "csv" else text, case.needle)
    prefix = f"error: {file}:{line}: " + (f"{case.field}: " if case.field else "")
    lines = [ln for ln in output.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting {prefix!r}:\n{output}"
    assert any(case.shows in ln for ln in lines), f"{case.shows!r} not in {lines}"
    if case.secret:
        assert case.secret not in output


def test_every_phase_is_reported_in_one_pass(tmp_path):
    # One problem per phase in one manifest: schema (monitoring), addresses, MACs, users,
    # Slurm, provisioning, stack. All are reported together, by line.
    text = (VALID.replace("start_address: 10.10.1.1", "start_address: 10.10.0.1")
            .replace("uid: 2001", "uid: 2001, shell: bash")
            .replace("default: true}]}", "default: true}, {name: b, node_groups: [gpu], default: true}]}")
            .replace("stack: auto", "stack: r999")
            + "provisioning: {root_password_hash: plain}\nmonitoring: {grafana: maybe}\n")
    macs = MACS.replace("b8:3f:d2:00:00:02", "ff:ff:ff:ff:ff:ff")
    path, problems = problems_for(tmp_path, text, macs)
    fields = [p.field for p in problems]
    assert {"monitoring.grafana", "node_groups[0].start_address", "users[0].shell", "slurm.partitions[1].default",
            "stack", "provisioning.root_password_hash", "mac"} <= set(fields)
    manifest_lines = [p.line for p in problems if p.file == str(path)]
    assert manifest_lines == sorted(manifest_lines)


def test_checks_reading_a_broken_section_are_skipped_the_others_run(tmp_path):
    # node_groups fails the schema (pxe: maybe): the hostlist, MAC and address checks, which
    # read it, are skipped instead of guessing; users and the networks are still checked.
    text = (VALID.replace("hardware: hgx-h100-8gpu", "hardware: hgx-h100-8gpu\n    pxe: maybe")
            .replace("uid: 2001", "uid: 0").replace("gateway: 10.10.0.254", "gateway: 10.10.255.255"))
    _, problems = problems_for(tmp_path, text, MACS.replace("b8:3f:d2:00:00:02", "zz"))
    fields = {p.field for p in problems}
    assert {"node_groups[0].pxe", "users[0].uid", "networks.provision.gateway"} <= fields
    assert "mac" not in fields  # the MAC check reads node_groups: skipped
    assert [c.name for c in CHECKS][0] == "schema"
    assert all(set(c.needs) <= set(__import__("podsys.cluster.schema", fromlist=["Manifest"]).Manifest.model_fields)
               for c in CHECKS)


def test_schema_typo_and_semantic_error_in_other_sections_are_reported_together(tmp_path):
    text = VALID.replace("uid: 2001", "uid: 2001, shel: /bin/bash").replace("gateway: 10.10.0.254", "gateway: 10.10.0.1")
    _, problems = problems_for(tmp_path, text)
    problems = {(p.field, p.line) for p in problems}
    assert ("users[0].shel", line_of(text, "shel:")) in problems
    assert ("networks.provision.gateway", line_of(text, "gateway")) in problems


def test_validate_writes_nothing(tmp_path):
    path = write_manifest(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert invoke("validate", path).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("key, reason", [
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceTestKey0000000000000000000000000000000 a@b", None),
    ("ssh-ed25519 AAAA", "does not start with its type"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAliceTestKey0000000000000000000000000000000", "does not start with its type 'ssh-rsa'"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceTestKey0000000000000000000000000000000 a\"b", "comment holds quotes"),
    ("ssh-ed25519", "is not an OpenSSH public key"),
])
def test_ssh_key_rules(key, reason):
    got = ssh_key_problem(key)
    assert (got is None) if reason is None else (reason in got)


def test_node_bound_is_across_all_groups_and_counted_before_expanding(tmp_path):
    # Each hostlist is under python-hostlist's own 100,000 cap; together they are millions.
    groups = "".join(f"  - {{name: g{i}, hosts: 'g{i}n[00001-90000]', hardware: cpu-only, pxe: false}}\n"
                     for i in range(30))
    text = VALID.split("node_groups:")[0] + "node_groups:\n" + groups
    path = write_manifest(tmp_path, text, None)
    with pytest.raises(InputError) as info, PeakMemory() as measured:
        load_cluster(path)
    peak, elapsed = measured.peak, measured.seconds
    hosts_problems = [p for p in info.value.problems if p.field.endswith(".hosts")]
    assert hosts_problems[0].field == "node_groups[0].hosts" and "adds 90000 nodes" in hosts_problems[0].message
    assert peak < 100 * 1024 * 1024
    print(f"30 x 90,000-node hostlists refused in {elapsed * 1000:.0f} ms, peak {peak / 2**20:.1f} MiB")


def test_two_groups_that_fit_alone_but_not_together(tmp_path):
    groups = ("  - {name: a, hosts: 'a[00001-10000]', hardware: cpu-only, pxe: false}\n"
              "  - {name: b, hosts: 'b[00001-10000]', hardware: cpu-only, pxe: false}\n")
    text = VALID.split("node_groups:")[0] + "node_groups:\n" + groups
    _, problems = problems_for(tmp_path, text.replace("/16", "/8").replace("10.20.0.0/8", "11.0.0.0/8")
                               .replace("10.30.0.0/8", "12.0.0.0/8"), None)
    (problem,) = [p for p in problems if "nodes in all" in p.message]
    assert problem.field == "node_groups[1].hosts" and "10000" in problem.message


@pytest.mark.parametrize("content, line, fragment", [
    ("provision:\n  gpu001: 10.10.1.1\n  gpu002: 10.10.1.300\n", 3, "'10.10.1.300' is not an IPv4 address"),
    ("provision:\n  gpu001: [1, 2]\n", 2, "'list' is not an IPv4 address"),
    ("provision: [10.10.1.1]\n", 1, "expected `provision:` mapping"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")), 7, "alias bomb"),
])
def test_hand_edited_addresses_file_is_read_like_the_manifest(tmp_path, content, line, fragment):
    path = write_manifest(tmp_path)
    (tmp_path / "cluster.addresses.yaml").write_text(content)
    result = invoke("validate", path)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {tmp_path / 'cluster.addresses.yaml'}:{line}: ") and fragment in result.output
