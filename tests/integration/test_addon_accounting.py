"""The `accounting` add-on on a lab of its own (head + 2 nodes): MariaDB and slurmdbd on the head,
Slurm enforcing a team's limits, sacctmgr applying the manifest idempotently, backup/restore.

* the database password is generated on the head (0600) and appears in no deploy output;
* a job over its team's CPU limit stays pending with Slurm's limit reason, one within it runs
  and `sacct` shows it;
* a second deploy changes nothing; dropping a user from the manifest removes its association
  and keeps the job records;
* `podsys accounting backup` dumps the database; after an account is deleted by hand,
  `podsys accounting restore` brings it back, and the job records survive.

The same lab carries the `storage` (lab-bind shared home) and `notebooks` layers, so the web
front door is tested without a lab of its own (CI time): headless Chromium (Debian's chromium
+ chromium-driver, driven by Debian's python3-selenium) logs in to JupyterHub through nginx/TLS
as a manifest user, spawns a notebook (a Slurm job of that user on a compute node, under the
team's account), runs a cell that writes to the shared home (the file is on the node, owned by
the user), another user gets 403 on that server, stopping it ends the job, a wrong password is
refused; the hub's screenshots go to test-artifacts/. The second deploy then proves the
notebooks roles idempotent too."""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.conftest import bring_up_lab, lab_skip_reason
from tests.integration.test_deploy_lab import wait_for
from podsys.lab import cluster as lab_api

pytestmark = [pytest.mark.integration, pytest.mark.lab]

TEAM = "vision"
USER, INTERN = "researcher", "intern"
# Web login passwords of the lab's users (test-only); the manifest carries only their hashes.
PASSWORDS = {USER: "notebook-pass-researcher", INTERN: "notebook-pass-intern"}
SHARED_HOME = "/shared/home"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def crypt_hash(password: str, salt: str) -> str:
    """A SHA-512 crypt(3) hash, as a site makes one (`openssl passwd -6`); a fixed salt keeps the
    manifest, and so a second deploy, unchanged."""
    return subprocess.run(["openssl", "passwd", "-6", "-salt", salt, password],
                          capture_output=True, text=True, check=True).stdout.strip()


def batchspawner_wheelhouse(directory: Path) -> Path:
    """PyPI is reachable from this host only: the wheel the notebooks role installs on the lab's
    head and nodes, downloaded as the role README tells a site to."""
    wheelhouse = directory / "wheelhouse"
    if not (wheelhouse / "batchspawner-1.3.0-py3-none-any.whl").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "batchspawner==1.3.0",
                        "-d", str(wheelhouse)], capture_output=True, text=True, check=True, timeout=300)
    return wheelhouse


