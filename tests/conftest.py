"""Helpers every test shares: where the repository is, how to run the CLI, and how to write a
manifest variant. Test modules import them (`from tests.conftest import REPO_ROOT, podsys`);
`manifest_variant` is also a fixture bound to the test's tmp_path.

Two ways to run the CLI, both answering exit code, stdout and stderr:
  podsys(...)  a real `python -m podsys.cli.main` process, exactly what a user's shell sees
               (CompletedProcess: returncode, stdout, stderr);
  invoke(...)  in-process through typer's CliRunner, for tests that monkeypatch podsys
               (Result: exit_code, stdout, stderr, output)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = REPO_ROOT / "manifests"

# Long enough for a lab deploy; a test that wants to fail sooner passes its own.
CLI_TIMEOUT_S = 1800


def podsys(*args: Any, cwd: Path | str | None = None, env: dict | None = None, timeout: float = CLI_TIMEOUT_S,
           check: bool = False) -> subprocess.CompletedProcess:
    """`podsys ARGS` in a child process. check=True fails the test with the output when the
    command exits non-zero. Never reads the terminal (stdin is /dev/null)."""
    argv = [str(a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "podsys.cli.main", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"podsys {' '.join(argv)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class PeakMemory:
    """`with PeakMemory() as measured: ...`; then measured.peak is the most memory Python held at
    once inside the block (bytes, tracemalloc) and measured.seconds how long it took. Set also
    when the block raises, so a `pytest.raises` inside or around it still gets its numbers."""

    peak = 0
    seconds = 0.0

    def __enter__(self) -> "PeakMemory":
        tracemalloc.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._started
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def invoke(*args: Any, input: str | None = None, env: dict | None = None):
    """`podsys ARGS` in this process (typer's CliRunner): sees the test's monkeypatches; `input`
    is what the command reads on stdin, `env` what it adds to the environment."""
    from typer.testing import CliRunner

    from podsys.cli.main import build_app

    return CliRunner().invoke(build_app(), [str(a) for a in args], input=input, env=env)


def write_manifest_variant(directory: Path, source: Path | str = "lab", name: str | None = None,
                           **sections: Any) -> Path:
    """<directory>/<name>.yaml: a valid manifest (manifests/<source>.yaml, or a path) with the
    given top-level sections replaced, and beside it the source's MAC files and addresses file,
    so the variant resolves to the same nodes at the same addresses."""
    source = MANIFESTS / f"{source}.yaml" if isinstance(source, str) else Path(source)
    data = yaml.safe_load(source.read_text())
    data.update(sections)
    variant = Path(directory) / f"{name or source.stem}.yaml"
    companions = [g["macs_file"] for g in data.get("node_groups", []) if g.get("macs_file")]
    for rel in companions:
        if not (variant.parent / rel).exists():
            (variant.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.parent / rel, variant.parent / rel)
    addresses = source.with_name(f"{source.stem}.addresses.yaml")
    if addresses.exists() and addresses != variant.with_name(f"{variant.stem}.addresses.yaml"):
        shutil.copyfile(addresses, variant.with_name(f"{variant.stem}.addresses.yaml"))
    variant.write_text(yaml.safe_dump(data, sort_keys=False))
    return variant


@pytest.fixture
def manifest_variant(tmp_path):
    """write_manifest_variant into the test's tmp_path: manifest_variant("lab", layers=[...])."""

    def write(source: Path | str = "lab", name: str | None = None, **sections: Any) -> Path:
        return write_manifest_variant(tmp_path, source, name, **sections)

    return write


# --- Order and parallel groups -------------------------------------------------------------
# The session lab is shared, and some modules leave it changed on purpose: the provision role
# installs boot services on the head, the stack-role tests point the head at a stand-in
# repository. They run after the modules that need the lab as `podsys lab up` made it (first
# the lab itself, then deploy, then check on the deployed lab), whatever their file names sort
# to.
LAB_MODULE_ORDER = (
    "test_lab.py",
    "test_deploy_lab.py",
    "test_check_lab.py",
    "test_provision_role.py",
    "test_stack_roles.py",
)
SHARED_LAB_GROUP = "lab-shared"
# The training lab (tests/integration/training_lab.py) is deployed once for both of these; the
# models module sorts first and runs its job on the fresh lab.
TRAINING_LAB_GROUP = "training-lab"
TRAINING_LAB_MODULES = ("test_addon_models.py", "test_addon_training.py")

# The README's test command runs the suite in parallel workers (pytest-xdist, `--dist
# loadgroup`): every item gets an xdist_group, so a lab and the modules that share it stay in
# one worker process (a module-scoped lab is built once; the session lab once for its modules).
# Most of a lab test's time is waiting (apt through the proxy, Slurm's timers, reboots), so labs
# in parallel workers overlap well on 2 cores. Groups start longest first; these are rough
# minutes per group, only used to order them. The order is the one README's last measured run
# used (README, Testing): there the training lab took about 44 minutes and the bare-metal lab 39,
# since that lab's VMs run niced ahead of the rest; the first four start at once either way.
GROUP_MINUTES = {
    "test_deploy_vms_lab": 60,
    TRAINING_LAB_GROUP: 30,
    "test_addon_notebooks": 22,
    SHARED_LAB_GROUP: 13,
    "test_health_lab": 11,
    "test_upgrade_lab": 8,
    "test_stack_dummy_repo": 7,
    "test_deploy_bundle": 6,
    "test_addon_accounting": 6,
}


def test_group(path: Path) -> str:
    """The xdist group of a test file: a unit sub-package, the shared lab, or its own module."""
    relative = path.resolve().relative_to(REPO_ROOT / "tests")
    if relative.parts[0] == "unit":
        return "unit-" + (relative.parts[1] if len(relative.parts) > 2 else "root")
    if path.name in LAB_MODULE_ORDER:
        return SHARED_LAB_GROUP
    if path.name in TRAINING_LAB_MODULES:
        return TRAINING_LAB_GROUP
    return path.stem


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the test ids
def pytest_collection_modifyitems(session, config, items):
    parallel = config.pluginmanager.hasplugin("xdist") and (
        config.getoption("dist", "no") != "no" or "PYTEST_XDIST_WORKER" in os.environ)

    def key(item):
        path = Path(str(item.fspath))
        group = test_group(path)
        shared_rank = LAB_MODULE_ORDER.index(path.name) + 1 if group == SHARED_LAB_GROUP else 0
        # Serial runs keep collection order (unit tests first); parallel ones start long groups first.
        return (-GROUP_MINUTES.get(group, 0) if parallel else 0, group if parallel else "", shared_rank)

    for item in items:
        if parallel:
            item.add_marker(pytest.mark.xdist_group(test_group(Path(str(item.fspath)))))
    items.sort(key=key)  # stable: the order inside a module is kept
