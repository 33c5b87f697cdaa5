"""What deploy installs for podsys health: the runner runs alone (stdlib only, no podsys
install), each node's health.json comes from its resolved profile, the manifest's health section."""

import json
import subprocess
import sys

import pytest

from podsys.checks.health import parse_config
from podsys.checks.health_files import RUNNER_MODULES, render_files
from podsys.cluster.load import load_cluster
from podsys.errors import InputError
from tests.unit.manifest_samples import MACS, VALID, write_manifest


def cluster(tmp_path, text=VALID):
    return load_cluster(write_manifest(tmp_path, text, MACS))


def test_every_node_gets_its_profile_and_the_manifest_thresholds(tmp_path):
    c = cluster(tmp_path, VALID.replace("slurm:", "health: {disk_min_free_percent: 12.5}\nslurm:", 1))
    files = render_files(c)
    for node in c.nodes:
        config = parse_config(json.loads(files[f"health/nodes/{node.name}.json"]))
        assert config.node == node.name and config.profile.id == c.profile_of(node).id
        assert config.disk_min_free_percent == 12.5
        spec = c.profile_of(node).gpu
        assert (config.profile.gpu.count if config.profile.gpu else 0) == (spec.count if spec else 0)


def test_the_runner_runs_alone_without_site_packages(tmp_path):
    files = render_files(cluster(tmp_path))
    root = tmp_path / "node"
    for path, content in files.items():
        if path.startswith("health/runner/"):
            target = root / path.removeprefix("health/runner/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    assert sorted(p.name for p in (root / "podsys/checks").iterdir()) == sorted(RUNNER_MODULES)
    config = tmp_path / "health.json"
    config.write_text(json.dumps({"node": "cpu1", "profile": {"id": "cpu-only", "gpu": None, "hca": None}}))
    # -I: isolated (no user site, no PYTHONPATH from outside); -S: no site-packages at all
    done = subprocess.run([sys.executable, "-I", "-S", "-c",
                           f"import sys; sys.path.insert(0, {str(root)!r}); from podsys.checks.health_main import main; "
                           f"sys.exit(main(['--config', {str(config)!r}, '--state-dir', {str(tmp_path / 'state')!r}]))"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [["PASS", "node.disk:"], ["PASS", "node.memory:"]]


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
