"""`podsys_package_plan`: the package plan of podsys/cluster/stack_packages.py as an Ansible filter, so
the roles and the offline bundle read the same exact names and versions from the matrix."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # imported outside Ansible (unit tests)
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]


def _import_plan():
    try:
        from podsys.cluster import stack_packages
    except ImportError:
        # Running from a source checkout without `pip install`: the checkout holding the podsys
        # package sits five levels up (podsys/playbooks/roles/package_source/filter_plugins/).
        sys.path.insert(0, str(Path(__file__).resolve().parents[5]))
        try:
            from podsys.cluster import stack_packages
        except ImportError as exc:
            # Not an AnsibleFilterError: linters that cannot import podsys then skip the check.
            raise ImportError(f"podsys_package_plan needs the podsys package on the controller: {exc}") from None
    return stack_packages


def _plain(value):
    """Ansible (2.19+) hands filters lazy, tagged containers and strings; pydantic wants plain data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _planned(call):
    """call(stack_packages), with its PlanError shown by Ansible as the filter's error."""
    stack_packages = _import_plan()
    try:
        return call(stack_packages)
    except stack_packages.PlanError as exc:
        raise AnsibleFilterError(str(exc)) from None


def podsys_package_plan(stack, os_key, hardware=None, options=None):
    """[{name, version, component, spec, origin}, ...] for one host."""
    plan = _planned(lambda sp: sp.package_plan(_plain(stack), str(os_key), _plain(hardware) or None, _plain(options or {})))
    return [p.as_dict() for p in plan]


def podsys_node_plan(stack, os_key, hardware=None, options=None):
    """{repositories, module_streams, packages, pins, kernel_modules, services, notes} for one host."""
    plan = _planned(lambda sp: sp.node_plan(_plain(stack), str(os_key), _plain(hardware) or None, _plain(options or {})))
    return plan.as_dict()


def podsys_repositories(stack, os_key, names, options=None):
    """[{name, url, suite, key_url, fingerprint, gpgcheck, repo_gpgcheck, ...}] for the named repositories."""
    repos = _planned(lambda sp: sp.repositories_named(_plain(stack), str(os_key), _plain(names or []), _plain(options or {})))
    return [r.as_dict() for r in repos]


def podsys_vendor_proxy_options(repositories, proxy):
    """apt options tunnelling the vendor repositories through `proxy` (stack_packages.vendor_proxy_options)."""
    return _import_plan().vendor_proxy_options(_plain(repositories or []), str(proxy or ""))


def podsys_apt_preferences(plan, extra=None):
    """apt preferences (priority 1001) for plan entries and extra {packages, version} pins."""
    stack_packages = _import_plan()
    return stack_packages.apt_preferences(stack_packages.apt_pins(_plain(plan or []), _plain(extra or [])))


def podsys_why_reboot(earlier, has_gpu, driver, installed_versions, loaded_driver, nouveau_loaded):
    """Why this node must reboot now ([] = it already runs what is planned)."""
    stack_packages = _import_plan()
    return stack_packages.reboot_reasons(bool(has_gpu), str(driver), [str(v) for v in _plain(installed_versions or [])],
                                         str(loaded_driver or ""), bool(nouveau_loaded), [str(r) for r in _plain(earlier or [])])


def podsys_driver_flavour(stack, hardware=None, requested="auto"):
    """{flavour, reason} for the host's GPU."""
    stack_packages = _import_plan()
    from podsys.cluster.matrix import Stack
    from podsys.cluster.hardware import HardwareProfile

    profile = HardwareProfile.model_validate(_plain(hardware)) if hardware else None
    try:
        flavour, reason = stack_packages.driver_flavour(Stack.model_validate(_plain(stack)), profile, str(requested))
    except stack_packages.PlanError as exc:
        raise AnsibleFilterError(str(exc)) from None
    return {"flavour": flavour, "reason": reason}


class FilterModule:
    def filters(self):
        return {"podsys_package_plan": podsys_package_plan, "podsys_node_plan": podsys_node_plan,
                "podsys_repositories": podsys_repositories, "podsys_why_reboot": podsys_why_reboot,
                "podsys_driver_flavour": podsys_driver_flavour,
                "podsys_vendor_proxy_options": podsys_vendor_proxy_options,
                "podsys_apt_preferences": podsys_apt_preferences}
