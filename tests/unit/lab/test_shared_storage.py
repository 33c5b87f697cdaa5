"""The lab's shared storage: lab.yaml declares it as a `lab-bind` mount, every container gets
the host directory bound at that path, and the storage layer writes no mount unit for it."""

from __future__ import annotations

from pathlib import Path

import yaml

from podsys.cluster.load import load_cluster
from podsys.lab import plan as lab_plan, proc as lab_proc
from podsys.render.storage import storage_mounts


def test_lab_manifest_declares_the_bound_directory_and_validates(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 2)
    text = lab_plan.lab_manifest_text(plan, "http://deb.debian.org/debian", "k", "kh")
    data = yaml.safe_load(text)
    assert data["storage"] == {"mounts": [{"kind": "lab-bind", "path": lab_plan.LAB_SHARED_PATH}]}
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    cluster = load_cluster(path)
    assert storage_mounts(cluster) == []  # the lab binds it; no unit to mount


def test_every_container_gets_the_bind(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1)
    node = plan.compute[0]
    shared = Path("/var/lab/shared")
    argv = lab_proc.nspawn_command(node, tmp_path / "root", ((shared, "/shared"),))
    assert "--bind=/var/lab/shared:/shared" in argv
    assert not any(a.startswith("--bind") for a in lab_proc.nspawn_command(node, tmp_path / "root"))


def test_only_the_head_may_open_files_by_handle(tmp_path):
    plan = lab_plan.plan_lab(tmp_path, 1)
    assert "--system-call-filter=open_by_handle_at" in lab_proc.nspawn_command(plan.head, tmp_path / "root")
    assert "--system-call-filter=open_by_handle_at" not in lab_proc.nspawn_command(plan.compute[0], tmp_path / "root")
