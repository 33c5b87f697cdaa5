"""The offline bundle, built for real from the Debian mirror: signed repository, verify, tampering
caught by `podsys bundle verify` AND by apt itself, ISO round trip, wheels that install podsys
offline. Kept small for CI: `hello` + `ipxe` with their closures; the full base+slurm+monitoring
bundle is the `slow` test at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT as ROOT, podsys as run_podsys

pytestmark = pytest.mark.integration

LAB = ROOT / "manifests" / "lab.yaml"
MIRROR = "http://deb.debian.org/debian"
TOOLS = ("apt-get", "apt-ftparchive", "gpg", "gpgv", "dpkg-deb")


def podsys(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_podsys(*args, check=check)


def _skip_unless_ready() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"bundle tools missing: {', '.join(missing)} (apt-utils, gnupg, gpgv)")
    try:
        urllib.request.urlopen(f"{MIRROR}/dists/bookworm/InRelease", timeout=10).close()
    except OSError as exc:
        pytest.skip(f"Debian mirror {MIRROR} unreachable: {exc}")


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> tuple[Path, dict]:
    """hello + ipxe (and their closures), with podsys's wheels, no installer images."""
    _skip_unless_ready()
    out = tmp_path_factory.mktemp("bundle") / "b"
    proc = podsys("bundle", "build", str(LAB), "--output", str(out), "--only", "hello", "--only", "ipxe",
                  "--no-installer", "--json")
    return out, json.loads(proc.stdout)


