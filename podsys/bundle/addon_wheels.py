"""The add-on layers' PyPI wheel sets: what the offline bundle downloads, and where deploy finds them.

The notebooks role installs batchspawner and the models role MLflow (server on the head, client
on the nodes) with pip from wheel directories, never from the network. Their pip requirements are
declared once, in each role's defaults/main.yml (the variable WHEEL_SETS names): `podsys bundle
build` downloads exactly those for the target release's Python and glibc into
wheels/addons/<set>/, and `wheelhouse_for` decides which directory a deploy copies from: the
manifest's own wheelhouse when it exists, else the bundle's set (packages.source: bundle)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from podsys.bundle.addon_packages import roles_dir
from podsys.bundle.repo import sha256_file
from podsys.errors import PodsysError

ADDONS_DIR = "wheels/addons"  # inside a bundle; served under /wheels/ like podsys's own wheels


@dataclass(frozen=True)
class WheelSetSpec:
    name: str  # its directory under wheels/addons/
    layer: str
    role: str
    requirements_var: str  # the role's defaults variable listing the pip requirements
    field: tuple[str, str]  # the manifest's (section, key) naming the site's own directory
    no_deps: bool  # batchspawner's only dependency, JupyterHub, comes from Debian


WHEEL_SETS = (
    WheelSetSpec("batchspawner", "notebooks", "notebooks", "notebooks_wheel_requirements", ("notebooks", "wheelhouse"), True),
    WheelSetSpec("mlflow", "models", "models", "models_server_requirements", ("models", "wheelhouse"), False),
    WheelSetSpec("mlflow-client", "models", "models", "models_client_requirements", ("models", "client_wheelhouse"), False),
)


@dataclass(frozen=True)
class WheelSet:
    name: str
    layer: str
    requirements: tuple[str, ...]
    no_deps: bool
    field: tuple[str, str]

    @property
    def field_name(self) -> str:
        return ".".join(self.field)


def _requirements(role_dir: Path, variable: str) -> tuple[str, ...]:
    defaults = yaml.safe_load((role_dir / "defaults" / "main.yml").read_text()) or {}
    value = defaults.get(variable)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and "{{" not in v for v in value):
        raise ValueError(f"{role_dir}/defaults/main.yml: {variable} must be a list of plain pip requirements")
    return tuple(value)


def wheel_sets(layers, roles: Path | None = None) -> list[WheelSet]:
    """The wheel sets the enabled layers install, requirements read from the roles' defaults."""
    roles = roles or roles_dir()
    return [WheelSet(spec.name, spec.layer, _requirements(roles / spec.role, spec.requirements_var), spec.no_deps, spec.field)
            for spec in WHEEL_SETS if spec.layer in layers]


# ---------------------------------------------------------------- what a directory holds

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?")


def _normalized(name: str) -> str:
    """PEP 503 name normalization (wheel file names write `-`, `.` as `_`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_wheels(directory: Path, requirements) -> list[str]:
    """The requirements no wheel in `directory` satisfies by name (and by version where pinned
    with ==). Dependencies are not followed: pip --no-index names those at install."""
    have: set[tuple[str, str]] = set()
    for wheel in directory.glob("*.whl"):
        parts = wheel.name.split("-")
        if len(parts) >= 5:
            have.add((_normalized(parts[0]), parts[1]))
    missing = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        name, version = (_normalized(match[1]), match[2]) if match else (requirement, None)
        if not any(n == name and (version is None or v == version) for n, v in have):
            missing.append(requirement)
    return missing


# ---------------------------------------------------------------- deploy: which directory


def bundle_wheel_dir(bundle_path: str | Path, wheel_set: WheelSet) -> Path:
    return Path(bundle_path) / ADDONS_DIR / wheel_set.name


def wheelhouse_for(manifest, base_dir: Path, wheel_set: WheelSet) -> Path:
    """The directory deploy copies the set from: the manifest's wheelhouse (relative to the
    manifest) when it exists, else, with packages.source: bundle, the bundle's set under
    packages.bundle_path (deploy runs on the head, where the bundle is), else the manifest's
    (missing: `wheelhouse_problem` says so)."""
    section, key = wheel_set.field
    own = Path(base_dir) / getattr(getattr(manifest, section), key)
    if own.is_dir() or manifest.packages.source != "bundle":
        return own
    bundled = bundle_wheel_dir(manifest.packages.bundle_path, wheel_set)
    return bundled if bundled.is_dir() else own


def _download_hint(wheel_set: WheelSet, directory: Path) -> str:
    flags = "--no-deps " if wheel_set.no_deps else "--only-binary=:all: "
    return f"pip download {flags}{' '.join(wheel_set.requirements)} -d {directory}"


def wheelhouse_problem(manifest, base_dir: Path, wheel_set: WheelSet) -> str | None:
    """Why deploy could not install the set, in one line (None when it can)."""
    section, key = wheel_set.field
    own = Path(base_dir) / getattr(getattr(manifest, section), key)
    chosen = wheelhouse_for(manifest, base_dir, wheel_set)
    if not chosen.is_dir():
        if manifest.packages.source == "bundle":
            bundled = bundle_wheel_dir(manifest.packages.bundle_path, wheel_set)
            return (f"neither {own} nor the offline bundle's {bundled} exists (build the bundle with layer "
                    f"'{wheel_set.layer}' on, or {_download_hint(wheel_set, own)})")
        return f"{own} does not exist ({_download_hint(wheel_set, own)}, or deploy from an offline bundle)"
    missing = missing_wheels(chosen, wheel_set.requirements)
    if missing:
        return f"{chosen} has no wheel for {', '.join(missing)} ({_download_hint(wheel_set, chosen)})"
    return None


# ---------------------------------------------------------------- bundle build: downloading


def target_platforms(glibc: tuple[int, int], arch: str = "x86_64") -> list[str]:
    """Every manylinux platform tag a glibc runs (PEP 600: manylinux_2_Y needs glibc >= 2.Y),
    with the legacy aliases of PEP 513/571/599 (manylinux1 = 2_5, 2010 = 2_12, 2014 = 2_17)."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{y}_{arch}" for y in range(minor, 4, -1)]
    for alias, needs in (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5)):
        if minor >= needs:
            tags.append(f"{alias}_{arch}")
    return tags


