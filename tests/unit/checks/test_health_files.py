"""What deploy installs for podsys health: the runner runs alone (stdlib only, no podsys
install), each node's health.json comes from its resolved profile, the manifest's health section."""

import json
import subprocess
import sys

import pytest

from podsys.checks.health import load_config, node_entry, parse_config
from podsys.checks.health_files import RUNNER_MODULES, RUNNER_SCRIPT, render_files, runner_sources
from podsys.cluster.load import load_cluster
from podsys.errors import InputError
from tests.unit.manifest_samples import MACS, VALID, write_manifest


def cluster(tmp_path, text=VALID):
    return load_cluster(write_manifest(tmp_path, text, MACS))


def test_every_node_gets_its_profile_and_the_manifest_thresholds(tmp_path):
    c = cluster(tmp_path, VALID.replace("slurm:", "health: {disk_min_free_percent: 12.5}\nslurm:", 1))
    files = render_files(c)
    # one file for the whole cluster, each distinct config once: no file per node
    assert [p for p in files if not p.startswith("health/runner/")] == ["health/nodes.json"]
    table = json.loads(files["health/nodes.json"])
    assert len(table["configs"]) == len({c.profile_of(n).id for n in c.nodes}) < len(c.nodes)
    for node in c.nodes:
        config = parse_config(node_entry(table, node.name))
        assert config.node == node.name and config.profile.id == c.profile_of(node).id
        assert config.disk_min_free_percent == 12.5
        spec = c.profile_of(node).gpu
        assert (config.profile.gpu.count if config.profile.gpu else 0) == (spec.count if spec else 0)


WITH_CPU_NODE = VALID.replace("slurm:", "  - {name: svc, hosts: svc1, hardware: cpu-only, pxe: false}\nslurm:", 1)


def test_the_runner_runs_alone_without_site_packages(tmp_path):
    files = render_files(cluster(tmp_path, WITH_CPU_NODE))
    # One script carries every runner module: roles/health copies one file per node.
    assert [p for p in files if p.startswith("health/runner/")] == [RUNNER_SCRIPT]
    script = tmp_path / "node" / "podsys_health_runner.py"
    script.parent.mkdir()
    script.write_text(files[RUNNER_SCRIPT])
    config = tmp_path / "health.json"
    config.write_text(files["health/nodes.json"])  # what roles/health installs on every node
    cpu_node = "svc1"
    # -I: isolated (no user site, no PYTHONPATH from outside); -S: no site-packages at all;
    # run from elsewhere, so nothing but the script can provide the podsys package.
    done = subprocess.run([sys.executable, "-I", "-S", str(script), "--config", str(config), "--node", cpu_node,
                           "--state-dir", str(tmp_path / "state"), "--json"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["node"], result["profile"], result["verdict"]) == (cpu_node, "cpu-only", "PASS")
    assert [f["check"] for f in result["findings"]] == ["node.disk", "node.memory"]


@pytest.mark.parametrize("health, field", [
    ("{interval: 5}", "health.interval"),
    ("{alert_receiver: {webhook_url: 'not a url'}}", "health.alert_receiver.webhook_url"),
    ("{alert_receiver: {email: nobody}}", "health.alert_receiver.email"),
    ("{prolog_gate: maybe}", "health.prolog_gate"),
    ("{bogus: 1}", "health.bogus"),
])
def test_bad_health_section_is_rejected_naming_the_field(tmp_path, health, field):
    with pytest.raises(InputError) as info:
        cluster(tmp_path, VALID.replace("slurm:", f"health: {health}\nslurm:", 1))
    assert field in str(info.value)


def test_the_runner_picks_its_own_entry_by_name_or_hostname(tmp_path, monkeypatch):
    c = cluster(tmp_path)
    path = tmp_path / "health.json"
    path.write_text(render_files(c)["health/nodes.json"])
    first, last = c.nodes[0], c.nodes[-1]
    assert load_config(path, last.name).node == last.name
    assert load_config(path, last.name).profile.id == c.profile_of(last).id
    monkeypatch.setattr("socket.gethostname", lambda: f"{first.name}.cluster.example")
    assert load_config(path).node == first.name
    with pytest.raises(ValueError, match=r"health.json: nodes: 'stranger' is not a node of this cluster"):
        load_config(path, "stranger")
    # a single node's file (what deploy installed before) still loads as it is
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"node": "cpu1", "profile": {"id": "cpu-only", "gpu": None, "hca": None}}))
    assert load_config(single, "ignored").node == "cpu1"


def test_the_runner_script_holds_each_module_and_names_it_in_tracebacks(tmp_path):
    sources = runner_sources()
    assert sorted(sources) == sorted(["podsys", "podsys.checks"] + [
        f"podsys.checks.{m.removesuffix('.py')}" for m in RUNNER_MODULES if m != "__init__.py"])
    script = tmp_path / "runner.py"
    script.write_text(render_files(cluster(tmp_path))[RUNNER_SCRIPT])
    # A module's error points at the module's own file name and line, as with the package tree.
    probe = ("import runpy, sys, traceback; ns = runpy.run_path(sys.argv[1]); import podsys.checks.findings as f; "
             "print(f.__name__, f.__spec__.loader.__class__.__name__); "
             "exec(compile('import podsys.checks.health as h; h.load_config(\\'/nonexistent\\')', 'x', 'exec'))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(script)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.stdout.startswith("podsys.checks.findings RunnerImporter"), done.stdout + done.stderr
    assert '<podsys runner>/podsys/checks/health.py", line' in done.stderr, done.stderr
