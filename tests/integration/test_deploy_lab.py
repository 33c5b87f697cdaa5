"""`podsys deploy` for real, on the lab cluster: base, Slurm and monitoring over SSH, checked on
every node with testinfra; a repeat deploy changes nothing; a stopped node fails alone and is
named in the summary; --resume finishes it once it is back.

The tests run in file order and share one deploy (module fixture); the lab itself is the
session's `lab_cluster`, torn down by its fixture even when a test fails. Another module may
have deployed the same lab already, so the first deploy here is not assumed to change things."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import podsys
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

DEPLOY_TIMEOUT_S = 1500


def deploy(lab_cluster, *args):
    return podsys("deploy", lab_cluster.manifest, *args, timeout=DEPLOY_TIMEOUT_S, cwd=lab_cluster.directory)


def json_result(proc) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"deploy printed no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def all_hosts(lab_cluster) -> list[str]:
    return [lab_cluster.head, *lab_cluster.nodes]


@pytest.fixture(scope="module")
def first_deploy(lab_cluster):
    proc = deploy(lab_cluster, "--json")
    return proc, json_result(proc)


def test_first_deploy_succeeds_on_every_host(lab_cluster, first_deploy):
    proc, result = first_deploy
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert {h["name"]: h["status"] for h in result["hosts"]} == {h: "ok" for h in all_hosts(lab_cluster)}
    log = lab_cluster.directory / ".podsys/build/logs"
    assert any(log.glob("deploy-*.log")), "full logs belong under the build directory"


def test_services_run_where_they_belong(lab_cluster, first_deploy):
    head = lab_cluster.host(lab_cluster.head)
    for service in ("apt-cacher-ng", "chrony", "munge", "slurmctld", "prometheus", "prometheus-node-exporter"):
        assert head.service(service).is_running, f"head: {service} not running"
        assert head.service(service).is_enabled, f"head: {service} not enabled"
    assert head.socket(f"tcp://{lab_cluster.addresses['head']}:3142").is_listening
    for node in lab_cluster.nodes:
        host = lab_cluster.host(node)
        for service in ("chrony", "munge", "slurmd", "prometheus-node-exporter"):
            assert host.service(service).is_running, f"{node}: {service} not running"
            assert host.service(service).is_enabled, f"{node}: {service} not enabled"
        assert not host.service("slurmctld").is_running
        # Every package came through the head: apt knows no other way out.
        assert host.file("/etc/apt/apt.conf.d/01podsys-proxy").contains(f"{lab_cluster.addresses['head']}:3142")


def test_munge_key_private_and_identical_everywhere(lab_cluster, first_deploy):
    sums = {}
    for name in all_hosts(lab_cluster):
        key = lab_cluster.host(name).file("/etc/munge/munge.key")
        assert key.mode == 0o400 and key.user == "munge", f"{name}: munge.key is {oct(key.mode)} {key.user}"
        sums[name] = key.sha256sum
    assert len(set(sums.values())) == 1, f"munge keys differ: {sums}"
    local_copy = lab_cluster.directory / ".podsys/build/secrets/munge.key"
    assert oct(local_copy.stat().st_mode & 0o777) == "0o600"


def test_users_have_the_same_uid_and_gid_everywhere(lab_cluster, first_deploy):
    users = yaml.safe_load(lab_cluster.manifest.read_text())["users"]
    assert users, "the lab manifest defines a user"
    for user in users:
        seen = {(lab_cluster.host(n).user(user["name"]).uid, lab_cluster.host(n).user(user["name"]).gid)
                for n in all_hosts(lab_cluster)}
        assert seen == {(user["uid"], user.get("gid") or user["uid"])}, f"{user['name']}: {seen}"


def test_nodes_keep_time_from_the_head(lab_cluster, first_deploy):
    head_ip = lab_cluster.addresses["head"]
    for node in lab_cluster.nodes:
        def synced():
            out = lab_cluster.ssh(node, "chronyc -n sources", check=False).stdout
            return [ln for ln in out.splitlines() if ln.startswith("^*") and head_ip in ln]
        wait_for(f"{node} selects the head ({head_ip}) as its time source", synced, timeout=120)
        servers = lab_cluster.ssh(node, "chronyc -n sources").stdout
        sources = [ln.split()[1] for ln in servers.splitlines() if ln[:1] == "^"]
        assert sources == [head_ip], f"{node} uses other time sources: {sources}"


def test_srun_reaches_every_compute_node(lab_cluster, first_deploy):
    count = len(lab_cluster.nodes)
    wait_for("every Slurm node idle", lambda: lab_cluster.ssh(
        lab_cluster.head, "sinfo -h -N -o '%N %T'").stdout.split().count("idle") == count, timeout=90)
    out = lab_cluster.ssh(lab_cluster.head, f"timeout 120 srun -N{count} hostname").stdout.split()
    assert sorted(out) == sorted(lab_cluster.nodes)


def prometheus_targets(lab_cluster) -> list[dict]:
    url = f"http://{lab_cluster.addresses['head']}:9090/api/v1/targets"
    script = f"import json,urllib.request; print(json.dumps(json.load(urllib.request.urlopen({url!r}, timeout=10))))"
    out = lab_cluster.ssh(lab_cluster.head, ["python3", "-c", script]).stdout
    return json.loads(out)["data"]["activeTargets"]


def test_prometheus_scrapes_every_node_exporter(lab_cluster, first_deploy):
    expected = set(all_hosts(lab_cluster))

    seen = {}

    def all_up():
        node = [t for t in prometheus_targets(lab_cluster) if t["labels"]["job"] == "node"]
        seen.clear()
        seen.update({t["labels"]["instance"]: f"{t['health']} {t.get('lastError', '')}".strip() for t in node})
        return set(seen) == expected and all(v == "up" for v in seen.values())

    try:
        wait_for("every node_exporter target up", all_up, timeout=180, every=3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; targets: {seen}") from None
    # Slurm node states reach Prometheus through the head's textfile collector.
    prom = lab_cluster.ssh(lab_cluster.head, "cat /var/lib/prometheus/node-exporter/slurm.prom").stdout
    assert "podsys_slurm_up 1" in prom
    for node in lab_cluster.nodes:
        assert f'podsys_slurm_node_state{{node="{node}",state="idle"}} 1' in prom


def test_repeat_deploy_changes_nothing(lab_cluster, first_deploy):
    proc = deploy(lab_cluster, "--json")
    result = json_result(proc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    changed = {h["name"]: h["changed"] for h in result["hosts"] if h["changed"]}
    assert changed == {}, f"a repeat deploy changed tasks on {changed}; see {result['log']}"


def test_a_stopped_node_fails_alone_and_resume_finishes_it(lab_cluster, first_deploy):
    victim = lab_cluster.nodes[-1]
    lab_cluster.stop(victim)
    try:
        proc = deploy(lab_cluster)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        summary = proc.stdout
        victim_lines = [ln for ln in summary.splitlines() if ln.startswith(f"{victim}:")]
        assert victim_lines and "unreachable" in victim_lines[0], summary[-3000:]
        assert f"deploy failed on: {victim}" in proc.stderr
        state = json.loads((lab_cluster.directory / ".podsys/build/deploy-state.json").read_text())
        assert {n: r["status"] for n, r in state["hosts"].items()} == {
            **{h: "ok" for h in all_hosts(lab_cluster)}, victim: "unreachable"}
    finally:
        lab_cluster.start(victim)
    proc = deploy(lab_cluster, "--resume", "--json")
    result = json_result(proc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [(h["name"], h["status"]) for h in result["hosts"]] == [(victim, "ok")]
