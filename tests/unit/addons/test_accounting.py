"""The accounting role's sacctmgr sync planning against real `sacctmgr -nP` output
(tests/fixtures/accounting/README.md says where each file comes from): the state a deploy left
needs no change; each manifest change becomes exactly the sacctmgr command that makes it;
nothing podsys did not create is ever deleted."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
FIXTURES = ROOT / "tests" / "fixtures" / "accounting"
SCRIPT = ROOT / "podsys" / "playbooks" / "roles" / "accounting" / "files" / "sacctmgr_sync.py"

spec = importlib.util.spec_from_file_location("sacctmgr_sync", SCRIPT)
sync = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sync)


@pytest.fixture()
def database():
    qos = sync.parse_rows((FIXTURES / "sacctmgr_show_qos.txt").read_text(), sync.QOS_FORMAT)
    accounts = sync.parse_rows((FIXTURES / "sacctmgr_show_account.txt").read_text(), sync.ACCOUNT_FORMAT)
    assocs = sync.parse_rows((FIXTURES / "sacctmgr_show_assoc.txt").read_text(), sync.ASSOC_FORMAT)
    return qos, accounts, assocs


@pytest.fixture()
def desired():
    return json.loads((FIXTURES / "accounts.json").read_text())


def test_the_state_a_deploy_left_needs_no_change(desired, database):
    assert sync.plan(desired, *database) == []


def test_removing_a_user_deletes_only_that_association(desired, database):
    desired["teams"][0]["users"] = ["researcher"]
    assert sync.plan(desired, *database) == [["delete", "user", "where", "name=intern", "account=vision", "cluster=lab"]]


def test_changes_become_the_matching_modify_commands(desired, database):
    team = desired["teams"][0]
    team.update({"Fairshare": "20", "GrpTRES": "cpu=8,gres/gpu=2", "MaxWall": "1-00:00:00", "QOS": "normal,high"})
    desired["qos"][0]["Priority"] = "200"
    assert sync.plan(desired, *database) == [
        ["modify", "qos", "where", "name=high", "set", "Priority=200"],
        ["modify", "account", "where", "name=vision", "cluster=lab", "set", "Fairshare=20", "QOS=normal,high",
         "GrpTRES=cpu=8,gres/gpu=2", "MaxWall=1-00:00:00"],
    ]


def test_a_dropped_limit_is_cleared_with_minus_one(desired, database):
    desired["teams"][0]["GrpTRES"] = ""
    assert sync.plan(desired, *database) == [
        ["modify", "account", "where", "name=vision", "cluster=lab", "set", "GrpTRES=cpu=-1"]]


def test_equal_times_in_other_spellings_are_no_change():
    assert sync.minutes("2-00:00:00") == sync.minutes("48:00:00") == sync.minutes("2880")
    assert sync._limit_settings({"MaxWall": "48:00:00"}, {"MaxWall": "2-00:00:00"}) == []


def test_new_team_and_qos_are_added_with_their_settings(desired, database):
    desired["qos"].append({"name": "debug", "Priority": "50", "Preempt": "", "PreemptMode": "cancel",
                           "GrpTRES": "", "GrpJobs": "2", "GrpSubmitJobs": "", "MaxWall": "30"})
    desired["teams"].append({"name": "nlp", "Description": "language", "Fairshare": "5", "QOS": "normal,debug",
                             "DefaultQOS": "", "users": ["researcher"], "GrpTRES": "gres/gpu=16",
                             "GrpJobs": "", "GrpSubmitJobs": "", "MaxWall": ""})
    assert sync.plan(desired, *database) == [
        ["add", "qos", "debug", "Description=podsys:debug", "Priority=50", "PreemptMode=cancel", "GrpJobs=2", "MaxWall=30"],
        ["add", "account", "nlp", "Cluster=lab", "Description=podsys:language", "Organization=podsys", "Fairshare=5",
         "QOS=normal,debug", "GrpTRES=gres/gpu=16"],
        ["add", "user", "researcher", "Account=nlp", "Cluster=lab"],
    ]


def test_only_what_podsys_created_is_deleted(desired, database):
    empty = {"cluster": "lab", "qos": [], "teams": []}
    cmds = sync.plan(empty, *database)
    assert ["delete", "account", "where", "name=vision", "cluster=lab"] in cmds
    assert ["delete", "qos", "where", "name=high"] in cmds and ["delete", "qos", "where", "name=low"] in cmds
    flat = [" ".join(c) for c in cmds]
    assert not any("name=root" in c or "name=normal" in c for c in flat), flat
    # users first, then their account, then the QOS the account used
    assert flat.index("delete user where name=intern account=vision cluster=lab") < flat.index(
        "delete account where name=vision cluster=lab") < flat.index("delete qos where name=high")
