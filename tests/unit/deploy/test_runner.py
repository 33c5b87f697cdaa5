"""The deploy runner: host selection, event folding, failure reasons, resume state, the lock,
ansible.cfg, and a real ansible-runner run against local-connection hosts (no SSH, no root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from podsys.deploy import runner
from podsys.errors import InputError, PodsysError
from podsys.deploy.runner import DeployLock, DeployOptions, EventTracker, HostResult
from podsys.layout import deploy_state_file
from tests.unit.manifest_samples import write_manifest
from tests.conftest import podsys

KNOWN = ["head", "node01", "node02", "node03"]


# ----------------------------------------------------------------------------- host selection


def test_limit_keeps_inventory_order():
    assert runner.select_hosts(DeployOptions(limit="node[02-03],head"), KNOWN, {}) == ["head", "node02", "node03"]


def test_limit_refuses_unknown_hosts_naming_them():
    with pytest.raises(InputError) as err:
        runner.select_hosts(DeployOptions(limit="node[03-05]"), KNOWN, {})
    assert str(err.value) == "--limit: 'node[03-05]': not hosts of this cluster: node[04-05] (did you mean node03?)"


def test_limit_refuses_bad_hostlist():
    with pytest.raises(InputError, match="malformed hostlist"):
        runner.select_hosts(DeployOptions(limit="node[1-"), KNOWN, {})


def test_select_hosts_resume_takes_last_failures_and_limit_narrows():
    state = {"hosts": {"head": {"status": "ok"}, "node01": {"status": "failed"},
                       "node02": {"status": "unreachable"}, "gone": {"status": "failed"}}}
    assert runner.select_hosts(DeployOptions(), KNOWN, state) is None
    assert runner.select_hosts(DeployOptions(resume=True), KNOWN, state) == ["node01", "node02"]
    assert runner.select_hosts(DeployOptions(resume=True, limit="node02"), KNOWN, state) == ["node02"]
    assert runner.select_hosts(DeployOptions(limit="head"), KNOWN, state) == ["head"]
    assert runner.select_hosts(DeployOptions(resume=True), KNOWN, {}) == []


# ----------------------------------------------------------------------------- events


def ev(kind, host=None, **data):
    event_data = dict(data)
    if host:
        event_data["host"] = host
    return {"event": kind, "event_data": event_data}


def play_events():
    """An event stream as ansible-runner delivers it for two plays on three hosts."""
    return [
        ev("playbook_on_play_start", play="Base system"),
        ev("runner_on_start", "head", task="Install chrony", role="base"),
        ev("runner_on_ok", "head", task="Install chrony", role="base", res={"changed": True}),
        ev("runner_on_start", "node01", task="Install chrony", role="base"),
        ev("runner_on_ok", "node01", task="Install chrony", role="base", res={"changed": False}),
        ev("runner_on_start", "node02", task="Install chrony", role="base"),
        ev("runner_on_unreachable", "node02", task="Install chrony", role="base",
           res={"msg": "Failed to connect to the host via ssh: Warning: Permanently added 'x'.\r\n"
                       "ssh: connect to host 10.0.0.12 port 22: No route to host", "unreachable": True}),
        ev("runner_on_start", "node01", task="Refresh", role="package_proxy"),
        ev("runner_on_failed", "node01", task="Refresh", role="package_proxy", ignore_errors=True,
           res={"msg": "ignored"}),
        ev("runner_on_skipped", "head", task="Node only", role="base"),
        ev("playbook_on_play_start", play="Slurm"),
        ev("runner_on_start", "head", task="Start slurmctld", role="slurm"),
        ev("runner_on_failed", "head", task="Start slurmctld", role="slurm",
           res={"msg": "Unable to start service slurmctld: Job for slurmctld.service failed\nsee journalctl"}),
        ev("runner_on_start", "node01", task="Start slurmd", role="slurm"),
        ev("runner_on_ok", "node01", task="Start slurmd", role="slurm", res={"changed": True}),
        ev("playbook_on_stats", ok={"head": 1, "node01": 3}, changed={"head": 1, "node01": 1},
           failures={"head": 1}, dark={"node02": 1}, skipped={"head": 1},
           processed={"head": 1, "node01": 1, "node02": 1}),
    ]


def test_tracker_folds_events_into_per_host_results():
    tracker = EventTracker(["head", "node01", "node02", "node03"])
    said = []
    tracker.listeners.append(lambda host, msg: said.append((host, msg)))
    for event in play_events():
        assert tracker.handle(event) is True
    results = {r.name: r for r in tracker.results()}
    assert results["head"].status == "failed"
    assert results["head"].reason == "slurm : Start slurmctld: Unable to start service slurmctld: Job for slurmctld.service failed / see journalctl"
    assert results["node01"] == HostResult("node01", "ok", 3, 1, 0, 0, 0, "", ("slurm: Start slurmd",), ("base", "slurm"))
    # What changed, by role and task: a re-run's recap says which role was not idempotent.
    assert results["head"].changed_tasks == ("base: Install chrony",)
    assert results["node02"].status == "unreachable"
    assert results["node02"].reason == "unreachable: Failed to connect to the host via ssh: ssh: connect to host 10.0.0.12 port 22: No route to host"
    # A selected host Ansible never processed is not silently "ok".
    assert results["node03"].status == "failed" and "no result" in results["node03"].reason
    # Role progress: base finished on node01 (the include of package_proxy counts as base).
    assert tracker.hosts["node01"].roles_done == ["base", "slurm"]
    assert [tracker.hosts[h].status for h in KNOWN] == ["failed", "ok", "unreachable", "waiting"]
    assert ("node01", "base done (so far ok 2, changed 0)") in said
    assert any(h == "head" and m.startswith("FAILED slurm : Start slurmctld") for h, m in said)


def test_tracker_without_stats_marks_everyone_failed():
    tracker = EventTracker(["a"])
    tracker.handle(ev("runner_on_ok", "a", task="t", res={"changed": True}))
    (result,) = tracker.results()
    assert result.status == "failed" and result.changed == 1


def test_rescued_failure_is_not_a_host_failure():
    tracker = EventTracker(["a"])
    tracker.handle(ev("runner_on_start", "a", task="t", role="r"))
    tracker.handle(ev("runner_on_failed", "a", task="t", role="r", res={"msg": "boom"}))
    tracker.handle(ev("runner_on_rescued", "a", task="t"))
    assert tracker.hosts["a"].status == "running" and tracker.hosts["a"].reason == ""


def test_failure_reason_picks_loop_item_and_falls_back_to_stderr():
    loop = {"task": "Create the users", "role": "base",
            "res": {"results": [{"failed": False}, {"failed": True, "msg": "uid 2001 is taken"}]}}
    assert runner.failure_reason(loop) == "base : Create the users: uid 2001 is taken"
    cmd = {"task": "slurm : Run", "role": "slurm", "res": {"msg": "", "stderr": "sinfo: error\n", "rc": 1}}
    assert runner.failure_reason(cmd) == "slurm : Run: sinfo: error"
    long = {"task": "t", "res": {"msg": "x" * 1000}}
    assert len(runner.failure_reason(long)) == 240 and runner.failure_reason(long).endswith("...")


# ----------------------------------------------------------------------------- state + lock


def test_state_merge_keeps_hosts_outside_the_run(tmp_path):
    first = runner.merge_state({}, [HostResult("a", "ok", 1, 0, 0, 0, 0), HostResult("b", "failed", 1, 0, 1, 0, 0, "x")], "t1")
    runner.write_state(tmp_path, first)
    again = runner.merge_state(runner.load_state(tmp_path), [HostResult("b", "ok", 2, 1, 0, 0, 0)], "t2")
    assert again["hosts"]["a"]["status"] == "ok" and again["hosts"]["a"]["at"] == "t1"
    assert again["hosts"]["b"] == {**again["hosts"]["b"], "status": "ok", "at": "t2", "reason": ""}
    assert runner.hosts_to_resume(first) == ["b"] and runner.hosts_to_resume(again) == []
    deploy_state_file(tmp_path).write_text("{broken")
    assert runner.load_state(tmp_path) == {}


def test_lock_refuses_a_second_deploy_of_the_same_cluster(tmp_path):
    path = tmp_path / ".podsys" / "deploy-lab.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from podsys.deploy.runner import DeployLock
            with DeployLock(Path({str(path)!r}), "lab"):
                print("held", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PodsysError) as err:
            with DeployLock(path, "lab"):
                pass
        assert "another deploy of cluster 'lab' is running" in str(err.value)
        assert f"pid {holder.pid}" in str(err.value)
    finally:
        holder.communicate("\n", timeout=10)
    # Released when the holder exits: the next deploy gets it.
    with DeployLock(path, "lab"):
        pass


def test_ansible_cfg_turns_on_pipelining_controlpersist_and_host_keys(tmp_path):
    text = runner.ansible_cfg_text(tmp_path, tmp_path / "roles", 7)
    assert "pipelining = True" in text
    assert "ControlPersist=" in text and "ControlMaster=auto" in text
    assert "host_key_checking = True" in text
    assert f"fact_caching_connection = {tmp_path / 'facts'}" in text
    assert "forks = 7" in text


def test_inventory_hosts_from_rendered_inventory(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "head": {"hosts": {"head": {"ansible_host": "10.0.0.1"}}},
        "nodes": {"hosts": {"n1": None, "n2": None}},
        "layer_slurm": {"hosts": {"n2": None}},
    }}}, sort_keys=False))
    assert runner.inventory_hosts(inv) == ["head", "n1", "n2"]


# ----------------------------------------------------------------------------- a real run


SITE = """\
- name: Configure
  hosts: all
  gather_facts: false
  tasks:
    - name: Always fine
      ansible.builtin.command: "true"
      changed_when: false
    - name: Change something on changers
      ansible.builtin.command: "true"
      changed_when: true
      when: inventory_hostname.startswith('changer')
    - name: Break the broken host
      ansible.builtin.fail:
        msg: "disk /dev/sdz not found"
      when: inventory_hostname == 'broken' and not (fixed | default(false) | bool)
