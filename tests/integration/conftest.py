"""Shared integration fixtures.

`lab_cluster` (session scope) brings one lab cluster up for the whole test session and tears it
down at the end, also when tests fail or the session is interrupted. Use it in any test that
needs real nodes; mark such tests `@pytest.mark.integration` and `@pytest.mark.lab`.

Interface of the `LabCluster` object it yields (stable; other test modules rely on it):

    directory       Path   the lab directory (a pytest temp dir); lab.yaml lives here
    manifest        Path   <directory>/lab.yaml, a valid manifest: `podsys deploy` it
    ssh_config      Path   ssh_config reaching every node by hostname (compute via the head)
    private_key     Path   the lab's SSH private key (root on every node)
    known_hosts     Path   known_hosts for every node (hostname, provision and uplink address)
    head            str    the head's hostname ("head")
    nodes           list   compute node hostnames, e.g. ["node01", "node02", "node03"]
    addresses       dict   hostname -> provision IPv4 address (head included)
    head_ssh_address str   the head's uplink address, where the host reaches it
    proxy_url       str    the host's apt proxy, reachable from the head only
    mirror          str    the upstream Debian mirror the proxy fetches from
    ssh(node, command, check=True, timeout=600) -> CompletedProcess
                           run a shell command string (or argv list) on a node as root
    host(node)             a testinfra Host for the node (ssh backend, same config)
    stop(node) / start(node)  power a node off / boot it again (waits for sshd); the lab is
                           shared by the session, so a test that stops a node starts it
                           again in a `finally:`
    status()               `podsys lab status --json` as a dict

Size: PODSYS_LAB_NODES compute nodes (default 3). The Debian root is built once and cached in
/var/cache/podsys/lab (PODSYS_LAB_CACHE overrides), so only the first session pays for
debootstrap. Tests are skipped (with the reason) where the lab cannot run: not root, or
systemd-nspawn/debootstrap/apt-cacher-ng/ssh missing.

A module that needs a lab of its own (its own size, or one it may break) uses
`with own_lab(tmp_path_factory, "name", nodes) as lab:` in a module-scoped fixture;
`wait_for(what, check)` polls for a state the lab must reach."""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podsys.lab import cluster as lab
from tests.conftest import podsys


@dataclass
class LabCluster:
    directory: Path
    manifest: Path
    ssh_config: Path
    private_key: Path
    known_hosts: Path
    head: str
    nodes: list[str]
    addresses: dict[str, str]
    head_ssh_address: str
    proxy_url: str
    mirror: str
    _hosts: dict = field(default_factory=dict, repr=False)

    def ssh(self, node: str, command: str | list[str], check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
        remote = command if isinstance(command, str) else shlex.join(command)
        argv = ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", node, remote]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {node} {remote!r} exited {proc.returncode}: "
                                 f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def host(self, node: str):
        import testinfra

        if node not in self._hosts:
            self._hosts[node] = testinfra.get_host(f"ssh://{node}", ssh_config=str(self.ssh_config))
        return self._hosts[node]

    def stop(self, node: str) -> None:
        self._hosts.pop(node, None)
        lab.stop_node(self.directory, node)

    def start(self, node: str) -> None:
        lab.start_node(self.directory, node)

    def status(self) -> dict:
        return lab.status(self.directory)


def lab_skip_reason() -> str | None:
    problems = lab.missing_requirements()
    return "lab cluster cannot run here: " + "; ".join(problems) if problems else None


def bring_up_lab(directory: Path, nodes: int, vms: int = 0, vm_nice: int = 0) -> LabCluster:
    """Bring a lab up in `directory` (tearing it down again if that fails half-way)."""
    return lab_handles(directory, lab.up(directory, nodes=nodes, vms=vms, vm_nice=vm_nice))


def lab_handles(directory: Path, state: dict) -> LabCluster:
    """The test's handles on a running lab, from the state `podsys lab up` returned."""
    paths = lab.paths_for(directory)
    plan = lab.LabPlan.from_dict(state["plan"])
    return LabCluster(
        directory=paths.directory,
        manifest=paths.manifest,
        ssh_config=paths.ssh_config,
        private_key=paths.private_key,
        known_hosts=paths.known_hosts,
        head=plan.head.hostname,
        nodes=[n.hostname for n in plan.compute],
        addresses={n.hostname: n.address for n in plan.nodes},
        head_ssh_address=plan.head.uplink_address,
        proxy_url=plan.proxy_url,
        mirror=state["mirror"],
    )


def shared_lab_size() -> int:
    return int(os.environ.get("PODSYS_LAB_NODES", "3"))


@contextmanager
def own_lab(tmp_path_factory, basename: str, nodes: int):
    """Bring a lab up in a new temporary directory, hand it over, and take it down afterwards
    (also on interpreter exit: a killed session still removes its namespaces and processes).
    Skips the test when this machine cannot run a lab."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp(basename)
    atexit.register(lab.down, directory)
    try:
        yield bring_up_lab(directory, nodes)
    finally:
        lab.down(directory)


def wait_for(what: str, check, timeout: float = 120, every: float = 2):
    """Polls check() until it returns a truthy value (a state to reach, not a timing claim)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r})")


