"""Semantic checks for the web section and the `notebooks` layer.

Their own module (not podsys/cluster/addons.py) because the certificate, key and wheelhouses are
files next to the manifest (or in the offline bundle): these checks need the manifest's
directory, which the add-on checks `(manifest, at)` do not get. Each is
`check_x(manifest, base_dir, at)` yielding Problems."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from podsys.bundle.addon_wheels import wheel_sets, wheelhouse_problem
from podsys.cluster.schema import Manifest
from podsys.errors import Problem
from podsys.layout import NOTEBOOKS_HEAD_PORTS

At = Callable[[tuple, str], Problem]
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
PEM_KEY_MARK = "PRIVATE KEY-----"


def _pem_problem(path: Path, mark: str, what: str) -> str | None:
    if not path.is_file():
        return f"{path} does not exist"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return f"{path} is not a readable PEM file"
    if mark not in text:
        return f"{path} holds no PEM {what}"
    return None


def check_web(manifest: Manifest, base_dir: Path, at: At) -> Iterator[Problem]:
    """A site certificate comes with its key (both or neither) and both are PEM files."""
    web = manifest.web
    if bool(web.tls_certificate_file) != bool(web.tls_key_file):
        missing = "tls_key_file" if web.tls_certificate_file else "tls_certificate_file"
        yield at(("web", missing), "give both tls_certificate_file and tls_key_file, or neither (self-signed)")
        return
    if web.tls_certificate_file:
        for key, mark, what in (("tls_certificate_file", PEM_CERTIFICATE, "certificate"),
                                ("tls_key_file", PEM_KEY_MARK, "private key")):
            problem = _pem_problem(base_dir / getattr(web, key), mark, what)
            if problem:
                yield at(("web", key), problem)


def check_notebooks(manifest: Manifest, base_dir: Path, at: At) -> Iterator[Problem]:
    """The layer needs Slurm and a shared home; its partition exists; some user can log in;
    provisioning's ports leave the hub's free."""
    m = manifest
    if "notebooks" not in m.layers:
        return
    if "slurm" not in m.layers:
        yield at(("layers",), "layer 'notebooks' needs layer 'slurm' (each notebook server is a Slurm job)")
    if "storage" not in m.layers:
        yield at(("layers",), "layer 'notebooks' needs layer 'storage' (a user's notebooks must be on every node)")
    elif not m.storage.home:
        yield at(("storage", "home"), "layer 'notebooks' needs storage.home (a user's notebooks must be on every node)")
    partitions = [p.name for p in m.slurm.partitions]
    if m.notebooks.partition and m.notebooks.partition not in partitions:
        yield at(("notebooks", "partition"),
                 f"partition '{m.notebooks.partition}' is not in slurm.partitions ({', '.join(partitions) or 'none'})")
    if not any(u.password_hash for u in m.users):
        yield at(("users",), "layer 'notebooks' logs users in with their password_hash: give at least one user one")
    for key in ("http_port", "status_port"):
        port = getattr(m.provisioning, key)
        if port in NOTEBOOKS_HEAD_PORTS:
            yield at(("provisioning", key), f"port {port} is taken on the head by {NOTEBOOKS_HEAD_PORTS[port]} (layer notebooks)")
    if m.packages.source == "bundle" and m.packages.bundle_port in NOTEBOOKS_HEAD_PORTS:
        yield at(("packages", "bundle_port"), f"port {m.packages.bundle_port} is taken on the head by "
                                              f"{NOTEBOOKS_HEAD_PORTS[m.packages.bundle_port]} (layer notebooks)")


def check_addon_wheels(manifest: Manifest, base_dir: Path, at: At) -> Iterator[Problem]:
    """Each enabled layer's PyPI wheel set is in its wheelhouse next to the manifest or, with
    packages.source: bundle, in the offline bundle (podsys/bundle/addon_wheels.py)."""
    for wheel_set in wheel_sets(manifest.layers):
        problem = wheelhouse_problem(manifest, base_dir, wheel_set)
        if problem:
            yield at(wheel_set.field, problem)


ADDON_WHEELS_CHECK = "addon_wheels"  # `podsys bundle build` skips it: it fetches those wheels

# (name, check, top-level sections it reads): podsys/cluster/checks.py registers these.
WEB_CHECKS = (
    ("web", check_web, ("web",)),
    (ADDON_WHEELS_CHECK, check_addon_wheels, ("notebooks", "models", "layers", "packages")),
    ("notebooks", check_notebooks, ("notebooks", "layers", "slurm", "storage", "users", "provisioning", "packages")),
)
