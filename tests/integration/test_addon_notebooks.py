"""The `notebooks` add-on on a lab of its own (head + 2 nodes, layers base, slurm, accounting,
storage, notebooks): headless Chromium (Debian's chromium + chromium-driver, driven by Debian's
python3-selenium) logs in to JupyterHub through nginx/TLS as a manifest user, spawns a notebook
(a Slurm job of that user on a compute node, under the team's account), runs a cell that writes
to the shared home (the file is on the node, owned by the user), another user gets 403 on that
server, stopping it ends the job, a wrong password is refused; the hub's screenshots go to
test-artifacts/. A second deploy changes nothing.

In CI: the README's test command runs this lab in its own parallel worker (tests/conftest.py
groups); its time is in README, testing."""

from __future__ import annotations

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

from podsys.bundle.addon_wheels import missing_wheels, wheel_sets
from tests.conftest import REPO_ROOT, write_manifest_variant
from tests.integration.conftest import chromium_session, crypt_hash, deploy_json, own_lab, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.lab]

TEAM = "vision"
USER, INTERN = "researcher", "intern"
# Web login passwords of the lab's users (test-only); the manifest carries only their hashes.
PASSWORDS = {USER: "notebook-pass-researcher", INTERN: "notebook-pass-intern"}
SHARED_HOME = "/shared/home"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def batchspawner_wheelhouse(directory: Path) -> Path:
    """PyPI is reachable from this host only: the wheel the notebooks role installs on the lab's
    head and nodes, downloaded as the role README tells a site to."""
    wheelhouse = directory / "wheelhouse"
    (batchspawner,) = wheel_sets(["notebooks"])  # the role defaults' pin
    if missing_wheels(wheelhouse, batchspawner.requirements):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *batchspawner.requirements,
                        "-d", str(wheelhouse)], capture_output=True, text=True, check=True, timeout=300)
    return wheelhouse


def write_variant(lab, name: str) -> Path:
    storage = {**yaml.safe_load(lab.manifest.read_text())["storage"], "home": SHARED_HOME}
    assert storage["mounts"] == [{"kind": "lab-bind", "path": "/shared"}], "lab.yaml declares the lab's shared dir"
    users = [{"name": USER, "uid": 2001, "gid": 2001, "password_hash": crypt_hash(PASSWORDS[USER], "podsyslab1")},
             {"name": INTERN, "uid": 2002, "gid": 2002, "password_hash": crypt_hash(PASSWORDS[INTERN], "podsyslab2")}]
    accounts = {"teams": [{"name": TEAM, "description": "computer vision", "users": [USER, INTERN],
                           "limits": {"cpus": 1}}]}
    return write_manifest_variant(lab.manifest.parent, lab.manifest, name,
                                  layers=["base", "slurm", "accounting", "storage", "notebooks"],
                                  users=users, storage=storage, accounts=accounts,
                                  notebooks={"cpus": 1, "time": "1:00:00"})


@pytest.fixture(scope="module")
def notebooks_lab(tmp_path_factory):
    with own_lab(tmp_path_factory, "nblab", 2) as lab:
        batchspawner_wheelhouse(lab.manifest.parent)
        manifest = write_variant(lab, "lab-notebooks")
        first = deploy_json(manifest)
        assert first["succeeded"], first["_output"][-4000:]
        yield lab, manifest, first

@pytest.fixture(scope="module")
def browsers(notebooks_lab, tmp_path_factory):
    """A factory of headless Chromium sessions (one per user: separate profiles, separate
    cookies); all closed at the end of the module."""
    opened = []
    profiles = tmp_path_factory.mktemp("chromium")

    def open_browser(name: str):
        session = chromium_session(profiles / name)
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


def wait_until_drawn(browser, element_id: str, timeout: float = 180) -> None:
    """The page finished loading and has `element_id`: on a busy machine the URL changes long
    before the page is drawn or its script handlers are bound."""
    wait_for(f"#{element_id} drawn on {browser.current_url}", lambda: browser.execute_script(
        "return document.readyState === 'complete' && !!document.getElementById(arguments[0])", element_id),
        timeout=timeout)


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


def test_hub_serves_the_site_certificate_whose_fingerprint_the_head_records(notebooks_lab):
    lab, _, first = notebooks_lab
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


def test_a_wrong_password_is_refused(notebooks_lab, browsers, tmp_path):
    lab, _, _ = notebooks_lab
    browser = browsers("wrong")
    log_in(lab, browser, USER, "not-the-password")
    time.sleep(2)
    assert "/hub/login" in browser.current_url, browser.current_url
    assert "Invalid username or password" in browser.page_source
    assert not notebook_jobs(lab, USER)


def test_a_notebook_is_a_slurm_job_of_its_user_and_writes_to_the_shared_home(notebooks_lab, browsers, tmp_path):
    from selenium.webdriver.common.by import By

    lab, _, _ = notebooks_lab
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
    wait_until_drawn(browser, "notebook_list")  # the classic notebook's file list
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


def test_another_user_gets_403_on_that_server(notebooks_lab, browsers, tmp_path):
    lab, _, _ = notebooks_lab
    assert notebook_jobs(lab, USER), "the previous test leaves the researcher's server running"
    browser = browsers(INTERN)
    log_in(lab, browser, INTERN, PASSWORDS[INTERN])
    wait_for("the intern logged in", lambda: "/hub/login" not in browser.current_url, timeout=60)
    browser.get(hub_url(lab, f"user/{USER}/tree"))
    wait_for("the hub's answer", lambda: "403" in browser.page_source, timeout=60)
    assert "Forbidden" in browser.page_source
    save_screenshot(browser, tmp_path, "notebooks-403.png")
    assert not notebook_jobs(lab, INTERN)


def test_stopping_the_server_ends_its_slurm_job(notebooks_lab, browsers, tmp_path):
    from selenium.webdriver.common.by import By

    lab, _, _ = notebooks_lab
    (job_id, *_), = notebook_jobs(lab, USER)
    browser = browsers(USER + "-stop")
    log_in(lab, browser, USER, PASSWORDS[USER])
    wait_for("the researcher logged in", lambda: "/hub/login" not in browser.current_url, timeout=60)
    browser.get(hub_url(lab, "hub/home"))
    wait_until_drawn(browser, "stop")
    save_screenshot(browser, tmp_path, "notebooks-hub-home.png")
    stop = browser.find_element(By.ID, "stop")

    def clicked() -> bool:
        """The hub's page script binds the button after the page loads (requirejs) and hides it
        once the server stopped; until then the click is repeated, as a user would."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        try:
            if stop.is_displayed():
                stop.click()
            time.sleep(5)
            return not stop.is_displayed() or not notebook_jobs(lab, USER)
        except StaleElementReferenceException:
            return True
        except WebDriverException:
            return False

    wait_for("the hub to take the stop click", clicked, timeout=180, every=1)
    wait_for("the notebook job to end", lambda: not notebook_jobs(lab, USER), timeout=300)
    state = wait_for("sacct to record the job", lambda: lab.ssh(
        lab.head, ["sacct", "-nP", "-X", "-j", job_id, "--format=state"]).stdout.strip() or None, timeout=60)
    assert state.split()[0] in ("CANCELLED", "COMPLETED") or state.startswith("CANCELLED"), state


def test_a_second_deploy_changes_nothing(notebooks_lab):
    lab, manifest, _ = notebooks_lab
    again = deploy_json(manifest)
    assert again["succeeded"], again["_output"][-3000:]
    changed = {h["name"]: h["changed"] for h in again["hosts"] if h["changed"]}
    assert not changed, changed
