"""An air-gapped `podsys deploy` from the offline bundle, on a lab of its own (about five minutes).

The bundle is built for real for the lab's manifest (Debian 12; head services, base, Slurm,
monitoring; podsys's wheels) and copied to the head. The lab's apt proxy, the head's only way
out, is then stopped: from here on neither the head nor the nodes can reach any repository but
the bundle. `podsys deploy` with `packages.source: bundle` must then bring up Slurm and
Prometheus, which proves the bundle complete. Afterwards: the head installs podsys from the
bundle's wheels and verifies the bundle; a tampered package is refused by a node's apt and named
by `podsys bundle verify`; a tampered index fails the signature on the node; a bundle missing
from packages.bundle_path, or signed by another key than packages.bundle_fingerprint pins, stops
the deploy changing nothing."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from podsys.lab import cluster as lab_api
from tests.integration.test_bundle import _skip_unless_ready
from tests.integration.conftest import wait_for
from tests.conftest import podsys, write_manifest_variant

pytestmark = [pytest.mark.integration, pytest.mark.lab]

REMOTE = "/srv/podsys/bundle"
PORT = 8080
SUITE = "bookworm"


def _push(lab, bundle, node: str) -> None:
    """What a site does with the ISO's contents: the served tree, never the private key."""
    lab.ssh(node, f"rm -rf {REMOTE} && mkdir -p {REMOTE}")
    tops = [p.name for p in bundle.iterdir() if p.name not in ("keys", ".work")]
    tar = subprocess.Popen(["tar", "-C", str(bundle), "-cf", "-", *tops], stdout=subprocess.PIPE)
    subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", node, f"tar -C {REMOTE} -xf -"],
                   stdin=tar.stdout, check=True, capture_output=True)
    assert tar.wait() == 0


def _deploy(manifest) -> subprocess.CompletedProcess:
    return podsys("deploy", manifest, "--json", timeout=1800)