def podsys(*args, timeout=2400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podsys.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def deploy(manifest) -> dict:
    started = time.monotonic()
    proc = podsys("deploy", manifest, "--json")
    print(f"deploy took {time.monotonic() - started:.0f} s")
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON summary:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
    summary["_output"] = proc.stdout + proc.stderr
    return summary


def write_variant(lab, name: str, users: list[str]) -> object:
    data = yaml.safe_load(lab.manifest.read_text())
    data["layers"] = ["base", "slurm", "accounting", "storage", "notebooks"]
    data["users"] = [{"name": USER, "uid": 2001, "gid": 2001, "password_hash": crypt_hash(PASSWORDS[USER], "podsyslab1")},
                     {"name": INTERN, "uid": 2002, "gid": 2002, "password_hash": crypt_hash(PASSWORDS[INTERN], "podsyslab2")}]
    assert data["storage"]["mounts"] == [{"kind": "lab-bind", "path": "/shared"}], "lab.yaml declares the lab's shared dir"
    data["storage"]["home"] = SHARED_HOME
    data["notebooks"] = {"cpus": 1, "time": "1:00:00"}
    data["accounts"] = {
        "qos": [{"name": "high", "priority": 100, "preempt": ["low"], "preempt_mode": "requeue"},
                {"name": "low", "priority": 0}],
        "teams": [{"name": TEAM, "description": "computer vision", "fairshare": 10, "users": users,
                   "limits": {"cpus": 1}, "qos": ["normal", "high", "low"], "default_qos": "normal"}],
    }
    path = lab.manifest.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    addresses = lab.manifest.with_name(f"{lab.manifest.stem}.addresses.yaml")
    if addresses.exists():
        path.with_name(f"{name}.addresses.yaml").write_text(addresses.read_text())
    return path


@pytest.fixture(scope="module")
def accounting_lab(tmp_path_factory):
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("acctlab")
    atexit.register(lab_api.down, directory)  # a killed session still removes its lab
    try:
        lab = bring_up_lab(directory, 2)
        batchspawner_wheelhouse(lab.manifest.parent)
        manifest = write_variant(lab, "lab-accounting", [USER, INTERN])
        first = deploy(manifest)
        yield lab, manifest, first
    finally:
        lab_api.down(directory)


def sacctmgr(lab, *args) -> list[list[str]]:
    out = lab.ssh(lab.head, ["sacctmgr", "-nP", *args]).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_first_deploy_brings_up_mariadb_and_slurmdbd_and_keeps_the_password_private(accounting_lab):
    lab, _, first = accounting_lab
    assert first["succeeded"], first["_output"][-3000:]
    for service in ("mariadb", "slurmdbd", "slurmctld"):
        assert lab.ssh(lab.head, f"systemctl is-active {service}").stdout.strip() == "active", service
    stat = lab.ssh(lab.head, "stat -c '%a %U' /etc/podsys/accounting/db-password /etc/slurm/slurmdbd.conf").stdout.split("\n")
    assert stat[0] == "600 root" and stat[1] == "600 slurm", stat
    password = lab.ssh(lab.head, "cat /etc/podsys/accounting/db-password").stdout.strip()
    assert len(password) >= 32
    assert password not in first["_output"]
    logs = lab.manifest.parent / ".podsys" / "build" / "logs"
    for log in logs.rglob("*"):
        if log.is_file():
            assert password not in log.read_text(errors="replace"), log
    config = {key.strip(): value.strip() for key, _, value in
              (line.partition("=") for line in lab.ssh(lab.head, "scontrol show config").stdout.splitlines())}
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert config["AccountingStorageEnforce"] == "associations,limits,qos"


def test_manifest_teams_users_and_qos_are_in_the_database(accounting_lab):
    lab, _, _ = accounting_lab
    assocs = sacctmgr(lab, "show", "assoc", "where", f"account={TEAM}", "format=account,user,fairshare,grptres,qos")
    users = {row[1] for row in assocs if row[1]}
    assert users == {USER, INTERN}
    team_row = next(row for row in assocs if not row[1])
    assert team_row[2] == "10" and team_row[3] == "cpu=1" and set(team_row[4].split(",")) == {"normal", "high", "low"}
    qos = {row[0]: row for row in sacctmgr(lab, "show", "qos", "format=name,priority,preempt")}
    assert qos["high"][1] == "100" and qos["high"][2] == "low"


def _job_state(lab, job: str) -> tuple[str, str]:
    out = lab.ssh(lab.head, ["squeue", "-h", "-j", job, "-o", "%T|%r"], check=False).stdout.strip()
    return tuple(out.split("|")) if out else ("GONE", "")


def test_over_limit_job_pends_with_the_limit_reason_and_a_job_within_it_runs(accounting_lab):
    lab, _, _ = accounting_lab
    submit = f"su - {USER} -c 'sbatch --parsable -A {TEAM} -o /dev/null -n {{n}} --wrap \"sleep {{s}}\"'"
    over = lab.ssh(lab.head, submit.format(n=2, s=5)).stdout.strip().split(";")[0]
    within = lab.ssh(lab.head, submit.format(n=1, s=3)).stdout.strip().split(";")[0]
    state, reason = wait_for("the over-limit job pending with a reason",
                             lambda: (lambda s: s if s[0] == "PENDING" and s[1] not in ("", "None") else None)(
                                 _job_state(lab, over)), timeout=60)
    assert reason == "AssocGrpCpuLimit", (state, reason)
    wait_for("the job within the limit to finish", lambda: _job_state(lab, within)[0] == "GONE", timeout=180)
    assert _job_state(lab, over) == ("PENDING", "AssocGrpCpuLimit")
    lab.ssh(lab.head, ["scancel", over])

    def recorded():
        rows = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-j", within, "--format=jobid,user,account,state"]).stdout.split()
        return rows and rows[0].split("|")
    row = wait_for("sacct to show the finished job", recorded, timeout=60)
    assert row == [within, USER, TEAM, "COMPLETED"], row


# --- notebooks: JupyterHub through nginx/TLS in a real browser -----------------------------------

def _selenium():
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


@pytest.fixture(scope="module")
def browsers(accounting_lab, tmp_path_factory):
    """A factory of headless Chromium sessions (one per user: separate profiles, separate
    cookies); all closed at the end of the module."""
    webdriver, driver_path, browser_path = _selenium()
    from selenium.webdriver.chrome.service import Service

    opened = []
    profiles = tmp_path_factory.mktemp("chromium")

    def open_browser(name: str):
        options = webdriver.ChromeOptions()
        options.binary_location = browser_path
        # The certificate is self-signed; its fingerprint is checked against the head's record
        # in test_hub_serves_the_site_certificate_whose_fingerprint_the_head_records.
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                    "--window-size=1400,1000", f"--user-data-dir={profiles / name}", "--no-first-run"):
            options.add_argument(arg)
        session = webdriver.Chrome(service=Service(driver_path), options=options)
        session.set_page_load_timeout(120)
        opened.append(session)
        return session

    yield open_browser
    for session in opened:
        session.quit()


