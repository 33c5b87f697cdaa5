"""The add-on layers' manifest sections: every error names the file, the line and the field
(exit 2 from the CLI); a good section renders the variables the roles read."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from podsys.cluster.load import load_cluster
from podsys.render.build import render_files
from tests.unit.manifest_samples import MACS, VALID, assert_problem, line_of, problems_for, write_manifest

ADDONS = VALID.replace("layers: [base, gpu, infiniband, slurm, monitoring]",
                       "layers: [base, gpu, infiniband, slurm, monitoring, accounting, storage, training]")
ADDONS = re.sub(
    r"^users: .*\n",
    """users:
  - {name: alice, uid: 2001}
  - {name: bob, uid: 2002}
accounts:
  qos:
    - {name: high, priority: 100, preempt: [low], preempt_mode: requeue}
    - {name: low}
  teams:
    - name: vision
      fairshare: 10
      users: [alice, bob]
      limits: {gpus: 16, cpus: 512, max_wall: 2-00:00:00}
      qos: [normal, high]
storage:
  exports: [{path: /srv/shared}]
  mounts:
    - {kind: nfs, source: "mu01:/srv/shared", path: /shared, options: [vers=4.1, hard]}
    - {kind: lustre, source: "10.0.0.5@o2ib:/scratch", path: /lustre}
  home: /shared/home
  scratch: /lustre/scratch
training:
  image_dir: /shared/images
  checkpoint_dir: /shared/checkpoints
""", ADDONS, count=1, flags=re.MULTILINE)


def test_the_addon_sections_load_and_render(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path, ADDONS))
    all_vars = yaml.safe_load(render_files(cluster)["inventory/group_vars/all/main.yml"])
    extra = all_vars["podsys_slurm"]["extra_config"]
    assert extra["HealthCheckProgram"] == "/usr/local/sbin/podsys-health-slurm"  # health's lines stay beside them
    assert extra["SlurmdTimeout"] == str(cluster.manifest.training.node_timeout)
    assert extra["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert extra["AccountingStorageEnforce"] == "associations,limits,qos"
    assert extra["AccountingStorageTRES"] == "gres/gpu" and extra["PreemptType"] == "preempt/qos"
    team = all_vars["podsys_accounts"]["teams"][0]
    assert team["GrpTRES"] == "cpu=512,gres/gpu=16" and team["MaxWall"] == "2-00:00:00"
    assert team["users"] == ["alice", "bob"] and team["QOS"] == "normal,high"
    assert all_vars["podsys_accounts"]["qos"][0]["Preempt"] == "low"
    assert all_vars["podsys_storage"]["mounts"][0]["source"] == "mu01:/srv/shared"


def test_without_the_accounting_layer_slurm_gets_no_accounting_lines(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path))
    all_vars = yaml.safe_load(render_files(cluster)["inventory/group_vars/all/main.yml"])
    assert "slurm_extra_config" not in all_vars
    assert not any(key.startswith(("Accounting", "Priority", "Preempt")) for key in all_vars["podsys_slurm"]["extra_config"])


# (what to replace, with what, the line holding it, the field, a fragment of the message)
BAD = [
    ("users: [alice, bob]", "users: [alice, carol]", "users: [alice, carol]", "accounts.teams[0].users[1]",
     "'carol' is not a manifest user"),
    ("qos: [normal, high]", "qos: [normal, urgent]", "qos: [normal, urgent]", "accounts.teams[0].qos[1]",
     "QOS 'urgent' is not declared"),
    ("preempt: [low]", "preempt: [lowest]", "preempt: [lowest]", "accounts.qos[0].preempt[0]",
     "QOS 'lowest' is not declared"),
    ("fairshare: 10", "fairshare: 0", "fairshare: 0", "accounts.teams[0].fairshare", "greater than or equal to 1"),
    ("gpus: 16", "gpus: many", "gpus: many", "accounts.teams[0].limits.gpus", "integer"),
    ("max_wall: 2-00:00:00", "max_wall: two days", "max_wall: two days", "accounts.teams[0].limits.max_wall", ""),
    ("preempt_mode: requeue", "preempt_mode: suspend", "preempt_mode: suspend", "accounts.qos[0].preempt_mode", ""),
    ("- name: vision", "- name: Vision", "- name: Vision", "accounts.teams[0].name", ""),
    ("fairshare: 10", "fairshare: 10\n      limit: {cpus: 1}", "limit: {cpus: 1}", "accounts.teams[0].limit",
     "unknown key 'limit'"),
    ('source: "mu01:/srv/shared"', 'source: "mu01"', 'source: "mu01"', "storage.mounts[0].source",
     "must be SERVER:/EXPORT"),
    ('source: "10.0.0.5@o2ib:/scratch"', 'source: "/scratch"', 'source: "/scratch"', "storage.mounts[1].source",
     "lustre source"),
    ("kind: lustre", "kind: ceph", "kind: ceph", "storage.mounts[1].kind", ""),
    ("path: /lustre}", "path: /shared}", "path: /shared}", "storage.mounts[1].path", "mounted twice"),
    ("home: /shared/home", "home: /local/home", "home: /local/home", "storage.home", "not on shared storage"),
    ("options: [vers=4.1, hard]", "options: [vers=4.1, 'hard x']", "options: [vers=4.1", "storage.mounts[0].options[1]",
     "cannot carry"),
    ("checkpoint_dir: /shared/checkpoints", "checkpoint_dir: /tmp/ckpt", "checkpoint_dir: /tmp/ckpt",
     "training.checkpoint_dir", "not on shared storage"),
    ("image_dir: /shared/images", "image_dir: images", "image_dir: images", "training.image_dir", ""),
    ("checkpoint_dir: /shared/checkpoints", "checkpoint_dir: /shared/checkpoints\n  env: {nccl_debug: INFO}",
     "env: {nccl_debug", "training.env", "upper case"),
    ("accounting, storage, training]", "storage, training]", "accounts:", "accounts", "needs layer 'accounting'"),
]


@pytest.mark.parametrize("old,new,needle,field,fragment", BAD, ids=[b[3] + ":" + b[1][:20] for b in BAD])
def test_bad_addon_input_names_file_line_and_field(tmp_path, old, new, needle, field, fragment):
    assert old in ADDONS
    text = ADDONS.replace(old, new, 1)
    path, problems = problems_for(tmp_path, text)
    assert_problem(problems, path, line_of(text, needle), field, fragment)


def test_the_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    text = ADDONS.replace("users: [alice, bob]", "users: [alice, carol]")
    path = write_manifest(tmp_path, text, MACS)
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = line_of(text, "users: [alice, carol]")
    assert f"error: {path}:{line}: accounts.teams[0].users[1]: 'carol' is not a manifest user" in proc.stderr


def test_a_cluster_without_addons_gets_no_addon_variables(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path))
    all_vars = yaml.safe_load(render_files(cluster)["inventory/group_vars/all/main.yml"])
    assert not {k for k in all_vars if k.startswith(("podsys_accounts", "podsys_storage", "podsys_training"))}
