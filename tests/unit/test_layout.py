"""The one place that knows the workspace layout and the head's paths and ports, and the roles
whose defaults must say the same."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import yaml

from podsys import layout
from podsys.cluster.load import load_cluster
from podsys.lab.cluster import paths_for
from tests.unit.manifest_samples import write_manifest

ROLES = Path(layout.__file__).parent / "playbooks" / "roles"


def role_defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def test_workspace_beside_the_manifest(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path))
    ws = cluster.workspace
    assert cluster.default_build_dir == tmp_path / ".podsys" / "build"
    assert ws.check_run_dir(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == tmp_path / ".podsys/check/20260102-030405"
    assert ws.deploy_lock("pod01") == tmp_path / ".podsys" / "deploy-pod01.lock"
    assert paths_for(tmp_path).lab_dir == ws.lab_dir == tmp_path / ".podsys" / "lab"
    build = ws.build_dir
    assert layout.build_logs_dir(build) == build / "logs" and layout.deploy_state_file(build) == build / "deploy-state.json"


def test_the_slurm_role_keeps_secrets_where_the_layout_says():
    cache = role_defaults("slurm")["slurm_munge_key_cache"]
    assert cache == "{{ inventory_dir | dirname }}/" + layout.BUILD_SECRETS_DIR + "/munge.key"


def test_the_provision_roles_head_paths_are_the_layouts():
    defaults = role_defaults("provision")
    paths = layout.HEAD_PATHS
    assert (defaults["provision_boot_root"], defaults["provision_repo_root"], defaults["provision_tftp_root"],
            defaults["provision_leases_file"], defaults["provision_state_dir"]) == (
        paths.boot_root, paths.repo_root, paths.tftp_root, paths.leases_file, paths.state_dir)


def test_the_roles_fixed_ports_are_the_layouts():
    assert role_defaults("package_proxy")["package_proxy_port"] == layout.PACKAGE_CACHE_PORT
    monitoring = role_defaults("monitoring")
    assert monitoring["monitoring_prometheus_port"] == layout.PROMETHEUS_PORT
    # The exporter ports are render's: the role reads them from podsys_monitoring.
    assert monitoring["monitoring_node_exporter_port"] == "{{ podsys_monitoring.node_exporter_port }}"
    assert monitoring["monitoring_dcgm_exporter_port"] == "{{ podsys_monitoring.dcgm_exporter_port }}"
    slurm_conf = (ROLES / "slurm" / "templates" / "slurm.conf.j2").read_text()
    assert re.search(r"^SlurmctldPort=(\d+)$", slurm_conf, re.M).group(1) == str(layout.SLURMCTLD_PORT)
    assert re.search(r"^SlurmdPort=(\d+)$", slurm_conf, re.M).group(1) == str(layout.SLURMD_PORT)
    assert set(layout.FIXED_HEAD_PORTS) == {layout.SSH_PORT, layout.PACKAGE_CACHE_PORT, layout.SLURMCTLD_PORT,
                                            layout.SLURMD_PORT, layout.PROMETHEUS_PORT, layout.NODE_EXPORTER_PORT,
                                            layout.MODELS_HTTPS_PORT}



def test_the_health_wrappers_slurm_runs_are_where_the_health_role_installs_them():
    assert role_defaults("health")["health_bin_dir"] == layout.HEALTH_BIN_DIR
    tasks = yaml.safe_load((ROLES / "health" / "tasks" / "main.yml").read_text())
    installed = next(t for t in tasks if "podsys-health-slurm" in (t.get("loop") or []))
    assert installed["ansible.builtin.template"]["dest"].startswith("{{ health_bin_dir }}/")
    for program in (layout.HEALTH_SLURM_PROGRAM, layout.HEALTH_PROLOG_PROGRAM):
        directory, name = program.rsplit("/", 1)
        assert directory == layout.HEALTH_BIN_DIR and name in installed["loop"]