def hub_url(lab, path: str = "") -> str:
    return f"https://{lab.head_ssh_address}/{path.lstrip('/')}"


def log_in(lab, browser, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(hub_url(lab, "hub/login"))
    browser.find_element(By.ID, "username_input").send_keys(user)
    browser.find_element(By.ID, "password_input").send_keys(password)
    browser.find_element(By.ID, "login_submit").click()


def save_screenshot(browser, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    assert browser.save_screenshot(str(shot)), name
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / name)
    assert shot.stat().st_size > 10_000, "a blank screenshot"
    return shot


def notebook_jobs(lab, user: str) -> list[list[str]]:
    out = lab.ssh(lab.head, ["squeue", "-h", "-u", user, "-o", "%i|%u|%a|%N|%T|%j"]).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_hub_serves_the_site_certificate_whose_fingerprint_the_head_records(accounting_lab):
    lab, _, first = accounting_lab
    assert first["succeeded"], first["_output"][-3000:]
    pem = ssl.get_server_certificate((lab.head_ssh_address, 443), timeout=30)
    served = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    recorded = lab.ssh(lab.head, "cat /etc/podsys/tls/site.sha256").stdout.strip()
    assert recorded.replace(":", "") == served, (recorded, served)
    assert f"site certificate SHA-256 fingerprint: {recorded}" in first["_output"]
    modes = lab.ssh(lab.head, "stat -c '%a %U' /etc/podsys/tls/site.crt /etc/podsys/tls/site.key").stdout.split("\n")
    assert modes[:2] == ["644 root", "600 root"], modes
    # No password hash left the secrets file: not in the readable vars, not in the hub's config.
    vars_text = (lab.manifest.parent / ".podsys" / "build" / "inventory" / "group_vars" / "all" / "main.yml").read_text()
    config = lab.ssh(lab.head, "cat /etc/podsys/jupyterhub/jupyterhub_config.py").stdout
    for user in (USER, INTERN):
        digest = crypt_hash(PASSWORDS[user], "podsyslab1" if user == USER else "podsyslab2")
        assert digest not in vars_text and digest not in config and PASSWORDS[user] not in config


def test_a_wrong_password_is_refused(accounting_lab, browsers, tmp_path):
    lab, _, _ = accounting_lab
    browser = browsers("wrong")
    log_in(lab, browser, USER, "not-the-password")
    time.sleep(2)
    assert "/hub/login" in browser.current_url, browser.current_url
    assert "Invalid username or password" in browser.page_source
    assert not notebook_jobs(lab, USER)


def test_a_notebook_is_a_slurm_job_of_its_user_and_writes_to_the_shared_home(accounting_lab, browsers, tmp_path):
    from selenium.webdriver.common.by import By

    lab, _, _ = accounting_lab
    browser = browsers(USER)
    log_in(lab, browser, USER, PASSWORDS[USER])
    wait_for("the spawn form after login", lambda: "/hub/spawn" in browser.current_url or
             "/hub/home" in browser.current_url, timeout=60)
    browser.get(hub_url(lab, "hub/spawn"))
    form = browser.find_element(By.ID, "spawn_form")
    assert browser.find_element(By.ID, "partition").get_attribute("value") == "compute"
    save_screenshot(browser, tmp_path, "notebooks-hub-spawn.png")
    form.submit()
    wait_for("the notebook server to answer", lambda: f"/user/{USER}/tree" in browser.current_url, timeout=420)
    save_screenshot(browser, tmp_path, "notebooks-hub-tree.png")

    jobs = notebook_jobs(lab, USER)
    assert len(jobs) == 1, jobs
    job_id, owner, account, node, state, name = jobs[0]
    assert (owner, account, state, name) == (USER, TEAM, "RUNNING", f"jupyterhub-{USER}"), jobs
    assert node in lab.nodes, (node, lab.nodes)

    # A notebook in the user's shared home (written as the user), opened and run in the browser.
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "probe", "metadata": {},
                           "outputs": [], "source": ""}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    lab.ssh(lab.head, f"su {USER} -c 'cat > {SHARED_HOME}/{USER}/probe.ipynb' <<'EOF'\n{json.dumps(notebook)}\nEOF")
    browser.get(hub_url(lab, f"user/{USER}/notebooks/probe.ipynb"))
    wait_for("the kernel to connect", lambda: browser.execute_script(
        "return !!(window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel && Jupyter.notebook.kernel.is_connected())"),
        timeout=180)
    cell = "import socket\nopen('written-by-notebook.txt', 'w').write(socket.gethostname())\nprint('ran on', socket.gethostname())"
    browser.execute_script("var c = Jupyter.notebook.get_cell(0); c.set_text(arguments[0]); c.execute();", cell)
    output = wait_for("the cell's output", lambda: (lambda t: t if "ran on" in t else None)(
        browser.execute_script("return Jupyter.notebook.get_cell(0).output_area.element.text()")), timeout=120)
    assert f"ran on {node}" in output, output
    save_screenshot(browser, tmp_path, "notebooks-cell.png")
    written = lab.ssh(node, f"stat -c '%U %a' {SHARED_HOME}/{USER}/written-by-notebook.txt && "
                            f"cat {SHARED_HOME}/{USER}/written-by-notebook.txt").stdout.split("\n")
    assert written[0].split()[0] == USER and written[1] == node, written