@pytest.fixture()
def bundle_copy(small_bundle, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(small_bundle[0], dest, symlinks=True)
    return dest


def test_bundle_has_a_signed_repository_wheels_ipxe_and_a_private_key_outside_the_served_tree(small_bundle):
    out, result = small_bundle
    debs = list((out / "repo/pool/main").rglob("*.deb"))
    assert result["packages"] == len(debs) and result["downloaded"] == result["packages"]
    assert {d.name.split("_")[0] for d in debs} >= {"hello", "ipxe", "libc6"}
    dist = out / "repo/dists/bookworm"
    assert (dist / "InRelease").read_text().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    assert "Suite: bookworm" in (dist / "Release").read_text()
    packages = (dist / "main/binary-amd64/Packages").read_text()
    assert "Package: hello" in packages and "Package: ipxe" in packages and "Package: libc6" in packages
    assert {p.name for p in (out / "boot/ipxe").iterdir()} >= {"undionly.kpxe", "ipxe.efi"}
    wheels = {p.name.split("-")[0].lower() for p in (out / "wheels").glob("*.whl")}
    assert {"podsys", "pydantic", "typer", "ansible_core", "python_hostlist"} <= wheels
    private = out / "keys/site-private.asc"
    assert private.stat().st_mode & 0o777 == 0o600 and (out / "keys").stat().st_mode & 0o777 == 0o700
    contents = (out / "CONTENTS.sha256").read_text()
    assert "repo/dists/bookworm/InRelease" in contents and "keys/" not in contents
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["os"] == "debian-12" and meta["suite"] == "bookworm" and meta["fingerprint"] == result["fingerprint"]


def test_verify_passes_on_a_fresh_bundle(small_bundle):
    out, result = small_bundle
    proc = podsys("bundle", "verify", str(out), "--fingerprint", result["fingerprint"], "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] and report["problems"] == [] and report["checked"] == result["files"]


def test_rebuild_reuses_downloads_and_keeps_the_site_key(bundle_copy, small_bundle):
    proc = podsys("bundle", "build", str(LAB), "--output", str(bundle_copy), "--only", "hello", "--only", "ipxe",
                  "--no-installer", "--json")
    again = json.loads(proc.stdout)
    assert again["downloaded"] == 0 and again["reused"] == small_bundle[1]["packages"]
    assert again["fingerprint"] == small_bundle[1]["fingerprint"]
    podsys("bundle", "verify", str(bundle_copy))


def _serve(bundle: Path):
    from podsys.bundle.build import make_server

    server = make_server(bundle, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _clean_apt(root: Path, url: str, key: Path, *args: str) -> subprocess.CompletedProcess:
    """apt with nothing but the bundle's repository and the site key: a clean node's view."""
    for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/trusted.gpg.d", "etc/sources.list.d",
                "state/lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "state/status").touch()
    (root / "etc/sources.list").write_text(f"deb [signed-by={key}] {url}/repo bookworm main\n")
    opts = []
    for k, v in {
        "Dir::Etc": root / "etc", "Dir::Etc::SourceList": root / "etc/sources.list",
        "Dir::Etc::SourceParts": root / "etc/sources.list.d", "Dir::Etc::Parts": root / "etc/apt.conf.d",
        "Dir::Etc::PreferencesParts": root / "etc/preferences.d", "Dir::Etc::TrustedParts": root / "etc/trusted.gpg.d",
        "Dir::State": root / "state", "Dir::State::status": root / "state/status", "Dir::Cache": root / "cache",
        "Debug::NoLocking": 1, "APT::Architecture": "amd64", "Acquire::http::Proxy": "DIRECT",
    }.items():
        opts += ["-o", f"{k}={v}"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True, env=env)


def test_a_clean_apt_installs_from_the_served_bundle_and_trusts_only_the_site_key(bundle_copy, tmp_path):
    server, url = _serve(bundle_copy)
    try:
        key = bundle_copy / "repo/podsys-site.gpg"
        assert _clean_apt(tmp_path / "apt", url, key, "update").returncode == 0
        ok = _clean_apt(tmp_path / "apt", url, key, "install", "-y", "--download-only", "hello")
        assert ok.returncode == 0, ok.stderr
        assert list((tmp_path / "apt/cache/archives").glob("hello_*.deb"))
        # The Debian archive key does not vouch for the bundle.
        wrong = _clean_apt(tmp_path / "apt2", url, Path("/usr/share/keyrings/debian-archive-keyring.gpg"), "update")
        assert wrong.returncode != 0 or "NO_PUBKEY" in wrong.stderr or "not signed" in wrong.stderr
        assert "NO_PUBKEY" in wrong.stderr or "is not signed" in wrong.stderr
        # keys/ is never served
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/keys/site-private.asc", timeout=5)
    finally:
        server.shutdown()


def test_a_tampered_package_is_named_by_verify_and_refused_by_apt(bundle_copy, tmp_path):
    deb = next((bundle_copy / "repo/pool/main/h").glob("hello_*.deb"))
    data = bytearray(deb.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    deb.write_bytes(bytes(data))
    proc = podsys("bundle", "verify", str(bundle_copy), check=False)
    assert proc.returncode == 1
    rel = deb.relative_to(bundle_copy).as_posix()
    assert f"BAD {rel}: sha256 mismatch" in proc.stderr
    assert f"BAD repo/{deb.relative_to(bundle_copy / 'repo').as_posix()}: does not match the signed Packages index" in proc.stderr

    server, url = _serve(bundle_copy)
    try:
        key = bundle_copy / "repo/podsys-site.gpg"
        assert _clean_apt(tmp_path / "apt", url, key, "update").returncode == 0
        bad = _clean_apt(tmp_path / "apt", url, key, "install", "-y", "--download-only", "hello")
        assert bad.returncode != 0
        assert "Hash Sum mismatch" in bad.stderr or "Hashes of expected file" in bad.stderr, bad.stderr
    finally:
        server.shutdown()


def test_a_tampered_index_fails_the_signature_for_verify_and_apt(bundle_copy, tmp_path):
    release = bundle_copy / "repo/dists/bookworm/InRelease"
    text = release.read_text()
    release.write_text(text.replace("Suite: bookworm", "Suite: bookworn"))
    proc = podsys("bundle", "verify", str(bundle_copy), check=False)
    assert proc.returncode == 1 and "BAD repo/dists/bookworm/InRelease" in proc.stderr
    server, url = _serve(bundle_copy)
    try:
        bad = _clean_apt(tmp_path / "apt", url, bundle_copy / "repo/podsys-site.gpg", "update")
        assert "BADSIG" in bad.stderr or "signatures were invalid" in bad.stderr or "not signed" in bad.stderr, bad.stderr
    finally:
        server.shutdown()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")
def test_iso_lists_the_bundle_without_keys_and_verifies_when_extracted(small_bundle, tmp_path):
    out, _ = small_bundle
    iso = tmp_path / "site.iso"
    podsys("bundle", "iso", str(out), "--output", str(iso))
    listing = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"],
                             capture_output=True, text=True, check=True).stdout
    assert "'/repo/dists/bookworm/InRelease'" in listing and "'/CONTENTS.sha256.asc'" in listing
    assert "/keys/" not in listing and "/.work/" not in listing
    if shutil.which("isoinfo"):
        names = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
        assert "/repo/podsys-site.gpg" in names and "/wheels" in names
    extracted = tmp_path / "x"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(extracted)],
                   capture_output=True, check=True)
    podsys("bundle", "verify", str(extracted))


def test_podsys_installs_offline_from_the_wheels(small_bundle, tmp_path):
    out, _ = small_bundle
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(out / "wheels"), "podsys"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    proc = subprocess.run([str(venv / "bin/podsys"), "bundle", "verify", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_full_debian12_base_slurm_monitoring_bundle(tmp_path):
    """The closure the lab's air-gapped deploy needs (about 130 MB from the mirror)."""
    _skip_unless_ready()
    out = tmp_path / "full"
    result = json.loads(podsys("bundle", "build", str(LAB), "--output", str(out), "--json").stdout)
    packages = (out / "repo/dists/bookworm/main/binary-amd64/Packages").read_text()
    for name in ("slurmd", "slurmctld", "munge", "prometheus", "prometheus-node-exporter", "chrony", "dnsmasq", "nginx"):
        assert f"Package: {name}\n" in packages
    assert {"debian-12/linux", "debian-12/initrd.gz"} <= set(result["boot"])
    podsys("bundle", "verify", str(out))


def test_every_add_on_package_resolves_for_the_bundle_target(small_bundle, tmp_path):
    """The add-on roles' packages (read from their defaults, podsys/bundle/addon_packages.py)
    exist in Debian 12 with their whole closure, so a bundle can carry them: resolved with the
    small bundle's private apt (its indexes are already there), nothing downloaded."""
    from podsys.bundle.addon_packages import addon_packages
    from podsys.bundle.apt import PrivateApt, target_for
    from podsys.cluster.load import load_cluster
    from tests.conftest import write_manifest_variant

    out, _ = small_bundle
    variant = write_manifest_variant(tmp_path, "lab", layers=["base", "slurm", "accounting", "storage", "training"],
                                     training={"pytorch": "distro"})
    cluster = load_cluster(variant)
    wanted = addon_packages(cluster.manifest, cluster.manifest.layers)
    assert {"slurmdbd", "mariadb-server", "nfs-ganesha", "nfs-ganesha-vfs", "python3-torch"} <= set(wanted)
    apt = PrivateApt(out / ".work" / "apt-debian-12", target_for("debian-12"), mirror=cluster.manifest.packages.upstream,
                     recommends=False)
    closure = {f.filename.split("_")[0] for f in apt.resolve(wanted)}
    for name in wanted:
        assert name in closure, f"{name} is not in the resolved closure"
