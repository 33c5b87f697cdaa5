"""The Ansible filter the stack roles use returns exactly podsys.cluster.stack_packages' plan."""

from __future__ import annotations

import importlib.util

import pytest

from podsys.cluster.matrix import load_matrix
from podsys.cluster.hardware import builtin_profiles
from podsys.cluster.stack_packages import package_plan
from tests.conftest import REPO_ROOT

PLUGIN = REPO_ROOT / "playbooks/roles/package_source/filter_plugins/podsys_stack.py"


@pytest.fixture(scope="module")
def filters():
    spec = importlib.util.spec_from_file_location("podsys_stack_filter", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.FilterModule().filters()


def test_filter_returns_the_plan_as_dicts(filters):
    _, f = filters
    stack = load_matrix().stack("r570-cuda12.8")
    hw = builtin_profiles()["hgx-b200-8gpu"]
    options = {"layers": ["gpu"], "components": ["driver", "fabric_manager", "nvlsm"]}
    got = f["podsys_package_plan"](stack.as_vars(), "ubuntu-24.04", hw.model_dump(mode="json"), options)
    assert got == [p.as_dict() for p in package_plan(stack, "ubuntu-24.04", hw, options)]
    assert [d["name"] for d in got] == ["nvidia-driver-570-open", "nvidia-fabricmanager-570", "libnvidia-nscq-570", "nvlsm"]


def test_node_plan_filter_returns_repositories_and_modules(filters):
    from podsys.cluster.stack_packages import node_plan

    _, f = filters
    stack = load_matrix().stack("r580-cuda13.0")
    hw = builtin_profiles()["hgx-b200-8gpu"]
    options = {"layers": ["gpu", "container"], "kernel": "6.8.0-45-generic"}
    got = f["podsys_node_plan"](stack.as_vars(), "ubuntu-24.04", hw.model_dump(mode="json"), options)
    assert got == node_plan(stack, "ubuntu-24.04", hw, options).as_dict()
    assert [r["name"] for r in got["repositories"]] == ["cuda", "container_toolkit"]
    assert got["packages"][0]["name"] == "linux-headers-6.8.0-45-generic"
    assert [d["name"] for d in got["packages"] if d["component"] == "fabric_manager"] == ["nvidia-fabricmanager", "libnvidia-nscq"]


def test_filter_turns_plan_errors_into_filter_errors(filters):
    module, f = filters
    stack = load_matrix().stack("r535-cuda12.2").as_vars()
    hw = builtin_profiles()["hgx-b200-8gpu"].model_dump(mode="json")
    with pytest.raises(module.AnsibleFilterError, match="B200 HGX needs nvlsm"):
        f["podsys_package_plan"](stack, "ubuntu-22.04", hw, {"layers": ["gpu"]})
    with pytest.raises(module.AnsibleFilterError, match="predates Turing"):
        volta = {**hw, "gpu": {**hw["gpu"], "architecture": "volta"}}
        f["podsys_driver_flavour"](stack, volta, "open")


def test_driver_flavour_filter_reports_the_reason(filters):
    _, f = filters
    stack = load_matrix().stack("r535-cuda12.2").as_vars()
    hw = builtin_profiles()["hgx-h100-8gpu"].model_dump(mode="json")
    assert f["podsys_driver_flavour"](stack, hw, "auto") == {
        "flavour": "proprietary", "reason": "proprietary modules are the default before R560 (stack R535)"}


def test_why_reboot_filter_wraps_reboot_reasons(filters):
    _, f = filters
    assert f["podsys_why_reboot"]([], True, "580.95.05", ["1:580.95.05-1"], "580.95.05\n", False) == []
    assert f["podsys_why_reboot"](["OFED 3.1.0 installed"], True, "580.95.05", ["580.95.05-1"], "", False) == [
        "OFED 3.1.0 installed", "nvidia module not loaded, driver 580.95.05 installed"]


def test_the_roles_pins_and_proxy_options_are_the_image_builds(filters):
    # preferences.j2 and vendor-proxy.conf.j2 render these; the image build writes the same.
    from podsys.cluster.stack_packages import node_plan

    _, f = filters
    stack = load_matrix().stack("r580-cuda13.0")
    plan = node_plan(stack, "debian-12", builtin_profiles()["hgx-h100-8gpu"], {"layers": ["gpu"]})
    driver = [p.as_dict() for p in plan.packages if p.component == "driver"]
    text = f["podsys_apt_preferences"](driver, plan.pins)
    assert f"Package: nvidia-driver\nPin: version {stack.driver}-*\nPin-Priority: 1001\n\n" in text
    assert "nvidia-driver-pinning" not in text.split("Package: nvidia-* ")[0], "no version in its spec, no pin"
    assert f"Package: {plan.pins[0]['packages']}\nPin: version {stack.driver}-*\n" in text
    repos = [r.as_dict() for r in plan.repositories]
    assert f["podsys_vendor_proxy_options"](repos, "http://10.0.0.1:3142") == [
        'Acquire::https::Proxy::developer.download.nvidia.com "http://10.0.0.1:3142"']
    assert f["podsys_vendor_proxy_options"](repos, "") == []