def test_another_user_gets_403_on_that_server(accounting_lab, browsers, tmp_path):
    lab, _, _ = accounting_lab
    assert notebook_jobs(lab, USER), "the previous test leaves the researcher's server running"
    browser = browsers(INTERN)
    log_in(lab, browser, INTERN, PASSWORDS[INTERN])
    wait_for("the intern logged in", lambda: "/hub/login" not in browser.current_url, timeout=60)
    browser.get(hub_url(lab, f"user/{USER}/tree"))
    wait_for("the hub's answer", lambda: "403" in browser.page_source, timeout=60)
    assert "Forbidden" in browser.page_source
    save_screenshot(browser, tmp_path, "notebooks-403.png")
    assert not notebook_jobs(lab, INTERN)


def test_stopping_the_server_ends_its_slurm_job(accounting_lab, browsers, tmp_path):
    from selenium.webdriver.common.by import By

    lab, _, _ = accounting_lab
    (job_id, *_), = notebook_jobs(lab, USER)
    browser = browsers(USER + "-stop")
    log_in(lab, browser, USER, PASSWORDS[USER])
    wait_for("the researcher logged in", lambda: "/hub/login" not in browser.current_url, timeout=60)
    browser.get(hub_url(lab, "hub/home"))
    save_screenshot(browser, tmp_path, "notebooks-hub-home.png")
    browser.find_element(By.ID, "stop").click()
    wait_for("the notebook job to end", lambda: not notebook_jobs(lab, USER), timeout=120)
    state = wait_for("sacct to record the job", lambda: lab.ssh(
        lab.head, ["sacct", "-nP", "-X", "-j", job_id, "--format=state"]).stdout.strip() or None, timeout=60)
    assert state.split()[0] in ("CANCELLED", "COMPLETED") or state.startswith("CANCELLED"), state