def deploy_json(manifest: Path, timeout: float = 2400) -> dict:
    """`podsys deploy MANIFEST --json` -> its summary, with the whole output under "_output";
    fails the test with the output when no JSON summary came back."""
    started = time.monotonic()
    proc = podsys("deploy", manifest, "--json", timeout=timeout)
    print(f"deploy took {time.monotonic() - started:.0f} s")
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON summary:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
    summary["_output"] = proc.stdout + proc.stderr
    return summary


@pytest.fixture(scope="session")
def lab_cluster(tmp_path_factory) -> LabCluster:
    with own_lab(tmp_path_factory, "lab", shared_lab_size()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def fresh_lab_cluster(tmp_path_factory) -> LabCluster:
    """A lab of the module's own, as `podsys lab up` makes it, for tests that need nodes nobody
    has deployed to (the stack roles' check mode, the air-gapped deploy from the bundle). With
    the root cached, `lab up` takes seconds; the deploys are what cost time."""
    with own_lab(tmp_path_factory, "freshlab", shared_lab_size()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def training_lab(tmp_path_factory) -> LabCluster:
    """The training lab (tests/integration/training_lab.py), deployed once for the modules of
    its group."""
    from tests.integration.training_lab import write_variant

    with own_lab(tmp_path_factory, "trainlab", 2) as cluster:
        summary = deploy_json(write_variant(cluster))
        assert summary["succeeded"], summary["_output"][-4000:]
        yield cluster


def crypt_hash(password: str, salt: str) -> str:
    """A SHA-512 crypt(3) hash, as a site makes one (`openssl passwd -6`); a fixed salt keeps the
    manifest, and so a second deploy, unchanged."""
    return subprocess.run(["openssl", "passwd", "-6", "-salt", salt, password],
                          capture_output=True, text=True, check=True).stdout.strip()


def selenium_chromium():
    """Debian's python3-selenium (apt, .ci/apt-packages.txt) lives in the system dist-packages;
    a test interpreter of the same Python minor version can import it from there."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        dist = Path("/usr/lib/python3/dist-packages")
        if (dist / "selenium").is_dir() and sys.version_info[:2] == (3, 11):
            sys.path.append(str(dist))
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium not installed (Debian package python3-selenium, listed in .ci/apt-packages.txt)")
    driver = shutil.which("chromedriver")
    browser = shutil.which("chromium")
    if not driver or not browser:
        pytest.skip("chromium / chromedriver not installed (Debian packages chromium, chromium-driver)")
    return webdriver, driver, browser


def chromium_session(profile: Path):
    """A headless Chromium under selenium with its own profile (cookies, logins). The lab's
    certificate is self-signed and accepted here; the notebooks test checks its fingerprint
    against the head's record. The caller quits it."""
    webdriver, driver_path, browser_path = selenium_chromium()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                "--window-size=1400,1000", f"--user-data-dir={profile}", "--no-first-run"):
        options.add_argument(arg)
    session = webdriver.Chrome(service=Service(driver_path), options=options)
    session.set_page_load_timeout(120)
    return session
