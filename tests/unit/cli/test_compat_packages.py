"""`podsys compat packages`: the plan a node gets, printed from the roles' own plan function, and
`compat list` marking stacks past their end of life."""

import json
import subprocess
import sys

from podsys.cluster.hardware import builtin_profiles
from podsys.cluster.matrix import load_matrix
from podsys.cluster.stack_packages import node_plan


def podsys(*args):
    return subprocess.run([sys.executable, "-m", "podsys.cli.main", *map(str, args)], capture_output=True, text=True)


def test_packages_json_is_the_node_plan_the_roles_use():
    res = podsys("compat", "packages", "r580-cuda13.0", "--os", "ubuntu-22.04", "--hardware", "hgx-h100-8gpu", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    expected = node_plan(load_matrix().stack("r580-cuda13.0"), "ubuntu-22.04", builtin_profiles()["hgx-h100-8gpu"],
                         {"layers": ["gpu", "infiniband", "container"], "infiniband": {"stack": "matrix"}}).as_dict()
    assert data == {**expected, "hardware": "hgx-h100-8gpu"}
    assert [r["name"] for r in data["repositories"]] == ["ofed", "cuda", "container_toolkit"]
    cuda = data["repositories"][1]
    assert cuda["url"] == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/"
    assert cuda["suite"] == "/" and cuda["fingerprint"] == "EB693B3035CD5710E231E123A4B469963BF863CC"
    names = [p["name"] for p in data["packages"]]
    assert names.index("doca-ofed") < names.index("nvidia-driver-580-open") < names.index("nvidia-fabricmanager")
    assert {"name": "nvidia-fabricmanager", "version": "580.95.05", "component": "fabric_manager",
            "spec": "nvidia-fabricmanager=580.95.05-*", "origin": "vendor"} in data["packages"]
    assert [m["name"] for m in data["kernel_modules"]] == ["mlx5_ib", "nvidia", "nvidia_peermem"]
    assert [s["name"] for s in data["services"]] == ["nvidia-persistenced", "nvidia-fabricmanager", "nvidia-dcgm"]


def test_packages_table_for_rocky_shows_the_module_stream_and_repo_checks():
    res = podsys("compat", "packages", "r570-cuda12.8", "--os", "rocky-9", "--release", "9.5", "--hardware", "hgx-b200-8gpu")
    assert res.returncode == 0, res.stderr
    flat = " ".join(res.stdout.split())
    assert "dnf module streams: nvidia-driver:570-open" in flat
    assert "ib_umad" in flat and "service nvidia-fabricmanager" in flat
    assert "service nvlsm" not in flat


def test_packages_bad_input_is_one_line():
    res = podsys("compat", "packages", "r999", "--os", "ubuntu-22.04")
    assert res.returncode == 2 and "unknown stack 'r999'" in res.stderr and "Traceback" not in res.stderr
    res = podsys("compat", "packages", "r580-cuda13.0", "--os", "ubuntu-22.04", "--hardware", "nope")
    assert res.returncode == 2 and "--hardware" in res.stderr
    res = podsys("compat", "packages", "r580-cuda13.0", "--os", "rocky-9", "--release", "9.2")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "no repository for rocky 9.2" in res.stderr and "Traceback" not in res.stderr


def test_compat_list_marks_end_of_life():
    rows = {r["id"]: r for r in json.loads(podsys("compat", "list", "--json").stdout)}
    assert rows["r580-cuda13.0"]["end_of_life"] == "2028-06-30"
    for sid in ("r535-cuda12.2", "r550-cuda12.4", "r570-cuda12.8"):
        assert rows[sid]["end_of_life"] < "2026-11-28"