def test_a_second_deploy_changes_nothing(accounting_lab):
    lab, manifest, _ = accounting_lab
    again = deploy(manifest)
    assert again["succeeded"], again["_output"][-3000:]
    changed = {h["name"]: h["changed"] for h in again["hosts"] if h["changed"]}
    assert not changed, changed


def test_removing_a_user_removes_its_association_and_keeps_the_records(accounting_lab):
    lab, _, _ = accounting_lab
    jobs_before = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()
    assert jobs_before
    smaller = write_variant(lab, "lab-accounting-smaller", [USER])
    result = deploy(smaller)
    assert result["succeeded"], result["_output"][-3000:]
    users = {row[1] for row in sacctmgr(lab, "show", "assoc", "where", f"account={TEAM}", "format=account,user") if row[1]}
    assert users == {USER}
    jobs_after = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()
    assert jobs_after == jobs_before


def test_backup_and_restore_bring_back_a_deleted_account(accounting_lab, tmp_path):
    lab, _, _ = accounting_lab
    manifest = lab.manifest.with_name("lab-accounting-smaller.yaml")
    dump = tmp_path / "accounting.sql"
    backup = podsys("accounting", "backup", manifest, "--output", dump, timeout=600)
    assert backup.returncode == 0, backup.stderr
    assert oct(dump.stat().st_mode & 0o777) == "0o600"
    text = dump.read_text()
    assert ("-- MariaDB dump" in text[:512] or "-- MySQL dump" in text[:512]) and "CREATE TABLE" in text and "INSERT INTO" in text
    jobs_before = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()

    lab.ssh(lab.head, ["sacctmgr", "-i", "delete", "user", "where", f"name={USER}", f"account={TEAM}"])
    lab.ssh(lab.head, ["sacctmgr", "-i", "delete", "account", TEAM])
    assert not sacctmgr(lab, "show", "account", "where", f"name={TEAM}", "format=account")

    restored = podsys("accounting", "restore", manifest, "--input", dump, timeout=600)
    assert restored.returncode == 0, restored.stderr
    assert [row[0] for row in sacctmgr(lab, "show", "account", "where", f"name={TEAM}", "format=account")] == [TEAM]
    users = {row[1] for row in sacctmgr(lab, "show", "assoc", "where", f"account={TEAM}", "format=account,user") if row[1]}
    assert users == {USER}
    jobs_after = lab.ssh(lab.head, ["sacct", "-nP", "-X", "-a", "-S", "2020-01-01", "--format=jobid"]).stdout.split()
    assert jobs_after == jobs_before
