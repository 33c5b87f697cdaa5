"""The training lab: head + 2 nodes with the layers base, slurm, storage, training, accounting
and models, deployed once per test session (tests/integration/conftest.py `training_lab`) and
shared by test_addon_training.py and test_addon_models.py, which run in one parallel worker
(tests/conftest.py groups). One lab instead of two saves a whole deploy, PyTorch included, of
the README test command's CPU time; the training jobs then run with MLflow tracking on, as a
site with the models layer runs them. Helpers for both modules are here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import write_manifest_variant

USER, UID = "researcher", 2001
# On the lab's bound host directory: node roots are overlayfs, which gives ganesha's VFS FSAL
# no file handles.
EXPORT = "/shared/export"
NODE_TIMEOUT = 60
# torchrun's tee (see PODSYS_TORCHRUN_ARGS in podsys/render/training.py) prefixes rank output.
PREFIX = r"^(?:\[\w+\]:)?"


MANIFEST = "lab-training"  # the manifest the lab is deployed with, beside lab.yaml


def models_sections(data: dict, directory) -> dict:
    """Layers accounting (MLflow's MariaDB; jobs then need an association: team `vision`) and
    models (tests/integration/models_lab.py), with the wheels it installs: the manifest
    sections that add them to `data`."""
    from tests.integration.models_lab import build_wheelhouses, password_hash
    build_wheelhouses(directory)
    users = [{**user, "password_hash": password_hash()} if user["name"] == USER else user for user in data["users"]]
    return {"accounts": {"teams": [{"name": "vision", "users": [USER]}]}, "users": users,
            "models": {"artifact_dir": "/shared/mlflow"}}


def training_manifest(lab) -> Path:
    """The manifest the training lab was deployed with (write_variant's)."""
    return lab.manifest.with_name(f"{MANIFEST}.yaml")


def write_variant(lab) -> Path:
    """The training lab's manifest: base, slurm, storage, training, accounting and models."""
    data = yaml.safe_load(lab.manifest.read_text())
    storage = data["storage"]
    assert storage["mounts"] == [{"kind": "lab-bind", "path": "/shared"}], "lab.yaml declares the lab's shared dir"
    return write_manifest_variant(
        lab.manifest.parent, lab.manifest, MANIFEST,
        layers=["base", "slurm", "storage", "training", "accounting", "models"],
        storage={**storage, "exports": [{"path": EXPORT}], "home": "/shared/home", "scratch": "/shared/scratch"},
        training={"socket_interface": "eth0", "pytorch": "distro", "node_timeout": NODE_TIMEOUT,
                  "image_dir": "/shared/images", "checkpoint_dir": "/shared/checkpoints"},
        **models_sections(data, lab.manifest.parent))


def job_state(lab, job: str) -> dict[str, str]:
    """JobState and Restarts from `scontrol show job` (it keeps finished jobs for MinJobAge;
    the same with or without the accounting layer, which the models layer brings)."""
    out = lab.ssh(lab.head, ["scontrol", "-o", "show", "job", job], check=False).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def newest_checkpoint(lab, directory: str) -> int:
    names = lab.ssh(lab.head, f"ls {directory} 2>/dev/null || true").stdout.split()
    steps = [int(m.group(1)) for n in names if (m := re.fullmatch(r"step-(\d+)\.pt", n))]
    return max(steps, default=0)


def read_log(lab, path: str) -> str:
    return lab.ssh(lab.head, f"cat {path} 2>/dev/null || true").stdout
