"""The shared test helpers in tests/conftest.py do what the tests that use them rely on."""

from __future__ import annotations

from podsys.cluster.load import load_cluster
from tests.conftest import MANIFESTS, invoke, podsys


def test_manifest_variant_keeps_every_node_at_its_address(manifest_variant, tmp_path):
    original = load_cluster(MANIFESTS / "hgx-h100-32.yaml")
    metadata = {"name": "renamed", "domain": original.manifest.metadata.domain}
    variant = manifest_variant("hgx-h100-32", "renamed", metadata=metadata)
    assert variant == tmp_path / "renamed.yaml"
    changed = load_cluster(variant)
    assert [(n.name, n.provision_ip, n.mac) for n in changed.nodes] == [(n.name, n.provision_ip, n.mac) for n in original.nodes]
    assert (changed.name, original.name) == ("renamed", "pod01")


def test_both_cli_runners_report_exit_code_and_the_one_error_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    child, here = podsys("validate", missing), invoke("validate", missing)
    assert child.returncode == here.exit_code == 2
    assert child.stderr.strip() == here.stderr.strip() != ""