def pip_download_argv(wheel_set: WheelSet, dest: Path, python: str, glibc: tuple[int, int],
                      index_url: str | None = None) -> list[str]:
    """`pip download` for the TARGET interpreter, not this one: pip's docs ask for every one of
    --platform/--python-version/--implementation/--abi once any is given, and --only-binary=:all:
    (no source builds: the head has no compiler)."""
    nodot = python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
            "--only-binary=:all:", "--dest", str(dest), "--python-version", python, "--implementation", "cp",
            "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none"]
    for platform in target_platforms(glibc):
        argv += ["--platform", platform]
    if wheel_set.no_deps:
        argv.append("--no-deps")
    if index_url:
        argv += ["--index-url", index_url]
    return argv + list(wheel_set.requirements)


@dataclass
class WheelSetResult:
    name: str
    files: int
    downloaded: bool


def _recipe(wheel_set: WheelSet, python: str, glibc: tuple[int, int], index_url: str | None) -> str:
    """What the set was downloaded for: a change of any of it means downloading again."""
    return json.dumps({"requirements": list(wheel_set.requirements), "no_deps": wheel_set.no_deps, "python": python,
                       "glibc": list(glibc), "index": index_url or ""}, sort_keys=True)


def _still_there(marker: Path, recipe: str, out: Path) -> int | None:
    """The recorded file count when `out` holds exactly what the last download for `recipe` left."""
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    files = recorded.get("files", {})
    present = {p.name for p in out.glob("*")} if out.is_dir() else set()
    if recorded.get("recipe") != recipe or present != set(files):
        return None
    if all(sha256_file(out / name) == digest for name, digest in files.items()):
        return len(files)
    return None


def build_wheel_sets(sets: list[WheelSet], bundle: Path, work: Path, python: str, glibc: tuple[int, int],
                     log: Callable[[str], None] = lambda m: None, index_url: str | None = None) -> list[WheelSetResult]:
    """Each set into bundle/wheels/addons/<set>/: downloaded afresh when its requirements or the
    target changed or its files did, else kept as is (a warm rebuild downloads nothing); sets no
    layer needs any more are removed."""
    root, state = bundle / ADDONS_DIR, work / "addon-wheels"
    state.mkdir(parents=True, exist_ok=True)
    results = []
    for wheel_set in sets:
        out, marker = root / wheel_set.name, state / f"{wheel_set.name}.json"
        recipe = _recipe(wheel_set, python, glibc, index_url)
        kept = _still_there(marker, recipe, out)
        if kept is not None:
            results.append(WheelSetResult(wheel_set.name, kept, False))
            continue
        log(f"wheels: downloading {wheel_set.name} ({' '.join(wheel_set.requirements)}) for Python {python}")
        fresh = state / f"{wheel_set.name}.partial"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        proc = subprocess.run(pip_download_argv(wheel_set, fresh, python, glibc, index_url), capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(fresh, ignore_errors=True)
            why = " ".join(line.strip() for line in proc.stderr.strip().splitlines()[-2:])
            raise PodsysError(f"bundle: pip download of {wheel_set.name} ({' '.join(wheel_set.requirements)}) failed: {why}")
        missing = missing_wheels(fresh, wheel_set.requirements)
        if missing:
            raise PodsysError(f"bundle: pip download of {wheel_set.name} left no wheel for {', '.join(missing)}")
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        fresh.rename(out)
        files = {p.name: sha256_file(p) for p in sorted(out.glob("*"))}
        marker.write_text(json.dumps({"recipe": recipe, "files": files}, indent=1, sort_keys=True) + "\n")
        results.append(WheelSetResult(wheel_set.name, len(files), True))
    wanted = {s.name for s in sets}
    if root.is_dir():
        for old in root.iterdir():
            if old.name not in wanted:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
                (state / f"{old.name}.json").unlink(missing_ok=True)
        if not wanted:
            root.rmdir()
    return results
