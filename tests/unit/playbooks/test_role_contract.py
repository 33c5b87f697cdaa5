"""The contract between rendering and the roles.

- Every role under podsys/playbooks/roles follows the conventions: README listing its
  variables, defaults, tasks, handlers, meta/argument_specs.yml covering every default, the
  role-name prefix, ansible-lint clean. Found by listing roles/, not by a hand-kept list.
- The podsys_* variables rendering hands to Ansible match podsys/data/role-vars.schema.json
  for every example manifest, and every podsys_* variable a role reads is in that schema.
- Which plays and roles run for each layer and each tag is pinned (as Kayobe pins each
  command's playbooks), and `podsys deploy --help` names every tag."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from podsys.cli.main import build_app
from podsys.cluster.load import load_cluster
from podsys.render.build import SECRETS_FILE, VARS_FILE, render_files
from tests.conftest import REPO_ROOT

REPO = REPO_ROOT
PLAYBOOKS = REPO / "podsys" / "playbooks"
ROLES = sorted(p for p in (PLAYBOOKS / "roles").iterdir() if p.is_dir())
SCHEMA = json.loads((REPO / "podsys" / "data" / "role-vars.schema.json").read_text())


# --- role conventions --------------------------------------------------------------------------

def _specified(role: Path) -> set[str]:
    entry_points = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    return {name for entry in entry_points.values() for name in (entry.get("options") or {})}


def test_every_role_follows_the_conventions():
    assert len(ROLES) >= 15, [r.name for r in ROLES]
    problems = []
    for role in ROLES:
        for part in ("README.md", "defaults/main.yml", "tasks/main.yml", "handlers/main.yml", "meta/main.yml",
                     "meta/argument_specs.yml"):
            if not (role / part).is_file():
                problems.append(f"{role.name}: missing {part}")
        if problems and problems[-1].startswith(role.name):
            continue
        defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
        readme = (role / "README.md").read_text()
        if not re.search(r"^\| *variable *\|", readme, re.IGNORECASE | re.MULTILINE):
            problems.append(f"{role.name}: README has no variables table (| variable | default | meaning |)")
        specified = _specified(role)
        for name in defaults:
            if not name.startswith(f"{role.name}_"):
                problems.append(f"{role.name}: default {name} lacks the {role.name}_ prefix")
            if name not in specified:
                problems.append(f"{role.name}: default {name} has no entry in meta/argument_specs.yml")
            if f"`{name}`" not in readme:
                problems.append(f"{role.name}: default {name} is not in README.md")
    assert not problems, "\n".join(problems)


def test_roles_and_playbooks_are_ansible_lint_clean():
    # Debian's ansible-lint (what CI installs) runs with Debian's own ansible-core: /usr/bin goes
    # first so a pip-installed ansible elsewhere on PATH does not shadow it.
    env = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
    lint = shutil.which("ansible-lint", path=env["PATH"])
    if not lint:
        pytest.skip("ansible-lint not installed (Debian package ansible-lint)")
    paths = [str(role) for role in ROLES]
    res = subprocess.run([lint, "--nocolor", "--offline", "--profile", "production", *paths],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


# --- the podsys_* variables ---------------------------------------------------------------------

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 4,096 nodes in a blink


def rendered_variables(files: dict[str, str]) -> list[tuple[str, dict]]:
    """(where, variables) for every place the build sets podsys_* variables: the cluster-wide
    vars with the secrets, and each node group's hardware profile."""
    seen = [("group_vars/all", {**yaml.load(files[VARS_FILE], Loader=LOADER), **yaml.load(files[SECRETS_FILE], Loader=LOADER)})]
    for rel, text in files.items():
        if rel.startswith("inventory/group_vars/group_"):
            seen.append((rel, yaml.load(text, Loader=LOADER)))
    return seen


def host_records(files: dict[str, str]) -> list[dict]:
    """Each host's podsys_node, from its line of the inventory (one JSON flow mapping per node)."""
    return [json.loads(line.strip().partition(": ")[2])["podsys_node"]
            for line in files["inventory/hosts.yml"].splitlines() if '"podsys_node": ' in line]


@pytest.mark.parametrize("manifest", ["lab.yaml", "hgx-h100-32.yaml", "large-4096.yaml"])
def test_rendered_variables_match_the_documented_schema(manifest, tmp_path):
    for f in (REPO / "manifests").glob("*"):
        shutil.copy(f, tmp_path / f.name)
    files = render_files(load_cluster(tmp_path / manifest))
    seen = rendered_variables(files)
    assert len(seen) >= 2 and seen[1][0].startswith("inventory/group_vars/group_")
    for where, variables in seen:
        schema = SCHEMA if where == "group_vars/all" else {**SCHEMA, "required": sorted(variables)}
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(variables), key=lambda e: list(e.path))
        assert not errors, f"{manifest} {where}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    # Each host's own podsys_node is its record in podsys_nodes (validated above), field for field.
    assert host_records(files) == seen[0][1]["podsys_nodes"]


def test_the_schema_refuses_what_the_roles_could_not_use():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    cluster_wide = rendered_variables(render_files(load_cluster(REPO / "manifests" / "hgx-h100-32.yaml")))[0][1]
    broken = json.loads(json.dumps(cluster_wide))
    broken["podsys_nodes"][0]["slurm_gres"] = "gpu:8"  # the old, type-less gres string
    del broken["podsys_slurm"]["partitions"][0]["nodes"]
    broken["podsys_unknown"] = 1
    messages = " ".join(e.message for e in validator.iter_errors(broken))
    assert "'gpu:8' does not match" in messages
    assert "'nodes' is a required property" in messages
    assert "'podsys_unknown' was unexpected" in messages


def test_every_podsys_variable_a_role_reads_is_documented():
    used, filters = set(), set()
    for path in PLAYBOOKS.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".j2", ".py"):
            used |= set(re.findall(r"\bpodsys_[a-z_]+", path.read_text()))
        if path.parent.name == "filter_plugins" and path.suffix == ".py":
            filters |= set(re.findall(r"^def (podsys_[a-z_]+)\(", path.read_text(), re.MULTILINE))
    not_variables = filters  # Jinja filters the roles ship, not variables
    documented = set(SCHEMA["properties"])
    undocumented = sorted(name for name in used - not_variables - documented
                          if not any(name.startswith(d + "_") for d in documented))
    assert not undocumented, f"roles read podsys_* variables the schema does not document: {undocumented}"