def _summary(proc: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON summary from the deploy:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None


def _variant(manifest, name: str, packages: dict):
    """<name>.yaml beside `manifest`: the same cluster with this packages section, and the same
    addresses (its allocation file copied, so no node moves)."""
    return write_manifest_variant(manifest.parent, manifest, name, packages=packages)


def _apt_repositories(lab, node: str) -> set[str]:
    out = lab.ssh(node, "apt-get indextargets --format '$(REPO_URI) $(RELEASE)'").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def bundle_deploy(fresh_lab_cluster, tmp_path_factory):
    """The lab cut off and deployed from the bundle: (lab, bundle dir, manifest, first deploy)."""
    _skip_unless_ready()
    lab = fresh_lab_cluster
    bundle = tmp_path_factory.mktemp("labbundle") / "bundle"
    built = json.loads(podsys("bundle", "build", str(lab.manifest), "--output", str(bundle),
                              "--no-installer", "--json").stdout)
    assert built["packages"] > 100 and built["downloaded"] == built["packages"]
    _push(lab, bundle, lab.head)

    manifest = _variant(lab.manifest, "lab-bundle", {"source": "bundle", "bundle_path": REMOTE, "bundle_port": PORT,
                                                     "bundle_fingerprint": built["fingerprint"]})

    assert lab_api.stop_proxy(lab.directory), "the lab's apt proxy was not running"
    proxy = lab.proxy_url.removeprefix("http://")
    probe = lab.ssh(lab.head, f"timeout 5 bash -c 'exec 3<>/dev/tcp/{proxy.replace(':', '/')}'", check=False)
    assert probe.returncode != 0, "the head still reaches the host's apt proxy"
    first = _deploy(manifest)
    return lab, bundle, manifest, first


def test_deploy_from_the_bundle_alone_brings_up_slurm_and_prometheus(bundle_deploy):
    lab, _, _, first = bundle_deploy
    summary = _summary(first)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert summary["succeeded"] and {h["name"] for h in summary["hosts"] if h["status"] == "ok"} == {lab.head, *lab.nodes}

    # Every host knows only the bundle: the head reads it from disk, nodes from the head's nginx.
    head_ip = lab.addresses[lab.head]
    assert _apt_repositories(lab, lab.head) == {f"file:{REMOTE}/repo/ {SUITE}"}
    for node in lab.nodes:
        assert _apt_repositories(lab, node) == {f"http://{head_ip}:{PORT}/repo/ {SUITE}"}
        policy = lab.ssh(node, "apt-cache policy slurmd").stdout
        assert re.search(rf"\*\*\* \S+ 500\n\s+500 http://{re.escape(head_ip)}:{PORT}/repo {SUITE}/main", policy), policy

    # Slurm runs a job on every node.
    count = len(lab.nodes)
    wait_for("every Slurm node idle", lambda: lab.ssh(
        lab.head, "sinfo -h -N -o '%N %T'").stdout.split().count("idle") == count, timeout=90)
    srun = lab.ssh(lab.head, f"timeout 120 srun -N{count} hostname", timeout=180)
    assert sorted(srun.stdout.split()) == sorted(lab.nodes)

    # Prometheus scrapes every node's exporter.
    query = (f"import json, urllib.request; print(json.dumps(json.load(urllib.request.urlopen("
             f"'http://{head_ip}:9090/api/v1/query?query=up', timeout=10))['data']['result']))")

    def node_exporters_up():
        results = json.loads(lab.ssh(lab.head, ["python3", "-c", query]).stdout)
        up = {r["metric"].get("node", r["metric"]["instance"]): r["value"][1] for r in results
              if r["metric"].get("job") == "node"}
        return up if all(up.get(node) == "1" for node in lab.nodes) else None

    wait_for("Prometheus scrapes every node exporter", node_exporters_up, timeout=120, every=3)


def test_nginx_serves_the_bundle_but_never_the_key_directory(bundle_deploy):
    lab, _, _, _ = bundle_deploy
    base = f"http://{lab.addresses[lab.head]}:{PORT}"
    fetch = ("import sys, urllib.request, urllib.error\n"
             "for url in sys.argv[1:]:\n"
             "    try: print(urllib.request.urlopen(url, timeout=10).status)\n"
             "    except urllib.error.HTTPError as e: print(e.code)\n")
    node = lab.nodes[0]
    codes = lab.ssh(node, ["python3", "-c", fetch, f"{base}/repo/dists/{SUITE}/InRelease", f"{base}/wheels/",
                           f"{base}/keys/site-private.asc", f"{base}/bundle.json"]).stdout.split()
    assert codes == ["200", "403", "404", "404"]


def test_a_repeat_deploy_from_the_bundle_changes_nothing(bundle_deploy):
    lab, _, manifest, _ = bundle_deploy
    again = _deploy(manifest)
    assert again.returncode == 0, again.stdout[-4000:]
    changed = {h["name"]: h["changed"] for h in _summary(again)["hosts"]}
    assert changed == {host: 0 for host in [lab.head, *lab.nodes]}


@pytest.fixture(scope="module")
def head_podsys(bundle_deploy) -> str:
    """podsys installed on the air-gapped head the way a site does it: python3-venv from the
    bundle (the head's only repository), podsys and its dependencies from the bundle's wheels."""
    lab = bundle_deploy[0]
    lab.ssh(lab.head, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv", timeout=600)
    lab.ssh(lab.head, f"python3 -m venv /opt/podsys && /opt/podsys/bin/pip install -q --no-index "
                      f"--find-links {REMOTE}/wheels podsys", timeout=900)
    return "/opt/podsys/bin/podsys"


def test_the_head_installs_podsys_from_the_bundle_and_verifies_it(bundle_deploy, head_podsys):
    lab = bundle_deploy[0]
    verify = lab.ssh(lab.head, f"{head_podsys} bundle verify {REMOTE} --json")
    report = json.loads(verify.stdout)
    assert report["ok"] is True and report["checked"] > 100


def test_tampering_is_refused_by_a_nodes_apt_and_named_by_verify(bundle_deploy, head_podsys):
    """slurmctld is in the bundle but on no compute node: installing it there must fetch it."""
    lab, bundle, _, _ = bundle_deploy
    head, node = lab.head, lab.nodes[0]
    deb = next((bundle / "repo/pool/main").rglob("slurmctld_*.deb")).relative_to(bundle).as_posix()
    remote = f"{REMOTE}/{deb}"
    flip = ("import sys; p = sys.argv[1]; d = bytearray(open(p, 'rb').read()); "
            "d[len(d) // 2] ^= 0xFF; open(p, 'wb').write(bytes(d))")
    lab.ssh(head, ["python3", "-c", flip, remote])
    try:
        bad = lab.ssh(node, "apt-get clean && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --download-only slurmctld",
                      check=False, timeout=300)
        assert bad.returncode != 0
        assert "Hash Sum mismatch" in bad.stderr or "Hashes of expected file" in bad.stderr, bad.stderr
        verify = lab.ssh(head, f"{head_podsys} bundle verify {REMOTE}", check=False)
        assert verify.returncode == 1 and f"BAD {deb}: sha256 mismatch" in verify.stderr, verify.stderr
    finally:
        lab.ssh(head, ["python3", "-c", flip, remote])  # flipping the same byte again restores it

    # The signed index: an edited InRelease fails the signature check on the node.
    release = f"{REMOTE}/repo/dists/{SUITE}/InRelease"
    lab.ssh(head, f"cp {release} {release}.good && sed -i 's/^Suite: {SUITE}$/Suite: {SUITE}x/' {release}")
    try:
        update = lab.ssh(node, "apt-get update", check=False, timeout=300)
        assert "BADSIG" in update.stdout + update.stderr or "signatures were invalid" in update.stdout + update.stderr, \
            update.stdout + update.stderr
    finally:
        lab.ssh(head, f"mv {release}.good {release}")
        lab.ssh(node, "apt-get update -q", check=False, timeout=300)


def _refused_on_the_head(lab, manifest, name: str, **packages) -> str:
    """Deploy the head's package service with these packages settings; it must fail. Returns the
    output, whitespace folded. Nothing may change: the head keeps the bundle the real deploy set."""
    packages = {**yaml.safe_load(manifest.read_text())["packages"], **packages}
    variant = _variant(manifest, name, packages)
    proc = podsys("deploy", variant, "--limit", lab.head, "--tags", "packages", timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert _apt_repositories(lab, lab.head) == {f"file:{REMOTE}/repo/ {SUITE}"}
    return " ".join((proc.stdout + proc.stderr).split())


def test_a_missing_bundle_stops_the_deploy_saying_where_it_belongs(bundle_deploy):
    lab, _, manifest, _ = bundle_deploy
    out = _refused_on_the_head(lab, manifest, "lab-nobundle", bundle_path="/srv/no-bundle-here")
    assert f"no offline bundle at /srv/no-bundle-here/bundle.json on {lab.head}" in out, out[-2000:]


def test_a_bundle_signed_by_another_key_than_the_pinned_one_is_refused(bundle_deploy):
    lab, _, manifest, _ = bundle_deploy
    real = yaml.safe_load(manifest.read_text())["packages"]["bundle_fingerprint"]
    other = "0123456789ABCDEF0123456789ABCDEF01234567"
    out = _refused_on_the_head(lab, manifest, "lab-otherkey", bundle_fingerprint=other)
    assert f"is signed by key {real}, not by the site key {other}" in out, out[-2000:]