"""


def local_build(tmp_path: Path, hosts: dict) -> Path:
    build = tmp_path / "build"
    (build / "inventory").mkdir(parents=True)
    (build / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"nodes": {"hosts": hosts}}}}))
    books = tmp_path / "playbooks"
    (books / "roles").mkdir(parents=True)
    (books / "site.yml").write_text(SITE)
    return build


@pytest.fixture
def local_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("PODSYS_PLAYBOOKS_DIR", str(tmp_path / "playbooks"))
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "changer1": local,
        "steady": local,
        "broken": local,
        # Nothing listens on loopback port 1: an unreachable host, quickly.
        "offline": {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_user": "nobody"},
    }
    return local_build(tmp_path, hosts)


def test_real_run_summarises_failed_and_unreachable_hosts_and_resumes(local_hosts):
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"), force_terminal=False)
    result = runner.run_deploy(local_hosts, DeployOptions(forks=4), console)
    by_name = {r.name: r for r in result.results}
    assert by_name["changer1"].status == "ok" and by_name["changer1"].changed == 1
    assert by_name["steady"].status == "ok" and by_name["steady"].changed == 0
    assert by_name["broken"].status == "failed"
    assert by_name["broken"].reason == "Break the broken host: disk /dev/sdz not found"
    assert by_name["offline"].status == "unreachable" and "port 1" in by_name["offline"].reason
    assert not result.succeeded and result.rc != 0
    # Full log and the runner's event artifacts live under the build directory.
    assert result.log_file.parent == local_hosts / "logs"
    assert "disk /dev/sdz not found" in result.log_file.read_text()
    state = json.loads(deploy_state_file(local_hosts).read_text())
    assert {h for h, r in state["hosts"].items() if r["status"] != "ok"} == {"broken", "offline"}

    # --resume re-runs only the two that failed; a check run leaves the record alone.
    checked = runner.run_deploy(local_hosts, DeployOptions(resume=True, check=True), console)
    assert sorted(r.name for r in checked.results) == ["broken", "offline"]
    assert json.loads(deploy_state_file(local_hosts).read_text()) == state

    resumed = runner.run_deploy(local_hosts, DeployOptions(resume=True, limit="broken"), console,
                                extravars={"fixed": True})
    assert [(r.name, r.status) for r in resumed.results] == [("broken", "ok")]
    assert runner.hosts_to_resume(runner.load_state(local_hosts)) == ["offline"]


def test_playbook_that_cannot_start_is_one_error(local_hosts):
    from rich.console import Console

    (local_hosts.parent / "playbooks" / "site.yml").write_text("- hosts: all\n  tasks: [ {bogus_module_xyz: {}} ]\n")
    with pytest.raises(PodsysError, match="ansible-playbook exited"):
        runner.run_deploy(local_hosts, DeployOptions(), Console(file=open(os.devnull, "w")))


# ----------------------------------------------------------------------------- the command


def test_deploy_bad_input_is_one_line_exit_2(tmp_path):
    res = podsys("deploy", tmp_path / "missing.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"error: {tmp_path / 'missing.yaml'}: file not found"
    res = podsys("deploy", cwd=tmp_path)
    assert res.returncode == 2 and "no manifest given" in res.stderr


def test_deploy_limit_naming_an_unknown_host_is_refused_before_running(tmp_path):
    path = write_manifest(tmp_path)
    res = podsys("deploy", path, "--limit", "gpu[004-005]")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == "error: --limit: 'gpu[004-005]': not hosts of this cluster: gpu005 (did you mean gpu004?)"


def test_ssh_control_sockets_are_per_cluster_and_short(tmp_path):
    from podsys.deploy.runner import ansible_cfg_text, control_path_dir

    a, b = control_path_dir(tmp_path / "a" / "build"), control_path_dir(tmp_path / "b" / "build")
    assert a != b and a == control_path_dir(tmp_path / "a" / "build")
    assert len(str(a)) + 1 + 40 < 108  # ansible's %C hash must still fit a Unix socket path
    assert f"control_path_dir = {a}" in ansible_cfg_text(tmp_path / "a" / "build", tmp_path, 5)
