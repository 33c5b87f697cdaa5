"""Offline bundle: the pure parts (what goes in, vendor.lock, index parsing) and bad input."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from podsys.bundle.build import BundlePlan, check_vendor_coverage, iso_volume_id, plan_bundle
from podsys.bundle.apt import PrivateApt, parse_print_uris, target_for
from podsys.bundle.repo import parse_deb822_hashes, parse_packages
from podsys.bundle.vendor import load_vendor_lock, upstream_version
from podsys.errors import InputError
from podsys.cluster.load import load_cluster
from tests.conftest import REPO_ROOT as ROOT, podsys

LAB = ROOT / "manifests" / "lab.yaml"
HGX = ROOT / "manifests" / "hgx-h100-32.yaml"


def test_print_uris_lines_are_parsed_with_sha256():
    text = (
        "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53000 "
        "SHA256:" + "ab" * 32 + "\n"
        "'http://deb.debian.org/debian/pool/main/g/gcc-12/libgcc-s1_12.2.0-14%2bdeb12u1_amd64.deb' "
        "libgcc-s1_12.2.0-14+deb12u1_amd64.deb 49856 SHA256:" + "CD" * 32 + "\n"
        "noise line from apt\n"
    )
    files = parse_print_uris(text)
    assert [f.filename for f in files] == ["hello_2.10-3_amd64.deb", "libgcc-s1_12.2.0-14+deb12u1_amd64.deb"]
    assert files[0].size == 53000 and files[1].sha256 == "cd" * 32


def test_print_uris_without_sha256_is_refused():
    from podsys.errors import PodsysError

    with pytest.raises(PodsysError, match="no SHA256 for x.deb"):
        parse_print_uris("'http://m/x.deb' x.deb 1 MD5Sum:" + "0" * 32)


def test_private_apt_uses_the_target_suite_and_keyring_not_the_build_machine(tmp_path):
    apt = PrivateApt(tmp_path, target_for("ubuntu-22.04"), mirror="http://mirror.example/ubuntu")
    sources = (tmp_path / "etc/sources.list").read_text()
    assert "http://mirror.example/ubuntu jammy main universe" in sources
    assert "jammy-security" in sources and "ubuntu-archive-keyring.gpg" in sources
    opts = " ".join(apt.options())
    assert f"Dir::State::status={tmp_path}/state/status" in opts
    assert "Debug::NoLocking=1" in opts
    # every directory apt reads or writes is inside the private root
    dirs = [o.split("=", 1)[1] for o in apt.options() if o.startswith("Dir::")]
    assert dirs and all(d.startswith(str(tmp_path)) for d in dirs)
    assert (tmp_path / "state/status").read_text() == ""  # empty: the whole closure is resolved


def test_unsupported_os_is_an_input_error():
    with pytest.raises(InputError, match="no offline bundle for rocky-9"):
        target_for("rocky-9")


def test_lab_plan_has_head_base_slurm_monitoring_packages_and_no_vendor_needs():
    plan = plan_bundle(load_cluster(LAB))
    assert plan.os_key == "debian-12"
    for pkg in ("dnsmasq", "nginx", "ipxe", "chrony", "slurmd", "slurmctld", "munge", "prometheus", "prometheus-node-exporter"):
        assert pkg in plan.packages
    assert plan.vendor_packages == [] and plan.vendor_sources == []


def test_gpu_plan_asks_vendor_lock_for_every_vendor_package_of_the_stack():
    cluster = load_cluster(HGX)
    plan = plan_bundle(cluster)
    stack = cluster.stack
    names = {name: version for name, version, _ in plan.vendor_packages}
    assert names["nvidia-fabricmanager"] == stack.driver  # R580: no branch in the name
    assert not [n for n in plan.packages if n.startswith("linux-headers-$")]
    assert names["libnccl2"] == stack.nccl
    assert "linux-headers-generic" in plan.packages and "openmpi-bin" in plan.packages
    problems = check_vendor_coverage(plan, [], Path("vendor.lock"))
    assert any(f"libnccl2 {stack.nccl}" in p.message for p in problems)
    assert len(problems) == len(plan.vendor_packages) + len(plan.vendor_sources)


def test_gpu_monitoring_and_grafana_need_their_vendor_packages(tmp_path):
    hgx = plan_bundle(load_cluster(HGX))
    assert ("datacenter-gpu-manager-exporter", None, "dcgm-exporter on GPU nodes") in hgx.vendor_packages
    text = LAB.read_text().replace("layers: [base, slurm, monitoring]", "layers: [base, slurm, monitoring]\nmonitoring: {grafana: true}")
    (tmp_path / "lab.yaml").write_text(text)
    lab = plan_bundle(load_cluster(tmp_path / "lab.yaml"))
    assert lab.vendor_packages == [("grafana", None, "monitoring.grafana on the head")]
    problems = check_vendor_coverage(lab, [], tmp_path / "vendor.lock")
    assert [p.message for p in problems] == [
        "needs grafana (monitoring.grafana on the head) from the vendor repository; download it and list it"]


def test_only_restricts_the_plan():
    plan = plan_bundle(load_cluster(LAB), only=["hello"], wheels=False, installer=False)
    assert plan.packages == ["hello"] and not plan.ipxe and not plan.wheels


def _lock(tmp_path: Path, body: str) -> Path:
    lock = tmp_path / "vendor.lock"
    lock.write_text(body)
    return lock


def test_vendor_lock_missing_and_mismatched_files_name_the_line(tmp_path):
    (tmp_path / "pyxis-0.20.0.tar.gz").write_bytes(b"pyxis")
    good = hashlib.sha256(b"pyxis").hexdigest()
    lock = _lock(
        tmp_path,
        "artifacts:\n"
        f"  - {{name: pyxis, file: pyxis-0.20.0.tar.gz, sha256: {good}}}\n"
        f"  - {{name: enroot, file: enroot_3.5.0-1_amd64.deb, sha256: {good}}}\n"
        f"  - {{name: pyxis2, file: pyxis-0.20.0.tar.gz, sha256: {'0' * 64}}}\n",
    )
    with pytest.raises(InputError) as exc:
        load_vendor_lock(lock)
    lines = [str(p) for p in exc.value.problems]
    assert any(f"{lock}:3:" in ln and "enroot_3.5.0-1_amd64.deb not found" in ln for ln in lines)
    assert any(f"{lock}:4:" in ln and "vendor.lock says 000" in ln for ln in lines)
    assert len(lines) == 2


def test_vendor_lock_ok(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(b"a")
    lock = _lock(tmp_path, f"artifacts:\n  - name: a\n    file: a.tar.gz\n    sha256: {hashlib.sha256(b'a').hexdigest()}\n")
    [art] = load_vendor_lock(lock)
    assert art.name == "a" and art.path == tmp_path / "a.tar.gz" and not art.is_deb


@pytest.mark.parametrize(
    "body,message",
    [
        ("artifacts: {a: 1}\n", "expected `artifacts:`"),
        ("artifacts:\n  - {name: a, file: ../x, sha256: " + "0" * 64 + "}\n", "plain file name"),
        ("artifacts:\n  - {name: a, file: x, sha256: nothex}\n", "64 hex digits"),
        ("artifacts:\n  - {name: a, file: x, sha256: " + "0" * 64 + ", md5: y}\n", "unknown key 'md5'"),
    ],
)
def test_vendor_lock_schema_errors(tmp_path, body, message):
    with pytest.raises(InputError, match=message):
        load_vendor_lock(_lock(tmp_path, body))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_vendor_coverage_checks_package_names_and_versions(tmp_path):
    from podsys.bundle.vendor import VendorArtifact

    def deb(name: str, version: str) -> VendorArtifact:
        root = tmp_path / f"{name}-{version}"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(
            f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: test\n"
        )
        out = tmp_path / f"{name}_{version}_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True, capture_output=True)
        return VendorArtifact(name, out.name, "0" * 64, None, out, 1)

    plan = BundlePlan("ubuntu-22.04", "c", ("gpu",), "s", [],
                      vendor_packages=[("libnccl2", "2.18.5-1+cuda12.2", "nccl on gpu001"), ("nvidia-driver-535", "535.230.02", "driver on gpu001")],
                      vendor_sources=[("pyxis-0.20.0.tar.gz", "pyxis on gpu001")])
    arts = [deb("libnccl2", "2.18.5-1+cuda12.2"), deb("nvidia-driver-535", "535.216.01-0ubuntu1")]
    problems = [p.message for p in check_vendor_coverage(plan, arts, tmp_path / "vendor.lock")]
    assert problems == [
        "nvidia-driver-535 is 535.216.01-0ubuntu1 but the stack pins 535.230.02 (driver on gpu001)",
        "needs pyxis-0.20.0.tar.gz (pyxis on gpu001); download it and list it",
    ]


@pytest.mark.parametrize(
    "deb,upstream",
    [("1:4.2.3-1", "4.2.3"), ("535.230.02-0ubuntu1", "535.230.02"), ("2.18.5-1+cuda12.2", "2.18.5-1+cuda12.2"), ("1:3.3.9", "3.3.9")],
)
def test_upstream_version(deb, upstream):
    assert upstream_version(deb) == upstream


def test_release_and_packages_parsing():
    release = (
        "Origin: podsys\nSuite: bookworm\nMD5Sum:\n 00 1 main/binary-amd64/Packages\nSHA256:\n"
        " " + "a" * 64 + " 120 main/binary-amd64/Packages\n " + "b" * 64 + " 80 main/binary-amd64/Packages.gz\n"
    )
    assert parse_deb822_hashes(release) == {
        "main/binary-amd64/Packages": ("a" * 64, 120),
        "main/binary-amd64/Packages.gz": ("b" * 64, 80),
    }
    stanzas = parse_packages("Package: a\nFilename: pool/a.deb\nDescription: x\n more\n\nPackage: b\nSHA256: cc\n")
    assert [s["Package"] for s in stanzas] == ["a", "b"] and stanzas[0]["Filename"] == "pool/a.deb"


def test_iso_volume_id_is_iso9660_safe(tmp_path):
    (tmp_path / "bundle.json").write_text('{"cluster": "pod-01", "os": "debian-12"}')
    vid = iso_volume_id(tmp_path)
    assert vid == "PODSYS_POD_01_DEBIAN_12" and len(vid) <= 32


def test_cli_bad_vendor_lock_is_one_line_exit_2(tmp_path):
    lock = _lock(tmp_path, "artifacts:\n  - {name: a, file: missing.deb, sha256: " + "0" * 64 + "}\n")
    proc = podsys("bundle", "build", LAB, "--output", tmp_path / "b", "--vendor-lock", lock, "--only", "hello")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {lock}:2: artifacts[0].file: a: missing.deb not found in {tmp_path}"
    assert not (tmp_path / "b").exists()


def test_cli_verify_on_a_non_bundle_names_the_missing_key(tmp_path):
    proc = podsys("bundle", "verify", tmp_path)
    assert proc.returncode == 1
    assert "repo/podsys-site.gpg: missing" in proc.stderr and "Traceback" not in proc.stderr


# Packages the roles install with apt that a bundle deliberately leaves out, and why.
NOT_BUNDLED = {"apt-cacher-ng": "packages.source: proxy only; a bundle head serves the bundle instead"}
# The bundle layer that must hold each role's packages.
ROLE_LAYER = {"base": "base", "slurm": "slurm", "monitoring": "monitoring", "provision": "head", "package_proxy": "head"}


def _role_apt_packages(role: str) -> set[str]:
    """Every package name a role's tasks hand to ansible.builtin.apt, its defaults' lists expanded."""
    import re

    import yaml

    base = ROOT / "podsys/playbooks/roles" / role
    defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
    names: set[str] = set()

    def walk(tasks):
        for task in tasks or []:
            if not isinstance(task, dict):
                continue
            walk(task.get("block"))
            apt = task.get("ansible.builtin.apt")
            if not isinstance(apt, dict) or "name" not in apt:
                continue
            value = apt["name"]
            ref = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value) if isinstance(value, str) else None
            if ref:
                value = defaults[ref.group(1)]
            names.update([value] if isinstance(value, str) else value)

    for tasks_file in sorted((base / "tasks").glob("*.yml")):
        walk(yaml.safe_load(tasks_file.read_text()))
    return names


@pytest.mark.parametrize("role", sorted(ROLE_LAYER))
def test_bundle_layers_hold_every_package_the_roles_install(role):
    from podsys.bundle.build import layer_packages_data

    layers = layer_packages_data()["apt"]
    installed = _role_apt_packages(role)
    assert installed, f"found no apt task in role {role}"
    vendor = {name for names in layer_packages_data()["vendor"].values() for name in names}
    missing = sorted(installed - set(layers[ROLE_LAYER[role]]) - vendor - set(NOT_BUNDLED))
    assert not missing, f"role {role} installs {missing}, which bundle-packages.yaml's {ROLE_LAYER[role]} layer lacks"


def _loopback_server(answers: list[int], body: bytes):
    """A loopback HTTP server answering each GET with the next status (200 sends body)."""
    import http.server
    import threading

    seen: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            code = answers[min(len(seen), len(answers) - 1)]
            seen.append(code)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body) if code == 200 else 0))
            self.end_headers()
            if code == 200:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.parametrize("answers, arrives, requests", [
    ([503, 200], True, 2),        # a mirror's brief outage is ridden out
    ([503, 503, 503, 503], False, 4),  # a lasting one is reported after the last attempt
    ([404], False, 1),            # a missing file is not retried
])
def test_fetch_retries_only_transient_failures(tmp_path, monkeypatch, answers, arrives, requests):
    import podsys.bundle.build as bundle
    from podsys.errors import PodsysError

    monkeypatch.setattr(bundle.time, "sleep", lambda s: None)
    body = b"deb contents"
    server, seen = _loopback_server(answers, body)
    url = f"http://127.0.0.1:{server.server_address[1]}/pool/x.deb"
    dest = tmp_path / "x.deb"
    try:
        if arrives:
            bundle._fetch(url, dest, hashlib.sha256(body).hexdigest(), len(body))
            assert dest.read_bytes() == body
        else:
            with pytest.raises(PodsysError, match=f"download of {url} failed: HTTP Error {answers[-1]}"):
                bundle._fetch(url, dest, hashlib.sha256(body).hexdigest(), len(body))
            assert not dest.exists() and not dest.with_name("x.deb.part").exists()
    finally:
        server.shutdown()
    assert len(seen) == requests


def test_the_site_key_works_in_a_work_directory_deeper_than_a_socket_path_allows(tmp_path):
    """gpg-agent's socket goes in the gpg home when /run/user/<uid> is missing; a home whose
    socket path passes 108 bytes (unix(7)) made key generation fail with 'No agent running'."""
    from podsys.bundle.repo import SiteKey

    if shutil.which("gpg") is None:
        pytest.skip("gpg not installed (Debian package gnupg)")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "keys" / "gnupg" / "S.gpg-agent")) > 108
    key = SiteKey(deep / "keys")
    try:
        fingerprint = key.ensure("podsys test <root@localhost>")
        assert re.fullmatch(r"[0-9A-F]{40}", fingerprint) and key.fingerprint() == fingerprint
        assert any(os.readlink(p) == str(key.home) for p in Path(tempfile.gettempdir()).glob("podsys-gnupg-*"))
    finally:
        key.stop_agent()
    # The short link in the temp dir went with the agent: nothing is left behind there.
    links = [p for p in Path(tempfile.gettempdir()).glob("podsys-gnupg-*") if os.readlink(p) == str(key.home)]
    assert links == []
