"""A small valid manifest as text, and helpers to break it one line at a time, so every
validation test can assert the exact line its error points at."""

from __future__ import annotations

from pathlib import Path

import pytest

VALID = """\
apiVersion: podsys/v1
kind: Cluster
metadata: {name: pod01, domain: cluster.local}
head: {hostname: mu01, interface: eno1, address: 10.10.0.1}
networks:
  provision: {cidr: 10.10.0.0/16, gateway: 10.10.0.254, dns: [10.10.0.1]}
  bmc: {cidr: 10.20.0.0/16}
  ipoib: {cidr: 10.30.0.0/16}
os: {distro: ubuntu, version: "22.04"}
stack: auto
layers: [base, gpu, infiniband, slurm, monitoring]
node_groups:
  - name: gpu
    hosts: gpu[001-004]
    hardware: hgx-h100-8gpu
    start_address: 10.10.1.1
    disk: /dev/nvme0n1
    macs_file: gpu-macs.csv
slurm: {partitions: [{name: gpu, node_groups: [gpu], default: true}]}
users: [{name: alice, uid: 2001, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceTestKey0000000000000000000000000000000 alice"]}]
"""

MACS = "hostname,mac\ngpu001,b8:3f:d2:00:00:01\ngpu002,b8:3f:d2:00:00:02\ngpu003,b8:3f:d2:00:00:03\ngpu004,b8:3f:d2:00:00:04\n"


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing needle."""
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in manifest")


def write_manifest(tmp: Path, text: str = VALID, macs: str | None = MACS, name: str = "cluster.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    if macs is not None:
        (tmp / "gpu-macs.csv").write_text(macs)
    return path


def problems_for(tmp: Path, text: str = VALID, macs: str | None = MACS):
    """Write the manifest (and its MAC file), load it, and return its path and the problems
    the load refused it with; fails the test if it loads."""
    from podsys.cluster.load import load_cluster
    from podsys.errors import InputError

    path = write_manifest(tmp, text, macs)
    with pytest.raises(InputError) as info:
        load_cluster(path)
    return path, info.value.problems


def assert_problem(problems, path, line, field, fragment):
    """One of the problems is at path:line, names field and says fragment."""
    for p in problems:
        if p.file == str(path) and p.line == line and p.field == field and fragment in p.message:
            return
    pytest.fail(f"no {path}:{line} {field} {fragment!r} in:\n" + "\n".join(map(str, problems)))


def write_model_wheels(directory: Path) -> None:
    """The models layer's default wheelhouses next to a manifest: a file per pinned requirement
    of the role's defaults, named as pip download names it (its contents are never read)."""
    from podsys.bundle.addon_wheels import wheel_sets

    for wheel_set, folder in zip(wheel_sets(["models"]), ("wheels/mlflow", "wheels/mlflow-client")):
        (directory / folder).mkdir(parents=True, exist_ok=True)
        for requirement in wheel_set.requirements:
            name, version = requirement.split("==")
            (directory / folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"PK")
