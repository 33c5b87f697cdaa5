"""What reaches the cluster: the roles' real templates, rendered from the variables podsys
render hands to Ansible. Python decides every per-cluster value (gres strings, partitions,
scrape targets); these tests pin the lines the templates make of them.

The templates are rendered with plain Jinja2 plus the one Ansible test they use (`contains`),
and the role's defaults are evaluated the same way, so no Ansible version matters here (the
lab deploy test runs them through Ansible itself)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import jinja2.nativetypes
import yaml

from podsys.cluster.load import load_cluster
from podsys.render.build import render_files
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
ROLES = REPO / "podsys" / "playbooks" / "roles"


def _environment(cls):
    env = cls(keep_trailing_newline=True, trim_blocks=False, lstrip_blocks=False)
    env.tests["contains"] = lambda seq, value: value in seq  # ansible.builtin.contains
    env.filters["dirname"] = lambda path: str(Path(path).parent)  # ansible.builtin.dirname
    env.filters["to_nice_json"] = lambda data: json.dumps(data, indent=4, sort_keys=True)
    return env


def role_vars(rendered: dict[str, str], role: str, **host) -> dict:
    """group_vars/all/main.yml as Ansible reads it, then the role's defaults evaluated on top."""
    variables = yaml.safe_load(rendered["inventory/group_vars/all/main.yml"])
    variables.update(ansible_managed="Ansible managed", inventory_dir="/build/inventory", **host)
    native = _environment(jinja2.nativetypes.NativeEnvironment)
    for name, value in yaml.safe_load((ROLES / role / "defaults/main.yml").read_text()).items():
        variables[name] = native.from_string(value).render(variables) if isinstance(value, str) else value
    return variables


def role_template(role: str, name: str, variables: dict) -> str:
    source = (ROLES / role / "templates" / name).read_text()
    return _environment(jinja2.Environment).from_string(source).render(variables)


def hgx_h100_32() -> dict[str, str]:
    return render_files(load_cluster(REPO / "manifests" / "hgx-h100-32.yaml"))


def test_hgx_h100_gres_lines_that_reach_the_cluster():
    facts = {"gpu001": {"ansible_processor_vcpus": 224, "ansible_memtotal_mb": 2063937}}
    variables = role_vars(hgx_h100_32(), "slurm", inventory_hostname="mu01", hostvars=facts)

    gres = [line for line in role_template("slurm", "gres.conf.j2", variables).splitlines() if line.startswith("NodeName=")]
    assert len(gres) == 32
    assert gres[0] == "NodeName=gpu001 Name=gpu Type=h100 File=/dev/nvidia[0-7]"
    assert gres[-1] == "NodeName=gpu032 Name=gpu Type=h100 File=/dev/nvidia[0-7]"

    slurm_conf = role_template("slurm", "slurm.conf.j2", variables).splitlines()
    assert "GresTypes=gpu" in slurm_conf
    nodes = {line.split()[0]: line for line in slurm_conf if line.startswith("NodeName=")}
    assert nodes["NodeName=gpu001"] == (
        "NodeName=gpu001 NodeAddr=10.10.1.1 CPUs=224 RealMemory=2062913 Gres=gpu:h100:8 State=UNKNOWN"
    )
    # No facts cached for this node yet: no CPUs/RealMemory, the gres is still there.
    assert nodes["NodeName=gpu032"] == "NodeName=gpu032 NodeAddr=10.10.1.32 Gres=gpu:h100:8 State=UNKNOWN"
    assert nodes["NodeName=login01"] == "NodeName=login01 NodeAddr=10.10.2.1 State=UNKNOWN"
    assert [line for line in slurm_conf if line.startswith("PartitionName=")] == [
        "PartitionName=gpu Nodes=gpu[001-032] Default=YES MaxTime=7-00:00:00 State=UP",
        "PartitionName=login Nodes=login[01-02] Default=NO MaxTime=INFINITE State=UP",
    ]


def test_no_partition_in_the_manifest_gives_the_batch_partition(tmp_path):
    text = (REPO / "manifests" / "lab.yaml").read_text()
    partitions = "  partitions: [{name: debug, node_groups: [compute], default: true}]\n"
    assert partitions in text
    (tmp_path / "lab.yaml").write_text(text.replace(partitions, ""))
    rendered = render_files(load_cluster(tmp_path / "lab.yaml"))
    variables = role_vars(rendered, "slurm", inventory_hostname="head", hostvars={})
    slurm_conf = role_template("slurm", "slurm.conf.j2", variables).splitlines()
    assert [line for line in slurm_conf if line.startswith("PartitionName=")] == [
        "PartitionName=batch Nodes=node[1-3] Default=YES MaxTime=INFINITE State=UP"
    ]
    assert "GresTypes=gpu" not in slurm_conf
    assert not [line for line in role_template("slurm", "gres.conf.j2", variables).splitlines() if line.startswith("NodeName=")]


def test_prometheus_targets_are_the_rendered_ones():
    variables = role_vars(hgx_h100_32(), "monitoring", inventory_hostname="mu01")
    node = json.loads(role_template("monitoring", "targets.json.j2", {**variables, "monitoring_target_list": variables["monitoring_targets"]["node"]}))
    dcgm = json.loads(role_template("monitoring", "targets.json.j2", {**variables, "monitoring_target_list": variables["monitoring_targets"]["dcgm"]}))
    assert node[0] == {"targets": ["10.10.0.1:9100"], "labels": {"node": "mu01", "group": "head", "hardware": "head"}}
    assert [t["labels"]["node"] for t in node[1:]] == [f"gpu{i:03d}" for i in range(1, 33)] + ["login01", "login02"]
    assert node[-1]["targets"] == ["10.10.2.2:9100"]
    # dcgm-exporter runs only where there are GPUs: the login nodes are not scraped for it.
    assert len(dcgm) == 32 and dcgm[0] == {
        "targets": ["10.10.1.1:9400"], "labels": {"node": "gpu001", "group": "gpu", "hardware": "hgx-h100-8gpu"}}
    assert variables["monitoring_node_exporter_port"] == 9100 and variables["monitoring_dcgm_exporter_port"] == 9400
