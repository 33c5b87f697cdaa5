"""One host selection for every command that takes a hostlist, with one error line."""

from __future__ import annotations

import json

import pytest

from podsys.cluster.load import load_cluster
from podsys.cluster.selection import select_names, select_nodes
from podsys.errors import InputError
from tests.unit.manifest_samples import VALID, write_manifest
from tests.conftest import invoke

KNOWN = ["mu01", "gpu001", "gpu002", "gpu003", "gpu004"]


def test_names_come_in_known_order_each_once():
    assert select_names("gpu[003-004],mu01,gpu003", KNOWN) == ["mu01", "gpu003", "gpu004"]
    assert select_names("gpu001, gpu002", KNOWN) == ["gpu001", "gpu002"]  # spaces after commas are fine


@pytest.mark.parametrize("expression, flag, message", [
    ("gpu[004-006]", "--limit", "--limit: 'gpu[004-006]': not hosts of this cluster: gpu[005-006] (did you mean gpu004?)"),
    ("mu1", "HOSTLIST", "HOSTLIST: 'mu1': not hosts of this cluster: mu1 (did you mean mu01?)"),
    ("zzz", "--limit", "--limit: 'zzz': not hosts of this cluster: zzz"),  # nothing close: no guess
    ("gpu[1-", "--limit", "--limit: 'gpu[1-': malformed hostlist 'gpu[1-': "),
    ("", "--limit", "--limit: '': empty hostlist"),
])
def test_refusals_are_one_line_naming_flag_expression_and_unknown_hosts(expression, flag, message):
    with pytest.raises(InputError) as err:
        select_names(expression, KNOWN, flag)
    assert len(err.value.problems) == 1 and "\n" not in str(err.value)
    assert str(err.value).startswith(message)


def test_select_nodes_is_every_node_without_an_expression(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path))
    assert select_nodes(cluster, None) == list(cluster.nodes)
    assert [n.name for n in select_nodes(cluster, "gpu[002-003]")] == ["gpu002", "gpu003"]
    with pytest.raises(InputError, match="not hosts of this cluster: mu01"):
        select_nodes(cluster, "mu01")  # the head is not a compute node


# Every command that selects hosts refuses an unknown one the same way: exit 2, one line, before
# it does anything (no SSH, no Ansible, no BMC).
UNKNOWN = "gpu[004-005]"
EXPECTED = "'gpu[004-005]': not hosts of this cluster: gpu005 (did you mean gpu004?)"


@pytest.fixture
def manifest(tmp_path):
    bmc = "bmc: {protocol: ipmi, username: admin, password_file: bmc.pw}\n"
    return write_manifest(tmp_path, VALID + bmc)


@pytest.mark.parametrize("argv, flag", [
    (["deploy", "{m}", "--limit", UNKNOWN], "--limit"),
    (["check", "{m}", "--limit", UNKNOWN], "--limit"),
    (["power", "on", UNKNOWN, "-m", "{m}"], "HOSTLIST"),
    (["reinstall", UNKNOWN, "-m", "{m}"], "HOSTLIST"),
    (["status", "{m}", "--limit", UNKNOWN], "--limit"),
])
def test_each_command_refuses_an_unknown_host_with_the_same_line(manifest, argv, flag):
    result = invoke(*(a.format(m=manifest) for a in argv))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {flag}: {EXPECTED}"


def test_status_limit_shows_only_the_selected_nodes(manifest, tmp_path):
    # The head has install state (an installer called back); without any, status says there is none.
    from podsys.provision.render import status_nodes
    from podsys.provision.state import NodeInfo, StateStore

    nodes = {name: NodeInfo(name, info["ip"], info["mac"]) for name, info in status_nodes(load_cluster(manifest)).items()}
    StateStore(tmp_path / "state", None, nodes).record_event("gpu001", "start")
    result = invoke("status", str(manifest), "--limit", "gpu[002-003]", "--json",
                    "--state-dir", str(tmp_path / "state"), "--boot-root", str(tmp_path / "boot"))
    assert result.exit_code == 0, result.output
    assert [r["node"] for r in json.loads(result.stdout)["nodes"]] == ["gpu002", "gpu003"]
