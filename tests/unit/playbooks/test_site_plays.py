"""Which plays and roles `podsys deploy` runs, for each tag and each layer, pinned the way Kayobe
pins each command's playbook list: a change to site.yml that adds, drops or reorders a role
fails here until this table says so too. gpu.yml's inner order is pinned by the stack's own
test; here only that site.yml imports it for the gpu, infiniband and container layers."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from tests.conftest import REPO_ROOT, invoke


PLAYBOOKS = REPO_ROOT / "podsys" / "playbooks"

# (play name, what it runs: a role, role:entry point, or an imported playbook), in run order.
SITE_ORDER = [
    ("Gather facts from every host", None),
    ("Head node package service", "package_proxy"),
    ("Boot services for PXE installs", "provision"),
    ("Base system", "base"),
    ("Slurm accounting database", "accounting"),
    ("Slurm", "slurm"),
    ("Slurm accounts", "accounting:accounts"),
    ("Shared storage", "storage"),
    ("Training toolchain", "training"),
    ("Web front door", "web_tls"),
    ("Notebooks", "notebooks"),
    ("Model registry", "models"),
    ("GPU, InfiniBand and container stack", "gpu.yml"),
    ("Monitoring exporters", "monitoring"),
    ("Passive health checks on every node (podsys health)", "health"),
    ("Monitoring server", "monitoring:server"),
]

BY_TAG = {
    "packages": ["package_proxy"],
    "base": ["package_proxy", "base"],
    "provision": ["provision"],
    "slurm": ["slurm"],
    "gpu": ["gpu.yml"],
    "monitoring": ["monitoring", "monitoring:server"],
    "health": ["health"],
    "accounting": ["accounting", "accounting:accounts"],
    "storage": ["storage"],
    "training": ["training"],
    "web": ["web_tls"],
    "notebooks": ["web_tls", "notebooks"],
    "models": ["web_tls", "models"],
}

# Layer -> (what runs, the hosts it runs on, the condition that skips it when the layer is off).
BY_LAYER = {
    "base": [("package_proxy", "head", None), ("base", "head:nodes", None)],
    "slurm": [("slurm", "head:layer_slurm", "'slurm' in podsys_layers")],
    "monitoring": [("monitoring", "head:layer_monitoring", "'monitoring' in podsys_layers"),
                   ("monitoring:server", "head", "'monitoring' in podsys_layers")],
    "gpu": [("gpu.yml", None, None)],
    "infiniband": [("gpu.yml", None, None)],
    "container": [("gpu.yml", None, None)],
    # Add-on layers: slurmdbd before slurmctld starts, the accounts once it runs.
    "accounting": [("accounting", "head", "'accounting' in podsys_layers"),
                   ("accounting:accounts", "head", "'accounting' in podsys_layers")],
    "storage": [("storage", "head:layer_storage", "'storage' in podsys_layers")],
    "training": [("training", "head:layer_training", "'training' in podsys_layers")],
    "notebooks": [("web_tls", "head", "podsys_web is defined"),
                  ("notebooks", "head:layer_notebooks", "'notebooks' in podsys_layers")],
    "models": [("web_tls", "head", "podsys_web is defined"),
               ("models", "head:layer_training", "'models' in podsys_layers")],
}


def load(name: str) -> list[dict]:
    return yaml.safe_load((PLAYBOOKS / name).read_text())


def steps(playbook: list[dict]) -> list[dict]:
    """Each play as {play, runs, hosts, tags, when}: one entry per role or imported role."""
    out = []
    for play in playbook:
        base = {"play": play["name"], "hosts": play.get("hosts"), "tags": set(play.get("tags") or [])}
        if "ansible.builtin.import_playbook" in play:
            out.append({**base, "runs": play["ansible.builtin.import_playbook"], "when": play.get("when")})
            continue
        entries = []
        for role in play.get("roles") or []:
            role = role if isinstance(role, dict) else {"role": role}
            entries.append({"runs": role["role"], "tags": set(role.get("tags") or []), "when": role.get("when")})
        for task in play.get("tasks") or []:
            imported = task.get("ansible.builtin.import_role")
            if imported:
                runs = imported["name"] + (f":{Path(imported['tasks_from']).stem}" if "tasks_from" in imported else "")
                entries.append({"runs": runs, "tags": set(task.get("tags") or []), "when": task.get("when")})
        if not entries:
            out.append({**base, "runs": None, "when": None})
        for entry in entries:
            out.append({**base, **entry, "tags": base["tags"] | entry["tags"]})
    return out


def test_site_runs_these_plays_in_this_order():
    assert [(s["play"], s["runs"]) for s in steps(load("site.yml"))] == SITE_ORDER


def test_each_tag_runs_exactly_these_roles():
    site = steps(load("site.yml"))
    tags = set().union(*(s["tags"] for s in site))
    assert tags == set(BY_TAG)
    for tag, expected in BY_TAG.items():
        assert [s["runs"] for s in site if tag in s["tags"]] == expected, tag


def test_each_layer_runs_these_roles_on_these_hosts():
    site = {s["runs"]: s for s in steps(load("site.yml"))}
    for layer, expected in BY_LAYER.items():
        for runs, hosts, when in expected:
            step = site[runs]
            if hosts is not None:
                assert step["hosts"] == hosts, (layer, runs)
            assert step["when"] == when, (layer, runs)
    # gpu.yml holds the gpu, infiniband and container plays, each on its layer's hosts.
    targets = {play["hosts"] for play in load("gpu.yml")}
    assert {"layer_gpu", "layer_infiniband", "layer_container"} <= targets


def test_provision_runs_only_when_some_node_installs_over_pxe():
    provision = next(s for s in steps(load("site.yml")) if s["runs"] == "provision")
    assert provision["hosts"] == "head"
    assert provision["when"] == "podsys_nodes | selectattr('pxe') | list | length > 0"


def test_deploy_help_names_every_tag():
    tags = set().union(*(s["tags"] for s in steps(load("site.yml")) + steps(load("gpu.yml"))))
    result = invoke("deploy", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    listed = re.search(r"comma-separated:\s*([a-z,\s]+)", result.output)
    assert listed, result.output
    named = {t.strip() for t in re.sub(r"\s+", "", listed.group(1)).split(",") if t.strip()}
    assert tags <= named, f"deploy --help does not name {sorted(tags - named)}"
    assert "provision" in named
