"""Helpers for the models layer's lab test (test_addon_models.py, on the training lab's layers
plus accounting and models): the wheels deploy installs, the lab user's web login, MLflow's REST API from a node and
the head, and a headless Chromium screenshot of a run page."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from podsys.bundle.addon_wheels import wheel_sets
from tests.conftest import REPO_ROOT
from tests.integration.conftest import chromium_session, crypt_hash, wait_for

# What the lab installs: the models role's pinned requirements (its defaults, the one place they
# are declared), pip-downloaded from PyPI on the test host: the lab does not reach PyPI
# (roles/models/README.md "How a site gets the wheels").
MODELS_WHEEL_SETS = {s.name: s.requirements for s in wheel_sets(["models"])}
MLFLOW_VERSION = next(r.split("==")[1] for r in MODELS_WHEEL_SETS["mlflow"] if r.startswith("mlflow=="))
# A lab-only login for the lab user; only its crypt(3) hash goes into the manifest.
PASSWORD = "lab-models-login"
ARTIFACTS = REPO_ROOT / "test-artifacts"
SITE_CERTIFICATE = "/etc/podsys/tls/site.crt"
PORT = 5443


# Downloaded once per MLflow version and reused (the server's set is ~180 MB): beside the lab's
# Debian root cache (podsys/lab/rootfs.py DEFAULT_CACHE).
WHEEL_CACHE = Path("/var/cache/podsys/lab/wheels")


def build_wheelhouses(directory: Path) -> None:
    """wheels/mlflow and wheels/mlflow-client next to the manifest (the models section's
    defaults), as a site would make them (roles/models/README.md)."""
    for target, requirements in MODELS_WHEEL_SETS.items():
        cached = WHEEL_CACHE / f"{target}-{MLFLOW_VERSION}"
        if not (cached / "complete").exists():
            shutil.rmtree(cached, ignore_errors=True)
            # The test host runs the lab's Python (3.11, Debian 12, x86_64): its wheels fit the head.
            done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                                   "-d", str(cached), *requirements], capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, done.stderr[-3000:]
            (cached / "complete").write_text("")
        shutil.copytree(cached, directory / "wheels" / target, ignore=shutil.ignore_patterns("complete"),
                        dirs_exist_ok=True)


def password_hash() -> str:
    return crypt_hash(PASSWORD, "podsyslab3")


# Lab nodes have no curl: the request is made with the host's python3 (urllib), verifying the
# site certificate, or not at all for the loopback address it was not issued for.
FETCH = """
import base64, ssl, sys, urllib.error, urllib.request
url, cafile, auth = sys.argv[1], sys.argv[2], sys.argv[3]
if '//127.0.0.1' in url:
    context = ssl._create_unverified_context()
else:
    context = ssl.create_default_context(cafile=cafile)
request = urllib.request.Request(url)
if auth:
    request.add_header('Authorization', 'Basic ' + base64.b64encode(auth.encode()).decode())
try:
    answer = urllib.request.urlopen(request, context=context, timeout=60)
    status, body = answer.status, answer.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
sys.stdout.write(str(status) + chr(10) + body.decode(errors='replace'))
"""


def rest_from(lab, host: str, path: str, *, base: str | None = None, auth: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of a GET through nginx from `host`."""
    url = (base or f"https://{lab.head}:{PORT}") + path
    command = ["python3", "-c", FETCH, url, SITE_CERTIFICATE, auth or ""]
    out = lab.ssh(host, " ".join(map(shlex.quote, command))).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def rest_json(lab, host: str, path: str) -> dict:
    status, body = rest_from(lab, host, path)
    assert status == 200, (status, body[:500])
    return json.loads(body)


def open_run_page(url: str, profile: Path, login: str, screenshot: Path, expect: str) -> str:
    """Load the MLflow UI page in headless Chromium (selenium; the self-signed lab certificate
    accepted) logged in as `login` (user:password), wait until `expect` is drawn, save a PNG
    of it and give the rendered DOM. The login goes in an Authorization header on every
    request, as a browser sends what the user typed at its prompt: a URL with credentials
    instead makes the app's fetch() calls fail ("Request cannot be constructed from a URL
    that includes credentials")."""
    session = chromium_session(profile)
    try:
        session.execute_cdp_cmd("Network.enable", {})
        session.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                {"headers": {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}})
        session.get(url)
        wait_for(f"{expect!r} drawn on the run page", lambda: expect in session.page_source, timeout=180)
        assert session.save_screenshot(str(screenshot)), screenshot
        return session.page_source
    finally:
        session.quit()
