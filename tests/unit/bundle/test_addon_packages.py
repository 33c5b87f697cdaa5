"""The offline bundle carries the add-on layers' packages, read from the add-on roles' defaults
(podsys/bundle/addon_packages.py): one declaration, in the role."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from podsys.bundle.addon_packages import addon_packages, role_apt_packages, roles_dir
from podsys.bundle.build import plan_bundle
from podsys.cluster.layer_catalogue import CATALOGUE
from podsys.cluster.load import load_cluster
from tests.unit.manifest_samples import MACS, write_manifest
from tests.unit.cluster.test_addons import ADDONS


def _defaults(role: str) -> dict:
    return yaml.safe_load((roles_dir() / role / "defaults" / "main.yml").read_text())


def test_the_add_on_roles_declare_the_packages_of_the_issue():
    accounting = {name for _, name in role_apt_packages(roles_dir() / "accounting")}
    storage = {name for _, name in role_apt_packages(roles_dir() / "storage")}
    training = {name for _, name in role_apt_packages(roles_dir() / "training")}
    assert {"slurmdbd", "mariadb-server"} <= accounting
    assert {"nfs-ganesha", "nfs-ganesha-vfs", "nfs-common"} <= storage
    assert {"python3-torch", "slurm-client"} <= training


def test_every_package_comes_from_the_roles_defaults_lists():
    for info in CATALOGUE:
        if info.kind != "add-on":
            continue
        for role in info.roles:
            declared = {n for key, value in _defaults(role).items() if key.endswith("_packages") for n in value}
            found = role_apt_packages(roles_dir() / role)
            assert found, f"role {role} of add-on {info.name} installs no package with apt"
            assert {name for _, name in found} <= declared, role


def test_a_bundle_plan_holds_each_enabled_add_ons_packages(tmp_path):
    cluster = load_cluster(write_manifest(tmp_path, ADDONS, MACS))
    plan = plan_bundle(cluster)
    for name in ("slurmdbd", "mariadb-server", "nfs-ganesha", "nfs-ganesha-vfs", "nfs-common", "slurm-client"):
        assert name in plan.packages, name
    # pytorch: container (the default): PyTorch comes in the job's image, not in the bundle.
    assert cluster.manifest.training.pytorch == "container"
    assert "python3-torch" not in plan.packages


def test_distro_pytorch_puts_python3_torch_in_the_bundle(tmp_path):
    text = ADDONS.replace("training:\n", "training:\n  pytorch: distro\n", 1)
    plan = plan_bundle(load_cluster(write_manifest(tmp_path, text, MACS)))
    assert "python3-torch" in plan.packages


def test_layers_that_are_not_enabled_add_nothing(tmp_path):
    text = ADDONS.replace("monitoring, accounting, storage, training]", "monitoring, storage]", 1)
    text = text[:text.index("accounts:")] + text[text.index("storage:"):text.index("training:")]
    cluster = load_cluster(write_manifest(tmp_path, text, MACS))
    assert addon_packages(cluster.manifest, cluster.manifest.layers) == ["nfs-common", "nfs-ganesha", "nfs-ganesha-vfs"]
    plan = plan_bundle(cluster)
    assert "slurmdbd" not in plan.packages and "mariadb-server" not in plan.packages


def test_a_templated_package_name_is_refused(tmp_path):
    role = tmp_path / "odd"
    (role / "defaults").mkdir(parents=True)
    (role / "tasks").mkdir()
    (role / "defaults" / "main.yml").write_text("odd_packages: ['python3-{{ flavour }}']\n")
    (role / "tasks" / "main.yml").write_text(
        "- name: Install\n  ansible.builtin.apt:\n    name: '{{ odd_packages }}'\n")
    with pytest.raises(ValueError, match="is a template, not a package name"):
        role_apt_packages(Path(role))
