"""The distribution packages an add-on layer's roles install, read from the roles themselves.

The layer catalogue (podsys/cluster/layer_catalogue.py) names each add-on's roles; each role's
tasks hand its packages to ansible.builtin.apt through a list in its defaults/main.yml. Reading
them here keeps one declaration: a package added to a role's defaults is in the next bundle."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import yaml

_VAR_REF = re.compile(r"\{\{\s*(\w+)\s*\}\}")

# Role package lists a cluster may not install at all, with the manifest test that decides:
# the role's own `when` on the apt task (training: python3-torch only for `pytorch: distro`;
# with `container` PyTorch comes in the job's image, and Debian's torch is hundreds of MB).
OPTIONAL_PACKAGE_LISTS: dict[str, Callable[[object], bool]] = {
    "training_torch_packages": lambda manifest: manifest.training.pytorch == "distro",
}


def roles_dir() -> Path:
    return Path(str(resources.files("podsys") / "playbooks" / "roles"))


def _apt_tasks(tasks) -> list[dict]:
    found = []
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            found += _apt_tasks(task.get(key))
        apt = task.get("ansible.builtin.apt")
        if isinstance(apt, dict) and "name" in apt:
            found.append(apt)
    return found


def role_apt_packages(role_dir: Path) -> list[tuple[str | None, str]]:
    """(defaults variable or None, package) for every package the role's apt tasks install."""
    defaults = yaml.safe_load((role_dir / "defaults" / "main.yml").read_text()) if (role_dir / "defaults" / "main.yml").is_file() else {}
    defaults = defaults or {}
    out: list[tuple[str | None, str]] = []
    for tasks_file in sorted((role_dir / "tasks").glob("*.yml")):
        for apt in _apt_tasks(yaml.safe_load(tasks_file.read_text())):
            value, variable = apt["name"], None
            ref = _VAR_REF.fullmatch(value.strip()) if isinstance(value, str) else None
            if ref:
                variable = ref.group(1)
                if variable not in defaults:
                    raise ValueError(f"{tasks_file}: apt name {value!r} is not a list in the role's defaults")
                value = defaults[variable]
            for name in [value] if isinstance(value, str) else value:
                if "{{" in str(name):
                    raise ValueError(f"{tasks_file}: apt package {name!r} is a template, not a package name")
                out.append((variable, str(name)))
    return out


def addon_packages(manifest, layers, catalogue=None, roles: Path | None = None) -> list[str]:
    """Sorted package names the enabled add-on layers' roles install for this manifest."""
    from podsys.cluster.layer_catalogue import CATALOGUE

    roles = roles or roles_dir()
    wanted: set[str] = set()
    for info in catalogue or CATALOGUE:
        if info.kind != "add-on" or info.name not in layers:
            continue
        for role in info.roles:
            for variable, name in role_apt_packages(roles / role):
                keep = OPTIONAL_PACKAGE_LISTS.get(variable)
                if keep is None or keep(manifest):
                    wanted.add(name)
    return sorted(wanted)
