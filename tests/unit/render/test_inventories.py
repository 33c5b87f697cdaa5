"""The checked-in sample build directories (inventories/) match what the renderer produces now;
`make inventories` regenerates them."""

import pytest

from podsys.cluster.load import load_cluster
from podsys.render.build import render_files
from tests.conftest import REPO_ROOT as REPO


@pytest.mark.parametrize("name", ["lab", "hgx-h100-32"])
def test_sample_inventory_is_current(name):
    files = {
        rel: content
        for rel, content in render_files(load_cluster(REPO / "manifests" / f"{name}.yaml")).items()
        if not rel.startswith(("provision/service/", "health/runner/"))  # podsys's own code, copied for the head / nodes
    }
    sample = REPO / "inventories" / name
    on_disk = {str(p.relative_to(sample)) for p in sample.rglob("*") if p.is_file() and p.name != ".rendered.json"}
    assert on_disk == set(files), "run `make inventories`"
    for rel, content in files.items():
        assert (sample / rel).read_text() == content, f"{rel} is stale: run `make inventories`"
