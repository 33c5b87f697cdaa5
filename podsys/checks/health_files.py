"""What deploy installs for `podsys health`: the runner (these stdlib-only modules, as a tiny
`podsys` package inside one script, since nodes carry no podsys install) and the cluster's
health.json (every node's profile and thresholds, one file), rendered from the resolved cluster
into the build directory; roles/health copies them out."""

from __future__ import annotations

import json
from importlib import resources

# podsys.checks modules the node-side runner imports (test_health_files runs them alone)
RUNNER_MODULES = ("__init__.py", "catalog.py", "findings.py", "dmesg.py", "ibstat.py", "nvsmi.py", "nvsmi_q.py",
                  "health.py", "health_main.py")
RUNNER_SCRIPT = "health/runner/podsys_health_runner.py"

# One file, not a package tree: Ansible's copy of a directory costs a remote stat (and a put
# and a copy when new) per file, which took 323 s of a fresh emulated lab node's first deploy
# under load; one file is one of each at any module count. The script imports its modules from
# the SOURCES table (a meta path finder, importlib's documented extension point), so Python's
# own imports and tracebacks (file names <podsys runner>/podsys/checks/...) work as before.
RUNNER_TEMPLATE = '''#!/usr/bin/env python3
"""podsys health runner for a node (written by `podsys render`, installed by the health role; do
not edit: a deploy replaces it). The podsys.checks modules it needs are in SOURCES; run it as
`python3 podsys_health_runner.py --help`."""

import importlib.abc
import importlib.util
import sys

SOURCES = {sources}
PACKAGES = ("podsys", "podsys.checks")


class RunnerImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in SOURCES:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name in PACKAGES)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        filename = "<podsys runner>/" + name.replace(".", "/") + ("/__init__.py" if name in PACKAGES else ".py")
        exec(compile(SOURCES[name], filename, "exec"), module.__dict__)


sys.meta_path.insert(0, RunnerImporter())

if __name__ == "__main__":
    from podsys.checks.health_main import main

    sys.exit(main())
'''


def runner_sources() -> dict[str, str]:
    """{module name: source} of the runner's package."""
    package = resources.files("podsys.checks")
    sources = {"podsys": '"""podsys runtime on a node: the health runner only."""\n'}
    for module in RUNNER_MODULES:
        name = "podsys.checks" if module == "__init__.py" else f"podsys.checks.{module.removesuffix('.py')}"
        sources[name] = package.joinpath(module).read_text()
    return sources


def runner_files() -> dict[str, str]:
    table = "{\n" + "".join(f"    {name!r}: {source!r},\n" for name, source in runner_sources().items()) + "}"
    return {RUNNER_SCRIPT: RUNNER_TEMPLATE.replace("{sources}", table)}


CLUSTER_CONFIG = "health/nodes.json"


def node_configs(cluster) -> dict[str, str]:
    """One health.json for every node: the few distinct configs once (thresholds are the
    cluster's, so a config follows from the hardware profile and the GPUDirect path) and each
    node's key into them. The runner picks its own by hostname (podsys.checks.health.node_entry);
    at thousands of nodes, one file instead of one per node."""
    from podsys.checks.health import config_data
    from podsys.checks.versions import expected_from_cluster

    settings = cluster.manifest.health
    expected = expected_from_cluster(cluster)

    def gpudirect(node, profile):
        # The path the plan gives this hardware (as podsys check's versions area requires it),
        # with or without podsys's infiniband layer: a site-managed RDMA stack needs one too.
        if profile.gpu is None or not profile.has_ib:
            return None
        return expected.gpudirect_path(profile, (*node.layers, "infiniband"))

    configs: dict[str, dict] = {}
    nodes: dict[str, str] = {}
    keys: dict[tuple, str] = {}  # (profile, layers) -> key: a node group's nodes share it
    for node in cluster.nodes:
        profile = cluster.profile_of(node)
        if (profile.id, node.layers) in keys:
            nodes[node.name] = keys[profile.id, node.layers]
            continue
        path = gpudirect(node, profile)
        key = keys[profile.id, node.layers] = f"{profile.id}/{path or 'none'}"
        if key not in configs:
            config = config_data(node.name, profile, settings.disk_min_free_percent,
                                 settings.memory_min_available_percent, path)
            del config["node"]
            configs[key] = config
        nodes[node.name] = key
    return {CLUSTER_CONFIG: json.dumps({"configs": configs, "nodes": nodes}, indent=1, sort_keys=True) + "\n"}


def render_files(cluster) -> dict[str, str]:
    return {**runner_files(), **node_configs(cluster)}
