"""The `models` add-on (MLflow tracking server and model registry) on the training lab, whose
layers include accounting (MLflow's MariaDB) and models (tests/integration/training_lab.py;
shared with test_addon_training.py, this module first). The
training template's job registers its final model; the MLflow REST API lists that version with
its metrics and run; a request without a login, or with a wrong password, gets 401; `podsys
models list` shows the version without printing a password; a headless Chromium screenshot of
the run page goes to test-artifacts/mlflow-run.png. Helpers: tests/integration/models_lab.py.

In CI: the README's test command runs the training lab's modules in one parallel worker
(tests/conftest.py groups); its time is in README, testing."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from tests.conftest import podsys
from tests.integration.conftest import wait_for
from tests.integration.training_lab import PREFIX, USER, job_state, read_log, training_manifest

pytestmark = [pytest.mark.integration, pytest.mark.lab]


def test_the_training_job_registers_its_model_in_mlflow(training_lab, tmp_path):
    from tests.integration import models_lab as ml

    lab, manifest = training_lab, training_manifest(training_lab)
    started = time.monotonic()
    out = f"/shared/home/{USER}/train-mlflow.out"
    submit = (f"su - {USER} -c 'sbatch --parsable -N 2 --chdir /shared/home/{USER} -o {out} "
              f"/usr/local/share/podsys/training/train.sbatch /usr/local/share/podsys/training/train_ddp.py "
              f"--checkpoint-dir /shared/checkpoints/{USER}/mlflow --steps 20 --checkpoint-every 5'")
    job = lab.ssh(lab.head, submit).stdout.strip().split(";")[0]
    wait_for(f"job {job} to finish", lambda: job_state(lab, job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             timeout=900, every=5)
    log = read_log(lab, out)
    assert job_state(lab, job)["JobState"] == "COMPLETED", log[-3000:]
    registered = re.search(PREFIX + r"registered model train_ddp version (\d+) run ([0-9a-f]{32})", log, re.M)
    assert registered, log[-3000:]
    version, run_id = registered.groups()
    done = re.search(PREFIX + r"done steps=20 first_loss=([\d.]+) final_loss=([\d.]+)", log, re.M)
    assert done, log[-3000:]

    # The REST API, from a node (the provision network logs in without a password).
    node = lab.nodes[0]
    versions = ml.rest_json(lab, node, "/api/2.0/mlflow/model-versions/search?filter=name%3D%27train_ddp%27")
    listed = {v["version"]: v for v in versions["model_versions"]}
    assert listed[version]["run_id"] == run_id and listed[version]["status"] == "READY", listed
    run = ml.rest_json(lab, node, f"/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    assert abs(metrics["final_loss"]["value"] - float(done.group(2))) < 1e-5, metrics
    assert metrics["loss"]["step"] == 20 and metrics["final_loss"]["value"] < metrics["first_loss"]["value"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["world_size"] == "2" and params["steps"] == "20", params
    assert run["info"]["user_id"] == USER and run["info"]["status"] == "FINISHED", run["info"]
    artifacts = lab.ssh(lab.head, f"find /shared/mlflow -path '*{run_id}*' -name model.pt").stdout
    assert artifacts.strip(), "the final model file is not in the artifact directory on shared storage"

    # From outside the provision network (the head's loopback): no login, no answer.
    loopback = f"https://127.0.0.1:{ml.PORT}"
    search = "/api/2.0/mlflow/registered-models/search"
    assert ml.rest_from(lab, lab.head, search, base=loopback)[0] == 401
    assert ml.rest_from(lab, lab.head, search, base=loopback, auth=f"{USER}:wrong-password")[0] == 401
    status, body = ml.rest_from(lab, lab.head, search, base=loopback, auth=f"{USER}:{ml.PASSWORD}")
    assert status == 200 and "train_ddp" in body, (status, body[:300])
    modes = lab.ssh(lab.head, "stat -c '%a %U:%G' /etc/nginx/podsys-models.htpasswd /etc/podsys/models/mlflow.env "
                              "/etc/podsys/models/db-password").stdout.split("\n")
    assert modes[:3] == ["640 root:www-data", "600 root:root", "600 root:root"], modes

    # podsys models list, through the head.
    listing = podsys("models", "list", manifest, "--json", timeout=300)
    assert listing.returncode == 0, listing.stderr
    rows = {(r["name"], r["version"]): r for r in json.loads(listing.stdout)}
    row = rows[("train_ddp", int(version))]
    assert row["run_id"] == run_id and row["user"] == USER and abs(row["metrics"]["final_loss"] - metrics["final_loss"]["value"]) < 1e-9
    table = podsys("models", "list", manifest, timeout=300)
    assert table.returncode == 0 and f"train_ddp  {version}  READY" in table.stdout, table.stdout
    assert ml.PASSWORD not in table.stdout + table.stderr

    # The run page in a real browser, from the test host through the head's uplink, logged in.
    page = f"https://{lab.head_ssh_address}:{ml.PORT}/#/experiments/{run['info']['experiment_id']}/runs/{run_id}"
    shot = tmp_path / "mlflow-run.png"
    dom = ml.open_run_page(page, tmp_path / "profile", f"{USER}:{ml.PASSWORD}", shot, run["info"]["run_name"])
    assert "Can't load run details" not in dom, dom[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000, "a blank screenshot"
    ml.ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ml.ARTIFACTS / "mlflow-run.png")
    print(f"models layer checks took {time.monotonic() - started:.0f} s")
